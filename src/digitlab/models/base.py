"""The model contract shared by the logistic, softmax and MLP models.

A model owns a dict of parameter arrays and nothing else between calls: every method is a pure
function of ``(params, X, y)``. The objective of every model is

    E = L(X, y) + l2 * sum_W ||W||^2 + l1 * sum_W |W|

where ``L`` is the cross-entropy, a mean over the batch (``reduction="mean"``) or a sum
(``reduction="sum"``: summed gradients), and the sums run over the weight matrices (biases too
when ``regularize_bias=True``).

A model's *state* is its trained parameters and any buffers it keeps beside them (arrays that
are not trained, such as running statistics): :meth:`Model.state` and :meth:`Model.load_state`
are what checkpoints and early stopping save and restore, and :meth:`Model.state_shapes` tells
a reader the shapes a config implies before any array is read.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import numpy as np

from digitlab.errors import CheckpointError, ConfigError, ShapeError
from digitlab.models.functional import (
    LinearGrad,
    binary_cross_entropy,
    penalty_grad_,
    penalty_value,
    softmax_cross_entropy,
)
from digitlab.threads import fit_threads, map_in_order

#: How the cross-entropy of a batch is reduced: name -> meaning.
REDUCTIONS: dict[str, str] = {"mean": "averaged over the batch", "sum": "summed over the batch"}
#: Weight initialisations (biases start at zero): name -> distribution.
INITS: dict[str, str] = {
    "zeros": "all zeros",
    "normal": "N(0, 1)",
    "fan_in": "N(0, 1/fan_in)",
    "uniform": "U(-1, 1)",
    "lecun_normal": "N(0, 1/fan_in) (LeCun et al. 1998; the same draw as fan_in)",
    "glorot_uniform": "U(-r, r), r = sqrt(6/(fan_in + fan_out)) (Glorot & Bengio 2010)",
    "glorot_normal": "N(0, 2/(fan_in + fan_out)) (Glorot & Bengio 2010)",
    "he_uniform": "U(-r, r), r = sqrt(6/((1 + a^2) fan_in)), a the leaky slope (He et al. 2015)",
    "he_normal": "N(0, 2/((1 + a^2) fan_in)), a the leaky slope (He et al. 2015)",
}
#: Floating-point precisions of the parameters: name -> use.
DTYPES: dict[str, str] = {"float32": "the fast path", "float64": "gradient checks, exact optima"}

#: A full batch's row blocks run side by side on the fit's threads when a block's products do
#: at least this many multiply-adds (below, the threads' hand-overs cost more than they save).
PARALLEL_BLOCK_MACS = 32_000_000


def as_generator(rng: np.random.Generator | int | None) -> np.random.Generator:
    """Return ``rng`` if it is a Generator, else a new Generator seeded with it."""
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


def init_weight(
    shape: tuple[int, int],
    method: str,
    rng: np.random.Generator,
    dtype: np.dtype,
    slope: float = 0.0,
) -> np.ndarray:
    """Draw an initial weight matrix.

    Parameters
    ----------
    shape : (fan_in, fan_out)
    method : str
        A key of :data:`INITS`.
    rng : numpy.random.Generator
    dtype : numpy dtype
    slope : float
        The negative slope ``a`` of a leaky ReLU after the layer (He initialisation's gain
        ``sqrt(2 / (1 + a^2))``; 0 for a ReLU).

    Returns
    -------
    ndarray (fan_in, fan_out)
    """
    fan_in, fan_out = shape
    if method == "zeros":
        return np.zeros(shape, dtype=dtype)
    if method == "normal":
        return rng.standard_normal(shape).astype(dtype)
    if method in ("fan_in", "lecun_normal"):
        return (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(dtype)
    if method == "uniform":
        return rng.uniform(-1.0, 1.0, shape).astype(dtype)
    glorot, he = 2.0 / (fan_in + fan_out), 2.0 / ((1.0 + slope**2) * fan_in)
    variance = {"glorot_uniform": glorot, "glorot_normal": glorot}.get(method, he)
    if method in ("glorot_normal", "he_normal"):
        return (rng.standard_normal(shape) * np.sqrt(variance)).astype(dtype)
    if method in ("glorot_uniform", "he_uniform"):  # U(-r, r) has variance r^2 / 3
        r = np.sqrt(3.0 * variance)
        return rng.uniform(-r, r, shape).astype(dtype)
    raise ConfigError(f"init={method!r} is not one of {', '.join(INITS)}")


def config_size(config: dict[str, Any], key: str) -> int:
    """``config[key]``, checked to be a whole number >= 1 (a layer or input size)."""
    v = config.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ConfigError(f"model {key} must be a whole number >= 1, got {v!r}")
    return v


def _check_nonneg(name: str, value: float) -> float:
    value = float(value)
    if not np.isfinite(value) or value < 0:
        raise ConfigError(f"{name} must be a finite number >= 0, got {value}")
    return value


def own_methods(obj: object, base: type, names: Iterable[str]) -> bool:
    """Whether each method in ``names`` of ``obj`` is ``base``'s own: not overridden by
    ``obj``'s class nor replaced on the instance (with ``base = type(obj)``, only a replacement
    on the instance counts). Callers use faster relatives of such methods knowing they compute
    the same thing."""
    replaced = getattr(obj, "__dict__", {})
    return all(
        name not in replaced and getattr(type(obj), name, None) is getattr(base, name, None)
        for name in names
    )


class Model:
    """Base class: parameters, penalty, validation and the flat view used by L-BFGS.

    Subclasses set ``kind`` and implement ``logits``, ``forward``, ``_data_loss_and_grad``,
    ``_data_loss_sum`` and :meth:`state_shapes`; a subclass that keeps buffers creates them in
    ``self.buffers`` and lists them in :meth:`state_shapes`.

    Parameters
    ----------
    l1, l2 : float
        Penalty strengths (the reports' lambda).
    reduction : {"mean", "sum"}
        Whether the cross-entropy is averaged or summed over the batch.
    regularize_bias : bool
        Whether the penalty also covers the bias vectors.
    dtype : numpy dtype
        float32 (default, the fast path) or float64 (for gradient checks and exact optima).
    """

    kind: ClassVar[str] = ""
    #: Whether the objective is convex in the parameters (L-BFGS then finds the optimum).
    convex: ClassVar[bool] = False
    #: The parameter whose rows are the input pixels, drawable as images (None: not drawable).
    image_weights: ClassVar[str | None] = None
    #: What that matrix's columns are: ``"pair"`` (one column, positive vs negative class),
    #: ``"class"`` (one per class) or ``"unit"`` (one per hidden unit).
    image_columns: ClassVar[str] = ""

    @classmethod
    def settings_kwargs(cls, settings: Any) -> dict[str, Any]:
        """Constructor keywords shared by every model, read from a run's settings.

        ``settings`` has the attributes of :class:`digitlab.settings.Settings` (``l1``,
        ``l2``, ``reduction``, ``regularize_bias``, ``dtype``, ``init``; ``init=None`` keeps
        the model's default).
        """
        kw = {name: getattr(settings, name) for name in ("l1", "l2", "reduction", "dtype")}
        kw["regularize_bias"] = settings.regularize_bias
        if settings.init is not None:
            kw["init"] = settings.init
        return kw

    @classmethod
    def from_settings(
        cls, settings: Any, n_features: int, n_classes: int, rng: np.random.Generator
    ) -> Model:  # pragma: no cover - abstract
        """The model a run's ``settings`` describe for ``n_features`` inputs and ``n_classes``."""
        raise NotImplementedError

    @classmethod
    def state_shapes(cls, config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
        """Shape of every state array (parameters and buffers) a :meth:`config` implies.

        Raises
        ------
        ConfigError
            A size in ``config`` is missing or not a whole number >= 1.
        """
        raise NotImplementedError  # pragma: no cover - abstract

    def __init__(
        self,
        *,
        l1: float = 0.0,
        l2: float = 0.0,
        reduction: str = "mean",
        regularize_bias: bool = False,
        dtype: Any = np.float32,
    ) -> None:
        self.l1 = _check_nonneg("l1", l1)
        self.l2 = _check_nonneg("l2", l2)
        if reduction not in REDUCTIONS:
            raise ConfigError(f"reduction={reduction!r} is not one of {', '.join(REDUCTIONS)}")
        self.reduction = reduction
        self.regularize_bias = bool(regularize_bias)
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise ConfigError(f"dtype must be float32 or float64, got {self.dtype}")
        self.params: dict[str, np.ndarray] = {}
        #: Arrays kept beside the parameters and never trained (none in the built-in models).
        self.buffers: dict[str, np.ndarray] = {}
        self.n_features = 0
        self.n_classes = 0

    # ----------------------------------------------------------------- subclass hooks
    def logits(self, X: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, X: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def _data_loss_and_grad(
        self,
        X: np.ndarray,
        y: np.ndarray,
        scale: float,
        factored: bool = False,
        weight: np.ndarray | None = None,
        rng: np.random.Generator | None = None,
    ) -> tuple[float, dict[str, Any]]:  # pragma: no cover - abstract
        """Summed cross-entropy over the batch (training mode) and ``scale`` times its gradient.

        With ``factored`` the weight matrices' entries are :class:`LinearGrad` (no penalty).
        With ``weight (n,)`` each row's term is multiplied by its weight. ``rng`` draws what
        training draws (dropout masks); None: nothing is dropped.
        """
        raise NotImplementedError

    def _data_loss_sum(
        self,
        X: np.ndarray,
        y: np.ndarray,
        weight: np.ndarray | None = None,
        training: bool = False,
        rng: np.random.Generator | None = None,
    ) -> float:  # pragma: no cover
        raise NotImplementedError

    @property
    def batch_coupled(self) -> bool:
        """Whether a row's output depends on the other rows of its training batch (batch
        normalisation): such a batch cannot be split into blocks or stacked with others."""
        return False

    @property
    def uses_rng(self) -> bool:
        """Whether training draws random numbers (dropout): pass ``rng`` to the gradient."""
        return False

    def config(self) -> dict[str, Any]:
        """JSON-able hyperparameters from which :func:`digitlab.models.build_model` rebuilds."""
        return {
            "kind": self.kind,
            "n_features": self.n_features,
            "n_classes": self.n_classes,
            "l1": self.l1,
            "l2": self.l2,
            "reduction": self.reduction,
            "regularize_bias": self.regularize_bias,
            "dtype": self.dtype.name,
        }

    # ----------------------------------------------------------------- public API
    @property
    def penalized(self) -> list[str]:
        """Names of the parameters the penalty covers."""
        return [k for k in self.params if k.startswith("W") or self.regularize_bias]

    @property
    def weights(self) -> list[str]:
        """Names of the weight matrices (not the biases)."""
        return [k for k in self.params if k.startswith("W")]

    def penalty(self) -> float:
        """``l2 * sum(W**2) + l1 * sum(|W|)`` over the penalized parameters."""
        if not (self.l1 or self.l2):
            return 0.0
        return sum(penalty_value(self.params[k], self.l1, self.l2) for k in self.penalized)

    def weight_norm(self) -> float:
        """L2 norm of all weight matrices together (biases excluded)."""
        return float(
            np.sqrt(sum(float(np.vdot(self.params[k], self.params[k])) for k in self.weights))
        )

    def state(self) -> dict[str, np.ndarray]:
        """Parameters and buffers by name (the arrays themselves, not copies)."""
        return self.params | self.buffers

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        """Copy ``arrays`` (name -> array, as :meth:`state` gives) into the model's state.

        Raises
        ------
        CheckpointError
            The names or a shape differ from the model's.
        """
        state = self.state()
        if set(arrays) != set(state):
            raise CheckpointError(
                f"array names {sorted(arrays)} do not fit this {self.kind} model's state "
                f"{sorted(state)}"
            )
        for k, v in arrays.items():
            if np.shape(v) != state[k].shape:
                raise CheckpointError(
                    f"array {k} has shape {np.shape(v)}, the model expects {state[k].shape}"
                )
            state[k][...] = v

    def loss_and_grad(
        self,
        X: np.ndarray,
        y: np.ndarray,
        *,
        chunk_rows: int | None = None,
        sample_weight: np.ndarray | None = None,
        weight_total: float | None = None,
        rng: np.random.Generator | None = None,
    ) -> tuple[float, dict[str, np.ndarray]]:
        """The regularised objective and its gradient, in training mode.

        Parameters
        ----------
        X : ndarray (n, d)
        y : ndarray of int (n,)
        chunk_rows : int, optional
            Work through the rows in blocks of this many, summing the blocks' losses and
            gradients: a block is still in cache when the gradient's product reads it again
            (one pass over ``X`` from memory instead of two), and ``X`` is converted to the
            model's dtype a block at a time (no full copy). Equal to the one-block result
            up to the order of float summation.
        sample_weight : ndarray (n,), optional
            Non-negative row weights ``w``: the cross-entropy becomes the weighted mean
            ``sum_i w_i l_i / sum_i w_i`` (``reduction="mean"``; a batch whose weights sum
            to 0 contributes nothing) or the weighted sum (``"sum"``), and so its gradient.
            Integer weights equal repeating rows. Converted to the model's dtype.
        weight_total : float, optional
            With ``sample_weight`` and ``reduction="mean"``, what the weighted sum is divided
            by instead of ``sum(sample_weight)``: the trainer passes ``rows * mean weight of
            the training set``, making a mini-batch's loss an unbiased estimate of the
            weighted mean over all rows (equal to it for the full batch).
        rng : Generator, optional
            Draws the dropout masks of a model with dropout (None: nothing dropped). A model
            with batch normalisation also updates its running statistics here.

        Returns
        -------
        loss : float
            Cross-entropy (mean or sum over the batch, see ``reduction``) plus the penalty.
        grads : dict of ndarray
            Same keys and shapes as ``params``.
        """
        if chunk_rows is not None and np.shape(X)[0] > chunk_rows and not self.batch_coupled:
            return self._chunked_loss_and_grad(
                X, y, int(chunk_rows), sample_weight, weight_total, rng
            )
        return self._loss_and_grad(X, y, False, sample_weight, weight_total, rng)

    def loss_and_grad_factored(
        self,
        X: np.ndarray,
        y: np.ndarray,
        sample_weight: np.ndarray | None = None,
        weight_total: float | None = None,
        rng: np.random.Generator | None = None,
    ) -> tuple[float, dict[str, np.ndarray | LinearGrad]]:
        """:meth:`loss_and_grad` with the weight matrices' gradients left in factored form.

        Each ``W`` entry is a :class:`~digitlab.models.functional.LinearGrad`
        ``(a, delta, decay)`` meaning ``a.T @ delta + decay * W`` (``LinearGrad.dense`` gives
        the array :meth:`loss_and_grad` returns, bit for bit); biases stay arrays. With an L1
        penalty every entry is an array. The factors reference ``X``: use them before ``X``
        is overwritten (the trainer applies them at once, see :class:`~digitlab.optim.SGD`).
        """
        return self._loss_and_grad(X, y, not self.l1, sample_weight, weight_total, rng)

    def _loss_and_grad(
        self,
        X: np.ndarray,
        y: np.ndarray,
        factored: bool,
        sample_weight: Any = None,
        weight_total: float | None = None,
        rng: np.random.Generator | None = None,
    ) -> tuple[float, dict[str, Any]]:
        X = self.check_X(X)
        y = self.check_y(y, X.shape[0])
        w = self.check_weight(sample_weight, X.shape[0])
        scale = self._scale(X.shape[0], w, weight_total)
        loss_sum, grads = self._data_loss_and_grad(X, y, scale, factored, w, rng)
        loss = loss_sum * scale
        if self.l1 or self.l2:
            for k in self.penalized:
                g = grads[k]
                if isinstance(g, LinearGrad):  # only without L1: the penalty is l2 * W**2
                    grads[k] = g._replace(decay=2.0 * self.l2)
                else:
                    penalty_grad_(g, self.params[k], self.l1, self.l2)
            loss += self.penalty()
        return loss, grads

    def _scale(self, n: int, w: np.ndarray | None, total: float | None = None) -> float:
        """Factor of the summed data term: 1 (sum), ``1/n`` or ``1/sum(w)`` (mean)."""
        if self.reduction != "mean":
            return 1.0
        if w is None:
            return 1.0 / n
        if total is None:
            total = float(np.add.reduce(w, dtype=np.float64))
        return 1.0 / total if total > 0 else 0.0

    def _chunked_loss_and_grad(
        self,
        X: np.ndarray,
        y: np.ndarray,
        chunk: int,
        sample_weight: Any = None,
        weight_total: float | None = None,
        rng: np.random.Generator | None = None,
    ) -> tuple[float, dict[str, np.ndarray]]:
        X = np.asarray(X)
        self.check_X(X[:1])  # shape checks without converting all of X
        n = X.shape[0]
        y = self.check_y(y, n)
        w = self.check_weight(sample_weight, n)
        scale = self._scale(n, w, weight_total)
        loss_sum, grads = 0.0, {k: np.zeros_like(v) for k, v in self.params.items()}

        def block(start: int) -> tuple[float, dict[str, Any]]:
            Xb = self.check_X(X[start : start + chunk])
            wb = None if w is None else w[start : start + chunk]
            return self._data_loss_and_grad(Xb, y[start : start + chunk], scale, False, wb, rng)

        starts = range(0, n, chunk)
        threads = min(fit_threads(), len(starts) // 2)
        macs = min(chunk, n) * sum(int(v.size) for v in self.params.values())
        side_by_side = (
            threads > 1 and self.parallel_blocks and rng is None and macs >= PARALLEL_BLOCK_MACS
        )
        parts = map_in_order(block, starts, threads) if side_by_side else map(block, starts)
        for part, g in parts:  # summed in the blocks' order whichever thread computed them
            loss_sum += part
            for k, v in g.items():
                grads[k] += v
        return self.add_penalty(loss_sum * scale, grads)

    def add_penalty(self, loss: float, grads: dict[str, np.ndarray]) -> tuple[float, dict]:
        """``loss`` plus the penalty, and the penalty's gradient added to ``grads`` in place.

        ``grads`` holds plain arrays (not factored), shaped like ``params``.
        """
        if self.l1 or self.l2:
            for k in self.penalized:
                penalty_grad_(grads[k], self.params[k], self.l1, self.l2)
            loss += self.penalty()
        return loss, grads

    def loss(
        self,
        X: np.ndarray,
        y: np.ndarray,
        *,
        penalty: bool = True,
        sample_weight: np.ndarray | None = None,
        training: bool = False,
        rng: np.random.Generator | None = None,
    ) -> float:
        """The objective without its gradient (``penalty=False``: cross-entropy alone).

        ``sample_weight (n,)`` weights the rows as in :meth:`loss_and_grad`. ``training``
        computes what :meth:`loss_and_grad` optimises (batch statistics, dropout masks drawn
        from ``rng``) without updating running statistics; else the evaluation-mode value.
        """
        X = self.check_X(X)
        y = self.check_y(y, X.shape[0])
        w = self.check_weight(sample_weight, X.shape[0])
        value = self._data_loss_sum(X, y, w, training, rng)
        if self.reduction == "mean":
            value = value / X.shape[0] if w is None else value * self._scale(X.shape[0], w)
        return value + (self.penalty() if penalty else 0.0)

    def loss_sum_and_correct(
        self, X: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None
    ) -> tuple[float, float]:
        """Summed cross-entropy (no penalty) and number of correct predictions, one pass.

        Parameters
        ----------
        X : ndarray (n, d)
        y : ndarray of int (n,)
        sample_weight : ndarray (n,), optional
            Row weights: both sums are then weighted.

        Returns
        -------
        loss_sum : float
        n_correct : int (float when weighted)
        """
        y = self.check_y(y, np.shape(X)[0])
        w = self.check_weight(sample_weight, y.shape[0])
        return logits_loss_sum_and_correct(self.logits(X), y, w)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Most probable class of each row.

        Parameters
        ----------
        X : ndarray (n, d)

        Returns
        -------
        ndarray of int64 (n,)
        """
        z = self.logits(X)
        if z.ndim == 1:
            return (z > 0).astype(np.int64)
        return z.argmax(axis=1)

    def accuracy(self, X: np.ndarray, y: np.ndarray) -> float:
        """Fraction of rows whose predicted class equals ``y``."""
        return float(np.mean(self.predict(X) == np.asarray(y)))

    @property
    def parallel_blocks(self) -> bool:
        """Whether row blocks of a full batch may be computed side by side on threads: the
        gradient is the class's own and touches no state of the model (see
        :class:`~digitlab.models.linear.LinearModel`)."""
        return False

    @property
    def own_gradient(self) -> bool:
        """Whether :meth:`loss_and_grad` is this class's own (not replaced on the instance or
        overridden by a subclass): callers may then use its faster relatives (factored or
        stacked gradients) knowing they compute the same thing."""
        return own_methods(self, Model, ("loss_and_grad",))

    def copy(self) -> Model:
        """A deep copy (parameters and buffers copied)."""
        from digitlab.models import build_model

        return build_model(self.config(), self.state())  # load_state copies the arrays

    def astype(self, dtype: Any) -> Model:
        """A copy whose parameters and arithmetic use ``dtype``."""
        cfg = self.config() | {"dtype": np.dtype(dtype).name}
        from digitlab.models import build_model

        return build_model(cfg, self.state())  # load_state copies, cast to dtype

    # ----------------------------------------------------------------- flat view (L-BFGS)
    def get_flat(self) -> np.ndarray:
        """All parameters concatenated into one float64 vector (key order of ``params``)."""
        return np.concatenate([v.ravel() for v in self.params.values()]).astype(np.float64)

    def set_flat(self, theta: np.ndarray) -> None:
        """Inverse of :meth:`get_flat`: write a flat vector back into ``params``."""
        offset = 0
        for v in self.params.values():
            v[...] = theta[offset : offset + v.size].reshape(v.shape)
            offset += v.size
        if offset != theta.size:
            raise ShapeError(f"flat parameter vector has {theta.size} values, model has {offset}")

    # ----------------------------------------------------------------- validation
    def check_X(self, X: np.ndarray) -> np.ndarray:
        """Validate ``X (n, d)`` and return it in the model's dtype (no copy if it already is)."""
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ShapeError(
                f"X must have shape (n, {self.n_features}) for this {self.kind} model, "
                f"got {X.shape}"
            )
        if X.shape[0] == 0:
            raise ShapeError("X has no rows")
        if X.dtype != self.dtype:
            X = X.astype(self.dtype)
        return X

    def check_weight(self, sample_weight: Any, n: int) -> np.ndarray | None:
        """Validate row weights ``(n,)``: finite and >= 0; returned in the model's dtype.

        None stays None (every row weighs 1).
        """
        if sample_weight is None:
            return None
        w = np.asarray(sample_weight)
        if w.shape != (n,):
            raise ShapeError(f"sample_weight must have shape ({n},) to match X, got {w.shape}")
        if w.dtype.kind not in "iuf":
            raise ShapeError(f"sample_weight must hold numbers, got dtype {w.dtype}")
        w = w.astype(self.dtype, copy=False)
        if not np.isfinite(w).all() or (w < 0).any():
            raise ShapeError("sample_weight must be finite and >= 0")
        return w

    def check_y(self, y: np.ndarray, n: int) -> np.ndarray:
        """Validate integer labels ``y (n,)`` in ``[0, n_classes)``."""
        y = np.asarray(y)
        if y.shape != (n,):
            raise ShapeError(f"y must have shape ({n},) to match X, got {y.shape}")
        if y.dtype.kind not in "iu":  # not an integer dtype
            if y.dtype.kind == "f" and np.all(np.mod(y, 1) == 0):
                y = y.astype(np.int64)
            else:
                raise ShapeError(f"y must hold integer class labels, got dtype {y.dtype}")
        lo, hi = int(np.minimum.reduce(y)), int(np.maximum.reduce(y))
        if lo < 0 or hi >= self.n_classes:
            raise ShapeError(
                f"labels must lie in [0, {self.n_classes - 1}] for this {self.kind} model, "
                f"got values in [{lo}, {hi}]"
            )
        return y


def logits_loss_sum_and_correct(
    z: np.ndarray, y: np.ndarray, w: np.ndarray | None = None
) -> tuple[float, float]:
    """:meth:`Model.loss_sum_and_correct` from the logits: ``z (n,)`` of a binary model
    (sigmoid) or ``(n, k)`` of a softmax, labels ``y (n,)``, optional row weights ``w (n,)``."""
    if z.ndim == 1:
        loss_sum, right = binary_cross_entropy(z, y, w), (z > 0) == y
    else:
        loss_sum, right = softmax_cross_entropy(z, y, w), z.argmax(axis=1) == y
    if w is None:
        return loss_sum, int(np.count_nonzero(right))
    return loss_sum, float(np.dot(right.astype(np.float64), w.astype(np.float64)))
