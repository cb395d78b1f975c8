"""Exact optimum of the convex models' objective by full-batch L-BFGS (scipy.optimize)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    start_dtype: type | None = np.float32,
    chunk_rows: int = 2048,
    sample_weight: np.ndarray | None = None,
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
        Iterations of each stage.
    gtol : float
        Stop when the largest gradient component (in the solver's coordinates, below) is below
        this.
    ftol : float
        Stop when the relative decrease of the objective is below this.
    dtype : numpy dtype
        Precision of the last stage, of the returned model and of the reported objective
        (float64 for an exact optimum).
    start_dtype : numpy dtype or None
        Precision of a first stage that gets near the optimum at half the memory traffic
        (float32), stopping at ``max(gtol, 1e-5)``; the last stage continues from there.
        None: one stage in ``dtype``.
    chunk_rows : int
        Rows per block of the loss-and-gradient pass (see ``Model.loss_and_grad``).
    sample_weight : ndarray (n,), optional
        Row weights: the data term is the weighted mean (see ``Model.loss_and_grad``).

    Returns
    -------
    LBFGSResult

    Notes
    -----
    How it is fast (the objective and its optimum are unchanged):

    - Coordinates: the solver sees ``theta = (P^-1 W, b + W^T mu)`` with ``mu`` the feature
      means and ``P = (C + 2 l2 k / n_eff I)^(-1/2)``, ``C`` the features' covariance (all
      weighted rows, rounded to float32): an exact linear reparametrisation that centres and
      whitens the features, so the Hessian is close to a multiple of the identity and L-BFGS's
      scalar initial Hessian fits (on MNIST 56 iterations instead of 114; setting up ``P`` costs
      one ``d x d`` eigendecomposition). Gradients map back by the chain rule:
      ``dtheta_W = P (dW - mu db^T)``, ``dtheta_b = db``.
    - Zero entries skipped: for the stage computed in ``X``'s own dtype (float32 features
      and the default float32 start), unweighted rows of digitlab's own linear arithmetic are
      laid out once as :class:`~digitlab.models.linear.RowBlocks`, whose products skip the
      columns each block of rows leaves at zero (MNIST: 47% of the entries kept, a copy of
      that share of ``X`` held during that stage; dense features are not laid out). 60,000
      MNIST images, float32, l2 = 1e-3, 46 iterations, with the symmetric product below:
      4.82 -> 3.13 s with OpenBLAS's SandyBridge kernels, 3.66 -> 3.31 s with its Haswell
      kernels (README).
    - Precision and memory: otherwise ``X`` is never copied; chunks are converted as they are
      used. The features' second moment is one symmetric product per chunk (``syrk``).
    - Threads: SciPy's L-BFGS-B does its small vector algebra in SciPy's own OpenBLAS (wheels
      ship one beside NumPy's). Two-thread calls there leave idle threads spinning that halve
      the speed of NumPy's next matrix product (33 ms -> 70-120 ms per evaluation on two
      cores), so that library runs single-threaded during the solve and is restored after.
    """
    if not model.convex:
        raise ConfigError(f"L-BFGS is for the convex models, not {model.kind}")
    if model.l1:
        raise ConfigError("L-BFGS needs a smooth objective: set l1 to 0 (L2 is fine)")
    X = np.asarray(X)
    model.check_X(X[:1])
    y = model.check_y(y, X.shape[0])
    w = None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    model.check_weight(w, X.shape[0])
    coords = _Coordinates(model, X, chunk_rows, w)
    same = start_dtype is None or np.dtype(start_dtype) == np.dtype(dtype)
    stages = [dtype] if same else [start_dtype, dtype]
    theta = coords.to_theta(model.params)
    n_iter = 0
    with _scipy_blas_single_threaded():
        for i, stage_dtype in enumerate(stages):
            last = i == len(stages) - 1
            # the next stage's objective replaces this one's, and with it any row layout
            fun = _stage_objective(model.astype(stage_dtype), model, coords, (X, y, w), chunk_rows)
            res = minimize(
                fun,
                theta,
                jac=True,
                method="L-BFGS-B",
                options={
                    "maxiter": max_iter,
                    "gtol": gtol if last else max(gtol, 1e-5),
                    "ftol": ftol,
                    "maxcor": 20,
                },
            )
            theta, n_iter = res.x, n_iter + int(res.nit)
        result_model = model.astype(np.float64)
        for k, v in coords.params(theta).items():
            result_model.params[k][...] = v
        loss, grads = result_model.loss_and_grad(X, y, chunk_rows=chunk_rows, sample_weight=w)
    flat = np.concatenate([g.ravel() for g in grads.values()])
    return LBFGSResult(
        model=result_model,
        objective=float(loss),
        grad_norm=float(np.linalg.norm(flat)),
        n_iter=n_iter,
        converged=bool(res.success),
        message=str(res.message),
    )


def _blocked(model: Model, X: np.ndarray, w: np.ndarray | None, dtype: Any) -> bool:
    """Whether the stage computed in ``dtype`` reads ``X`` laid out in row blocks: ``X`` in
    that dtype, unweighted rows, digitlab's own linear arithmetic."""
    from digitlab.models.linear import LinearModel

    linear = isinstance(model, LinearModel) and model.own_arithmetic
    return w is None and X.dtype == np.dtype(dtype) and linear


def _stage_objective(
    m: Model, model: Model, coords: _Coordinates, data: tuple[Any, Any, Any], chunk_rows: int
) -> Callable[[np.ndarray], tuple[float, np.ndarray]]:
    """The objective and its gradient in the solver's coordinates, for one stage.

    The data term is computed by ``m`` (``model`` in the stage's precision, its penalty
    removed), from the rows laid out in blocks on its first call where :func:`_blocked` (the
    trainer's full-batch layout, :class:`~digitlab.train.batching.BlockedFullBatch`, which
    keeps the chunked products for dense features); the penalty, cheap, in float64 from theta
    (a float32 penalty adds rounding noise to f that stalls the line search near the optimum).
    """
    from digitlab.train.batching import BlockedFullBatch

    X, y, w = data
    l2, penalized = model.l2, model.penalized
    m.l2 = 0.0

    def chunked(X: np.ndarray, y: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
        return m.loss_and_grad(X, y, chunk_rows=chunk_rows, sample_weight=w)

    data_term = BlockedFullBatch(m, X, chunked) if _blocked(model, X, w, m.dtype) else chunked

    def fun(t: np.ndarray) -> tuple[float, np.ndarray]:
        params = coords.params(t)
        for k, v in params.items():
            m.params[k][...] = v
        loss, grads = data_term(X, y)
        grads = {k: g.astype(np.float64) for k, g in grads.items()}
        for k in penalized:
            loss += l2 * float(np.vdot(params[k], params[k]))
            grads[k] += (2.0 * l2) * params[k]
        return loss, coords.grad_to_theta(grads)

    return fun


_FLOOR = 0.1  # eigenvalue floor relative to the mean eigenvalue (matters for tiny l2)


class _Coordinates:
    """The solver's coordinates ``theta = (P^-1 W, b + W^T mu)`` (see :func:`lbfgs`).

    ``P = (C + r I)^(-1/2)`` with ``C`` the features' covariance (second moment without a
    bias) and ``r = 2 l2 k / n_eff`` the penalty's share of the Hessian, so the objective's
    Hessian in ``theta`` is close to a multiple of the identity. ``r`` is at least ``_FLOOR``
    times the mean eigenvalue of ``C``: with little or no penalty, directions the data hardly
    vary in would otherwise be stretched without bound (an unpenalised 4,000-image fit then
    stalled). For ``d > MAX_WHITEN`` features only the diagonal of ``C`` is used.
    """

    MAX_WHITEN = 2048

    def __init__(
        self, model: Model, X: np.ndarray, chunk_rows: int, weight: np.ndarray | None = None
    ) -> None:
        n, d = X.shape
        self.has_b = "b" in model.params
        self.shapes = {k: v.shape for k, v in model.params.items()}
        full = d <= self.MAX_WHITEN
        # weighted moments of every row: a row of weight 2 counts as two rows, so the solver
        # takes the same path on weighted and on repeated rows
        s1, m = np.zeros(d), 0.0
        s2 = np.zeros((d, d)) if full else np.zeros(d)
        # float32 GEMMs for float32 (or integer) features, float64 ones for float64 features
        dtype = np.float64 if X.dtype == np.float64 else np.float32
        for start in range(0, n, chunk_rows):
            block = X[start : start + chunk_rows].astype(dtype, copy=False)
            if weight is None:  # block.T @ block is one symmetric product (BLAS syrk): half
                wblock, m = block, m + block.shape[0]  # the multiply-adds of a general one
            else:
                w = weight[start : start + chunk_rows].astype(dtype)
                wblock, m = block * w[:, None], m + float(w.sum(dtype=np.float64))
            s1 += wblock.sum(axis=0, dtype=np.float64)  # blocks summed in float64
            s2 += wblock.T @ block if full else np.einsum("ij,ij->j", wblock, block)
        # rounded to float32: rounding noise of the sums (another row order, a weight 2 for a
        # repeated row, the symmetric product of unweighted rows) then mostly leaves the
        # coordinates unchanged, and with them the solver's path
        mean = (s1 / m).astype(np.float32).astype(np.float64)
        cov = (s2 / m).astype(np.float32).astype(np.float64)
        if self.has_b:  # centred: the bias absorbs the mean
            cov = cov - (np.outer(mean, mean) if full else mean**2)
        k = max(model.n_classes, 2)
        n_eff = n if model.reduction == "sum" else 1
        ridge = 2.0 * model.l2 * k / n_eff
        if full:
            lam, U = np.linalg.eigh(cov)
            lam = lam.clip(min=0.0) + max(ridge, _FLOOR * max(lam.mean(), 1e-300))
            self.P = (U / np.sqrt(lam)) @ U.T  # (C + r I)^(-1/2), symmetric
            self.P_inv = (U * np.sqrt(lam)) @ U.T
        else:
            lam = cov.clip(min=0.0) + max(ridge, _FLOOR * max(cov.mean(), 1e-300))
            self.P, self.P_inv = np.diag(1.0 / np.sqrt(lam)), np.diag(np.sqrt(lam))
        self.mu = mean[:, None] if self.has_b else np.zeros((d, 1))  # (d, 1)

    def to_theta(self, params: dict[str, np.ndarray]) -> np.ndarray:
        W = params["W"].astype(np.float64)
        parts = [(self.P_inv @ W).ravel()]
        if self.has_b:
            parts.append(params["b"] + (self.mu * W).sum(axis=0))  # c = b + W^T mu
        return np.concatenate(parts)

    def params(self, theta: np.ndarray) -> dict[str, np.ndarray]:
        """The float64 parameters ``W = P theta_W``, ``b = theta_b - W^T mu``."""
        size = int(np.prod(self.shapes["W"]))
        W = self.P @ theta[:size].reshape(self.shapes["W"])
        if not self.has_b:
            return {"W": W}
        return {"W": W, "b": theta[size:] - (self.mu * W).sum(axis=0)}

    def grad_to_theta(self, grads: dict[str, np.ndarray]) -> np.ndarray:
        """Chain rule: ``dtheta_W = P^T (dW - mu db^T)``, ``dtheta_b = db``."""
        gW = grads["W"].astype(np.float64)
        if not self.has_b:
            return (self.P.T @ gW).ravel()
        gb = grads["b"].astype(np.float64)
        return np.concatenate([(self.P.T @ (gW - self.mu * gb)).ravel(), gb])


@contextlib.contextmanager
def _scipy_blas_single_threaded() -> Iterator[None]:
    """Run SciPy's own BLAS library (when it is not NumPy's) on one thread inside the block."""
    try:
        import scipy
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        yield
        return
    scipy_dir = str(Path(scipy.__file__).resolve().parent.parent / "scipy.libs")
    controller = ThreadpoolController()
    paths = [
        c.filepath
        for c in controller.lib_controllers
        if c.user_api == "blas" and str(c.filepath).startswith(scipy_dir)
    ]
    if not paths:
        yield
        return
    with controller.select(filepath=paths).limit(limits=1):
        yield
