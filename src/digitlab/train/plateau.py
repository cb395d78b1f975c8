"""Reduce-on-plateau: a callback that lowers the learning rate when a metric stops improving.

The rate the trainer takes is its schedule's rate times ``trainer.lr_scale``; this callback
owns that factor. Its state (the factor, the best value, the count of bad evaluations and the
cool-down) is saved with the trainer's checkpoints, so a resumed run continues it exactly.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from digitlab.errors import ConfigError
from digitlab.train.callbacks import Callback, TrainerView


class ReduceLROnPlateau(Callback):
    """Multiply the learning rate by ``factor`` after ``patience`` evaluations without progress.

    PyTorch's ``torch.optim.lr_scheduler.ReduceLROnPlateau`` rule, stepped at every evaluation
    record: a value improves when it is below ``best * (1 - threshold)`` (``mode="min"``) or
    above ``best * (1 + threshold)`` (``"max"``); after more than ``patience`` evaluations in a
    row without improvement the rate becomes ``max(rate * factor, min_lr)`` (if that lowers it
    by more than ``1e-8``), the count restarts and ``cooldown`` evaluations are not counted.

    Parameters
    ----------
    monitor : str
        A column of the evaluation records (``"val_loss"``, ``"train_objective"``, ...).
    factor : float
        In (0, 1).
    patience : int
        Evaluations without improvement tolerated (>= 0).
    min_lr : float
        Lowest rate (>= 0).
    threshold : float
        Relative improvement that counts (>= 0).
    mode : {"auto", "min", "max"}
        ``"auto"``: ``"max"`` for accuracies, else ``"min"``.
    cooldown : int
        Evaluations after a reduction before bad ones count again.
    """

    EPS = 1e-8

    def __init__(
        self,
        monitor: str = "val_loss",
        *,
        factor: float = 0.1,
        patience: int = 10,
        min_lr: float = 0.0,
        threshold: float = 1e-4,
        mode: str = "auto",
        cooldown: int = 0,
    ) -> None:
        if not 0 < factor < 1:
            raise ConfigError(f"plateau factor must be in (0, 1), got {factor}")
        if patience < 0 or cooldown < 0:
            raise ConfigError(f"plateau patience and cooldown must be >= 0, got {patience}")
        if not (min_lr >= 0 and threshold >= 0):
            raise ConfigError(f"min_lr and threshold must be >= 0, got {min_lr}, {threshold}")
        if mode not in ("auto", "min", "max"):
            raise ConfigError(f"plateau mode must be auto, min or max, got {mode!r}")
        self.monitor, self.factor, self.patience = monitor, float(factor), int(patience)
        self.min_lr, self.threshold, self.cooldown = float(min_lr), float(threshold), int(cooldown)
        self.mode = ("max" if "acc" in monitor else "min") if mode == "auto" else mode
        self.scale = 1.0
        self.best = math.inf if self.mode == "min" else -math.inf
        self.bad = 0
        self.cooldown_left = 0

    def on_train_begin(self, trainer: TrainerView) -> None:
        trainer.lr_scale = self.scale

    def _improved(self, value: float) -> bool:
        if self.mode == "min":
            return value < self.best * (1.0 - self.threshold)
        return value > self.best * (1.0 + self.threshold)

    def on_evaluate(self, trainer: TrainerView, record: dict[str, float]) -> None:
        if self.monitor not in record:
            raise ConfigError(
                f"reduce-on-plateau monitors {self.monitor!r}, which the evaluations do not "
                f"record (have: {', '.join(sorted(record))}); give a validation split or "
                "change the monitor"
            )
        value = float(record[self.monitor])
        if self._improved(value):
            self.best, self.bad = value, 0
        else:
            self.bad += 1
        if self.cooldown_left > 0:
            self.cooldown_left -= 1
            self.bad = 0
        if self.bad > self.patience:
            base = trainer.schedule(trainer.step, trainer.epoch)
            old = base * self.scale
            new = max(old * self.factor, self.min_lr)
            if old - new > self.EPS:
                self.scale = new / base
                trainer.lr_scale = self.scale
            self.cooldown_left, self.bad = self.cooldown, 0

    def state_dict(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        meta = {"scale": self.scale, "best": self.best, "bad": self.bad,
                "cooldown_left": self.cooldown_left}  # fmt: skip
        return {}, meta

    def load_state_dict(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self.scale, self.best = float(meta["scale"]), float(meta["best"])
        self.bad, self.cooldown_left = int(meta["bad"]), int(meta["cooldown_left"])
