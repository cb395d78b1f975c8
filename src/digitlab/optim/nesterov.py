"""Nesterov momentum, as PyTorch's ``SGD(nesterov=True)`` (no dampening)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from digitlab.errors import ConfigError
from digitlab.optim.base import SlotOptimizer


class Nesterov(SlotOptimizer):
    """Gradient descent with Nesterov momentum.

    ``g <- g + wd p``;  ``b <- mu b + g``;  ``p <- p - lr (g + mu b)``
    (PyTorch's ``SGD(momentum=mu, nesterov=True, weight_decay=wd)``; ``b`` starts at 0, so
    the first step has ``b = g`` as in PyTorch).

    Parameters
    ----------
    momentum : float
        ``mu`` in (0, 1): Nesterov momentum needs a momentum, as in PyTorch.
    weight_decay : float
        L2 coefficient ``wd`` added to the gradient.
    """

    name: ClassVar[str] = "nesterov"
    hyperparameters: ClassVar[dict[str, float]] = {"momentum": 0.9, "weight_decay": 0.0}
    momentum: float
    weight_decay: float

    def __init__(self, **hyperparameters: float) -> None:
        super().__init__(**hyperparameters)
        if self.momentum <= 0.0:
            raise ConfigError("nesterov needs momentum in (0, 1), got 0.0")

    def slot_names(self) -> tuple[str, ...]:
        return ("momentum_buffer",)

    def update(self, p: np.ndarray, g: np.ndarray, slots: list[np.ndarray], lr: float) -> None:
        (buf,) = slots
        if self.weight_decay:
            g = g + self.weight_decay * p
        buf *= self.momentum
        buf += g
        d = self.momentum * buf
        d += g
        d *= lr
        p -= d
