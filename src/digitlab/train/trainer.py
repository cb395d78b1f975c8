"""One trainer for every model: batching, shuffling, evaluation schedule, callbacks, resume.

Batching modes (``batch_size``):
- ``"full"``: full-batch gradient descent (one step per epoch);
- an int ``m``: mini-batches of ``m`` rows (the last one smaller unless ``drop_last``);
- a float ``f`` in (0, 1): mini-batches of ``round(f * n)`` rows (seed 000 uses ~10%);
- ``1`` with ``replacement=True``: single-sample SGD drawing rows at random with replacement
  (seed 003); an "epoch" is then ``n`` draws.

Evaluation (``eval_every``): ``"epoch"``; a float fraction of an epoch (seed 004: 0.2, i.e.
every ``steps_per_epoch // 5`` steps); or an int number of steps. Each evaluation records, for
every split given to :meth:`Trainer.fit`, the mean cross-entropy (``<split>_loss``), the
objective that is optimised (``<split>_objective``: cross-entropy with the model's reduction,
plus the penalty) and the accuracy (``<split>_acc``), with the step, epoch, learning rate and
the L2 norm of the weights.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from digitlab.checkpoint import prefixed, save_checkpoint, split_prefixed
from digitlab.errors import CheckpointError, ConfigError, DivergenceError, ShapeError
from digitlab.models.base import Model, as_generator
from digitlab.optim.rules import SGD
from digitlab.optim.schedules import Constant, Schedule
from digitlab.train.callbacks import Callback, History

BatchSpec = int | float | str
EvalSpec = int | float | str
ArrayPair = tuple[np.ndarray, np.ndarray]
EVAL_CHUNK = 16384


def resolve_batch_size(spec: BatchSpec, n: int) -> int:
    """Rows per step for a batch spec (``"full"``, an int, or a float fraction) and ``n`` rows."""
    if spec in ("full", None):
        return n
    if isinstance(spec, bool) or not isinstance(spec, int | float | np.integer | np.floating):
        raise ConfigError(f"batch size must be 'full', an int or a fraction, got {spec!r}")
    if isinstance(spec, float | np.floating):
        if not 0.0 < spec <= 1.0:
            raise ConfigError(f"batch fraction must be in (0, 1], got {spec}")
        return max(1, round(float(spec) * n))
    if spec < 1:
        raise ConfigError(f"batch size must be >= 1, got {spec}")
    return min(int(spec), n)


def resolve_eval_every(spec: EvalSpec, steps_per_epoch: int) -> int:
    """Steps between evaluations for ``"epoch"``, a float fraction of an epoch, or an int."""
    if spec == "epoch":
        return steps_per_epoch
    if isinstance(spec, bool) or not isinstance(spec, int | float | np.integer | np.floating):
        raise ConfigError(f"eval_every must be 'epoch', a fraction or a step count, got {spec!r}")
    if isinstance(spec, float | np.floating):
        if not 0.0 < spec <= 1.0:
            raise ConfigError(f"eval_every as a fraction of an epoch must be in (0, 1], got {spec}")
        return max(1, int(steps_per_epoch * float(spec)))
    if spec < 1:
        raise ConfigError(f"eval_every must be >= 1 step, got {spec}")
    return int(spec)


class Trainer:
    """Gradient-descent training loop shared by all models.

    Parameters
    ----------
    model : Model
        Trained in place.
    optimizer : SGD, optional
        Update rule (plain gradient descent when None).
    schedule : Schedule or float
        Learning-rate schedule, or a constant rate.
    batch_size : "full", int or float
        See the module docstring.
    shuffle : bool
        Draw a new permutation of the training rows each epoch (else the stored order).
    drop_last : bool
        Skip the last, smaller mini-batch of each epoch.
    replacement : bool
        Draw each batch's rows independently with replacement (single-sample SGD, seed 003).
    eval_every : "epoch", float or int
    callbacks : sequence of Callback
    batch_transform : callable, optional
        ``f(X_batch, rng) -> X_batch`` applied to each training batch (augmentation).
    rng : Generator or int or None
        Source of every random draw of the run (order, sampling, augmentation).
    """

    def __init__(
        self,
        model: Model,
        *,
        optimizer: SGD | None = None,
        schedule: Schedule | float = 0.01,
        batch_size: BatchSpec = "full",
        shuffle: bool = True,
        drop_last: bool = False,
        replacement: bool = False,
        eval_every: EvalSpec = "epoch",
        callbacks: Sequence[Callback] = (),
        batch_transform: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None,
        rng: np.random.Generator | int | None = None,
    ) -> None:
        self.model = model
        self.optimizer = optimizer if optimizer is not None else SGD()
        self.schedule = Constant(float(schedule)) if isinstance(schedule, int | float) else schedule
        resolve_batch_size(batch_size, 1)  # validate early
        self.batch_spec = batch_size
        self.shuffle, self.drop_last, self.replacement = shuffle, drop_last, replacement
        self.eval_spec = eval_every
        resolve_eval_every(eval_every, 1)
        self.history = next((c for c in callbacks if isinstance(c, History)), None) or History()
        self.callbacks: list[Callback] = [
            self.history,
            *(c for c in callbacks if c is not self.history),
        ]
        self.batch_transform = batch_transform
        self.rng = as_generator(rng)
        # progress, all saved in checkpoints
        self.step = 0  # optimiser steps taken
        self.epoch = 0  # completed epochs
        self.pos = 0  # batches taken in the current epoch
        self.order: np.ndarray | None = None  # this epoch's row order (None: stored order)
        self.last_eval_step = -1
        #: evaluations fall on steps ``eval_offset + k * eval_steps`` (the TDT4265 starter
        #: code validates after its steps 1, 7, 13, ...: offset 1); set by the experiment engine
        self.eval_offset = 0
        self.elapsed = 0.0
        # per-fit
        self.total_steps = 0
        self.steps_per_epoch = 0
        self.batch_size = 0
        self.diverged = False
        self.interrupted = False
        self.stop_reason: str | None = None
        self._stop = False
        self.extra_meta: dict[str, Any] = {}
        self.extra_arrays: dict[str, np.ndarray] = {}

    # ------------------------------------------------------------------ control
    def request_stop(self, reason: str) -> None:
        """Stop after the current step (called by callbacks and signal handlers)."""
        self._stop = True
        self.stop_reason = self.stop_reason or reason

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, X: np.ndarray, y: np.ndarray) -> dict[str, float]:
        """Mean cross-entropy, objective and accuracy of the model on one split.

        Parameters
        ----------
        X : ndarray (n, d)
        y : ndarray of int (n,)

        Returns
        -------
        dict
            ``{"loss": mean cross-entropy, "objective": optimised objective, "acc": accuracy}``.
        """
        return evaluate(self.model, X, y)

    def _evaluate_splits(self, splits: dict[str, ArrayPair], lr: float) -> dict[str, float]:
        spe = max(self.steps_per_epoch, 1)
        record: dict[str, float] = {
            "step": self.step,
            "epoch": self.step / spe,
            "lr": lr,
            "weight_norm": self.model.weight_norm(),
            "time": self.elapsed,
        }
        for name, (X, y) in splits.items():
            for key, value in evaluate(self.model, X, y).items():
                record[f"{name}_{key}"] = value
        self.last_eval_step = self.step
        for cb in self.callbacks:
            cb.on_evaluate(self, record)
        return record

    # ------------------------------------------------------------------ batches
    def _next_batch(self, X: np.ndarray, y: np.ndarray) -> ArrayPair:
        n, bs = X.shape[0], self.batch_size
        if self.pos == 0:
            if self.replacement:
                self.order = self.rng.integers(0, n, size=self.steps_per_epoch * bs)
            elif self.shuffle and bs < n:
                self.order = self.rng.permutation(n)
            else:
                self.order = None
        start = self.pos * bs
        if self.order is None:  # stored order: a view, no copy
            Xb, yb = X[start : start + bs], y[start : start + bs]
        else:  # gather the batch's rows with one take into preallocated buffers
            idx = self.order[start : start + bs]
            Xb = X.take(idx, axis=0, out=self._buf[: idx.size])
            yb = y.take(idx, out=self._ybuf[: idx.size])
        if self.batch_transform is not None:
            Xb = self.batch_transform(Xb, self.rng)
        return Xb, yb

    # ------------------------------------------------------------------ the loop
    def fit(
        self,
        train: ArrayPair,
        val: ArrayPair | None = None,
        test: ArrayPair | None = None,
        *,
        epochs: int | None = None,
        steps: int | None = None,
    ) -> History:
        """Train until ``epochs`` epochs or ``steps`` steps have been done in total.

        Both counts are totals since the start of the run, so calling ``fit`` again on a
        resumed trainer continues to the same end point.

        Parameters
        ----------
        train : (X (n, d), y (n,))
        val, test : (X, y), optional
            Evaluated at every evaluation, like ``train``.
        epochs : int, optional
        steps : int, optional

        Returns
        -------
        History
        """
        if epochs is None and steps is None:
            raise ConfigError("give epochs or steps to train for")
        X, y = self._check_pair("train", train)
        splits = {"train": (X, y)}
        for name, pair in (("val", val), ("test", test)):
            if pair is not None:
                splits[name] = self._check_pair(name, pair)
        n = X.shape[0]
        self.batch_size = resolve_batch_size(self.batch_spec, n)
        if self.replacement:
            self.steps_per_epoch = math.ceil(n / self.batch_size)
        elif self.drop_last:
            self.steps_per_epoch = max(1, n // self.batch_size)
        else:
            self.steps_per_epoch = math.ceil(n / self.batch_size)
        eval_steps = resolve_eval_every(self.eval_spec, self.steps_per_epoch)
        targets = [t for t in (epochs and epochs * self.steps_per_epoch, steps) if t is not None]
        self.total_steps = min(targets)
        self._buf = np.empty((self.batch_size, X.shape[1]), dtype=X.dtype)
        self._ybuf = np.empty(self.batch_size, dtype=y.dtype)
        loss_and_grad = self._gradient_function_for(self.batch_size)
        self._stop, self.stop_reason, self.diverged = False, None, False
        lr = self.schedule(self.step, self.epoch)

        for cb in self.callbacks:
            cb.on_train_begin(self)
        t0 = time.perf_counter() - self.elapsed
        # overflow in a diverging run is reported once, by the DivergenceError below
        errstate = np.errstate(over="ignore", invalid="ignore")
        errstate.__enter__()
        try:
            while self.step < self.total_steps and not self._stop:
                Xb, yb = self._next_batch(X, y)
                lr = self.schedule(self.step, self.epoch)
                loss, grads = loss_and_grad(Xb, yb)
                if not math.isfinite(loss):
                    self.diverged = True
                    raise DivergenceError(
                        f"loss became {loss} at step {self.step} (epoch {self.epoch}, lr {lr:g}); "
                        "lower the learning rate or the penalty"
                    )
                self.optimizer.step(self.model.params, grads, lr)
                self.step += 1
                self.pos += 1
                if self.pos >= self.steps_per_epoch:
                    self.pos, self.epoch = 0, self.epoch + 1
                self.elapsed = time.perf_counter() - t0
                for cb in self.callbacks:
                    cb.on_step_end(self, loss)
                if (self.step - self.eval_offset) % eval_steps == 0:
                    self._evaluate_splits(splits, lr)
            if self.stop_reason is None:
                self.stop_reason = (
                    f"finished {self.step} steps ({self.step / self.steps_per_epoch:g} epochs)"
                )
        finally:
            errstate.__exit__(None, None, None)
            self.elapsed = time.perf_counter() - t0
            for cb in self.callbacks:
                cb.on_train_end(self)
        return self.history

    def _gradient_function_for(
        self, batch_size: int
    ) -> Callable[[np.ndarray, np.ndarray], tuple[float, Any]]:
        """The model's gradient method this fit calls each step.

        Single-sample SGD asks for factored gradients (``loss_and_grad_factored``), which
        :class:`SGD` applies as one BLAS rank-1 update per weight matrix instead of writing
        out a ``(d, h)`` gradient and reading it back. That is the arithmetic of
        ``loss_and_grad`` + ``SGD.step`` to float rounding, so it is used only while neither
        has been replaced: a subclass or an instance that overrides ``loss_and_grad`` (to
        inspect batches, say) is called as is.
        """
        model, opt = self.model, self.optimizer
        if (
            batch_size == 1
            and "loss_and_grad" not in vars(model)
            and type(model).loss_and_grad is Model.loss_and_grad
            and type(opt).step is SGD.step
        ):
            return model.loss_and_grad_factored
        return model.loss_and_grad

    def _check_pair(self, name: str, pair: ArrayPair) -> ArrayPair:
        X, y = pair
        X = self.model.check_X(X)  # converted to the model's dtype once, here
        if not _all_finite(X):
            raise ShapeError(f"{name} features contain NaN or inf")
        return X, self.model.check_y(y, X.shape[0])

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Everything needed to resume bit-identically: arrays and JSON-able metadata."""
        from digitlab import __version__

        arrays = prefixed("model", self.model.params)
        arrays |= prefixed("optim", self.optimizer.state_dict())
        if self.order is not None:
            arrays["trainer/order"] = self.order
        cb_meta = []
        for i, cb in enumerate(self.callbacks):
            cb_arrays, meta = cb.state_dict()
            arrays |= prefixed(f"cb{i}", cb_arrays)
            cb_meta.append({"class": type(cb).__name__, "state": meta})
        arrays |= prefixed("extra", self.extra_arrays)
        meta = {
            "digitlab_version": __version__,
            "model": self.model.config(),
            "optimizer": self.optimizer.config(),
            "schedule": self.schedule.config(),
            "trainer": {
                "batch_size": self.batch_spec,
                "shuffle": self.shuffle,
                "drop_last": self.drop_last,
                "replacement": self.replacement,
                "eval_every": self.eval_spec,
            },
            "progress": {
                "step": self.step,
                "epoch": self.epoch,
                "pos": self.pos,
                "last_eval_step": self.last_eval_step,
                "elapsed": self.elapsed,
                "has_order": self.order is not None,
            },
            "rng": self.rng.bit_generator.state,
            "callbacks": cb_meta,
            "extra": self.extra_meta,
        }
        return arrays, meta

    def save(self, path: str | Path) -> Path:
        """Write a checkpoint (atomic; see :mod:`digitlab.checkpoint`)."""
        arrays, meta = self.state_dict()
        return save_checkpoint(path, arrays, meta)

    def load_state_dict(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        """Restore progress, parameters, optimiser, RNG and callback state from a checkpoint.

        The model, optimizer, schedule and callbacks are the ones this trainer was built with
        (the schedule may differ from the saved one: seed 003 changes it between stages).
        """
        params = split_prefixed(arrays, "model")
        if set(params) != set(self.model.params):
            raise CheckpointError(
                f"checkpoint parameters {sorted(params)} do not fit this model "
                f"{sorted(self.model.params)}"
            )
        for k, v in params.items():
            if v.shape != self.model.params[k].shape:
                raise CheckpointError(
                    f"checkpoint parameter {k} has shape {v.shape}, "
                    f"model expects {self.model.params[k].shape}"
                )
            self.model.params[k][...] = v
        self.optimizer.load_state_dict(split_prefixed(arrays, "optim"))
        prog = meta["progress"]
        self.step, self.epoch, self.pos = int(prog["step"]), int(prog["epoch"]), int(prog["pos"])
        self.last_eval_step = int(prog["last_eval_step"])
        self.elapsed = float(prog["elapsed"])
        self.order = arrays["trainer/order"] if prog["has_order"] else None
        self.rng.bit_generator.state = meta["rng"]
        saved = meta.get("callbacks", [])
        for i, cb in enumerate(self.callbacks):
            same = [j for j, s in enumerate(saved) if s["class"] == type(cb).__name__]
            if same:
                j = i if i in same else same[0]
                cb.load_state_dict(split_prefixed(arrays, f"cb{j}"), saved[j]["state"])
        self.extra_meta = dict(meta.get("extra", {}))
        self.extra_arrays = split_prefixed(arrays, "extra")


def _all_finite(X: np.ndarray) -> bool:
    """Whether ``X (n, d)`` holds no NaN or inf, without an ``(n, d)`` boolean temporary.

    NaN and inf survive a row sum, so ``X @ 1`` (one BLAS pass) settles the common case; a
    non-finite sum is confirmed block by block, as finite values can overflow when summed.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        row_sums = X @ np.ones(X.shape[1], dtype=X.dtype)
    if X.size == 0 or np.isfinite(row_sums).all():
        return True
    return all(
        np.isfinite(X[start : start + EVAL_CHUNK]).all()
        for start in range(0, X.shape[0], EVAL_CHUNK)
    )


def evaluate(model: Model, X: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Mean cross-entropy, objective and accuracy of ``model`` on ``(X (n, d), y (n,))``.

    Runs in chunks of rows so memory stays bounded on large splits. ``objective`` is what the
    model optimises: the cross-entropy with the model's reduction (mean or sum) plus penalty.
    """
    n = X.shape[0]
    loss_sum, correct = 0.0, 0
    for start in range(0, n, EVAL_CHUNK):
        s, c = model.loss_sum_and_correct(
            X[start : start + EVAL_CHUNK], y[start : start + EVAL_CHUNK]
        )
        loss_sum, correct = loss_sum + s, correct + c
    data = loss_sum if model.reduction == "sum" else loss_sum / n
    return {"loss": loss_sum / n, "objective": data + model.penalty(), "acc": correct / n}


@contextlib.contextmanager
def graceful_interrupts(trainer: Trainer) -> Iterator[None]:
    """Turn SIGINT (Ctrl-C) and SIGTERM into a clean stop after the current step.

    The trainer's callbacks then run their end-of-training hooks, so a
    :class:`~digitlab.train.Checkpoint` callback saves a resumable checkpoint.
    Only usable from the main thread.
    """

    def handler(signum: int, frame: Any) -> None:
        trainer.interrupted = True
        trainer.request_stop(f"interrupted by {signal.Signals(signum).name}")

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
