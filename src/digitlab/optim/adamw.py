"""AdamW (Loshchilov & Hutter, 2019), as PyTorch's ``torch.optim.AdamW``."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from digitlab.optim.adam import Adam


class AdamW(Adam):
    """Adam with decoupled weight decay.

    ``p <- p (1 - lr wd)``, then the :class:`~digitlab.optim.Adam` step on the plain
    gradient (the decay does not enter the moments).

    Parameters
    ----------
    beta1, beta2, eps : float
        As :class:`~digitlab.optim.Adam`.
    weight_decay : float
        ``wd`` >= 0 (PyTorch's default 0.01).
    """

    name: ClassVar[str] = "adamw"
    hyperparameters: ClassVar[dict[str, float]] = {**Adam.hyperparameters, "weight_decay": 0.01}

    def update(self, p: np.ndarray, g: np.ndarray, slots: list[np.ndarray], lr: float) -> None:
        if self.weight_decay:
            p *= 1.0 - lr * self.weight_decay
        self.adam_step(p, g, slots, lr)
