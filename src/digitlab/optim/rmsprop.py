"""RMSprop (Hinton's lecture 6e), as PyTorch's ``torch.optim.RMSprop`` (not centred)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from digitlab.optim.base import SlotOptimizer


class RMSprop(SlotOptimizer):
    """Steps scaled by a running root mean square of the gradient.

    ``g <- g + wd p``;  ``s <- alpha s + (1 - alpha) g^2``;  ``u = g / (sqrt(s) + eps)``;
    with momentum ``b <- mu b + u``, ``p <- p - lr b``; without, ``p <- p - lr u``.

    Parameters
    ----------
    alpha : float
        Decay of the mean square, in [0, 1).
    eps : float
        Added to the root mean square, > 0.
    momentum : float
        ``mu`` in [0, 1) (0: no momentum buffer is kept).
    weight_decay : float
        L2 coefficient added to the gradient.
    """

    name: ClassVar[str] = "rmsprop"
    hyperparameters: ClassVar[dict[str, float]] = {
        "alpha": 0.99,
        "eps": 1e-8,
        "momentum": 0.0,
        "weight_decay": 0.0,
    }
    alpha: float
    eps: float
    momentum: float
    weight_decay: float

    def slot_names(self) -> tuple[str, ...]:
        return ("square_avg", "momentum_buffer") if self.momentum else ("square_avg",)

    def update(self, p: np.ndarray, g: np.ndarray, slots: list[np.ndarray], lr: float) -> None:
        if self.weight_decay:
            g = g + self.weight_decay * p
        s = slots[0]
        s *= self.alpha
        d = g * g
        d *= 1.0 - self.alpha
        s += d
        np.sqrt(s, out=d)
        d += self.eps
        np.divide(g, d, out=d)
        if self.momentum:
            buf = slots[1]
            buf *= self.momentum
            buf += d
            d = buf
        p -= lr * d
