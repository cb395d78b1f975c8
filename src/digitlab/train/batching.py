"""What the trainer reads rows from, how batch and evaluation specs resolve, and row checks.

Training and evaluation data are feature arrays ``(n, d)`` or a :class:`BatchSource` (such as
:class:`~digitlab.data.rows.ImageRows`: uint8 images turned into features batch by batch), so
that only a batch of float rows exists at a time.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator
from typing import Any, Protocol, runtime_checkable

import numpy as np

from digitlab import blas, kernels
from digitlab.errors import ConfigError, ShapeError
from digitlab.models.base import own_methods
from digitlab.optim.base import RULE_METHODS

BatchSpec = int | float | str
EvalSpec = int | float | str
#: Rows per chunk of an evaluation or a finiteness check.
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


def _check_number(spec: object, what: str) -> None:
    if isinstance(spec, bool) or not isinstance(spec, int | float | np.integer | np.floating):
        raise ConfigError(f"{what}, got {spec!r}")


def resolve_batch_size(spec: BatchSpec, n: int) -> int:
    """Rows per step for a batch spec (``"full"``, an int, or a float fraction) and ``n`` rows."""
    if spec in ("full", None):
        return n
    _check_number(spec, "batch size must be 'full', an int or a fraction")
    if isinstance(spec, float | np.floating):
        if not 0.0 < spec <= 1.0:
            raise ConfigError(f"batch fraction must be in (0, 1], got {spec}")
        return max(1, round(float(spec) * n))
    if spec < 1:
        raise ConfigError(f"batch size must be >= 1, got {spec}")
    return min(int(spec), n)


def steps_per_epoch(batch_size: int, n: int, *, drop_last: bool, replacement: bool) -> int:
    """Optimiser steps in an epoch of ``n`` rows in batches of ``batch_size`` (resolved)."""
    if drop_last and not replacement:
        return max(1, n // batch_size)
    return math.ceil(n / batch_size)


def resolve_eval_every(spec: EvalSpec, steps_per_epoch: int) -> int:
    """Steps between evaluations for ``"epoch"``, a float fraction of an epoch, or an int."""
    if spec == "epoch":
        return steps_per_epoch
    _check_number(spec, "eval_every must be 'epoch', a fraction or a step count")
    if isinstance(spec, float | np.floating):
        if not 0.0 < spec <= 1.0:
            raise ConfigError(f"eval_every as a fraction of an epoch must be in (0, 1], got {spec}")
        return max(1, int(steps_per_epoch * float(spec)))
    if spec < 1:
        raise ConfigError(f"eval_every must be >= 1 step, got {spec}")
    return int(spec)


def all_finite(X: np.ndarray) -> bool:
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


def check_pair(model: Any, name: str, pair: ArrayPair) -> ArrayPair:
    """A split ``(X (n, d), y (n,))`` checked against ``model`` (a
    :class:`~digitlab.models.Model`): an array converted to the model's dtype once, here, and
    free of NaN and inf; a :class:`BatchSource` set to hand out rows in that dtype."""
    X, y = pair
    if is_source(X):  # rows made per batch, in the model's dtype
        if len(X.shape) != 2 or X.shape[1] != model.n_features:
            raise ShapeError(
                f"{name} rows have shape {tuple(X.shape)}, this {model.kind} model "
                f"needs (n, {model.n_features})"
            )
        return X.astype(model.dtype), model.check_y(y, len(X))
    X = model.check_X(X)
    if not all_finite(X):
        raise ShapeError(f"{name} features contain NaN or inf")
    return X, model.check_y(y, X.shape[0])


class Batches:
    """The training rows of one fit and the preallocated buffers its batches are gathered into.

    Parameters
    ----------
    X : ndarray (n, d) or BatchSource
    y : ndarray of int (n,)
    weight : ndarray (n,) or None
        Row weights, gathered with each batch.
    batch_size : int
    """

    def __init__(self, X: Rows, y: np.ndarray, weight: np.ndarray | None, batch_size: int) -> None:
        self.X, self.y, self.weight = X, y, weight
        self.source = is_source(X)  # fixed for the fit; the protocol check costs ~10 us
        self.Xbuf = np.empty((batch_size, X.shape[1]), dtype=X.dtype)
        self.ybuf = np.empty(batch_size, dtype=y.dtype)
        self.wbuf = None if weight is None else np.empty(batch_size, dtype=weight.dtype)

    def take(
        self, order: np.ndarray | None, start: int, size: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Rows ``start:start + size`` of ``order`` (None: the stored order) as
        ``(X (b, d), y (b,), weights (b,) or None)``."""
        X, y, w = self.X, self.y, self.weight
        if order is None:  # stored order: a view, no copy (a source converts the rows)
            rows = slice(start, start + size)
            Xb = X.take(rows, out=self.Xbuf) if self.source else X[rows]
            return Xb, y[rows], None if w is None else w[rows]
        idx = order[start : start + size]  # one take each into the buffers
        if self.source:
            Xb = X.take(idx, out=self.Xbuf)
        else:
            Xb = X.take(idx, axis=0, out=self.Xbuf[: idx.size])
        yb = y.take(idx, out=self.ybuf[: idx.size])
        wb = None if w is None or self.wbuf is None else w.take(idx, out=self.wbuf[: idx.size])
        return Xb, yb, wb


def gradient_method(
    model: Any, optimizer: Any, batch_size: int
) -> Callable[..., tuple[float, Any]]:
    """``model``'s gradient method for batches of ``batch_size`` rows under ``optimizer``.

    Single-sample SGD asks for factored gradients (``loss_and_grad_factored``) when the
    optimiser declares ``supports_rank1`` (it applies them as one BLAS rank-1 update per
    weight matrix, the arithmetic of ``loss_and_grad`` + its array step to float rounding) and
    none of its rule's methods was replaced on the instance.
    Batches of up to ``blas.ONE_BLOCK_ROWS`` rows get factored gradients too
    (:class:`FactoredBatches`) when the optimiser writes them into its state in one BLAS call
    (``fuses_batch_gradients``: momentum SGD) and a weight matrix is wide enough for that
    (more than ``kernels.NARROW_COLUMNS`` columns). A model whose ``loss_and_grad`` is
    replaced is called as is. A batch of more than ``2 * CHUNK_ROWS`` rows is worked through
    in blocks of the rows that this host's kernel choices give (:mod:`digitlab.kernels`:
    1,024, or the whole batch at once); a batch of two or more rows resolves those choices,
    which also say how a narrow gradient is multiplied.
    """
    unpatched = own_methods(optimizer, type(optimizer), RULE_METHODS)  # on the instance
    if batch_size == 1 and model.own_gradient and optimizer.supports_rank1 and unpatched:
        return model.loss_and_grad_factored
    if batch_size > 1 and model.own_gradient:
        rows = kernels.choices(model.dtype).rows  # measured on this host (both layouts)
        if rows and batch_size > 2 * CHUNK_ROWS:
            return functools.partial(model.loss_and_grad, chunk_rows=rows)
        wide = any(model.params[k].shape[-1] > kernels.NARROW_COLUMNS for k in model.weights)
        # asked last: the first ask probes NumPy's BLAS (about 50 ms, once per process)
        small = batch_size <= blas.ONE_BLOCK_ROWS
        if wide and small and getattr(optimizer, "fuses_batch_gradients", False):
            return FactoredBatches(model)
    return model.loss_and_grad


class FactoredBatches:
    """``model.loss_and_grad_factored`` for batches of two or more rows, ``loss_and_grad`` for
    a batch of one (an epoch's last, say): a one-row factored gradient would be applied as a
    rank-1 update, whose rounding differs from the array step the other batches' rule
    reproduces bit for bit."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def __call__(self, X: np.ndarray, y: np.ndarray, **kw: Any) -> tuple[float, Any]:
        if np.shape(X)[0] > 1:
            return self.model.loss_and_grad_factored(X, y, **kw)
        return self.model.loss_and_grad(X, y, **kw)


class BlockedFullBatch:
    """The gradient of a linear model's full batch from the training rows laid out as
    :class:`~digitlab.models.linear.RowBlocks` (the products skip the zero entries, block by
    block: :func:`~digitlab.models.linear.stacked_loss_and_grad` with one model), built on the
    first call and kept for the fit. Falls back to ``fallback`` when the layout does not pay
    (dense features). The layout costs about six full-batch steps to build (60,000 MNIST rows:
    0.26 s against a 43 ms step) and saves a quarter to a half of each step (43 -> 32 ms with
    OpenBLAS's Haswell kernels, 61 -> 32 ms with its SandyBridge kernels; 2 threads). It is
    built for every fit, however short, so that a fit continued in pieces, or resumed from a
    checkpoint, computes what one uninterrupted fit does, bit for bit.

    Parameters
    ----------
    model : LinearModel
    X : ndarray (n, d)
        The fit's training features, in the model's dtype; every call is for these rows in
        their stored order.
    fallback : callable
        The model's gradient method otherwise (``(X, y) -> (loss, grads)``).
    """

    def __init__(self, model: Any, X: np.ndarray, fallback: Callable[..., Any]) -> None:
        self.model, self.X, self.fallback = model, X, fallback
        self.blocks: Any = None

    def __call__(self, X: np.ndarray, y: np.ndarray) -> tuple[float, Any]:
        from digitlab.models.linear import row_blocks, stacked_loss_and_grad

        if X.shape != self.X.shape:
            raise ShapeError(f"a full batch of {self.X.shape} rows was prepared, got {X.shape}")
        if self.blocks is None:
            self.blocks = row_blocks(self.X) or False
        if self.blocks is False:
            return self.fallback(X, y)
        return stacked_loss_and_grad([self.model], self.blocks, y)[0]
