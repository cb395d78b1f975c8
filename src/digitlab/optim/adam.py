"""Adam (Kingma & Ba, 2015), as PyTorch's ``torch.optim.Adam``."""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np

from digitlab.optim.base import SlotOptimizer


class Adam(SlotOptimizer):
    """Adaptive moments with bias correction.

    At step ``t`` (from 1): ``g <- g + wd p`` (L2, coupled as in PyTorch's Adam);
    ``m <- b1 m + (1 - b1) g``;  ``v <- b2 v + (1 - b2) g^2``;
    ``p <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``.

    Parameters
    ----------
    beta1, beta2 : float
        Decay rates of the first and second moment estimates, in [0, 1).
    eps : float
        Added to the denominator, > 0.
    weight_decay : float
        L2 coefficient added to the gradient (see :class:`~digitlab.optim.AdamW` for the
        decoupled form).
    """

    name: ClassVar[str] = "adam"
    hyperparameters: ClassVar[dict[str, float]] = {
        "beta1": 0.9,
        "beta2": 0.999,
        "eps": 1e-8,
        "weight_decay": 0.0,
    }
    beta1: float
    beta2: float
    eps: float
    weight_decay: float

    def slot_names(self) -> tuple[str, ...]:
        return ("exp_avg", "exp_avg_sq")

    def update(self, p: np.ndarray, g: np.ndarray, slots: list[np.ndarray], lr: float) -> None:
        if self.weight_decay:
            g = g + self.weight_decay * p
        self.adam_step(p, g, slots, lr)

    def adam_step(self, p: np.ndarray, g: np.ndarray, slots: list[np.ndarray], lr: float) -> None:
        """The moment updates and the bias-corrected step, in place (``g`` is not modified)."""
        m, v = slots
        m *= self.beta1
        m += (1.0 - self.beta1) * g
        v *= self.beta2
        d = g * g
        d *= 1.0 - self.beta2
        v += d
        np.sqrt(v, out=d)
        d *= 1.0 / math.sqrt(1.0 - self.beta2**self.t)
        d += self.eps
        np.divide(m, d, out=d)
        d *= lr / (1.0 - self.beta1**self.t)
        p -= d
