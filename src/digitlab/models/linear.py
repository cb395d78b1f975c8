"""Logistic regression (two classes) and softmax regression (k classes)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.special import expit

from digitlab.errors import ConfigError, ShapeError
from digitlab.models.base import Model, as_generator, config_size, init_weight
from digitlab.models.functional import (
    LinearGrad,
    binary_cross_entropy,
    flush_subnormal_,
    outer_sum,
    softmax_,
    softmax_cross_entropy,
    softmax_cross_entropy_,
)


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


#: Share of all-zero columns from which :func:`active_columns` drops them (below it the copy
#: of the features is not worth its memory).
MIN_ZERO_SHARE = 0.02


def active_columns(X: np.ndarray, min_share: float = MIN_ZERO_SHARE) -> np.ndarray | None:
    """The columns of ``X (n, d)`` with a nonzero entry, int ``(a,)``; None when fewer than
    ``min_share * d`` columns are zero in every row.

    A column that is zero in every training row adds nothing to a linear model's logits and
    nothing to its data gradient (MNIST: 92 of 785 columns in the first 18,000 images, the
    pixels at the border), so the products may skip it exactly: see
    :func:`stacked_loss_and_grad`'s ``columns``.
    """
    used = np.zeros(X.shape[1], dtype=bool)
    for start in range(0, X.shape[0], 4096):  # a bounded boolean temporary
        used |= (X[start : start + 4096] != 0).any(axis=0)
    if X.shape[1] - int(used.sum()) < min_share * X.shape[1]:
        return None
    return np.flatnonzero(used)


def stacked_loss_and_grad(
    models: Sequence[LinearModel],
    X: np.ndarray,
    y: np.ndarray,
    chunk_rows: int = 512,
    columns: np.ndarray | None = None,
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
    X : ndarray (n, d)
        In the models' dtype.
    y : ndarray of int (n,)
    chunk_rows : int
        Rows per block.
    columns : ndarray of int (a,) or None
        When given, ``X (n, a)`` holds only these columns of the features, the others being
        zero in every row (:func:`active_columns`): the products skip them, and their rows of
        each gradient get the penalty's part alone, as the full product gives them.

    Returns
    -------
    list of (loss, grads)
        Per model, as :meth:`~digitlab.models.base.Model.loss_and_grad` returns them.
    """
    first = models[0]
    if columns is None:
        X = first.check_X(X)
    elif X.ndim != 2 or X.shape[1] != len(columns) or X.dtype != first.dtype:
        raise ShapeError(f"X must have shape (n, {len(columns)}) in {first.dtype}, got {X.shape}")
    n = X.shape[0]
    y = first.check_y(y, n)
    k = first.params["W"].shape[1]
    R = len(models)
    rows = slice(None) if columns is None else columns  # the rows of W that X multiplies
    WT = np.concatenate([m.params["W"][rows].T for m in models])  # (R k, d or a)
    b = np.concatenate([m.params["b"] for m in models])[:, None] if first.bias else None
    scale = first._scale(n, None)
    losses = np.zeros(R)
    gW = np.zeros((R * k, X.shape[1]), dtype=first.dtype)  # the gradients, transposed
    gb = np.zeros(R * k, dtype=first.dtype)
    for start in range(0, n, chunk_rows):
        Xc, yc = X[start : start + chunk_rows], y[start : start + chunk_rows]
        Z = WT @ Xc.T  # (R k, c): class-major, so the softmax reduces across rows of Z
        if b is not None:
            Z += b
        losses += first._grouped_logit_loss_and_grad(Z.reshape(R, k, -1), yc, scale)
        gW += Z @ Xc
        if b is not None:
            gb += np.add.reduce(Z, axis=1)
    out = []
    for r, m in enumerate(models):
        if columns is None:
            gWr = np.ascontiguousarray(gW[r * k : (r + 1) * k].T)
        else:  # the skipped columns' data gradient is exactly zero
            gWr = np.zeros_like(m.params["W"])
            gWr[columns] = gW[r * k : (r + 1) * k].T
        grads = {"W": gWr}
        if b is not None:
            grads["b"] = gb[r * k : (r + 1) * k].copy()
        out.append(m.add_penalty(float(losses[r]) * scale, grads))
    return out


def stacked_logits(models: Sequence[LinearModel], X: np.ndarray) -> list[np.ndarray]:
    """``[m.logits(X) for m in models]`` from one product: the weight matrices side by side,
    ``X (n, d) @ (d, R k)``, so ``X`` is read once for all ``R`` models (as in
    :func:`stacked_loss_and_grad`; equal to each model's own logits up to float rounding).

    Returns
    -------
    list of ndarray
        Per model its logits, views into one ``(n, R k)`` array: ``(n, k)``, or ``(n,)`` for
        a binary model.
    """
    first = models[0]
    X = first.check_X(X)
    k = first.params["W"].shape[1]
    Z = X @ np.concatenate([m.params["W"] for m in models], axis=1)
    if first.bias:
        Z += np.concatenate([m.params["b"] for m in models])
    parts = [Z[:, r * k : (r + 1) * k] for r in range(len(models))]
    return [z[:, 0] for z in parts] if isinstance(first, LogisticModel) else parts


#: Widest output (columns of ``W``) for which stacking pays: the shared read of ``X`` is what
#: stacking saves, and a product with more columns is bound by arithmetic, not by that read
#: (3 models, 18,000 x 785 rows, 2 threads: k = 10 stacked 2.1x faster, k = 100 1.3x,
#: k = 300 even, k = 1,000 in float64 1.2x slower).
STACK_MAX_OUTPUTS = 256


def can_stack(models: Sequence[Model]) -> bool:
    """Whether :func:`stacked_loss_and_grad` applies and pays: linear models of one class with
    the same shapes, bias, reduction and dtype, whose gradient method is the class's own, and
    at most :data:`STACK_MAX_OUTPUTS` outputs each."""
    first = models[0]
    if not isinstance(first, LinearModel) or first.params["W"].shape[1] > STACK_MAX_OUTPUTS:
        return False
    same = (type(first), first.params["W"].shape, first.bias, first.reduction, first.dtype)
    return all(
        isinstance(m, LinearModel)
        and (type(m), m.params["W"].shape, m.bias, m.reduction, m.dtype) == same
        and m.own_gradient
        for m in models
    )
