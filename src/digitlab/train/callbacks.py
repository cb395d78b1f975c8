"""Callbacks: the trainer calls their hooks; they record, stop, checkpoint and measure.

Hooks receive the trainer (what they may use of it is :class:`TrainerView`); a callback stops
training by calling ``trainer.request_stop(reason)``. At every evaluation, :meth:`Callback.measure`
receives the :class:`Step` just taken (the model's batch, its gradients, the parameters before the
update) and returns columns for that evaluation's record, so statistics about a step are added by
a callback, not by a change to the loop. Callbacks with state worth resuming implement
``state_dict``/``load_state_dict`` (arrays and JSON-able values only).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from digitlab.errors import ConfigError
from digitlab.models.base import Model


class TrainerView(Protocol):
    """What callbacks read of :class:`~digitlab.train.Trainer` and may call on it."""

    model: Model
    step: int
    epoch: int
    pos: int
    total_steps: int
    steps_per_epoch: int
    batch_rows: int
    diverged: bool
    interrupted: bool
    aborted: bool
    lr_scale: float

    def schedule(self, step: int, epoch: int) -> float: ...

    def request_stop(self, reason: str) -> None: ...

    def require_finite(self, consequence: str) -> None: ...

    def save(self, path: str | os.PathLike) -> Path: ...


@dataclass(frozen=True)
class Step:
    """One training step as the evaluation after it sees it.

    Attributes
    ----------
    X : ndarray (b, d)
        The batch the gradient was computed on (after augmentation).
    y : ndarray of int (b,)
    loss : float
        The batch's objective.
    grads : mapping of name -> ndarray
        The gradient the update used, keyed like the parameters (arrays, also where the update
        applied a weight matrix's gradient in factored form).
    lr : float
        The learning rate of the step.
    before : dict of ndarray
        Copies of the parameters before the update (``params - before`` is the update).
    """

    X: np.ndarray
    y: np.ndarray
    loss: float
    grads: Mapping[str, Any]
    lr: float
    before: dict[str, np.ndarray]


class Callback:
    """No-op base: override the hooks you need."""

    def on_train_begin(self, trainer: TrainerView) -> None: ...

    def on_step_end(self, trainer: TrainerView, loss: float) -> None: ...

    def measure(self, trainer: TrainerView, step: Step) -> Mapping[str, float]:
        """Columns to add to the record of the evaluation that follows ``step``."""
        return {}

    def on_evaluate(self, trainer: TrainerView, record: dict[str, float]) -> None: ...

    def on_train_end(self, trainer: TrainerView) -> None: ...

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

    def on_evaluate(self, trainer: TrainerView, record: dict[str, float]) -> None:
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
        Evaluations without improvement before stopping.
    min_delta : float
    mode : {"auto", "min", "max"}
        ``auto``: max for keys containing "acc", else min.
    restore_best : bool
        End with the model state (parameters and buffers) of the best evaluation.
    start_epoch : float
        Evaluations before this epoch update the best value but never count towards the
        patience (a curve that first rises, as source 000's does, is not stopped at its start).
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

    def on_train_begin(self, trainer: TrainerView) -> None:
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

    def on_evaluate(self, trainer: TrainerView, record: dict[str, float]) -> None:
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
                self.best_params = {k: v.copy() for k, v in trainer.model.state().items()}
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

    def on_train_end(self, trainer: TrainerView) -> None:
        # an interrupted run keeps its current parameters so that it resumes where it was
        if self.restore_best and self.best_params and not (trainer.diverged or trainer.interrupted):
            trainer.model.load_state(self.best_params)

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


class SaveClock:
    """When a checkpoint is due by time: once ``seconds`` of training passed since the last.

    Shared by the :class:`Checkpoint` callbacks of trainers that step in lock-step, it makes
    them all save at the same steps, so that stopped, they can continue in lock-step.
    """

    def __init__(self, seconds: float) -> None:
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds >= 0:
            raise ConfigError(f"checkpoint interval must be a number >= 0 seconds, got {seconds!r}")
        self.seconds = float(seconds)
        self.start()

    def start(self) -> None:
        """Count from now (training begins)."""
        self.last, self._step, self._due = time.monotonic(), -1, False

    def due(self, step: int) -> bool:
        """Whether to save at ``step`` (the same answer to every trainer at that step)."""
        if step != self._step:
            now = time.monotonic()
            self._step, self._due = step, now - self.last >= self.seconds
            if self._due:
                self.last = now
        return self._due


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
    seconds : float or None
        Also save once this many seconds of training passed since the last save by time (or
        the start): a long job that is killed loses at most that much (the experiment
        engine's cadence). None: by steps only.
    clock : SaveClock, optional
        Decides when a save by time is due, instead of one made from ``seconds`` (shared by
        trainers in lock-step).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        every: int | None = None,
        keep_steps: bool = False,
        seconds: float | None = None,
        clock: SaveClock | None = None,
    ) -> None:
        if every is not None and every < 1:
            raise ConfigError(f"checkpoint interval must be >= 1 step, got {every}")
        self.path, self.every, self.keep_steps = Path(path), every, keep_steps
        self.clock = clock if clock is not None or seconds is None else SaveClock(seconds)
        self.saved: list[Path] = []

    def save(self, trainer: TrainerView) -> None:
        """Write the checkpoint (and its per-step copy).

        Raises
        ------
        DivergenceError
            The parameters are not finite: the last good checkpoint is kept and the run is
            marked diverged (a checkpoint is never skipped silently).
        """
        trainer.require_finite(f"not overwriting the last good checkpoint {self.path}")
        self.saved.append(trainer.save(self.path))
        if self.keep_steps:
            extra = self.path.with_name(f"{self.path.stem}-step{trainer.step}{self.path.suffix}")
            self.saved.append(trainer.save(extra))

    def on_train_begin(self, trainer: TrainerView) -> None:
        if self.clock is not None:
            self.clock.start()

    def on_step_end(self, trainer: TrainerView, loss: float) -> None:
        by_time = self.clock is not None and self.clock.due(trainer.step)
        if by_time or (self.every and trainer.step % self.every == 0):
            self.save(trainer)

    def on_train_end(self, trainer: TrainerView) -> None:
        # keep the last good checkpoint: a diverged run's, or one whose fit an exception
        # ended (possibly mid-step)
        if not (trainer.diverged or trainer.aborted):
            self.save(trainer)
