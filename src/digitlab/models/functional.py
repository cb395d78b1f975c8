"""Pure array functions the models are built from.

Shape convention (used everywhere in digitlab): ``X (n, d)``, ``W (d, k)``, ``b (k,)``,
logits ``Z (n, k)``, integer labels ``y (n,)``.

Each function states whether it returns a sum or a mean. Functions whose name ends in ``_``
overwrite their first argument to avoid allocating a second ``(n, k)`` array in the hot path.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.linalg.blas import dger, sger
from scipy.special import erf, expit

from digitlab import kernels

#: Hidden-layer activations: name -> formula (implemented in activate_ / activation_backward_).
ACTIVATIONS: dict[str, str] = {
    "tanh": "tanh(z)",
    "sigmoid": "1 / (1 + exp(-z))",
    "relu": "max(z, 0)",
    "scaled_tanh": "1.7159 tanh(2z/3) (LeCun's improved sigmoid)",
    "leaky_relu": "max(z, slope z)",
    "elu": "z if z > 0 else exp(z) - 1",
    "gelu": "z Phi(z), Phi the standard normal CDF",
}
#: Activations whose derivative needs the pre-activation ``z``, not only the output.
NEEDS_INPUT = frozenset({"gelu"})
#: LeCun's scaled tanh: ``A tanh(S z)``, so that unit-variance inputs give unit-variance outputs.
SCALED_TANH = (1.7159, 2.0 / 3.0)


def activate_(z: np.ndarray, name: str, slope: float = 0.01) -> np.ndarray:
    """Apply a hidden activation in place.

    Parameters
    ----------
    z : ndarray (n, h)
        Pre-activations; overwritten by the activations.
    name : str
        A key of :data:`ACTIVATIONS`.
    slope : float
        The negative-side slope of ``leaky_relu``.

    Returns
    -------
    ndarray (n, h)
        ``z`` itself.
    """
    if name == "tanh":
        return np.tanh(z, out=z)
    if name == "sigmoid":
        return expit(z, out=z)
    if name == "relu":
        return np.maximum(z, 0, out=z)
    if name == "scaled_tanh":
        z *= SCALED_TANH[1]
        np.tanh(z, out=z)
        z *= SCALED_TANH[0]
        return z
    if name == "leaky_relu":
        return np.maximum(z, slope * z, out=z)  # slope in (0, 1)
    if name == "elu":
        neg = z < 0
        z[neg] = np.expm1(z[neg])
        return z
    if name == "gelu":
        cdf = erf(z * np.sqrt(0.5).astype(z.dtype))
        cdf += 1.0
        cdf *= 0.5
        return np.multiply(z, cdf, out=z)
    raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}")


def activation_backward_(
    delta: np.ndarray, a: np.ndarray, name: str, z: np.ndarray | None = None, slope: float = 0.01
) -> np.ndarray:
    """Multiply an upstream gradient by the activation's derivative, in place.

    The derivative is written in terms of the activation's *output* ``a`` where it can be:
    tanh' = 1 - a**2, sigmoid' = a (1 - a), relu' = [a > 0], scaled tanh' = S (A - a**2 / A),
    leaky' = 1 if a > 0 else slope, elu' = 1 if a > 0 else a + 1; gelu' = Phi(z) + z phi(z)
    needs the pre-activation ``z``.

    Parameters
    ----------
    delta : ndarray (n, h)
        dLoss/da; overwritten by dLoss/dz.
    a : ndarray (n, h)
        The activation output of the forward pass.
    name : str
    z : ndarray (n, h), optional
        The pre-activation (required for the activations in :data:`NEEDS_INPUT`).
    slope : float

    Returns
    -------
    ndarray (n, h)
        ``delta`` itself.
    """
    if name == "tanh":
        d = np.multiply(a, a)  # 1 - a**2 with one temporary instead of two
        delta *= np.subtract(1.0, d, out=d)
    elif name == "sigmoid":
        delta *= a * (1.0 - a)
    elif name == "relu":
        delta *= a > 0
    elif name == "scaled_tanh":
        A, S = SCALED_TANH
        delta *= S * (A - a * a / A)
    elif name == "leaky_relu":
        delta *= np.where(a > 0, 1.0, slope).astype(delta.dtype)
    elif name == "elu":
        delta *= np.where(a > 0, 1.0, a + 1.0).astype(delta.dtype)
    elif name == "gelu":
        if z is None:
            raise ValueError("the gelu derivative needs the pre-activation z")
        pdf = np.exp(-0.5 * z * z) / np.sqrt(2.0 * np.pi)
        cdf = 0.5 * (1.0 + erf(z * np.sqrt(0.5)))
        delta *= (cdf + z * pdf).astype(delta.dtype)
    else:
        raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}")
    return delta


def batch_norm_forward_(
    z: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Batch normalisation of pre-activations in training, in place.

    ``zhat = (z - mean) / sqrt(var + eps)`` over the batch (biased variance), then
    ``u = gamma zhat + beta``.

    Parameters
    ----------
    z : ndarray (n, h)
        Overwritten by ``u``.
    gamma, beta : ndarray (h,)
    eps : float

    Returns
    -------
    u : ndarray (n, h)
        ``z`` itself.
    zhat : ndarray (n, h)
    inv_std : ndarray (h,)
        ``1 / sqrt(var + eps)``.
    mean, var : ndarray (h,)
        The batch mean and (biased) variance.
    """
    mean = z.mean(axis=0)
    z -= mean
    var = np.einsum("ij,ij->j", z, z) / z.shape[0]
    inv_std = 1.0 / np.sqrt(var + eps)
    zhat = z * inv_std
    np.multiply(zhat, gamma, out=z)
    z += beta
    return z, zhat, inv_std, mean, var


def batch_norm_backward(
    du: np.ndarray, zhat: np.ndarray, inv_std: np.ndarray, gamma: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients through :func:`batch_norm_forward_`.

    Parameters
    ----------
    du : ndarray (n, h)
        dLoss/du.
    zhat : ndarray (n, h)
    inv_std, gamma : ndarray (h,)

    Returns
    -------
    dz : ndarray (n, h)
        ``inv_std / n * (n dzhat - sum(dzhat) - zhat sum(dzhat zhat))``, ``dzhat = du gamma``.
    dgamma, dbeta : ndarray (h,)
        ``sum(du zhat)`` and ``sum(du)`` over the batch.
    """
    n = du.shape[0]
    dbeta = np.add.reduce(du, axis=0)
    dgamma = np.einsum("ij,ij->j", du, zhat)
    dzhat = du * gamma
    dz = dzhat * n
    dz -= np.add.reduce(dzhat, axis=0)
    dz -= zhat * np.einsum("ij,ij->j", dzhat, zhat)
    dz *= inv_std / n
    return dz, dgamma, dbeta


def dropout_mask(
    shape: tuple[int, int], rate: float, rng: np.random.Generator, dtype: np.dtype
) -> np.ndarray:
    """Inverted dropout: ``1 / (1 - rate)`` where a unit is kept (probability ``1 - rate``,
    drawn as ``rng.random(shape) >= rate``), else 0; shape ``(n, h)``."""
    keep = rng.random(shape) >= rate
    return keep.astype(dtype) * np.asarray(1.0 / (1.0 - rate), dtype=dtype)


def softmax_(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax in place, stable (the row maximum is subtracted first).

    Parameters
    ----------
    z : ndarray (n, k)
        Logits; overwritten by probabilities.

    Returns
    -------
    ndarray (n, k)
        ``z`` itself, rows summing to one.
    """
    z -= z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


def log_softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax (log-sum-exp form, never ``log(0)``).

    Parameters
    ----------
    z : ndarray (n, k)

    Returns
    -------
    ndarray (n, k)
    """
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


#: Probabilities below this many times the smallest normal float are set to zero by
#: :func:`flush_subnormal_`: they are subnormal, or their products with features as small as
#: 1/255 are (in float32: below 7.7e-34).
FLUSH_MARGIN = 2.0**16


def flush_subnormal_(p: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """Set to zero, in place, the probabilities ``p (...)`` (all >= 0) below :data:`FLUSH_MARGIN`
    times the smallest normal float, divided by ``scale`` when the gradient is scaled down, as
    a CPU's flush-to-zero mode would do to what they become.

    A softmax over logits far apart gives ``exp`` results below the smallest normal float
    (1.2e-38 in float32: a tenth of a summed full-batch gradient's entries in source 000's
    chains), and products of tiny normal ones with pixels are subnormal too; multiplying such a
    gradient by the features (``delta^T X``) runs up to 1.7 times slower with OpenBLAS's
    SandyBridge kernels (no FMA) than with zeros in their place (1,024 rows: 2.14 vs 1.27 ms; a
    10-run lock-step step 134 -> 92 ms), and no slower with the Haswell kernels. Each dropped
    value is below 7.7e-34 (float32), some 26 orders of magnitude under the rounding of a
    probability near one: the gradient is the same to float rounding. Used by the lock-step
    softmax gradient (one model's narrow products timed no different with it).
    """
    limit = np.finfo(p.dtype).tiny * FLUSH_MARGIN / min(scale, 1.0)
    p *= p >= limit  # a product by the mask: a tenth of np.copyto(..., where=)'s time; NaN stays
    return p


def softmax_cross_entropy_(
    z: np.ndarray, y: np.ndarray, scale: float, weight: np.ndarray | None = None
) -> tuple[float, np.ndarray]:
    """Summed cross-entropy of softmax(z) against labels, and its gradient, fused.

    Uses ``-log p_y = logsumexp(z) - z_y`` for the loss and ``dL/dz = p - onehot(y)``
    for the gradient, so no log of a probability is ever taken.

    Parameters
    ----------
    z : ndarray (n, k)
        Logits; overwritten by the gradient.
    y : ndarray of int (n,)
        Labels in ``[0, k)``.
    scale : float
        Factor applied to the gradient (``1/n`` for a mean loss, ``1`` for a sum).
    weight : ndarray (n,), optional
        Per-row weights ``w_i`` (sample weights), in ``z``'s dtype.

    Returns
    -------
    loss_sum : float
        ``sum_i w_i * -log softmax(z_i)[y_i]`` (a sum over the batch, not a mean;
        ``w_i = 1`` without weights).
    grad : ndarray (n, k)
        ``scale * w_i * (softmax(z_i) - onehot(y_i))``, stored in ``z``.
    """
    if z.shape[0] == 1:
        if weight is None:
            return _softmax_cross_entropy_row_(z, int(y[0]), scale)
        w0 = float(weight[0])
        loss_sum, z = _softmax_cross_entropy_row_(z, int(y[0]), scale * w0)
        return loss_sum * w0, z
    # ufunc.reduce is what z.max / z.sum / np.sum call, without their Python wrappers (a few
    # microseconds each: they matter for single-sample SGD's (1, k) logits); the labels'
    # entries of a C-ordered z are read and written by flat position (take/put cost less than
    # fancy indexing)
    n, k = z.shape
    flat_ok = z.flags.c_contiguous
    if flat_ok:
        at = np.arange(0, n * k, k)
        at += y  # (n,) flat positions of z[i, y_i]
        zf = z.reshape(-1)  # a view of z
    else:
        at = np.arange(n)
    z -= np.maximum.reduce(z, axis=1, keepdims=True)
    z_y = zf.take(at) if flat_ok else z[at, y]  # a copy, so z may be overwritten below
    np.exp(z, out=z)
    s = np.add.reduce(z, axis=1)
    log_s = np.log(s)
    if weight is None:
        loss_sum = float(
            np.add.reduce(log_s, dtype=np.float64) - np.add.reduce(z_y, dtype=np.float64)
        )
    else:
        log_s -= z_y  # each row's cross-entropy
        loss_sum = float(np.dot(log_s.astype(np.float64), weight.astype(np.float64)))
    z /= s[:, None]
    if flat_ok:
        zf.put(at, zf.take(at) - 1.0)
    else:
        z[at, y] -= 1.0
    if weight is not None:
        z *= (weight * scale)[:, None]
    elif scale != 1.0:
        z *= scale
    return loss_sum, z


def _softmax_cross_entropy_row_(
    z: np.ndarray, label: int, scale: float
) -> tuple[float, np.ndarray]:
    """:func:`softmax_cross_entropy_` for one row, on its 1-D view: the same operations in
    the same order (so the same numbers), in fewer NumPy calls (single-sample SGD)."""
    row = z[0]
    row -= np.maximum.reduce(row)
    z_y = float(row[label])
    np.exp(row, out=row)
    s = np.add.reduce(row)
    loss_sum = float(np.log(s)) - z_y
    row /= s
    row[label] -= 1.0
    if scale != 1.0:
        row *= scale
    return loss_sum, z


def softmax_cross_entropy(z: np.ndarray, y: np.ndarray, weight: np.ndarray | None = None) -> float:
    """Summed softmax cross-entropy without the gradient (``z`` is not modified).

    Parameters
    ----------
    z : ndarray (n, k)
    y : ndarray of int (n,)

    Returns
    -------
    float
        ``sum_i -log softmax(z_i)[y_i]``.
    """
    m = z.max(axis=1, keepdims=True)
    lse = np.log(np.exp(z - m).sum(axis=1)) + m[:, 0]
    if weight is not None:
        lse -= z[np.arange(z.shape[0]), y]
        return float(np.dot(lse.astype(np.float64), weight.astype(np.float64)))
    return float(
        np.sum(lse, dtype=np.float64) - np.sum(z[np.arange(z.shape[0]), y], dtype=np.float64)
    )


def binary_cross_entropy(z: np.ndarray, t: np.ndarray, weight: np.ndarray | None = None) -> float:
    """Summed binary cross-entropy of sigmoid(z) against 0/1 targets.

    Uses ``-[t log s(z) + (1-t) log(1-s(z))] = log(1 + e^z) - t z`` (``np.logaddexp``), stable
    for any ``z``.

    Parameters
    ----------
    z : ndarray (n,)
        Logits.
    t : ndarray (n,)
        Targets in {0, 1}.
    weight : ndarray (n,), optional
        Per-row weights: the sum is then weighted.

    Returns
    -------
    float
        The sum over the batch.
    """
    if weight is not None:
        per_row = np.logaddexp(0.0, z) - t.astype(z.dtype) * z
        return float(np.dot(per_row.astype(np.float64), weight.astype(np.float64)))
    return float(np.sum(np.logaddexp(0.0, z), dtype=np.float64) - np.dot(t.astype(z.dtype), z))


def penalty_value(w: np.ndarray, l1: float, l2: float) -> float:
    """``l2 * sum(w**2) + l1 * sum(|w|)`` for one parameter array."""
    value = 0.0
    if l2:
        value += l2 * float(np.vdot(w, w))
    if l1:
        value += l1 * float(np.abs(w).sum(dtype=np.float64))
    return value


def penalty_grad_(grad: np.ndarray, w: np.ndarray, l1: float, l2: float) -> np.ndarray:
    """Add the penalty's gradient ``2 l2 w + l1 sign(w)`` to ``grad`` in place.

    ``sign(0) = 0``: the subgradient of ``|w|`` at zero that keeps zero weights at zero.
    """
    if l2:
        grad += (2.0 * l2) * w
    if l1:
        grad += l1 * np.sign(w)
    return grad


_GER = {np.dtype(np.float32): sger, np.dtype(np.float64): dger}


def outer_sum(a: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """``a.T @ delta``: a weight matrix's gradient from its inputs and output gradients.

    For a single row this is an outer product, computed as one broadcast multiply: OpenBLAS
    runs the equivalent k=1 GEMM about five times slower. Both give ``a_i * delta_j`` rounded
    once, so the result is the same bit for bit. A tall, narrow product is computed as
    ``(delta.T @ a).T`` where the host's calibration found that faster (a Fortran-ordered
    result, equal to float rounding).

    Parameters
    ----------
    a : ndarray (n, p)
        The layer's inputs.
    delta : ndarray (n, q)
        dLoss/d(outputs).

    Returns
    -------
    ndarray (p, q)
    """
    if a.shape[0] == 1:
        return np.multiply(a[0][:, None], delta[0])
    if kernels.transposed(a, delta):  # faster on some CPUs (digitlab.kernels)
        return (delta.T @ a).T
    return a.T @ delta


class LinearGrad(NamedTuple):
    """A weight matrix's gradient kept in factored form: ``a.T @ delta + decay * W``.

    ``loss_and_grad_factored`` returns these instead of ``(p, q)`` arrays so that an update
    rule can apply ``W -= lr * grad`` without writing the gradient out; for one sample that is
    a single rank-1 update (:func:`rank1_update_`) instead of three passes over ``W``.

    Attributes
    ----------
    a : ndarray (n, p)
        The layer's inputs (the batch itself for the first layer: use before the next batch).
    delta : ndarray (n, q)
        dLoss/d(outputs), already scaled for a mean loss.
    decay : float
        ``2 * l2`` when ``W`` is penalised, else 0.
    """

    a: np.ndarray
    delta: np.ndarray
    decay: float = 0.0

    def dense(self, w: np.ndarray) -> np.ndarray:
        """The gradient as an array, computed as ``loss_and_grad`` does (bit for bit)."""
        grad = outer_sum(self.a, self.delta)
        if self.decay:
            grad += self.decay * w
        return grad


def rank1_update_(w: np.ndarray, x: np.ndarray, d: np.ndarray, alpha: float) -> np.ndarray:
    """``w += alpha * outer(x, d)`` in place, with BLAS ``ger`` (one pass over ``w``).

    The matrix-vector kernel of single-sample SGD: ``np.outer`` followed by ``w -= ...``
    reads and writes the ``(p, q)`` matrix three times. Agrees with that two-step formula
    to float rounding (``ger`` rounds ``alpha * d_j`` once and may fuse the multiply-add).

    Parameters
    ----------
    w : ndarray (p, q)
        C-contiguous float32 or float64 (else a plain NumPy fallback is used).
    x : ndarray (p,)
    d : ndarray (q,)
    alpha : float

    Returns
    -------
    ndarray (p, q)
        ``w`` itself.
    """
    ger = _GER.get(w.dtype)
    if ger is None or not (w.flags.c_contiguous and w.flags.writeable and w.flags.aligned):
        w += alpha * np.multiply.outer(x, d)
        return w
    # BLAS is column-major: the C-ordered (p, q) matrix is the Fortran-ordered (q, p) matrix
    # w.T, so w += alpha x d^T is w.T += alpha d x^T, updated in place (overwrite_a).
    ger(alpha, np.asarray(d, dtype=w.dtype), np.asarray(x, dtype=w.dtype), a=w.T, overwrite_a=1)
    return w
