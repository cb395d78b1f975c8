"""Exact optimum of the convex models' objective by full-batch L-BFGS (scipy.optimize)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize

from digitlab.errors import ConfigError
from digitlab.models.base import Model


@dataclass(frozen=True)
class LBFGSResult:
    """What :func:`lbfgs` found.

    Attributes
    ----------
    model : Model
        A float64 copy of the input model holding the optimum.
    objective : float
        The objective (cross-entropy + penalty) at the optimum.
    grad_norm : float
        Euclidean norm of the gradient there.
    n_iter : int
    converged : bool
    message : str
    """

    model: Model
    objective: float
    grad_norm: float
    n_iter: int
    converged: bool
    message: str


def lbfgs(
    model: Model,
    X: np.ndarray,
    y: np.ndarray,
    *,
    max_iter: int = 1000,
    gtol: float = 1e-6,
    ftol: float = 1e-15,
    dtype: type = np.float64,
) -> LBFGSResult:
    """Minimise the model's objective over the whole of ``(X, y)``.

    Parameters
    ----------
    model : LogisticModel or SoftmaxModel
        Its ``l2``, ``reduction`` and ``regularize_bias`` define the objective; its current
        parameters are the starting point. L1 is not smooth, so ``l1`` must be 0.
    X : ndarray (n, d)
    y : ndarray of int (n,)
    max_iter : int
    gtol : float
        Stop when the largest gradient component is below this.
    ftol : float
        Stop when the relative decrease of the objective is below this.
    dtype : numpy dtype
        Arithmetic precision of the objective (float64 for an exact optimum).

    Returns
    -------
    LBFGSResult
    """
    if model.kind not in ("logistic", "softmax"):
        raise ConfigError(f"L-BFGS is for the convex models (logistic, softmax), not {model.kind}")
    if model.l1:
        raise ConfigError("L-BFGS needs a smooth objective: set l1 to 0 (L2 is fine)")
    m = model.astype(dtype)
    X = m.check_X(X)
    y = m.check_y(y, X.shape[0])

    def fun(theta: np.ndarray) -> tuple[float, np.ndarray]:
        m.set_flat(theta)
        loss, grads = m.loss_and_grad(X, y)
        return loss, np.concatenate([g.ravel() for g in grads.values()]).astype(np.float64)

    res = minimize(
        fun,
        m.get_flat(),
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": max_iter, "gtol": gtol, "ftol": ftol, "maxcor": 20},
    )
    m.set_flat(res.x)
    loss, grad = fun(res.x)
    return LBFGSResult(
        model=m,
        objective=float(loss),
        grad_norm=float(np.linalg.norm(grad)),
        n_iter=int(res.nit),
        converged=bool(res.success),
        message=str(res.message),
    )
