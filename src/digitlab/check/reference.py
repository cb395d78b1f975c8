"""Float64 reference of each function of the logistic / softmax regression assignment.

Shapes follow the assignment's starter code: images ``X [N, 785]`` with the bias trick's
column of ones, weights ``w [785, K]`` (``K = 1`` for the binary model), targets
``[N, 1]`` (binary, 0/1) or one-hot ``[N, K]``, outputs ``[N, K]``.
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit

from digitlab.models.functional import penalty_grad_, softmax_


def pre_process_images(X: np.ndarray, low: float = -1.0, bias: str = "last") -> np.ndarray:
    """Pixels ``[0, 255]`` mapped linearly onto ``[low, 1]``, and a column of ones.

    Parameters
    ----------
    X : ndarray [N, 784]
    low : float
        -1 (the assignment) or 0 (the 2020 starter code's docstring).
    bias : {"last", "first"}
        Where the column of ones goes (either makes the bias trick work).

    Returns
    -------
    ndarray [N, 785] float64
    """
    x = np.asarray(X, dtype=np.float64) / 255.0 * (1.0 - low) + low
    ones = np.ones((x.shape[0], 1))
    return np.hstack([x, ones] if bias == "last" else [ones, x])


def binary_forward(X: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Equation 1: ``sigmoid(X w)``, ``[N, 1]``."""
    return expit(X @ w)


def softmax_forward(X: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Equation 4: row-wise softmax of ``X w``, ``[N, K]``, stable for any logits."""
    return softmax_(X @ w)


def binary_cross_entropy(targets: np.ndarray, outputs: np.ndarray) -> float:
    """Equation 3: ``-mean(t ln y + (1 - t) ln(1 - y))``."""
    t, y = np.asarray(targets, dtype=np.float64), np.asarray(outputs, dtype=np.float64)
    return float(-np.mean(t * np.log(y) + (1 - t) * np.log(1 - y)))


def softmax_cross_entropy(targets: np.ndarray, outputs: np.ndarray) -> float:
    """Equation 5: ``-(1/N) sum_n sum_k t_k ln y_k``."""
    t, y = np.asarray(targets, dtype=np.float64), np.asarray(outputs, dtype=np.float64)
    return float(-np.sum(t * np.log(y)) / t.shape[0])


def gradient(
    X: np.ndarray, outputs: np.ndarray, targets: np.ndarray, w: np.ndarray, l2: float = 0.0
) -> np.ndarray:
    """Equations 6 / 13 averaged over the batch, plus equation 28's ``2 lambda w``.

    Returns
    -------
    ndarray [785, K]: ``-X^T (t - y) / N + 2 lambda w``
    """
    grad = -(X.T @ (targets - outputs)) / X.shape[0]
    return penalty_grad_(grad, w, 0.0, l2)


def one_hot_encode(Y: np.ndarray, num_classes: int) -> np.ndarray:
    """Labels ``[N, 1]`` (or ``[N]``) to one-hot rows ``[N, num_classes]`` of float64."""
    labels = np.asarray(Y).reshape(-1)
    out = np.zeros((labels.size, num_classes))
    out[np.arange(labels.size), labels] = 1.0
    return out


def binary_accuracy(X: np.ndarray, targets: np.ndarray, w: np.ndarray) -> float:
    """Fraction of rows whose prediction (1 if ``y >= 0.5`` else 0) equals the target."""
    predictions = (binary_forward(X, w) >= 0.5).astype(np.float64)
    return float(np.mean(predictions == targets))


def softmax_accuracy(X: np.ndarray, targets: np.ndarray, w: np.ndarray) -> float:
    """Fraction of rows whose most probable class is the one-hot target's class."""
    return float(np.mean(softmax_forward(X, w).argmax(axis=1) == targets.argmax(axis=1)))
