"""Logistic regression (two classes) and softmax regression (k classes)."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import expit

from digitlab.models.base import Model, as_generator, init_weight
from digitlab.models.functional import (
    LinearGrad,
    binary_cross_entropy,
    outer_sum,
    softmax_,
    softmax_cross_entropy,
    softmax_cross_entropy_,
)


class _Linear(Model):
    """Shared constructor and affine map ``z = X W + b`` of the two linear models."""

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

    def _affine(self, X: np.ndarray) -> np.ndarray:
        z = X @ self.params["W"]
        if self.bias:
            z += self.params["b"]
        return z

    def _grads(self, X: np.ndarray, g: np.ndarray, factored: bool) -> dict[str, Any]:
        """Parameter gradients from the logit gradient ``g (n, k)``: dW = X^T g, db = sum g."""
        grads: dict[str, Any] = {"W": LinearGrad(X, g) if factored else outer_sum(X, g)}
        if self.bias:
            grads["b"] = np.add.reduce(g, axis=0)  # sum over rows
        return grads

    def config(self) -> dict[str, Any]:
        return super().config() | {"init": self.init, "bias": self.bias}


class LogisticModel(_Linear):
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

    def __init__(self, n_features: int, **kwargs: Any) -> None:
        super().__init__(n_features, 1, **kwargs)
        self.n_classes = 2

    def logits(self, X: np.ndarray) -> np.ndarray:
        """``z = X W + b``, shape (n,)."""
        return self._affine(self.check_X(X))[:, 0]

    def forward(self, X: np.ndarray) -> np.ndarray:
        """``P(y=1 | x)`` for each row, shape (n,)."""
        return expit(self.logits(X))

    def _data_loss_sum(self, X: np.ndarray, y: np.ndarray, weight: Any = None) -> float:
        return binary_cross_entropy(self._affine(X)[:, 0], y, weight)

    def _data_loss_and_grad(
        self,
        X: np.ndarray,
        y: np.ndarray,
        scale: float,
        factored: bool = False,
        weight: np.ndarray | None = None,
    ) -> tuple[float, dict[str, Any]]:
        z = self._affine(X)  # (n, 1)
        loss_sum = binary_cross_entropy(z[:, 0], y, weight)
        # dE/dz = sigmoid(z) - t, the report's (y^n - t^n)
        g = expit(z, out=z)
        g[:, 0] -= y
        if weight is not None:
            g[:, 0] *= weight * scale
        elif scale != 1.0:
            g *= scale
        return loss_sum, self._grads(X, g, factored)


class SoftmaxModel(_Linear):
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

    def __init__(self, n_features: int, n_classes: int, **kwargs: Any) -> None:
        super().__init__(n_features, int(n_classes), **kwargs)
        self.n_classes = int(n_classes)

    def logits(self, X: np.ndarray) -> np.ndarray:
        """``Z = X W + b``, shape (n, k)."""
        return self._affine(self.check_X(X))

    def forward(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities, shape (n, k), rows summing to one."""
        return softmax_(self.logits(X))

    def _data_loss_sum(self, X: np.ndarray, y: np.ndarray, weight: Any = None) -> float:
        return softmax_cross_entropy(self._affine(X), y, weight)

    def _data_loss_and_grad(
        self,
        X: np.ndarray,
        y: np.ndarray,
        scale: float,
        factored: bool = False,
        weight: np.ndarray | None = None,
    ) -> tuple[float, dict[str, Any]]:
        loss_sum, g = softmax_cross_entropy_(self._affine(X), y, scale, weight)  # p - onehot
        return loss_sum, self._grads(X, g, factored)
