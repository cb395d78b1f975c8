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

Training and evaluation data are feature arrays ``(n, d)`` or a :class:`BatchSource` (such as
:class:`~digitlab.data.rows.ImageRows`: uint8 images turned into features batch by batch), so
that only a batch of float rows exists at a time. A full-batch fit turns a source into one
feature array for the fit (that batch is the whole set anyway).
"""

from __future__ import annotations

import contextlib
import functools
import math
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from digitlab.checkpoint import prefixed, save_checkpoint, split_prefixed
from digitlab.errors import CheckpointError, ConfigError, DivergenceError, ShapeError
from digitlab.models.base import Model, as_generator
from digitlab.optim.base import Optimizer
from digitlab.optim.schedules import Constant, Schedule
from digitlab.optim.sgd import SGD
from digitlab.runfiles import evaluation_record
from digitlab.train.callbacks import Callback, History

BatchSpec = int | float | str
EvalSpec = int | float | str
EVAL_CHUNK = 16384
#: Rows per block of a large batch's gradient (:meth:`Model.loss_and_grad`'s ``chunk_rows``):
#: a block of features is still in cache when the gradient's product reads it again.
CHUNK_ROWS = 1024


@runtime_checkable
class BatchSource(Protocol):
    """Rows of features made on demand (e.g. :class:`~digitlab.data.rows.ImageRows`).

    ``shape`` is ``(n, d)`` and ``dtype`` the float dtype of the rows handed out.
    """

    shape: tuple[int, int]
    dtype: np.dtype

    def __len__(self) -> int: ...

    def take(self, index: slice | np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Rows ``index`` (a slice or int positions (b,)) as ``(b, d)``, into ``out[:b]``."""
        ...

    def chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        """``(start, rows (c, d))`` over all rows, in order, in bounded chunks."""
        ...

    def astype(self, dtype: Any) -> BatchSource:
        """The same rows handed out in ``dtype``."""
        ...


Rows = np.ndarray | BatchSource
ArrayPair = tuple[Rows, np.ndarray]


def is_source(X: object) -> bool:
    """Whether ``X`` is a :class:`BatchSource` rather than an array."""
    return not isinstance(X, np.ndarray) and isinstance(X, BatchSource)


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
    optimizer : Optimizer, optional
        Update rule (plain gradient descent, :class:`~digitlab.optim.SGD`, when None).
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
    shuffle_rng : numpy.random.RandomState, optional
        If given, each epoch's order is ``shuffle_rng.permutation(n)`` instead of ``rng``'s:
        numpy's legacy stream, the order a source's own code drew with ``np.random.seed(s)``
        then ``np.random.shuffle`` (the one use of ``RandomState``: to reproduce such code).
    """

    def __init__(
        self,
        model: Model,
        *,
        optimizer: Optimizer | None = None,
        schedule: Schedule | float = 0.01,
        batch_size: BatchSpec = "full",
        shuffle: bool = True,
        drop_last: bool = False,
        replacement: bool = False,
        eval_every: EvalSpec = "epoch",
        callbacks: Sequence[Callback] = (),
        batch_transform: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None,
        rng: np.random.Generator | int | None = None,
        shuffle_rng: np.random.RandomState | None = None,
    ) -> None:
        self.model = model
        self.shuffle_rng = shuffle_rng
        self.optimizer: Optimizer = optimizer if optimizer is not None else SGD()
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
        self.batch_rows = 0  # rows in the latest step's batch
        self._weight: np.ndarray | None = None  # this fit's training-row weights
        self._source = False  # whether this fit's training rows are a BatchSource
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
        state = {"step": self.step, "epoch": self.step / spe, "lr": lr, "time": self.elapsed}
        results = {
            name: evaluate(self.model, X, y, self._weight if name == "train" else None)
            for name, (X, y) in splits.items()
        }
        record = evaluation_record(self.model, state, results)
        self.last_eval_step = self.step
        for cb in self.callbacks:
            cb.on_evaluate(self, record)
        return record

    # ------------------------------------------------------------------ batches
    def _next_batch(
        self, X: np.ndarray, y: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """The next batch's rows ``(X (b, d), y (b,), weights (b,) or None)``."""
        n, bs = X.shape[0], self.batch_size
        source = self._source
        if self.pos == 0:
            if self.replacement:
                self.order = self.rng.integers(0, n, size=self.steps_per_epoch * bs)
            elif self.shuffle and bs < n:
                draw = self.rng if self.shuffle_rng is None else self.shuffle_rng
                self.order = draw.permutation(n)
            else:
                self.order = None
        start = self.pos * bs
        w = self._weight
        if self.order is None:  # stored order: a view, no copy (a source converts the rows)
            rows = slice(start, start + bs)
            Xb = X.take(rows, out=self._buf) if source else X[rows]
            yb, wb = y[rows], None if w is None else w[rows]
        else:  # gather the batch's rows with one take into preallocated buffers
            idx = self.order[start : start + bs]
            if source:
                Xb = X.take(idx, out=self._buf)
            else:
                Xb = X.take(idx, axis=0, out=self._buf[: idx.size])
            yb = y.take(idx, out=self._ybuf[: idx.size])
            wb = None if w is None else w.take(idx, out=self._wbuf[: idx.size])
        if self.batch_transform is not None:
            Xb = self.batch_transform(Xb, self.rng)
        return Xb, yb, wb

    # ------------------------------------------------------------------ the loop
    def fit(
        self,
        train: ArrayPair,
        val: ArrayPair | None = None,
        test: ArrayPair | None = None,
        *,
        epochs: int | None = None,
        steps: int | None = None,
        sample_weight: np.ndarray | None = None,
    ) -> History:
        """Train until ``epochs`` epochs or ``steps`` steps have been done in total.

        Both counts are totals since the start of the run, so calling ``fit`` again on a
        resumed trainer continues to the same end point.

        Parameters
        ----------
        train : (X (n, d) or BatchSource, y (n,))
        val, test : (X, y), optional
            Evaluated at every evaluation, like ``train``.
        epochs : int, optional
        steps : int, optional
        sample_weight : ndarray (n,), optional
            Weights of the training rows, gathered with each batch. A step of ``b`` rows
            follows ``sum_batch w_i l_i / (b * mean(w))`` (its penalty aside), an unbiased
            estimate of the weighted mean loss over all rows (equal to it full-batch): a
            batch of light rows takes a small step. The ``train`` evaluations are weighted
            means and accuracies; ``val``/``test`` stay unweighted.

        Returns
        -------
        History
        """
        if epochs is None and steps is None:
            raise ConfigError("give epochs or steps to train for")
        splits = self._prepare(train, val, test, sample_weight)
        return self._loop(splits, self._end_step(epochs, steps))

    def _end_step(self, epochs: int | None, steps: int | None) -> int:
        """The total step count at which a fit for ``epochs`` or ``steps`` ends (the earlier
        of the two; at least one given), once :meth:`_prepare` set the steps per epoch."""
        spe = self.steps_per_epoch
        return min(t for t in (epochs and epochs * spe, steps) if t is not None)

    def continue_fit(
        self,
        train: ArrayPair,
        val: ArrayPair | None = None,
        test: ArrayPair | None = None,
        *,
        epochs: int | None = None,
        steps: int | None = None,
        callbacks: Sequence[Callback] = (),
        sample_weight: np.ndarray | None = None,
    ) -> History:
        """Train ``epochs`` more epochs (or ``steps`` more steps) from where this trainer is.

        The step and epoch counts, the schedule's position, the optimiser state, the RNG and
        the history carry on; ``train`` may be new data (``partial_fit``), an epoch then
        being ``ceil(n / batch)`` steps of it.

        Parameters
        ----------
        train : (X (n, d), y (n,))
        val, test : (X, y), optional
        epochs : int, optional
            More epochs to train; give this or ``steps``.
        steps : int, optional
            More steps to train.
        callbacks : sequence of Callback
            Used for this call only (a stopping rule for one stage, say), after the
            trainer's own.
        sample_weight : ndarray (n,), optional
            Weights of the training rows, as for :meth:`fit`.

        Returns
        -------
        History
        """
        if (epochs is None) == (steps is None):
            raise ConfigError("give either epochs or steps to continue training for")
        more = epochs if epochs is not None else steps
        if isinstance(more, bool) or not isinstance(more, int | np.integer) or more < 0:
            raise ConfigError(f"epochs/steps to continue for must be an int >= 0, got {more!r}")
        splits = self._prepare(train, val, test, sample_weight)
        total = self.step + (int(more) * self.steps_per_epoch if epochs is not None else int(more))
        own = self.callbacks
        self.callbacks = [*own, *(c for c in callbacks if c not in own)]
        try:
            return self._loop(splits, total)
        finally:
            self.callbacks = own

    def _prepare(
        self,
        train: ArrayPair,
        val: ArrayPair | None,
        test: ArrayPair | None,
        sample_weight: np.ndarray | None = None,
    ) -> dict[str, ArrayPair]:
        """Checked splits; sets the batch size, steps per epoch, batch buffers and weights."""
        X, y = self._check_pair("train", train)
        self._weight = self.model.check_weight(sample_weight, X.shape[0])
        if self._weight is not None:
            self._mean_weight = float(np.add.reduce(self._weight, dtype=np.float64)) / X.shape[0]
            if not self._mean_weight > 0:
                raise ShapeError("sample_weight sums to 0: no row would count")
        splits = {"train": (X, y)}
        for name, pair in (("val", val), ("test", test)):
            if pair is not None:
                splits[name] = self._check_pair(name, pair)
        n = X.shape[0]
        self.batch_size = resolve_batch_size(self.batch_spec, n)
        if is_source(X) and self.batch_size >= n and not self.replacement:
            X = X.take(slice(None))  # full batch: the batch is the whole set, made once
            splits["train"] = (X, y)
        self._source = is_source(X)  # fixed for the fit; the protocol check costs ~10 us
        if self.drop_last and not self.replacement:
            self.steps_per_epoch = max(1, n // self.batch_size)
        else:
            self.steps_per_epoch = math.ceil(n / self.batch_size)
        self._check_resumed_position(n)
        self._buf = np.empty((self.batch_size, X.shape[1]), dtype=X.dtype)
        self._ybuf = np.empty(self.batch_size, dtype=y.dtype)
        if self._weight is not None:
            self._wbuf = np.empty(self.batch_size, dtype=self._weight.dtype)
        return splits

    def _check_resumed_position(self, n: int) -> None:
        """A loaded checkpoint's place in the epoch must fit this training set of ``n`` rows."""
        if not 0 <= self.pos <= self.steps_per_epoch:
            raise CheckpointError(
                f"checkpoint position {self.pos} is outside an epoch of "
                f"{self.steps_per_epoch} steps on this training set"
            )
        mid_epoch = self.pos > 0  # at an epoch's start the order is drawn anew
        if (
            mid_epoch
            and self.order is not None
            and not self.replacement
            and self.order.shape != (n,)
        ):
            raise CheckpointError(
                f"checkpoint shuffle order has {self.order.size} rows, the training set {n}"
            )

    def _loop(self, splits: dict[str, ArrayPair], total_steps: int) -> History:
        """Train until ``total_steps`` steps in all (or a stop request)."""
        X, y = splits["train"]
        loss_and_grad = self._gradient_function_for(self.batch_size)
        self._begin(splits, total_steps)
        try:
            while self.active:
                Xb, yb, wb = self._next_batch(X, y)
                self.batch_rows = Xb.shape[0]
                if wb is None:
                    loss, grads = loss_and_grad(Xb, yb)
                else:  # an unbiased estimate of the weighted mean over all rows
                    total = wb.shape[0] * self._mean_weight
                    loss, grads = loss_and_grad(Xb, yb, sample_weight=wb, weight_total=total)
                self._apply(loss, grads)
            self._finish()
        finally:
            self._end()
        return self.history

    @property
    def active(self) -> bool:
        """Whether the current fit has steps left and no stop was requested."""
        return self.step < self.total_steps and not self._stop

    def _begin(self, splits: dict[str, ArrayPair], total_steps: int) -> None:
        """Start a fit's loop: its end, evaluation period, stop state and callbacks."""
        self._splits = splits
        self._eval_steps = resolve_eval_every(self.eval_spec, self.steps_per_epoch)
        self.total_steps = total_steps
        self._stop, self.stop_reason, self.diverged = False, None, False
        self._lr = self.schedule(self.step, self.epoch)
        for cb in self.callbacks:
            cb.on_train_begin(self)
        self._t0 = time.perf_counter() - self.elapsed
        # overflow in a diverging run is reported once, by the DivergenceError in _apply
        self._errstate = np.seterr(over="ignore", invalid="ignore")

    def _apply(self, loss: float, grads: dict[str, Any]) -> None:
        """One step from the batch's loss and gradient: update, count, evaluate, callbacks."""
        lr = self._lr = self.schedule(self.step, self.epoch)
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
        self.elapsed = time.perf_counter() - self._t0
        # evaluate first, so that a checkpoint written at this step (on_step_end)
        # holds this step's evaluation and the stopping rule's state after it
        if (self.step - self.eval_offset) % self._eval_steps == 0:
            self._evaluate_splits(self._splits, lr)
        for cb in self.callbacks:
            cb.on_step_end(self, loss)

    def _finish(self) -> None:
        """After the last step: the parameters' check and the stop reason."""
        self._check_finite_params(self._lr)  # the loss of the last step's result is never seen
        if self.stop_reason is None:
            self.stop_reason = (
                f"finished {self.step} steps ({self.step / self.steps_per_epoch:g} epochs)"
            )

    def _end(self) -> None:
        """Close the loop, finished or not: error state, time, ``on_train_end``."""
        np.seterr(**self._errstate)
        self.elapsed = time.perf_counter() - self._t0
        for cb in self.callbacks:
            cb.on_train_end(self)

    def nonfinite_params(self) -> list[str]:
        """Names of the model's parameters holding a NaN or an infinity."""
        return [
            k for k, v in self.model.params.items() if not _all_finite(v.reshape(v.shape[0], -1))
        ]

    def _check_finite_params(self, lr: float) -> None:
        """Raise DivergenceError (and mark the run diverged) if a parameter is not finite."""
        bad = self.nonfinite_params()
        if bad:
            self.diverged = True
            raise DivergenceError(
                f"parameters {', '.join(bad)} became NaN or infinite at step {self.step} "
                f"(epoch {self.epoch}, lr {lr:g}); lower the learning rate or the penalty"
            )

    def _gradient_function_for(
        self, batch_size: int
    ) -> Callable[[np.ndarray, np.ndarray], tuple[float, Any]]:
        """The model's gradient method this fit calls each step.

        Single-sample SGD asks for factored gradients (``loss_and_grad_factored``) when the
        optimiser declares ``supports_rank1`` (it applies them as one BLAS rank-1 update per
        weight matrix instead of writing out a ``(d, h)`` gradient and reading it back, the
        arithmetic of ``loss_and_grad`` + its array step to float rounding). A model whose
        ``loss_and_grad`` is replaced (a subclass or an instance attribute that inspects
        batches, say) is called as is. A batch of more than ``2 * CHUNK_ROWS`` rows (full-batch
        descent) is worked through in blocks of :data:`CHUNK_ROWS` rows.
        """
        model = self.model
        if (
            batch_size == 1
            and model.own_gradient
            and getattr(self.optimizer, "supports_rank1", False)
        ):
            return model.loss_and_grad_factored
        if batch_size > 2 * CHUNK_ROWS and model.own_gradient:
            return functools.partial(model.loss_and_grad, chunk_rows=CHUNK_ROWS)
        return model.loss_and_grad

    def _check_pair(self, name: str, pair: ArrayPair) -> ArrayPair:
        X, y = pair
        if is_source(X):  # rows made per batch, in the model's dtype
            if len(X.shape) != 2 or X.shape[1] != self.model.n_features:
                raise ShapeError(
                    f"{name} rows have shape {tuple(X.shape)}, this {self.model.kind} model "
                    f"needs (n, {self.model.n_features})"
                )
            X = X.astype(self.model.dtype)
            return X, self.model.check_y(y, len(X))
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
        if self.shuffle_rng is not None:
            _, keys, pos, has_gauss, gauss = self.shuffle_rng.get_state(legacy=True)
            meta["legacy_rng"] = {"keys": keys.tolist(), "pos": int(pos),
                                  "has_gauss": int(has_gauss), "gauss": float(gauss)}  # fmt: skip
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
        saved_name = meta.get("optimizer", {}).get("name", "sgd")
        if saved_name != self.optimizer.config()["name"]:
            raise CheckpointError(
                f"checkpoint was trained with optimizer {saved_name!r}, this run uses "
                f"{self.optimizer.config()['name']!r}"
            )
        state = split_prefixed(arrays, "optim")
        for key, value in state.items():  # a wrong shape would only fail mid-training
            param = self.model.params.get(key.rsplit("/", 1)[-1])
            expected = () if param is None else param.shape
            if np.shape(value) != expected:
                raise CheckpointError(
                    f"checkpoint optimizer state {key} has shape {np.shape(value)}, "
                    f"expected {expected}"
                )
        self.optimizer.load_state_dict(state)
        prog = meta["progress"]
        self.step, self.epoch, self.pos = int(prog["step"]), int(prog["epoch"]), int(prog["pos"])
        self.last_eval_step = int(prog["last_eval_step"])
        self.elapsed = float(prog["elapsed"])
        self.order = arrays["trainer/order"] if prog["has_order"] else None
        self.rng.bit_generator.state = meta["rng"]
        if self.shuffle_rng is not None:
            legacy = meta.get("legacy_rng")
            if not isinstance(legacy, dict):
                raise CheckpointError("checkpoint has no legacy shuffle state to resume from")
            keys = np.array(legacy["keys"], dtype=np.uint32)
            self.shuffle_rng.set_state(
                ("MT19937", keys, legacy["pos"], legacy["has_gauss"], legacy["gauss"])
            )
        saved = meta.get("callbacks", [])
        for i, cb in enumerate(self.callbacks):
            same = [j for j, s in enumerate(saved) if s["class"] == type(cb).__name__]
            if same:
                j = i if i in same else same[0]
                cb.load_state_dict(split_prefixed(arrays, f"cb{j}"), saved[j]["state"])
        self.extra_meta = dict(meta.get("extra", {}))
        self.extra_arrays = split_prefixed(arrays, "extra")


def fit_together(
    trainers: Sequence[Trainer],
    train: ArrayPair,
    val: ArrayPair | None = None,
    test: ArrayPair | None = None,
    *,
    epochs: int | None = None,
    steps: int | None = None,
) -> list[History]:
    """:meth:`Trainer.fit` of several trainers on the same data, in lock-step.

    For full-batch descent of linear models of one shape (the repeats of an experiment that
    differ only in their random start, say) each step's matrix products are shared
    (:func:`~digitlab.models.linear.stacked_loss_and_grad`): ``R`` fits cost little more than
    one. Every trainer keeps its own optimiser, schedule, evaluations, callbacks and stopping
    rule; one that stops leaves the others going. Trainers this does not apply to (mini-batches,
    shuffling, augmentation, other models, different positions) are fitted one after another.

    Parameters
    ----------
    trainers : sequence of Trainer
    train, val, test, epochs, steps
        As for :meth:`Trainer.fit` (no sample weights).

    Returns
    -------
    list of History
        One per trainer, in order.
    """
    from digitlab.models.linear import can_stack, stacked_loss_and_grad

    if len(trainers) < 2 or not can_stack([t.model for t in trainers]):
        return [t.fit(train, val, test, epochs=epochs, steps=steps) for t in trainers]
    if epochs is None and steps is None:
        raise ConfigError("give epochs or steps to train for")
    lead = trainers[0]
    splits = lead._prepare(train, val, test)  # a source becomes one feature array, once
    X, y = splits["train"]
    each = [splits]
    for t in trainers[1:]:
        each.append(t._prepare(splits["train"], splits.get("val"), splits.get("test")))
    state = {(t.batch_size, t.steps_per_epoch, t.step, t.pos) for t in trainers}
    full = lead.batch_size >= X.shape[0] and not lead.replacement and not lead._source
    if len(state) > 1 or not full or any(t.batch_transform is not None for t in trainers):
        return [t.fit(train, val, test, epochs=epochs, steps=steps) for t in trainers]
    total = lead._end_step(epochs, steps)
    begun: list[Trainer] = []
    try:
        for t, t_splits in zip(trainers, each, strict=True):
            t._begin(t_splits, total)
            begun.append(t)
            t.order, t.batch_rows = None, X.shape[0]  # the full batch in its stored order
        while running := [t for t in trainers if t.active]:
            results = stacked_loss_and_grad([t.model for t in running], X, y)
            for t, (loss, grads) in zip(running, results, strict=True):
                t._apply(loss, grads)
        for t in trainers:
            t._finish()
    finally:
        for t in reversed(begun):
            t._end()
    return [t.history for t in trainers]


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


def row_chunks(X: Rows) -> Iterator[tuple[int, np.ndarray]]:
    """``(start, rows)`` over ``X (n, d)`` in chunks (:data:`EVAL_CHUNK` rows for an array,
    the source's own chunks for a :class:`BatchSource`)."""
    if is_source(X):
        yield from X.chunks()
        return
    for start in range(0, X.shape[0], EVAL_CHUNK):
        yield start, X[start : start + EVAL_CHUNK]


def predict(model: Model, X: Rows) -> np.ndarray:
    """``model.predict`` over ``X (n, d)`` or a :class:`BatchSource`, chunk by chunk; int64 (n,)."""
    if not is_source(X):
        return model.predict(X)
    parts = [model.predict(rows) for _, rows in X.chunks()]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def evaluate(
    model: Model, X: Rows, y: np.ndarray, sample_weight: np.ndarray | None = None
) -> dict[str, float]:
    """Mean cross-entropy, objective and accuracy of ``model`` on ``(X (n, d), y (n,))``.

    ``X`` is a feature array or a :class:`BatchSource`. Runs in chunks of rows so memory stays
    bounded on large splits. ``objective`` is what the model optimises: the cross-entropy with
    the model's reduction (mean or sum) plus penalty. With ``sample_weight (n,)`` (total > 0)
    the means and the accuracy are weighted.
    """
    n = X.shape[0]
    loss_sum, correct = 0.0, 0
    for start, rows in row_chunks(X):
        chunk = slice(start, start + rows.shape[0])
        if sample_weight is None:
            s, c = model.loss_sum_and_correct(rows, y[chunk])
        else:
            s, c = model.loss_sum_and_correct(rows, y[chunk], sample_weight[chunk])
        loss_sum, correct = loss_sum + s, correct + c
    if sample_weight is not None:
        n = float(np.add.reduce(sample_weight, dtype=np.float64))
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
