"""Numerical gradient check by central differences (source 004, task 2 / 3)."""

from __future__ import annotations

from typing import Any

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
    """Central difference ``(E(p + eps) - E(p - eps)) / (2 eps)`` for one parameter entry;
    NaN when the two evaluations lie on two sides of a kink of a ReLU unit (the difference then
    measures no derivative)."""
    p = model.params[key]
    old = p[index].copy()
    kinks = getattr(model, "kink_pattern", lambda X, rng: None)
    p[index] = old + eps
    plus, above = training_loss(model, X, y), kinks(X, np.random.default_rng(MASK_SEED))
    p[index] = old - eps
    minus, below = training_loss(model, X, y), kinks(X, np.random.default_rng(MASK_SEED))
    p[index] = old
    if above is not None and not np.array_equal(above, below):
        return float("nan")
    return (plus - minus) / (2.0 * eps)


#: Seed of the dropout masks of a gradient check: every evaluation draws the same masks.
MASK_SEED = 0


def training_loss(model: Model, X: np.ndarray, y: np.ndarray) -> float:
    """The objective that :meth:`Model.loss_and_grad` differentiates (batch statistics, the
    dropout masks of :data:`MASK_SEED`)."""
    return model.loss(X, y, training=True, rng=np.random.default_rng(MASK_SEED))


def gradcheck(model: Model, X: np.ndarray, y: np.ndarray, **options: Any) -> float:
    """Largest absolute difference between analytic and central-difference gradients.

    The check runs on a copy of ``model`` converted to ``dtype`` (float64 by default), so the
    model itself is untouched. The central-difference error is ``O(eps**2)``. ``options`` are
    those of :func:`gradcheck_arrays` (``eps``, ``n_checks``, ``rng``, ``dtype``).

    Returns
    -------
    float
        ``max |numerical - analytic|`` over the checked entries of every array.
    """
    per_array = gradcheck_arrays(model, X, y, **options)
    return max(abs_err for abs_err, _ in per_array.values())


def gradcheck_arrays(
    model: Model,
    X: np.ndarray,
    y: np.ndarray,
    eps: float = 1e-2,
    n_checks: int | None = None,
    rng: np.random.Generator | int | None = None,
    dtype: type = np.float64,
) -> dict[str, tuple[float, float]]:
    """Analytic against central-difference gradients, per parameter array.

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
    dict
        ``key -> (max |numerical - analytic|, relative error)`` where the relative error is
        ``max |n - a| / max(|n| + |a|, 1e-12)`` over the checked entries of that array
        (entries whose difference crosses a ReLU kink are left out).
    """
    if not eps > 0:
        raise ConfigError(f"eps must be > 0, got {eps}")
    m = model.astype(dtype)
    X = np.asarray(X, dtype=dtype)
    gen = as_generator(rng)
    kw = {"rng": np.random.default_rng(MASK_SEED)} if m.uses_rng else {}
    _, grads = m.loss_and_grad(X, y, **kw)
    out = {}
    for key, p in m.params.items():
        flat = np.arange(p.size)
        if n_checks is not None and n_checks < p.size:
            flat = gen.choice(p.size, size=n_checks, replace=False)
        worst = rel = 0.0
        for f in flat:
            index = np.unravel_index(int(f), p.shape)
            num = numerical_grad(m, X, y, key, index, eps)
            if np.isnan(num):  # a kink between p - eps and p + eps
                continue
            ana = float(grads[key][index])
            worst = max(worst, abs(num - ana))
            rel = max(rel, abs(num - ana) / max(abs(num) + abs(ana), 1e-12))
        out[key] = (worst, rel)
    return out
