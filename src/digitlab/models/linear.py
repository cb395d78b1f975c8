"""Logistic regression (two classes) and softmax regression (k classes)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
from scipy.special import expit

from digitlab.errors import ConfigError, ShapeError
from digitlab.models.base import (
    PARALLEL_BLOCK_MACS,
    Model,
    as_generator,
    config_size,
    init_weight,
    own_methods,
)
from digitlab.models.functional import (
    LinearGrad,
    binary_cross_entropy,
    flush_subnormal_,
    outer_sum,
    softmax_,
    softmax_cross_entropy,
    softmax_cross_entropy_,
)
from digitlab.threads import fit_threads, map_in_order


class LinearModel(Model):
    """Shared constructor and affine map ``z = X W + b`` of the two linear models."""

    convex = True
    image_weights = "W"

    def __init__(
        self,
        n_features: int,
        n_out: int,
        *,
        init: str = "zeros",
        bias: bool = True,
        rng: np.random.Generator | int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.n_features = int(n_features)
        self.init = init
        self.bias = bool(bias)
        gen = as_generator(rng)
        self.params["W"] = init_weight((self.n_features, n_out), init, gen, self.dtype)
        if self.bias:
            self.params["b"] = np.zeros(n_out, dtype=self.dtype)

    @classmethod
    def _n_out(cls, config: dict[str, Any]) -> int:  # pragma: no cover - abstract
        """Columns of ``W`` for a config."""
        raise NotImplementedError

    @classmethod
    def state_shapes(cls, config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
        """``W (d, k)`` and, with ``bias``, ``b (k,)``."""
        bias = config.get("bias", True)
        if not isinstance(bias, bool):
            raise ConfigError(f"model bias must be true or false, got {bias!r}")
        k = cls._n_out(config)
        return {"W": (config_size(config, "n_features"), k)} | ({"b": (k,)} if bias else {})

    @property
    def parallel_blocks(self) -> bool:
        """A linear model's own gradient keeps no state: row blocks may run side by side."""
        own = type(self)._data_loss_and_grad is LinearModel._data_loss_and_grad
        return own and self.own_gradient

    #: The methods whose arithmetic :func:`stacked_loss_and_grad` and the row blocks compute
    #: in their own way; a model that overrides one of them is trained by its own methods.
    STACKED_ARITHMETIC = (
        "loss_and_grad",
        "loss_sum_and_correct",
        "logits",
        "_affine",
        "_data_loss_and_grad",
        "_logit_loss_and_grad",
        "_grouped_logit_loss_and_grad",
    )

    @property
    def own_arithmetic(self) -> bool:
        """Whether the loss, gradient and logits are exactly those of :class:`LogisticModel`
        or :class:`SoftmaxModel` (none of :data:`STACKED_ARITHMETIC` overridden by a subclass
        or replaced on the instance): what the stacked products and the row blocks compute."""
        base = SoftmaxModel if isinstance(self, SoftmaxModel) else LogisticModel
        return isinstance(self, base) and own_methods(self, base, self.STACKED_ARITHMETIC)

    def _affine(self, X: np.ndarray) -> np.ndarray:
        z = X @ self.params["W"]
        if self.bias:
            z += self.params["b"]
        return z

    def _data_loss_and_grad(
        self,
        X: np.ndarray,
        y: np.ndarray,
        scale: float,
        factored: bool = False,
        weight: np.ndarray | None = None,
        rng: np.random.Generator | None = None,
    ) -> tuple[float, dict[str, Any]]:
        # dE/dz from the logits, then dE/dW = X^T dE/dz and dE/db = sum of dE/dz
        loss_sum, g = self._logit_loss_and_grad(self._affine(X), y, scale, weight)
        return loss_sum, self._grads(X, g, factored)

    def _logit_loss_and_grad(
        self, z: np.ndarray, y: np.ndarray, scale: float, weight: np.ndarray | None = None
    ) -> tuple[float, np.ndarray]:  # pragma: no cover - abstract
        """Summed cross-entropy of the logits ``z (n, k)`` and ``scale`` times its gradient
        ``dL/dz (n, k)``, written into ``z``."""
        raise NotImplementedError

    def _grouped_logit_loss_and_grad(
        self, z: np.ndarray, y: np.ndarray, scale: float
    ) -> np.ndarray:
        """:meth:`_logit_loss_and_grad` of ``R`` models' logits, class-major ``z (R, k, n)``.

        Returns the summed cross-entropy of each model, float64 ``(R,)``; the gradients are
        written into ``z``.
        """
        losses = np.zeros(z.shape[0])
        for r in range(z.shape[0]):
            block = z[r].T  # (n, k), a view
            losses[r], g = self._logit_loss_and_grad(block, y, scale)
            if g is not block:  # the gradient is meant to be written in place
                block[...] = g
        return losses

    def _grads(self, X: np.ndarray, g: np.ndarray, factored: bool) -> dict[str, Any]:
        """Parameter gradients from the logit gradient ``g (n, k)``: dW = X^T g, db = sum g."""
        grads: dict[str, Any] = {"W": LinearGrad(X, g) if factored else outer_sum(X, g)}
        if self.bias:
            grads["b"] = np.add.reduce(g, axis=0)  # sum over rows
        return grads

    def config(self) -> dict[str, Any]:
        return super().config() | {"init": self.init, "bias": self.bias}


class LogisticModel(LinearModel):
    """Binary logistic regression: ``P(y=1 | x) = sigmoid(x W + b)``.

    Parameters
    ----------
    n_features : int
        ``d``; ``W`` has shape (d, 1) and ``b`` shape (1,).
    init : {"zeros", "normal", "fan_in", "uniform"}
        Weight initialisation (biases start at zero).
    bias : bool
        Whether the model has ``b``; set False when ``X`` carries an explicit bias column.
    rng : Generator or int or None
        Source of the initial weights.
    **kwargs
        ``l1``, ``l2``, ``reduction``, ``regularize_bias``, ``dtype`` (see :class:`Model`).
    """

    kind = "logistic"
    image_columns = "pair"

    @classmethod
    def from_settings(
        cls, settings: Any, n_features: int, n_classes: int, rng: np.random.Generator
    ) -> LogisticModel:
        """Two classes whatever ``n_classes`` says; a bias vector unless ``bias_column``."""
        kw = cls.settings_kwargs(settings)
        return cls(n_features, bias=not settings.bias_column, rng=rng, **kw)

    @classmethod
    def _n_out(cls, config: dict[str, Any]) -> int:
        return 1

    def __init__(self, n_features: int, **kwargs: Any) -> None:
        super().__init__(n_features, 1, **kwargs)
        self.n_classes = 2

    def logits(self, X: np.ndarray) -> np.ndarray:
        """``z = X W + b``, shape (n,)."""
        return self._affine(self.check_X(X))[:, 0]

    def forward(self, X: np.ndarray) -> np.ndarray:
        """``P(y=1 | x)`` for each row, shape (n,)."""
        return expit(self.logits(X))

    def _data_loss_sum(self, X: np.ndarray, y: np.ndarray, weight: Any = None, *_: Any) -> float:
        return binary_cross_entropy(self._affine(X)[:, 0], y, weight)

    def _logit_loss_and_grad(
        self, z: np.ndarray, y: np.ndarray, scale: float, weight: np.ndarray | None = None
    ) -> tuple[float, np.ndarray]:
        loss_sum = binary_cross_entropy(z[:, 0], y, weight)
        # dE/dz = sigmoid(z) - t, the report's (y^n - t^n)
        g = expit(z, out=z)
        g[:, 0] -= y
        if weight is not None:
            g[:, 0] *= weight * scale
        elif scale != 1.0:
            g *= scale
        return loss_sum, g


class SoftmaxModel(LinearModel):
    """Softmax (multinomial logistic) regression: ``P(y | x) = softmax(x W + b)``.

    Parameters
    ----------
    n_features : int
        ``d``.
    n_classes : int
        ``k``; ``W`` has shape (d, k) and ``b`` shape (k,).
    **kwargs
        ``init``, ``bias``, ``rng`` as for :class:`LogisticModel`, and the :class:`Model`
        options.
    """

    kind = "softmax"
    image_columns = "class"

    @classmethod
    def from_settings(
        cls, settings: Any, n_features: int, n_classes: int, rng: np.random.Generator
    ) -> SoftmaxModel:
        """A bias vector unless ``settings.bias_column``."""
        kw = cls.settings_kwargs(settings)
        return cls(n_features, n_classes, bias=not settings.bias_column, rng=rng, **kw)

    @classmethod
    def _n_out(cls, config: dict[str, Any]) -> int:
        return config_size(config, "n_classes")

    def __init__(self, n_features: int, n_classes: int, **kwargs: Any) -> None:
        super().__init__(n_features, int(n_classes), **kwargs)
        self.n_classes = int(n_classes)

    def logits(self, X: np.ndarray) -> np.ndarray:
        """``Z = X W + b``, shape (n, k)."""
        return self._affine(self.check_X(X))

    def forward(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities, shape (n, k), rows summing to one."""
        return softmax_(self.logits(X))

    def _data_loss_sum(self, X: np.ndarray, y: np.ndarray, weight: Any = None, *_: Any) -> float:
        return softmax_cross_entropy(self._affine(X), y, weight)

    def _logit_loss_and_grad(
        self, z: np.ndarray, y: np.ndarray, scale: float, weight: np.ndarray | None = None
    ) -> tuple[float, np.ndarray]:
        return softmax_cross_entropy_(z, y, scale, weight)  # p - onehot, in z

    def _grouped_logit_loss_and_grad(
        self, z: np.ndarray, y: np.ndarray, scale: float
    ) -> np.ndarray:
        # softmax_cross_entropy_'s operations on all R models at once (one call each, not R),
        # reducing over the class axis of (R, k, n): elementwise across k rows of n values
        rows = np.arange(z.shape[2])
        z -= np.maximum.reduce(z, axis=1, keepdims=True)
        z_y = z[:, y, rows]  # (R, n), a copy
        np.exp(z, out=z)
        s = np.add.reduce(z, axis=1)  # (R, n)
        losses = np.add.reduce(np.log(s), axis=1, dtype=np.float64)
        losses -= np.add.reduce(z_y, axis=1, dtype=np.float64)
        z /= s[:, None, :]
        flush_subnormal_(z, scale)  # subnormals slow the gradient's product (SandyBridge)
        z[:, y, rows] -= 1.0
        if scale != 1.0:
            z *= scale
        return losses


#: Rows per block of :class:`RowBlocks` (10 stacked softmax models, 18,000 MNIST rows, one
#: thread: 256 / 512 / 1,024 rows 42 / 41 / 45 ms a step with OpenBLAS's Haswell kernels, 50 /
#: 54 / 58 ms with its SandyBridge kernels).
BLOCK_ROWS = 512
#: :func:`row_blocks` declines a layout that keeps more than this share of the entries of ``X``.
MAX_KEPT_SHARE = 0.9


class RowBlocks:
    """Full-batch features ``X (n, d)`` laid out in blocks of rows, each with only the columns
    that are nonzero in one of its rows.

    A linear model's products skip a zero entry exactly (it adds nothing to a logit and
    nothing to the data gradient), and in image features most entries are zero: an MNIST
    digit inks a fifth of its 784 pixels. The rows are ordered so that rows inking the same
    region share a block (:func:`row_order`): blocks of 512 rows keep 47% of the entries of
    the 60,000 MNIST training images (54% of the first 18,000 with a bias input), against 74%
    in the stored order, and the products of :func:`stacked_loss_and_grad` shrink about as
    much.

    Attributes
    ----------
    order : ndarray of int (n,)
        The rows of ``X`` in block order.
    columns : list of ndarray of int (s_b,)
        Per block, the columns it keeps.
    blocks : list of ndarray (c_b, s_b)
        Per block, ``X[order[rows]][:, columns]``, C-contiguous.
    shape : tuple (n, d)
    dtype : dtype
    """

    def __init__(
        self, order: np.ndarray, columns: list[np.ndarray], blocks: list[np.ndarray], d: int
    ) -> None:
        self.order, self.columns, self.blocks = order, columns, blocks
        self.shape = (int(order.shape[0]), int(d))
        self.dtype = blocks[0].dtype

    @property
    def kept_share(self) -> float:
        """Entries kept over the ``n d`` of ``X``."""
        kept = sum(b.size for b in self.blocks)
        return kept / max(1, self.shape[0] * self.shape[1])


def _square_side(n: int) -> int | None:
    side = int(np.sqrt(n) + 0.5)
    return side if side >= 4 and side * side == n else None


def row_order(nonzero: np.ndarray) -> np.ndarray:
    """An order of the rows of ``nonzero (n, d)`` (bool) that puts rows with similar nonzero
    columns next to each other, int ``(n,)``.

    Columns nonzero in every row (a bias input) are set aside. When the other columns are the
    pixels of square images (``d`` a square, in order), rows are sorted by the width, left edge
    and top edge of their ink's bounding box; otherwise by their last and first nonzero column.
    On the 60,000 MNIST training images blocks of 512 rows keep 47% of the entries by the
    bounding box, 56% by the first and last column, 74% in the stored order.
    """
    varying = np.flatnonzero(~nonzero.all(axis=0))
    nz = nonzero[:, varying]
    n, d = nz.shape
    if d == 0:
        return np.arange(n)
    side = _square_side(d)
    if side is not None and (varying[-1] - varying[0] + 1 == d):
        img = nz.reshape(n, side, side)
        cols, rows = img.any(axis=1), img.any(axis=2)  # (n, side) each
        left = cols.argmax(axis=1)
        right = side - 1 - cols[:, ::-1].argmax(axis=1)
        top = rows.argmax(axis=1)
        return np.lexsort((top, left, right - left))
    first = nz.argmax(axis=1)
    last = d - 1 - nz[:, ::-1].argmax(axis=1)
    return np.lexsort((first, last))


def row_blocks(
    X: np.ndarray, rows: int = BLOCK_ROWS, max_share: float = MAX_KEPT_SHARE
) -> RowBlocks | None:
    """``X (n, d)`` as :class:`RowBlocks` of ``rows`` rows (:func:`row_order`); None when the
    blocks would keep more than ``max_share`` of its entries (dense features: the copy and
    the gathers would cost more than the skipped zeros save)."""
    if X.ndim != 2 or X.shape[0] == 0:
        raise ShapeError(f"row_blocks needs a non-empty 2-D array, got shape {X.shape}")
    if rows < 1:
        raise ConfigError(f"rows per block must be >= 1, got {rows}")
    nonzero = X != 0
    order = row_order(nonzero)
    columns, kept = [], 0
    for start in range(0, X.shape[0], rows):
        used = np.flatnonzero(nonzero[order[start : start + rows]].any(axis=0))
        columns.append(used)
        kept += used.size * min(rows, X.shape[0] - start)
    if kept > max_share * X.size:
        return None
    blocks = [
        np.ascontiguousarray(X[order[start : start + rows]][:, cols])
        for start, cols in zip(range(0, X.shape[0], rows), columns, strict=True)
    ]
    return RowBlocks(order, columns, blocks, X.shape[1])


#: Rows of features with their labels: ``(columns (s,) or None for all d, rows (c, s),
#: labels (c,))``.
Chunk = tuple[np.ndarray | None, np.ndarray, np.ndarray]


def stacked_loss_and_grad(
    models: Sequence[LinearModel],
    X: np.ndarray | RowBlocks,
    y: np.ndarray,
    chunk_rows: int = BLOCK_ROWS,
) -> list[tuple[float, dict[str, np.ndarray]]]:
    """``[m.loss_and_grad(X, y) for m in models]`` with the matrix products shared.

    The models (same class and shapes: see :func:`can_stack`) differ in their parameters
    and penalties, not in their data. Their weight matrices are set side by side, ``(d, R k)``,
    so that each block of rows of ``X`` is read once for all ``R`` models, in the forward
    product and again, still in cache, in the gradient's: ``R`` runs that differ only in their
    random start (repeats with other seeds) cost little more than one, as a full-batch step's
    skinny products are bound by reading ``X``. Each model's loss and gradient equal its own
    ``loss_and_grad`` up to the order of float summation.

    Parameters
    ----------
    models : sequence of linear models
    X : ndarray (n, d) or RowBlocks
        In the models' dtype. As :class:`RowBlocks` (:func:`row_blocks`), each block's products
        skip the columns that are zero in all its rows.
    y : ndarray of int (n,)
        In the rows' stored order (also for ``RowBlocks``).
    chunk_rows : int
        Rows per block of an array ``X``.

    Returns
    -------
    list of (loss, grads)
        Per model, as :meth:`~digitlab.models.base.Model.loss_and_grad` returns them.
    """
    first = models[0]
    if isinstance(X, RowBlocks):
        chunks = list(block_chunks(first, X, y))
    else:
        X = first.check_X(X)
        y = first.check_y(y, X.shape[0])
        chunks = [
            (None, X[start : start + chunk_rows], y[start : start + chunk_rows])
            for start in range(0, X.shape[0], chunk_rows)
        ]
    n, k, R = X.shape[0], first.params["W"].shape[1], len(models)
    WT, b = _stacked_weights(models)
    scale = first._scale(n, None)

    def block(chunk: Chunk) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        cols, Xc, yc = chunk
        Z = _stacked_logits(WT, b, cols, Xc)
        losses = first._grouped_logit_loss_and_grad(Z.reshape(R, k, -1), yc, scale)
        gb = np.add.reduce(Z, axis=1) if b is not None else None
        return losses, Z @ Xc, gb

    losses = np.zeros(R)
    gW = np.zeros((R * k, X.shape[1]), dtype=first.dtype)  # the gradients, transposed
    gb = np.zeros(R * k, dtype=first.dtype)
    threads = min(fit_threads(), len(chunks) // 2)
    macs = max(Xc.size for _, Xc, _ in chunks) * R * k
    side_by_side = threads > 1 and macs >= PARALLEL_BLOCK_MACS
    parts = map_in_order(block, chunks, threads) if side_by_side else map(block, chunks)
    for (cols, _, _), (part_losses, part_gW, part_gb) in zip(chunks, parts, strict=True):
        losses += part_losses  # summed in the blocks' order whichever thread computed them
        if cols is None:
            gW += part_gW
        else:
            gW[:, cols] += part_gW
        if part_gb is not None:
            gb += part_gb
    out = []
    for r, m in enumerate(models):
        grads = {"W": np.ascontiguousarray(gW[r * k : (r + 1) * k].T)}
        if b is not None:
            grads["b"] = gb[r * k : (r + 1) * k].copy()
        out.append(m.add_penalty(float(losses[r]) * scale, grads))
    return out


def block_chunks(model: LinearModel, blocks: RowBlocks, y: np.ndarray) -> Iterator[Chunk]:
    """Each block of ``blocks`` as a :data:`Chunk` with its labels, once the blocks are checked
    to fit ``model``; ``y (n,)`` in the rows' stored order."""
    if blocks.shape[1] != model.n_features or blocks.dtype != model.dtype:
        raise ShapeError(
            f"row blocks of shape {blocks.shape} in {blocks.dtype} do not fit this model "
            f"(n, {model.n_features}) in {model.dtype}"
        )
    y = model.check_y(y, blocks.shape[0])[blocks.order]
    start = 0
    for cols, Xc in zip(blocks.columns, blocks.blocks, strict=True):
        yield cols, Xc, y[start : start + Xc.shape[0]]
        start += Xc.shape[0]


def _stacked_weights(models: Sequence[LinearModel]) -> tuple[np.ndarray, np.ndarray | None]:
    """The models' weights one above the other, ``W^T (R k, d)``, and biases ``(R k, 1)`` or
    None."""
    WT = np.concatenate([m.params["W"].T for m in models])
    b = np.concatenate([m.params["b"] for m in models])[:, None] if models[0].bias else None
    return WT, b


def _stacked_logits(
    WT: np.ndarray, b: np.ndarray | None, cols: np.ndarray | None, Xc: np.ndarray
) -> np.ndarray:
    """The logits of all models on rows ``Xc (c, s)`` holding the columns ``cols``, class-major
    ``(R k, c)``, so that the softmax reduces across rows."""
    Z = (WT if cols is None else WT[:, cols]) @ Xc.T
    if b is not None:
        Z += b
    return Z


def stacked_loss_sums_and_correct(
    models: Sequence[LinearModel],
    chunks: Iterable[Chunk],
) -> tuple[np.ndarray, np.ndarray]:
    """Each model's summed cross-entropy and count of right predictions over ``chunks`` of
    rows (what :meth:`~digitlab.models.base.Model.loss_sum_and_correct` gives, up to float
    rounding): each chunk's logits of all models from one product, the softmax of all models
    at once (class-major, as in :func:`stacked_loss_and_grad`).

    Parameters
    ----------
    models : sequence of linear models (:func:`can_stack`)
    chunks : iterable of (columns or None, rows, labels)
        ``rows (c, s)`` holding the feature columns ``columns (s,)`` (None: all ``d``) in the
        models' dtype, and their labels ``(c,)`` (:func:`block_chunks` for :class:`RowBlocks`).

    Returns
    -------
    loss_sums : ndarray float64 (R,)
    correct : ndarray int (R,)
    """
    first = models[0]
    k, R = first.params["W"].shape[1], len(models)
    WT, b = _stacked_weights(models)
    sums, correct = np.zeros(R), np.zeros(R, dtype=np.int64)
    for cols, Xc, yc in chunks:
        Z = _stacked_logits(WT, b, cols, Xc)
        if isinstance(first, LogisticModel):
            for r in range(R):
                sums[r] += binary_cross_entropy(Z[r], yc)
                correct[r] += np.count_nonzero((Z[r] > 0) == yc)
            continue
        z = Z.reshape(R, k, -1)
        correct += np.count_nonzero(z.argmax(axis=1) == yc, axis=1)
        z_y = z[:, yc, np.arange(z.shape[2])]  # (R, c)
        top = np.maximum.reduce(z, axis=1)  # (R, c)
        z -= top[:, None, :]
        np.exp(z, out=z)
        lse = np.log(np.add.reduce(z, axis=1)) + top
        sums += np.add.reduce(lse, axis=1, dtype=np.float64)
        sums -= np.add.reduce(z_y, axis=1, dtype=np.float64)
    return sums, correct


#: Widest output (columns of ``W``) for which stacking pays: the shared read of ``X`` is what
#: stacking saves, and a product with more columns is bound by arithmetic, not by that read
#: (3 models, 18,000 x 785 rows, 2 threads: k = 10 stacked 2.1x faster, k = 100 1.3x,
#: k = 300 even, k = 1,000 in float64 1.2x slower).
STACK_MAX_OUTPUTS = 256


def can_stack(models: Sequence[Model]) -> bool:
    """Whether :func:`stacked_loss_and_grad` applies and pays: linear models of one class with
    the same shapes, bias, reduction and dtype, whose arithmetic is the class's own
    (:attr:`LinearModel.own_arithmetic`), and at most :data:`STACK_MAX_OUTPUTS` outputs each."""
    first = models[0]
    if not isinstance(first, LinearModel) or first.params["W"].shape[1] > STACK_MAX_OUTPUTS:
        return False
    same = (type(first), first.params["W"].shape, first.bias, first.reduction, first.dtype)
    return all(
        isinstance(m, LinearModel)
        and (type(m), m.params["W"].shape, m.bias, m.reduction, m.dtype) == same
        and m.own_arithmetic
        for m in models
    )
