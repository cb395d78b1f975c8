"""Callbacks: the trainer calls their hooks; they record, stop, checkpoint and report.

Hooks receive the :class:`~digitlab.train.Trainer`; a callback stops training by calling
``trainer.request_stop(reason)``. Callbacks with state worth resuming implement
``state_dict``/``load_state_dict`` (arrays and JSON-able values only).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from digitlab.errors import ConfigError, DivergenceError

if TYPE_CHECKING:
    from digitlab.train.trainer import Trainer


class Callback:
    """No-op base: override the hooks you need."""

    def on_train_begin(self, trainer: Trainer) -> None: ...

    def on_step_end(self, trainer: Trainer, loss: float) -> None: ...

    def on_evaluate(self, trainer: Trainer, record: dict[str, float]) -> None: ...

    def on_train_end(self, trainer: Trainer) -> None: ...

    def state_dict(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return {}, {}

    def load_state_dict(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None: ...


class History(Callback):
    """Every evaluation record: step, epoch, lr, weight norm, loss/accuracy per split.

    ``records`` is a list of dicts with the same keys; :meth:`series` gives one column. The
    columns are declared in :mod:`digitlab.runfiles`, which writes and reads ``history.csv``
    (:class:`~digitlab.runfiles.HistoryWriter`, :func:`~digitlab.runfiles.read_history`).
    """

    def __init__(self, records: list[dict[str, float]] | None = None) -> None:
        self.records: list[dict[str, float]] = list(records or [])

    def on_evaluate(self, trainer: Trainer, record: dict[str, float]) -> None:
        self.records.append(dict(record))

    def __len__(self) -> int:
        return len(self.records)

    def series(self, key: str) -> np.ndarray:
        """One column over all evaluations, shape (n_evals,) (NaN where absent)."""
        return np.array([r.get(key, np.nan) for r in self.records], dtype=np.float64)

    @property
    def columns(self) -> list[str]:
        cols: dict[str, None] = {}
        for r in self.records:
            cols.update(dict.fromkeys(r))
        return list(cols)

    def state_dict(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return {}, {"records": self.records}

    def load_state_dict(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self.records = [dict(r) for r in meta.get("records", [])]


class EarlyStopping(Callback):
    """Stop when the monitored value has not improved for ``patience`` evaluations.

    An evaluation improves when it beats the best so far by more than ``min_delta`` (lower
    for losses, higher for accuracies). With ``restore_best`` the model ends with the
    parameters of the best evaluation.

    Parameters
    ----------
    monitor : str
        A record key, e.g. ``"val_loss"`` or ``"val_acc"``.
    patience : int
        Evaluations without improvement before stopping (the seeds use 3, 5 and 10).
    min_delta : float
    mode : {"auto", "min", "max"}
        ``auto``: max for keys containing "acc", else min.
    restore_best : bool
    start_epoch : float
        Evaluations before this epoch update the best value but never count towards the
        patience (a curve that first rises, as seed 000's does, is not stopped at its start).
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        patience: int = 5,
        min_delta: float = 0.0,
        mode: str = "auto",
        restore_best: bool = True,
        start_epoch: float = 0.0,
    ) -> None:
        if patience < 1:
            raise ConfigError(f"early-stopping patience must be >= 1, got {patience}")
        if mode not in ("auto", "min", "max"):
            raise ConfigError(f"early-stopping mode must be auto, min or max, got {mode!r}")
        if min_delta < 0:
            raise ConfigError(f"min_delta must be >= 0, got {min_delta}")
        self.monitor, self.patience, self.min_delta = monitor, int(patience), float(min_delta)
        self.mode = ("max" if "acc" in monitor else "min") if mode == "auto" else mode
        self.restore_best = restore_best
        self.start_epoch = float(start_epoch)
        self.best = math.inf if self.mode == "min" else -math.inf
        self.best_step = -1
        self.best_epoch = math.nan
        self.wait = 0
        self.stopped = False
        self.best_params: dict[str, np.ndarray] = {}

    def on_train_begin(self, trainer: Trainer) -> None:
        # resumed from a checkpoint written at the step this rule stopped: stay stopped
        if self.stopped:
            trainer.request_stop(
                f"early stopping: {self.monitor} did not improve for {self.patience} evaluations "
                f"(best {self.best:.6g} at epoch {self.best_epoch:g})"
            )

    def _improved(self, value: float) -> bool:
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def on_evaluate(self, trainer: Trainer, record: dict[str, float]) -> None:
        if self.monitor not in record:
            raise ConfigError(
                f"early stopping monitors {self.monitor!r}, which the evaluations do not record "
                f"(have: {', '.join(sorted(record))}); give a validation split or change monitor"
            )
        value = record[self.monitor]
        if self._improved(value):
            self.best, self.wait = value, 0
            self.best_step, self.best_epoch = int(record["step"]), float(record["epoch"])
            if self.restore_best:
                self.best_params = {k: v.copy() for k, v in trainer.model.params.items()}
            return
        if record["epoch"] < self.start_epoch:
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped = True
            trainer.request_stop(
                f"early stopping: {self.monitor} did not improve for {self.patience} evaluations "
                f"(best {self.best:.6g} at epoch {self.best_epoch:g})"
            )

    def on_train_end(self, trainer: Trainer) -> None:
        # an interrupted run keeps its current parameters so that it resumes where it was
        if self.restore_best and self.best_params and not (trainer.diverged or trainer.interrupted):
            for k, v in self.best_params.items():
                trainer.model.params[k][...] = v

    def state_dict(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        meta = {
            "best": self.best,
            "best_step": self.best_step,
            "best_epoch": self.best_epoch,
            "wait": self.wait,
            "stopped": self.stopped,
        }
        return dict(self.best_params), meta

    def load_state_dict(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self.best = float(meta["best"])
        self.best_step, self.best_epoch = int(meta["best_step"]), float(meta["best_epoch"])
        self.wait, self.stopped = int(meta["wait"]), bool(meta["stopped"])
        self.best_params = {k: np.array(v) for k, v in arrays.items()}


class Checkpoint(Callback):
    """Save a resumable checkpoint every ``every`` steps and at the end of training.

    Parameters
    ----------
    path : path-like
        The checkpoint file (rewritten each time, atomically).
    every : int or None
        Steps between saves; None saves only at the end.
    keep_steps : bool
        Also keep a copy per save named ``<stem>-step<N>.npz``.
    """

    def __init__(
        self, path: str | os.PathLike, every: int | None = None, keep_steps: bool = False
    ) -> None:
        if every is not None and every < 1:
            raise ConfigError(f"checkpoint interval must be >= 1 step, got {every}")
        self.path, self.every, self.keep_steps = Path(path), every, keep_steps
        self.saved: list[Path] = []

    def save(self, trainer: Trainer) -> None:
        """Write the checkpoint (and its per-step copy).

        Raises
        ------
        DivergenceError
            The parameters are not finite: the last good checkpoint is kept and the run is
            marked diverged (a checkpoint is never skipped silently).
        """
        bad = trainer.nonfinite_params()
        if bad:
            trainer.diverged = True
            raise DivergenceError(
                f"parameters {', '.join(bad)} are NaN or infinite at step {trainer.step}; "
                f"not overwriting the last good checkpoint {self.path}"
            )
        self.saved.append(trainer.save(self.path))
        if self.keep_steps:
            extra = self.path.with_name(f"{self.path.stem}-step{trainer.step}{self.path.suffix}")
            self.saved.append(trainer.save(extra))

    def on_step_end(self, trainer: Trainer, loss: float) -> None:
        if self.every and trainer.step % self.every == 0:
            self.save(trainer)

    def on_train_end(self, trainer: Trainer) -> None:
        if not trainer.diverged:  # keep the last good checkpoint
            self.save(trainer)


class Progress(Callback):
    """Forward progress to a function (the CLI draws the bar; the library never prints).

    ``report(done, total, info)`` is called after every ``every`` steps and after each
    evaluation, with ``done``/``total`` in steps and ``info`` the latest loss and accuracies.
    """

    def __init__(
        self, report: Callable[[int, int, dict[str, float]], None], every: int = 1
    ) -> None:
        self.report, self.every = report, max(1, int(every))
        self.info: dict[str, float] = {}

    def on_step_end(self, trainer: Trainer, loss: float) -> None:
        if trainer.step % self.every == 0:
            self.info["loss"] = loss
            self.report(trainer.step, trainer.total_steps, self.info)

    def on_evaluate(self, trainer: Trainer, record: dict[str, float]) -> None:
        self.info.update({k: v for k, v in record.items() if k.endswith("_acc")})
        self.report(trainer.step, trainer.total_steps, self.info)
