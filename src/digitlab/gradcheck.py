"""Numerical gradient check by central differences (source 004, task 2 / 3)."""

from __future__ import annotations

import numpy as np

from digitlab.errors import ConfigError
from digitlab.models.base import Model, as_generator


def numerical_grad(
    model: Model,
    X: np.ndarray,
    y: np.ndarray,
    key: str,
    index: tuple[int, ...],
    eps: float,
) -> float:
    """Central difference ``(E(p + eps) - E(p - eps)) / (2 eps)`` for one parameter entry."""
    p = model.params[key]
    old = p[index].copy()
    p[index] = old + eps
    plus = model.loss(X, y)
    p[index] = old - eps
    minus = model.loss(X, y)
    p[index] = old
    return (plus - minus) / (2.0 * eps)


def gradcheck(
    model: Model,
    X: np.ndarray,
    y: np.ndarray,
    eps: float = 1e-2,
    n_checks: int | None = None,
    rng: np.random.Generator | int | None = None,
    dtype: type = np.float64,
) -> float:
    """Largest absolute difference between analytic and central-difference gradients.

    The check runs on a copy of ``model`` converted to ``dtype`` (float64 by default), so the
    model itself is untouched. The central-difference error is ``O(eps**2)``.

    Parameters
    ----------
    model : Model
    X : ndarray (n, d)
    y : ndarray of int (n,)
    eps : float
        Finite-difference step.
    n_checks : int, optional
        Check this many entries of each parameter array, drawn with ``rng``; all when None.
    rng : Generator or int or None
    dtype : numpy dtype

    Returns
    -------
    float
        ``max |numerical - analytic|`` over the checked entries.
    """
    if not eps > 0:
        raise ConfigError(f"eps must be > 0, got {eps}")
    m = model.astype(dtype)
    X = np.asarray(X, dtype=dtype)
    gen = as_generator(rng)
    _, grads = m.loss_and_grad(X, y)
    worst = 0.0
    for key, p in m.params.items():
        flat = np.arange(p.size)
        if n_checks is not None and n_checks < p.size:
            flat = gen.choice(p.size, size=n_checks, replace=False)
        for f in flat:
            index = np.unravel_index(int(f), p.shape)
            num = numerical_grad(m, X, y, key, index, eps)
            worst = max(worst, abs(num - float(grads[key][index])))
    return worst
