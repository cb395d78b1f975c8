"""The learning-rate range test (Smith 2017, "Cyclical learning rates"; fastai's ``lr_find``).

Train from the model's initial parameters for a few hundred steps while the rate grows
exponentially from ``start`` to ``end``; record each batch's loss (taken before its step),
smooth it with an exponential moving average (``beta``, bias-corrected as in fastai) and stop
once the smoothed loss exceeds ``diverge`` times its best. The model is not changed: the sweep
trains a copy.

**Suggested rate**: the steepest descent of the smoothed loss (PyTorch Lightning's rule): the
rate of the step where the smoothed loss falls fastest per step of the sweep (the rates are
evenly spaced in log scale, so per factor of rate), by ``numpy.gradient``, leaving out the first
:data:`SKIP_START` steps (the average is still settling) and the last step. It lies below the
minimum of the loss, where the rate starts to hurt. (For the MLP on MNIST the other classic
rule, the minimum's rate / 10, suggests a rate 3x lower, which trains worse in 5 epochs; see
the README.)
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from digitlab.errors import ConfigError, DivergenceError
from digitlab.models.base import Model
from digitlab.optim.base import Optimizer
from digitlab.optim.schedules import Exponential
from digitlab.train.callbacks import Callback, TrainerView
from digitlab.train.trainer import Trainer

#: Largest sweep accepted.
MAX_SWEEP_STEPS = 100_000
#: Steps of the sweep the suggestion leaves out at the start.
SKIP_START = 10


@dataclass(frozen=True)
class LRFindResult:
    """The sweep: rate, raw and smoothed loss per step, shapes (steps_done,).

    Attributes
    ----------
    lrs, losses, smoothed : ndarray (steps_done,)
    suggestion : float
        The rate of the steepest descent of ``smoothed`` (module docstring).
    min_loss_lr : float
        The rate at the minimum of the smoothed loss.
    stop_reason : str
    """

    lrs: np.ndarray
    losses: np.ndarray
    smoothed: np.ndarray
    suggestion: float
    min_loss_lr: float
    stop_reason: str

    def to_csv(self, path: str | os.PathLike) -> Path:
        """Write ``step,lr,loss,smoothed_loss`` rows (atomically)."""
        from digitlab.fileio import atomic_write_bytes

        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(["step", "lr", "loss", "smoothed_loss"])
        for i, row in enumerate(zip(self.lrs, self.losses, self.smoothed, strict=True)):
            writer.writerow([i, *(repr(float(v)) for v in row)])
        return atomic_write_bytes(path, lambda f: f.write(text.getvalue().encode()))

    def plot(self, path: str | os.PathLike, title: str = "learning-rate range test") -> Path:
        """Save the smoothed (and raw) loss against the rate, log scale, as a PNG."""
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib.figure import Figure

        from digitlab.fileio import atomic_write_bytes

        fig = Figure(figsize=(6, 3.6), dpi=100)
        ax = fig.add_subplot()
        ax.plot(self.lrs, self.losses, color="0.75", lw=0.8, label="batch loss")
        ax.plot(self.lrs, self.smoothed, color="C0", lw=1.8, label="smoothed (beta 0.98)")
        ax.axvline(self.min_loss_lr, color="C3", ls=":", label=f"minimum {self.min_loss_lr:.3g}")
        ax.axvline(self.suggestion, color="C2", ls="--", label=f"suggested {self.suggestion:.3g}")
        ax.set(xscale="log", xlabel="learning rate", ylabel="training loss", title=title)
        top = float(np.nanmax(self.smoothed[: max(1, len(self.smoothed) // 2)]))
        low = min(float(np.nanmin(self.smoothed)), float(np.nanmin(self.losses)))
        ax.set_ylim(low * 0.9, max(top, low, 1e-12) * 1.6)
        ax.legend(fontsize=8)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return atomic_write_bytes(path, lambda f: f.write(buf.getvalue()))


class _Recorder(Callback):
    """Each step's rate and loss; the EMA-smoothed loss; stop at divergence."""

    def __init__(self, beta: float, diverge: float) -> None:
        self.beta, self.diverge = beta, diverge
        self.lrs: list[float] = []
        self.losses: list[float] = []
        self.smoothed: list[float] = []
        self._avg, self._best = 0.0, np.inf

    def on_step_end(self, trainer: TrainerView, loss: float) -> None:
        n = len(self.losses) + 1
        self._avg = self.beta * self._avg + (1 - self.beta) * loss
        smooth = self._avg / (1 - self.beta**n)
        self.lrs.append(trainer.lr)
        self.losses.append(loss)
        self.smoothed.append(smooth)
        self._best = min(self._best, smooth)
        if n > 1 and smooth > self.diverge * self._best:
            trainer.request_stop(f"smoothed loss above {self.diverge:g}x its best at step {n}")


def _check_sweep(start: float, end: float, steps: int, beta: float, diverge: float) -> None:
    for name, value in (("start_lr", start), ("end_lr", end), ("diverge", diverge)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1e6:
            raise ConfigError(f"lr-find {name} must be a number in (0, 1e6), got {value!r}")
    if not end > start:
        raise ConfigError(f"lr-find end_lr {end} must be above start_lr {start}")
    if isinstance(steps, bool) or not isinstance(steps, int) or not 2 <= steps <= MAX_SWEEP_STEPS:
        raise ConfigError(f"lr-find steps must be a whole number in [2, {MAX_SWEEP_STEPS}]")
    if not 0 <= beta < 1:
        raise ConfigError(f"lr-find beta must be in [0, 1), got {beta!r}")
    if not diverge > 1:
        raise ConfigError(f"lr-find diverge must be > 1, got {diverge!r}")


def sweep(
    trainer: Trainer,
    train: tuple[Any, np.ndarray],
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    steps: int = 100,
    beta: float = 0.98,
    diverge: float = 4.0,
) -> LRFindResult:
    """Run the range test with ``trainer`` (its batching, update rule and augmentation) on
    ``train = (X (n, d), y (n,))``; the trainer's model is trained (pass a copy).

    Its schedule is replaced by the exponential sweep and its evaluations are not used.
    """
    _check_sweep(start_lr, end_lr, steps, beta, diverge)
    recorder = _Recorder(beta, diverge)
    trainer.schedule = Exponential(start_lr, end_lr, steps)
    trainer.callbacks = [c for c in trainer.callbacks if c is trainer.history] + [recorder]
    trainer.eval_spec = MAX_SWEEP_STEPS + 1  # no evaluation during the sweep
    reason = f"finished {steps} steps"
    try:
        trainer.fit(train, steps=steps)
        reason = trainer.stop_reason or reason
    except DivergenceError as exc:
        reason = f"diverged: {exc}"
    if not recorder.losses:
        raise DivergenceError(f"the first step of the sweep diverged ({reason})")
    smoothed, lrs = np.array(recorder.smoothed), np.array(recorder.lrs)
    return LRFindResult(lrs, np.array(recorder.losses), smoothed, steepest_descent(lrs, smoothed),
                        float(lrs[int(np.nanargmin(smoothed))]), reason)  # fmt: skip


def steepest_descent(lrs: np.ndarray, smoothed: np.ndarray) -> float:
    """The rate ``lrs (m,)`` where ``smoothed (m,)`` falls fastest, leaving out the first
    :data:`SKIP_START` and the last point (all points when there are too few)."""
    m = len(smoothed)
    lo, hi = (SKIP_START, m - 1) if m > SKIP_START + 2 else (0, m)
    if hi - lo < 2:
        return float(lrs[lo])
    slope = np.gradient(smoothed[lo:hi])
    return float(lrs[lo + int(np.nanargmin(slope))])


def lr_find(
    estimator_or_model: Any,
    X: Any,
    y: Any,
    *,
    optimizer: Optimizer | None = None,
    batch_size: int | str | None = None,
    rng: np.random.Generator | int | None = 0,
    **sweep_options: Any,
) -> LRFindResult:
    """The learning-rate range test for a digitlab estimator or :class:`Model`.

    Parameters
    ----------
    estimator_or_model : MLPClassifier, SoftmaxRegression, LogisticRegression or Model
        An estimator (fitted or not; its solver, batch size and hyperparameters are used and
        it is left unchanged) or a model (its current parameters are the start; a copy trains).
    X : array-like (n, d)
    y : array-like (n,)
        Labels (an estimator's labels; a model's class indices).
    optimizer : Optimizer, optional
        For a model: the update rule (plain SGD when None).
    batch_size : int or "full", optional
        For a model: rows per step (default 128).
    rng : Generator, int or None
        The batches' order.
    **sweep_options
        ``start_lr``, ``end_lr``, ``steps``, ``beta``, ``diverge`` of :func:`sweep`.
    """
    if isinstance(estimator_or_model, Model):
        model = estimator_or_model.copy()
        X, y = np.asarray(X), np.asarray(y)
        batch = 128 if batch_size is None else batch_size
    elif hasattr(estimator_or_model, "sweep_setup"):
        model, X, y, optimizer, batch = estimator_or_model.sweep_setup(X, y)
    else:
        raise ConfigError(
            f"lr_find needs a digitlab estimator or Model, got {type(estimator_or_model).__name__}"
        )
    trainer = Trainer(model, optimizer=optimizer, batch_size=batch, rng=rng)
    return sweep(trainer, (X, y), **sweep_options)


def lr_find_settings(
    settings: Any, data: Any = None, **sweep_options: Any
) -> tuple[LRFindResult, Any]:
    """The range test for a training run's settings (model, data, batching, update rule,
    augmentation, seed), as ``digitlab lr-find`` runs it.

    The run's schedule, early stopping and plateau rule are left out (the sweep sets the rate).
    Returns the result and the :class:`~digitlab.runner.PreparedData` used.
    """
    from digitlab.runner import build_run_model, build_trainer, prepare_data

    _check_sweep(**{"start": 1e-7, "end": 10.0, "steps": 100, "beta": 0.98, "diverge": 4.0}
                 | _renamed(sweep_options))  # fmt: skip
    settings = settings.replace(schedule=None, anneal_T=None, early_stopping=0)
    data = data if data is not None else prepare_data(settings)
    model = build_run_model(settings, data.train[0].shape[1], len(data.classes))
    trainer = build_trainer(settings, model, data, [])
    return sweep(trainer, data.train, **sweep_options), data


def _renamed(options: dict[str, Any]) -> dict[str, Any]:
    names = {"start_lr": "start", "end_lr": "end"}
    return {names.get(k, k): v for k, v in options.items()}
