"""One trainer for every model: batching, shuffling, evaluation schedule, callbacks, resume.

Batching (``batch_size``): ``"full"`` (one step per epoch); an int ``m`` (mini-batches of ``m``
rows, the last one smaller unless ``drop_last``); a float ``f`` in (0, 1) (``round(f * n)``
rows); ``1`` with ``replacement=True`` (single-sample SGD drawing rows with replacement; an
epoch is ``n`` draws). Evaluation (``eval_every``): ``"epoch"``, a fraction of an epoch, or a
number of steps. Each evaluation records the step, epoch, learning rate, weight norm and, for
every split, ``<split>_loss`` (mean cross-entropy), ``<split>_objective`` (what is optimised:
cross-entropy with the model's reduction plus the penalty) and ``<split>_acc``, and the columns
the callbacks' :meth:`~digitlab.train.Callback.measure` return.

:meth:`Trainer.fit` reads top to bottom: draw a batch, compute the gradient, apply it. Lock-step
training (:func:`digitlab.train.fit_together`) drives the same public steps.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from digitlab import kernels
from digitlab.checkpoint import save_checkpoint
from digitlab.errors import ConfigError, DivergenceError, ShapeError
from digitlab.models.base import Model, as_generator
from digitlab.models.functional import LinearGrad
from digitlab.optim.base import Optimizer
from digitlab.optim.schedules import Constant, Schedule
from digitlab.optim.sgd import SGD
from digitlab.runfiles import evaluation_record
from digitlab.threads import ThreadPolicy
from digitlab.train import state
from digitlab.train.batching import (
    ArrayPair,
    Batches,
    BatchSpec,
    BlockedFullBatch,
    EvalSpec,
    all_finite,
    check_pair,
    gradient_method,
    is_source,
    resolve_batch_size,
    resolve_eval_every,
    steps_per_epoch,
)
from digitlab.train.callbacks import Callback, History, Step
from digitlab.train.evaluation import evaluate, evaluate_splits_once, evaluate_together

Splits = dict[str, ArrayPair]
Transform = Callable[[np.ndarray, np.random.Generator], np.ndarray]


class Trainer:
    """Gradient-descent training loop shared by all models.

    ``eval_train = False`` (an attribute) leaves the training split out of the evaluations: a
    pass over every training row that a caller monitoring the batches' own losses can skip.

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
        Draw each batch's rows independently with replacement (single-sample SGD).
    eval_every : "epoch", float or int
    callbacks : sequence of Callback
    batch_transform : callable, optional
        ``f(X_batch, rng) -> X_batch`` applied to each training batch (augmentation).
    rng : Generator or int or None
        Source of every random draw of the run (order, sampling, augmentation).
    shuffle_rng : numpy.random.RandomState, optional
        If given, each epoch's order is ``shuffle_rng.permutation(n)`` instead of ``rng``'s:
        numpy's legacy stream, the order that code seeding ``np.random.seed(s)`` and calling
        ``np.random.shuffle`` draws (the one use of ``RandomState``: to reproduce such code).
    eval_offset : int
        Evaluations fall on steps ``eval_offset + k * eval_steps``.
    """

    eval_train = True

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
        batch_transform: Transform | None = None,
        rng: np.random.Generator | int | None = None,
        shuffle_rng: np.random.RandomState | None = None,
        eval_offset: int = 0,
    ) -> None:
        resolve_batch_size(batch_size, 1)  # validate early
        resolve_eval_every(eval_every, 1)
        self.model = model
        self.schedule = Constant(float(schedule)) if isinstance(schedule, int | float) else schedule
        self.optimizer: Optimizer = optimizer if optimizer is not None else SGD()
        self.batch_spec, self.eval_spec, self.eval_offset = batch_size, eval_every, eval_offset
        self.shuffle, self.drop_last, self.replacement = shuffle, drop_last, replacement
        self.history = next((c for c in callbacks if isinstance(c, History)), None) or History()
        self.callbacks = [self.history, *(c for c in callbacks if c is not self.history)]
        self.batch_transform = batch_transform
        self.rng, self.shuffle_rng = as_generator(rng), shuffle_rng
        # progress, all saved in checkpoints: optimiser steps taken, completed epochs, batches
        # taken in this epoch, this epoch's row order (None: stored order)
        self.step = self.epoch = self.pos = 0
        self.order: np.ndarray | None = None
        self.last_eval_step, self.elapsed = -1, 0.0
        # how many fits shared this fit's clock (fit_together's lock-step; 1 when alone)
        self.trained_with = 1
        self.extra_meta: dict[str, Any] = {}  # saved in checkpoints as they are
        self.extra_arrays: dict[str, np.ndarray] = {}
        # the current fit
        self.splits: Splits = {}
        self.total_steps = self.steps_per_epoch = self.batch_size = self.batch_rows = 0
        self.threads = ThreadPolicy(0)  # the BLAS threads of the current fit (threads)
        self.lr, self.lr_scale = 0.0, 1.0  # lr_scale: times the schedule's (reduce-on-plateau)
        self.diverged = self.interrupted = self._stop = False
        #: the last fit ended by an exception (Ctrl-C, a killed worker's signal, an error): its
        #: state may be half a step, so no checkpoint is written at its end
        self.aborted = False
        self.stop_reason: str | None = None
        self._weight: np.ndarray | None = None  # the training rows' weights
        self._mean_weight, self._eval_steps = 1.0, 1
        self._grad_fn: Callable[..., tuple[float, Any]] = model.loss_and_grad
        self._batches: Batches | None = None
        self._t0 = 0.0  # the clock's start, less the time of earlier fits

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

        Both counts are totals since the start of the run: ``fit`` again on a resumed trainer
        continues to the same end point.

        Parameters
        ----------
        train : (X (n, d) or BatchSource, y (n,))
        val, test : (X, y), optional
            Evaluated at every evaluation, like ``train``.
        epochs, steps : int, optional
        sample_weight : ndarray (n,), optional
            Weights of the training rows, gathered with each batch. A step of ``b`` rows
            follows ``sum_batch w_i l_i / (b * mean(w))`` (its penalty aside), an unbiased
            estimate of the weighted mean loss over all rows (equal to it full-batch). The
            ``train`` evaluations are weighted; ``val``/``test`` stay unweighted.
        """
        self.prepare(train, val, test, sample_weight)
        self.fit_prepared(self.end_step(epochs, steps))
        return self.history

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

        The counts, the schedule's position, the optimiser state, the RNG and the history carry
        on; ``train`` may be new data (``partial_fit``), an epoch then being ``ceil(n / batch)``
        steps of it. ``callbacks`` are used for this call only, after the trainer's own.
        """
        if (epochs is None) == (steps is None):
            raise ConfigError("give either epochs or steps to continue training for")
        more = epochs if epochs is not None else steps
        if isinstance(more, bool) or not isinstance(more, int | np.integer) or more < 0:
            raise ConfigError(f"epochs/steps to continue for must be an int >= 0, got {more!r}")
        own = self.callbacks
        self.callbacks = [*own, *(c for c in callbacks if c not in own)]
        try:
            self.prepare(train, val, test, sample_weight)
            spe = self.steps_per_epoch if epochs is not None else 1
            self.fit_prepared(self.step + int(more) * spe)
        finally:
            self.callbacks = own
        return self.history

    def fit_prepared(self, total_steps: int) -> None:
        """The loop of :meth:`fit` on the splits of the last :meth:`prepare`."""
        with self.running(total_steps):
            while self.active:
                X, y, w = self.next_batch()
                loss, grads = self.gradient(X, y, w)
                self.apply(loss, grads, X, y)

    # ------------------------------------------------------------------ the steps
    def prepare(
        self,
        train: ArrayPair,
        val: ArrayPair | None = None,
        test: ArrayPair | None = None,
        sample_weight: np.ndarray | None = None,
    ) -> Splits:
        """Check the splits and set this fit's batch size, steps per epoch and buffers (a
        :class:`BatchSource` trained full-batch becomes one feature array here, once)."""
        X, y = check_pair(self.model, "train", train)
        self._weight = self.model.check_weight(sample_weight, X.shape[0])
        if self._weight is not None:
            self._mean_weight = float(np.add.reduce(self._weight, dtype=np.float64)) / X.shape[0]
            if not self._mean_weight > 0:
                raise ShapeError("sample_weight sums to 0: no row would count")
        n = X.shape[0]
        self.batch_size = resolve_batch_size(self.batch_spec, n)
        if is_source(X) and self.batch_size >= n and not self.replacement:
            X = X.take(slice(None))  # full batch: the batch is the whole set, made once
        self.splits = {"train": (X, y)}
        for name, pair in (("val", val), ("test", test)):
            if pair is not None:
                self.splits[name] = check_pair(self.model, name, pair)
        self.steps_per_epoch = steps_per_epoch(
            self.batch_size, n, drop_last=self.drop_last, replacement=self.replacement
        )
        state.check_position(self, n)
        self._batches = Batches(X, y, self._weight, self.batch_size)
        self._grad_fn = self.gradient_function(self.batch_size)
        if self._weight is None and self._blocked_full_batch(X):
            self._grad_fn = BlockedFullBatch(self.model, X, self._grad_fn)
        return self.splits

    def _blocked_full_batch(self, X: Any) -> bool:
        """Whether this fit's full batch of a linear model may skip its zero entries
        (:class:`~digitlab.train.batching.BlockedFullBatch`): one array of rows in the stored
        order each step, no transform of the batch, the arithmetic of digitlab's own linear
        classes (:attr:`~digitlab.models.linear.LinearModel.own_arithmetic`; of any width:
        1,000 float64 outputs on 18,000 MNIST rows, 0.76 -> 0.56 s a step)."""
        from digitlab.models.linear import LinearModel

        full = self.batch_size >= X.shape[0] and not self.replacement and not is_source(X)
        linear = isinstance(self.model, LinearModel) and self.model.own_arithmetic
        return full and self.batch_transform is None and linear

    def end_step(self, epochs: int | None, steps: int | None) -> int:
        """The total step count at which a fit for ``epochs`` or ``steps`` ends (the earlier of
        the two), once :meth:`prepare` has set the steps per epoch."""
        if epochs is None and steps is None:
            raise ConfigError("give epochs or steps to train for")
        spe = self.steps_per_epoch
        return min(t for t in (epochs and epochs * spe, steps) if t is not None)

    @contextlib.contextmanager
    def running(self, total_steps: int) -> Iterator[None]:
        """The frame of a fit on the prepared splits: callbacks' begin and end, the clock, the
        BLAS threads, the floating-point error state, and on a normal end the parameters' check."""
        self._eval_steps = resolve_eval_every(self.eval_spec, self.steps_per_epoch)
        self.total_steps = total_steps
        self._stop, self.stop_reason, self.diverged, self.aborted = False, None, False, False
        for cb in self.callbacks:
            cb.on_train_begin(self)
        self.lr = self.schedule(self.step, self.epoch) * self.lr_scale
        self._t0 = time.perf_counter() - self.elapsed
        self.trained_with = 1  # fit_together sets its group's size after this
        # overflow in a diverging run is reported once, by the DivergenceError of apply
        errstate = np.seterr(over="ignore", invalid="ignore")
        found = kernels.resolved(self.model.dtype)  # by prepare, for batches of 2+ rows
        small_on_cores = found is not None and found.batch_parallel
        self.threads = ThreadPolicy.for_step(self.batch_size, self.model.params, small_on_cores)
        self.threads.start()
        try:
            yield
            self.require_finite("lower the learning rate or the penalty")  # the last update
            if self.stop_reason is None:
                epochs = self.step / self.steps_per_epoch
                self.stop_reason = f"finished {self.step} steps ({epochs:g} epochs)"
        except BaseException:
            self.aborted = True
            raise
        finally:
            np.seterr(**errstate)
            self.threads.stop()
            self.elapsed = time.perf_counter() - self._t0
            for cb in self.callbacks:
                cb.on_train_end(self)

    @property
    def active(self) -> bool:
        """Whether the current fit has steps left and no stop was requested."""
        return self.step < self.total_steps and not self._stop

    def next_batch(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """The next batch's rows ``(X (b, d), y (b,), weights (b,) or None)``."""
        if self.pos == 0:
            self.order = self._draw_order(self.splits["train"][0].shape[0])
        X, y, w = self._batches.take(self.order, self.pos * self.batch_size, self.batch_size)
        if self.batch_transform is not None:
            X = self.batch_transform(X, self.rng)
        return X, y, w

    def gradient(
        self, X: np.ndarray, y: np.ndarray, weight: np.ndarray | None = None
    ) -> tuple[float, Any]:
        """The batch's objective and gradient, by the model method chosen for this fit (a
        model that draws in training, dropout, draws from the run's generator)."""
        kw: dict[str, Any] = {"rng": self.rng} if self.model.uses_rng else {}
        if weight is None:
            return self._grad_fn(X, y, **kw)
        total = weight.shape[0] * self._mean_weight  # an unbiased estimate of the weighted mean
        return self._grad_fn(X, y, sample_weight=weight, weight_total=total, **kw)

    def apply(self, loss: float, grads: dict[str, Any], X: np.ndarray, y: np.ndarray) -> None:
        """One step from the batch ``X (b, d), y (b,)``, its loss and gradient: update, count,
        evaluate (with the callbacks' measures of this step), callbacks."""
        self.finish_step(loss, self.update(loss, grads, X, y))

    def update(
        self, loss: float, grads: dict[str, Any], X: np.ndarray, y: np.ndarray
    ) -> Step | None:
        """The first half of :meth:`apply`: the update and the counters; returns the
        :class:`Step` to evaluate at (None when this step has no evaluation)."""
        lr = self.lr = self.schedule(self.step, self.epoch) * self.lr_scale
        if not math.isfinite(loss):
            self.diverged = True
            raise DivergenceError(
                f"loss became {loss} at step {self.step} (epoch {self.epoch}, lr {lr:g}); "
                "lower the learning rate or the penalty"
            )
        evaluating = (self.step + 1 - self.eval_offset) % self._eval_steps == 0
        before = {k: v.copy() for k, v in self.model.params.items()} if evaluating else {}
        self.optimizer.step(self.model.params, grads, lr)
        self.step, self.pos, self.batch_rows = self.step + 1, self.pos + 1, X.shape[0]
        if self.pos >= self.steps_per_epoch:
            self.pos, self.epoch = 0, self.epoch + 1
        self.elapsed = time.perf_counter() - self._t0
        if not evaluating:
            return None
        if self._measures():
            # the measures get arrays: a factored gradient formed once, from the rows and the
            # weights it was computed at (its factors are intact until the next batch)
            grads = {
                k: g.dense(before[k]) if isinstance(g, LinearGrad) else g
                for k, g in grads.items()
            }
        return Step(X, y, loss, grads, lr, before)

    def finish_step(
        self, loss: float, step: Step | None, results: dict[str, dict[str, float]] | None = None
    ) -> None:
        """The second half of :meth:`apply`: the evaluation at ``step`` (``results`` per split
        when they were computed outside, by :func:`~digitlab.train.fit_together`), the
        callbacks, the thread policy."""
        # evaluate first, so that a checkpoint written at this step (on_step_end)
        # holds this step's evaluation and the stopping rule's state after it
        if step is not None:
            self.evaluate_splits(step, results)
        for cb in self.callbacks:
            cb.on_step_end(self, loss)
        self.threads.tick()

    def evaluated_splits(self) -> dict[str, tuple[Any, np.ndarray]]:
        """The splits an evaluation measures: validation and test, and train when
        ``eval_train``."""
        return {k: v for k, v in self.splits.items() if k != "train" or self.eval_train}

    def evaluate_splits(
        self, step: Step | None = None, results: dict[str, dict[str, float]] | None = None
    ) -> dict[str, float]:
        """Record one evaluation of every split (and the callbacks' measures of ``step``);
        ``results`` gives the splits' :func:`evaluate` dicts when they are known."""
        epoch = self.step / max(self.steps_per_epoch, 1)
        own = {"step": self.step, "epoch": epoch, "lr": self.lr, "time": self.elapsed}
        if results is None:
            results = evaluate_splits_once(self.evaluated_splits(), self._evaluate)
        record = evaluation_record(self.model, own, results)
        if step is not None:  # callbacks written before the measure hook have none
            for measure in self._measures():
                record |= measure(self, step)
        self.last_eval_step = self.step
        for cb in self.callbacks:
            cb.on_evaluate(self, record)
        return record

    def _measures(self) -> list[Callable[..., dict[str, float]]]:
        """The callbacks' ``measure(trainer, step)`` hooks (callbacks written before the hook
        have none)."""
        return [m for m in (getattr(cb, "measure", None) for cb in self.callbacks) if m]

    def _evaluate(self, name: str, X: Any, y: np.ndarray) -> dict[str, float]:
        """:func:`evaluate` of one split; the training rows from the fit's row blocks when the
        full-batch gradient laid them out (the products skip the zero entries)."""
        fn = self._grad_fn
        if name == "train" and isinstance(fn, BlockedFullBatch) and fn.blocks and X is fn.X:
            return evaluate_together([self.model], fn.blocks, y)[0]
        return evaluate(self.model, X, y, self._weight if name == "train" else None)

    # ------------------------------------------------------------------ control and checks
    def request_stop(self, reason: str) -> None:
        """Stop after the current step (called by callbacks and signal handlers)."""
        self._stop = True
        self.stop_reason = self.stop_reason or reason

    def require_finite(self, consequence: str) -> None:
        """Raise DivergenceError (the run marked diverged) if a parameter is not finite."""
        params = self.model.params
        bad = [k for k, v in params.items() if not all_finite(v.reshape(v.shape[0], -1))]
        if bad:
            self.diverged = True
            raise DivergenceError(
                f"parameters {', '.join(bad)} became NaN or infinite at step {self.step} "
                f"(epoch {self.epoch}, lr {self.lr:g}); {consequence}"
            )

    def _draw_order(self, n: int) -> np.ndarray | None:
        """This epoch's row order (None: the stored order)."""
        if self.replacement:
            return self.rng.integers(0, n, size=self.steps_per_epoch * self.batch_size)
        if self.shuffle and self.batch_size < n:
            draw = self.rng if self.shuffle_rng is None else self.shuffle_rng
            return draw.permutation(n)
        return None

    def gradient_function(self, batch_size: int) -> Callable[..., tuple[float, Any]]:
        """The model's gradient method for batches of ``batch_size`` rows (see
        :func:`~digitlab.train.batching.gradient_method`)."""
        return gradient_method(self.model, self.optimizer, batch_size)

    def release_data(self) -> None:
        """Drop the references to the last fit's rows and batch buffers (the next fit prepares
        its own): a trainer kept after training holds its model and run state only."""
        self.splits, self._batches, self._weight = {}, None, None
        self._grad_fn = self.model.loss_and_grad  # a BlockedFullBatch holds the rows

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Everything needed to resume bit-identically: arrays and JSON-able metadata."""
        return state.trainer_state(self)

    def load_state_dict(
        self, arrays: dict[str, np.ndarray], meta: dict[str, Any], *, restart_missing: bool = False
    ) -> None:
        """Restore what :meth:`state_dict` saved (see :func:`state.restore_trainer`)."""
        state.restore_trainer(self, arrays, meta, restart_missing)

    def save(self, path: str | Path) -> Path:
        """Write a checkpoint (atomic; see :mod:`digitlab.checkpoint`)."""
        return save_checkpoint(path, *self.state_dict())
