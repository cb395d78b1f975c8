"""scikit-learn estimators over digitlab's models, update rules and trainer.

:class:`LogisticRegression` (two classes), :class:`SoftmaxRegression` (any number of classes)
and :class:`MLPClassifier` follow scikit-learn's estimator contract, so they work in
pipelines, grid searches and cross-validation. They only validate and delegate: the models
(:mod:`digitlab.models`) hold the math, :class:`~digitlab.train.Trainer` the gradient loop and
:func:`~digitlab.optim.lbfgs` the exact optimum.

The objective of all three is the mean cross-entropy plus ``alpha * sum(W**2)`` (``penalty="l2"``)
or ``alpha * sum(|W|)`` (``penalty="l1"``) over the weight matrices, biases excluded. For
scikit-learn's ``LogisticRegression(C=C)`` on ``n`` samples the matching strength is
``alpha = 1 / (2 * C * n)``.

Precision: the gradient solvers compute in float32 when ``X`` is a float32 array (digitlab's
fast path) and in float64 otherwise; ``solver="lbfgs"`` always computes in float64.
"""

from __future__ import annotations

import functools
import types
import warnings
from numbers import Integral, Real
from string import Template
from typing import Any, ClassVar, Self

import numpy as np
from scipy.special import expit, log_expit, log_softmax, softmax
from sklearn.base import BaseEstimator, ClassifierMixin, _fit_context, clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data

from digitlab.models import ACTIVATIONS, INITS, LogisticModel, MLPModel, Model, SoftmaxModel
from digitlab.models.inspect import LAYER_COLUMN
from digitlab.optim import (
    OPTIMIZERS,
    Constant,
    InverseTime,
    Optimizer,
    Schedule,
    WarmupCosine,
    lbfgs,
    make_optimizer,
)
from digitlab.train import Callback, EarlyStopping, History, ReduceLROnPlateau, Trainer, evaluate
from digitlab.train.callbacks import Step
from digitlab.train.layerstats import PROBE_ROWS, LayerStats

#: ``schedule`` values of the gradient solvers.
_SCHEDULES = ("constant", "inverse_time", "cosine", "plateau")
AUTO_BATCH = 200  # rows per mini-batch for batch_size="auto" (at most n)
_DTYPES = [np.float64, np.float32]  # float32 input stays float32, anything else -> float64
# solver -> batching: the plain update rule (registry "sgd") full-batch, in mini-batches or on
# single samples drawn with replacement; every other registered update rule in mini-batches
_BATCHING = {"gd": "full", "minibatch": "minibatch", "sgd": "single"}
_RULES = tuple(name for name in OPTIMIZERS if name != "sgd")
_GRADIENT_SOLVERS = (*_BATCHING, *_RULES)
# estimator parameter (scikit-learn's name) -> optimiser hyperparameter (the registry's name)
_HYPERPARAMETERS = {
    "momentum": "momentum",
    "beta_1": "beta1",
    "beta_2": "beta2",
    "epsilon": "eps",
    "weight_decay": "weight_decay",
}


#: History column of the estimators' gradient solvers: the mean over the epoch's batches of each
#: step's objective (what ``loss_curve_`` holds), monitored by ``tol`` and ``schedule="plateau"``.
BATCH_OBJECTIVE = "batch_objective"


class _LossCurve(Callback):
    """Each epoch's mean training objective over its batches (scikit-learn's ``loss_curve_``).

    A step's objective (weighted mean loss of its batch plus the penalty, before the step)
    counts by the batch's rows, as scikit-learn's ``MLPClassifier`` averages its batches. The
    trainer computes these objectives anyway: no pass over the data is added. Each evaluation
    record gets the mean so far, the current step included, as :data:`BATCH_OBJECTIVE` (at an
    epoch's end: the value ``loss_curve_`` appends, computed the same way).
    """

    def __init__(self) -> None:
        self.curve: list[float] = []
        self._sum, self._rows = 0.0, 0

    def measure(self, trainer: Trainer, step: Step) -> dict[str, float]:
        rows = step.X.shape[0]
        return {BATCH_OBJECTIVE: (self._sum + float(step.loss) * rows) / (self._rows + rows)}

    def on_step_end(self, trainer: Trainer, loss: float) -> None:
        self._sum += float(loss) * trainer.batch_rows
        self._rows += trainer.batch_rows
        if trainer.pos == 0:  # the step ended an epoch
            self.curve.append(self._sum / self._rows)
            self._sum, self._rows = 0.0, 0


class _EpochTrainer(Trainer):
    """The estimators' trainer: its evaluations (one per epoch) leave out the training split
    unless ``eval_train`` is set, so an epoch costs what the trainer's steps cost.

    The training split's evaluation is one forward pass over every training row (on MNIST about
    40% of what the epoch's steps cost, softmax and MLP alike: ``benchmarks/estimator_path.py``);
    the stopping rule and the plateau schedule monitor :data:`BATCH_OBJECTIVE` instead, which
    the steps already computed.
    """

    eval_train = False


class _Verbose(Callback):
    """Print one line per evaluation (only used when the estimator's ``verbose`` asks)."""

    def on_evaluate(self, trainer: Trainer, record: dict[str, float]) -> None:
        keys = (BATCH_OBJECTIVE, "train_objective", "train_acc", "val_loss", "val_acc")
        parts = [f"{k}={record[k]:.6g}" for k in keys if k in record]
        print(f"epoch {trainer.epoch}: " + ", ".join(parts))


class _GradientSolversOnly:
    """Decorator: the method exists only for the gradient solvers (``partial_fit``).

    With ``solver="lbfgs"`` reading the attribute raises an AttributeError that names the
    solvers having it, so ``hasattr`` is False (as scikit-learn's meta-estimators expect,
    like its ``available_if``) and a direct call explains itself.
    """

    def __init__(self, fn: Any) -> None:
        self.fn = fn
        functools.update_wrapper(self, fn)

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self.fn
        if obj.solver == "lbfgs":
            raise AttributeError(
                f"{type(obj).__name__}.partial_fit is not available with solver='lbfgs'; "
                f"use one of the solvers {', '.join(map(repr, _GRADIENT_SOLVERS))}"
            )
        return types.MethodType(self.fn, obj)


class _DigitlabClassifier(ClassifierMixin, BaseEstimator):
    """Shared logic: validation, label encoding, solvers, prediction.

    Subclasses implement :meth:`_build_model` and expose the parameters in scikit-learn's
    shapes; ``_binary_only`` marks LogisticRegression.
    """

    _binary_only: ClassVar[bool] = False

    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        "penalty": [StrOptions({"l2", "l1"}), None],
        "alpha": [Interval(Real, 0, None, closed="left")],
        "solver": [StrOptions({*_GRADIENT_SOLVERS, "lbfgs"})],
        "batch_size": [StrOptions({"auto"}), Interval(Integral, 1, None, closed="left")],
        "learning_rate_init": [Interval(Real, 0, None, closed="neither")],
        "anneal_T": [Interval(Real, 0, None, closed="neither"), None],
        "schedule": [StrOptions(set(_SCHEDULES)), None],
        "momentum": [Interval(Real, 0, 1, closed="left")],
        "beta_1": [Interval(Real, 0, 1, closed="left")],
        "beta_2": [Interval(Real, 0, 1, closed="left")],
        "epsilon": [Interval(Real, 0, None, closed="neither")],
        "weight_decay": [Interval(Real, 0, None, closed="left"), None],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
        "shuffle": ["boolean"],
        "tol": [Interval(Real, 0, None, closed="left"), None],
        "random_state": ["random_state"],
        "warm_start": ["boolean"],
        "verbose": ["verbose"],
        "class_weight": [dict, StrOptions({"balanced"}), None],
        "eval_train": ["boolean"],
    }

    def __init__(
        self,
        *,
        penalty: str | None = "l2",
        alpha: float = 1e-3,
        solver: str = "lbfgs",
        batch_size: int | str = "auto",
        learning_rate_init: float = 0.1,
        anneal_T: float | None = None,
        schedule: str | None = None,
        momentum: float = 0.0,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-8,
        weight_decay: float | None = None,
        max_iter: int = 200,
        early_stopping: bool = False,
        validation_fraction: float = 0.1,
        n_iter_no_change: int = 10,
        shuffle: bool = True,
        tol: float | None = 1e-4,
        random_state: int | np.random.RandomState | None = None,
        warm_start: bool = False,
        verbose: int = 0,
        class_weight: dict[Any, float] | str | None = None,
        eval_train: bool = False,
    ) -> None:
        self.penalty = penalty
        self.alpha = alpha
        self.solver = solver
        self.batch_size = batch_size
        self.learning_rate_init = learning_rate_init
        self.anneal_T = anneal_T
        self.schedule = schedule
        self.momentum = momentum
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.weight_decay = weight_decay
        self.max_iter = max_iter
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.shuffle = shuffle
        self.tol = tol
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose
        self.class_weight = class_weight
        self.eval_train = eval_train

    # ------------------------------------------------------------------ subclass hooks
    def _build_model(
        self, n_features: int, n_classes: int, dtype: np.dtype, rng: np.random.Generator
    ) -> Model:  # pragma: no cover - abstract
        raise NotImplementedError

    def _check_architecture(self, model: Model) -> None:
        """Raise ValueError when ``model`` cannot be warm-started with these parameters."""

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = not self._binary_only
        return tags

    # ------------------------------------------------------------------ helpers
    def _penalties(self) -> tuple[float, float]:
        """``(l1, l2)`` strengths for the model."""
        alpha = float(self.alpha)
        return (alpha if self.penalty == "l1" else 0.0, alpha if self.penalty == "l2" else 0.0)

    def _generator(self) -> np.random.Generator:
        """One Generator for every random draw of a fit, derived from ``random_state``."""
        seed = check_random_state(self.random_state).randint(np.iinfo(np.int32).max)
        return np.random.default_rng(seed)

    def _validate_xy(
        self, X: Any, y: Any, *, reset: bool, finite: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """``X (n, d)`` as float32 (if given so) or float64, without a copy where it already is
        one, and ``y (n,)``. ``finite=False`` leaves the NaN/inf check of ``X`` to the trainer,
        which makes it anyway (one pass over ``X`` instead of two; a ValueError naming the
        split)."""
        X, y = validate_data(self, X, y, reset=reset, dtype=_DTYPES, ensure_all_finite=finite)
        check_classification_targets(y)
        return X, y

    def _check_classes(self, labels: np.ndarray) -> np.ndarray:
        """The sorted distinct labels, shape (n_classes,); at least two (exactly two if binary)."""
        if self._binary_only:
            kind = type_of_target(labels, input_name="y")
            if kind != "binary":
                raise ValueError(
                    "Only binary classification is supported. The type of the target is "
                    f"{kind}; use SoftmaxRegression for more than two classes."
                )
        classes = np.unique(labels)
        if classes.size < 2:
            raise ValueError(
                f"{type(self).__name__} needs samples of at least 2 classes, "
                f"got 1 class ({classes[0]!r})"
            )
        return classes

    def _encode(self, y: np.ndarray) -> np.ndarray:
        """Labels -> indices into ``classes_``, shape (n,) int64."""
        idx = np.clip(np.searchsorted(self.classes_, y), 0, self.classes_.size - 1)
        unknown = self.classes_[idx] != y
        if np.any(unknown):
            raise ValueError(
                f"y holds labels {np.unique(y[unknown])[:5].tolist()} that are not among "
                f"classes_ {self.classes_.tolist()}"
            )
        return idx.astype(np.int64)

    def _new_model(self, X: np.ndarray, rng: np.random.Generator) -> Model:
        """A freshly initialised model for ``X (n, d)``, computing in ``X``'s dtype."""
        model = self._build_model(X.shape[1], self.classes_.size, X.dtype, rng)
        model.l1, model.l2 = self._penalties()
        return model

    def _reuse_model(self) -> Model:
        """The fitted model, with the current penalty, for warm starts and partial_fit."""
        model = self.model_
        self._check_architecture(model)
        model.l1, model.l2 = self._penalties()
        return model

    def _optimizer(self) -> Optimizer:
        """The solver's update rule from the registry, with this estimator's hyperparameters."""
        rule = "sgd" if self.solver in _BATCHING else self.solver
        declared = OPTIMIZERS[rule].hyperparameters
        config = {
            key: float(getattr(self, param))
            for param, key in _HYPERPARAMETERS.items()
            if key in declared and getattr(self, param) is not None
        }
        return make_optimizer({"name": rule, **config})

    def _schedule(self) -> Schedule:
        """The rate's schedule over epochs (``schedule``; None: by ``anneal_T``)."""
        lr = float(self.learning_rate_init)
        name = self.schedule or ("constant" if self.anneal_T is None else "inverse_time")
        if name == "inverse_time":
            if self.anneal_T is None:
                raise ValueError("schedule='inverse_time' needs anneal_T")
            return InverseTime(lr, float(self.anneal_T))
        if name == "cosine":
            return WarmupCosine(lr, float(self.max_iter), unit="epoch")
        return Constant(lr)  # "constant", and "plateau" (its callback scales it)

    def _batch_spec(self) -> int | str:
        """Rows per step of the gradient solver: "full", 1 or the mini-batch size."""
        batching = _BATCHING.get(self.solver, "minibatch")
        if batching == "minibatch":
            return AUTO_BATCH if self.batch_size == "auto" else int(self.batch_size)
        return "full" if batching == "full" else 1

    def sweep_setup(self, X: Any, y: Any) -> tuple[Model, np.ndarray, np.ndarray, Optimizer, Any]:
        """What the learning-rate range test (:func:`digitlab.lrfind.lr_find`) trains.

        Returns a freshly initialised model of these parameters, ``X (n, d)`` as validated,
        the labels as class indices ``(n,)``, the solver's update rule and its batch size. This
        estimator is left unchanged (a clone is validated).

        Raises
        ------
        ValueError
            ``solver="lbfgs"`` (it has no learning rate).
        """
        if self.solver == "lbfgs":
            raise ValueError("solver='lbfgs' has no learning rate to find; use a gradient solver")
        est = clone(self)
        X, y = est._validate_xy(X, y, reset=True)
        est.classes_ = est._check_classes(y)
        model = est._new_model(X, est._generator())
        return model, X, est._encode(y), est._optimizer(), est._batch_spec()

    def _start_run(self, model: Model, rng: np.random.Generator) -> None:
        """A trainer with fresh optimiser state, step count and history for a gradient run."""
        self.history_ = History()
        self._loss_curve = _LossCurve()
        self._trainer = _EpochTrainer(
            model,
            optimizer=self._optimizer(),
            schedule=self._schedule(),
            batch_size=self._batch_spec(),
            shuffle=self.shuffle,
            replacement=_BATCHING.get(self.solver) == "single",
            callbacks=[self.history_, self._loss_curve, *self._plateau()],
            rng=rng,
        )

    @property
    def layer_stats_(self) -> dict[str, np.ndarray]:
        """Per-layer statistics at every epoch of the gradient solvers
        (:mod:`digitlab.models.inspect`): ``epoch`` and each column, float64 (n_epochs,)."""
        history = self.history_
        names = [k for k in history.columns if LAYER_COLUMN.fullmatch(k)]
        return {k: history.series(k) for k in ["epoch", *names]}

    def _plateau(self) -> list[Callback]:
        """``schedule="plateau"``: scikit-learn's "adaptive" rule (the rate divided by 5 once
        two epochs in a row have not lowered the epoch's mean batch objective, ``loss_curve_``),
        for the whole run."""
        if self.schedule != "plateau":
            return []
        return [ReduceLROnPlateau(BATCH_OBJECTIVE, factor=0.2, patience=1, threshold=0.0)]

    # ------------------------------------------------------------------ fitting
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> Self:
        """Fit the model to ``(X, y)``.

        Parameters
        ----------
        X : array-like (n_samples, n_features)
        y : array-like (n_samples,)
            Class labels (any sortable type, strings included).
        sample_weight : array-like (n_samples,), optional
            Non-negative row weights: the cross-entropy is their weighted mean (each batch's,
            for the mini-batch solvers), so integer weights equal repeated rows. Multiplied
            by the ``class_weight`` of each row's class.

        Returns
        -------
        self
        """
        if self.solver == "lbfgs" and self.penalty == "l1":
            raise ValueError(
                "solver='lbfgs' needs a smooth objective: use penalty='l2' or None, or a "
                f"gradient solver ({', '.join(map(repr, _GRADIENT_SOLVERS))}) for penalty='l1'"
            )
        warm = self.warm_start and hasattr(self, "model_")
        X, y = self._validate_xy(X, y, reset=not warm, finite=self.solver == "lbfgs")
        classes = self._check_classes(y)
        if warm and not np.array_equal(classes, self.classes_):
            raise ValueError(
                "warm_start can only be used where y has the same classes as in the previous "
                f"call to fit: had {self.classes_.tolist()}, got {classes.tolist()}"
            )
        self.classes_ = classes
        y_enc = self._encode(y)
        weight = self._weights(X, y_enc, sample_weight)
        rng = self._generator()
        if warm:
            model = self._reuse_model()
        else:
            model = self._new_model(X, rng)
        if self.solver == "lbfgs":
            self._fit_lbfgs(model, X, y_enc, weight)
        else:
            self._start_run(model, rng)
            self._train(X, y_enc, weight, epochs=self.max_iter, full_fit=True)
        return self

    @_GradientSolversOnly
    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X: Any, y: Any, classes: Any = None, sample_weight: Any = None) -> Self:
        """Train one epoch on ``(X, y)``, continuing the current run.

        Continues the step count (for ``anneal_T``), momentum and history of the previous
        ``fit`` or ``partial_fit``; early stopping and ``tol`` do not apply.

        Parameters
        ----------
        X : array-like (n_samples, n_features)
        y : array-like (n_samples,)
        classes : array-like (n_classes,), optional
            Every label ``y`` may hold; required on the first call.
        sample_weight : array-like (n_samples,), optional
            Row weights, as for :meth:`fit`.

        Returns
        -------
        self
        """
        first = not hasattr(self, "model_")
        if first and classes is None:
            raise ValueError("classes must be passed on the first call to partial_fit")
        if isinstance(self.class_weight, str):
            raise ValueError(
                "class_weight='balanced' needs the class counts of all the data, which "
                "partial_fit does not see; pass a dict (e.g. from "
                "sklearn.utils.class_weight.compute_class_weight) or use fit"
            )
        X, y = self._validate_xy(X, y, reset=first, finite=False)  # the trainer checks X
        if first:
            self.classes_ = self._check_classes(np.asarray(classes))
        elif classes is not None and not np.array_equal(np.unique(classes), self.classes_):
            raise ValueError(
                f"classes={np.unique(classes).tolist()} differs from the classes of the first "
                f"call, {self.classes_.tolist()}"
            )
        y_enc = self._encode(y)
        weight = self._weights(X, y_enc, sample_weight)
        rng = self._generator()
        model = self._new_model(X, rng) if first else self._reuse_model()
        if first or not hasattr(self, "_trainer"):  # a new run (also after an lbfgs fit)
            self._start_run(model, rng)
        self._train(X, y_enc, weight, epochs=1, full_fit=False)
        return self

    def _weights(self, X: np.ndarray, y: np.ndarray, sample_weight: Any) -> np.ndarray | None:
        """Row weights ``(n,)``: ``sample_weight`` times the class weights, or None."""
        if sample_weight is not None:
            sample_weight = _check_sample_weight(sample_weight, X, ensure_non_negative=True)
        if self.class_weight is None:
            return sample_weight
        if isinstance(self.class_weight, dict):
            per_class = self._class_weight_dict()
        else:  # "balanced": n / (n_classes * count), counts weighted by sample_weight
            classes = np.arange(self.classes_.size)
            per_class = compute_class_weight(
                self.class_weight, classes=classes, y=y, sample_weight=sample_weight
            )
        weight = per_class[y]
        return weight if sample_weight is None else weight * sample_weight

    def _class_weight_dict(self) -> np.ndarray:
        """``class_weight`` as a dict, one weight per entry of ``classes_`` (default 1)."""
        unknown = [c for c in self.class_weight if not np.isin(c, self.classes_)]
        if unknown:
            raise ValueError(
                f"class_weight has labels {unknown} that are not among classes_ "
                f"{self.classes_.tolist()}"
            )
        return np.array([float(self.class_weight.get(c, 1.0)) for c in self.classes_.tolist()])

    def _train(
        self,
        X: np.ndarray,
        y: np.ndarray,
        weight: np.ndarray | None,
        *,
        epochs: int,
        full_fit: bool,
    ) -> None:
        """Run ``epochs`` more epochs of the gradient solver, continuing the run's trainer."""
        trainer = self._trainer
        val, stopper = None, None
        if full_fit and self.early_stopping:
            seed = int(trainer.rng.integers(np.iinfo(np.int32).max))
            arrays = (X, y) if weight is None else (X, y, weight)
            parts = train_test_split(
                *arrays, test_size=self.validation_fraction, stratify=y, random_state=seed
            )
            X, X_val, y, y_val = parts[:4]
            weight = None if weight is None else parts[4]
            val = (X_val, y_val)
            stopper = EarlyStopping(
                "val_loss", self.n_iter_no_change, min_delta=self.tol or 0.0, restore_best=True
            )
        elif full_fit and self.tol is not None:  # scikit-learn's rule, on loss_curve_
            stopper = EarlyStopping(
                BATCH_OBJECTIVE, self.n_iter_no_change, min_delta=self.tol, restore_best=False
            )
        callbacks: list[Callback] = [] if stopper is None else [stopper]
        callbacks.append(LayerStats(X[:PROBE_ROWS]))  # layer_stats_, on a fixed probe batch
        if self.verbose:
            callbacks.append(_Verbose())
        trainer.schedule = self._schedule()  # the current learning_rate_init and anneal_T
        trainer.eval_train = self.eval_train
        try:
            trainer.continue_fit(
                (X, y), val, epochs=epochs, callbacks=callbacks, sample_weight=weight
            )
        finally:
            trainer.release_data()
        self.model_ = trainer.model
        self.n_iter_ = trainer.epoch
        self.loss_curve_ = list(self._loss_curve.curve)
        self.best_loss_ = None if self.early_stopping else min(self.loss_curve_, default=None)
        self.validation_scores_ = (
            [r["val_acc"] for r in self.history_.records if "val_acc" in r]
            if self.early_stopping
            else None
        )
        if stopper is not None and not stopper.stopped:
            monitored = "validation loss" if self.early_stopping else "mean batch objective"
            warnings.warn(
                f"{type(self).__name__}: max_iter={self.max_iter} epochs reached while the "
                f"{monitored} was still improving by more than tol={self.tol}; "
                "increase max_iter",
                ConvergenceWarning,
                stacklevel=4,
            )

    def _fit_lbfgs(
        self, model: Model, X: np.ndarray, y: np.ndarray, weight: np.ndarray | None
    ) -> None:
        """Exact optimum in float64; ``tol`` bounds the largest gradient component."""
        gtol = 0.0 if self.tol is None else float(self.tol)
        start = None if X.dtype == np.float64 else np.float32  # float64 features: float64 only
        res = lbfgs(model, X, y, max_iter=self.max_iter, gtol=gtol, start_dtype=start,
                    sample_weight=weight)  # fmt: skip
        self.model_ = res.model
        self.n_iter_ = res.n_iter
        record = {"step": res.n_iter, "epoch": res.n_iter, "weight_norm": res.model.weight_norm()}
        w = None if weight is None else weight.astype(np.float64)
        record |= {f"train_{k}": v for k, v in evaluate(res.model, X, y, w).items()}
        self.history_ = History([record])
        # a later partial_fit starts a new run; the curves belong to the gradient solvers
        for name in ("_trainer", "_loss_curve", "loss_curve_", "best_loss_", "validation_scores_"):
            self.__dict__.pop(name, None)
        if self.verbose:
            print(f"lbfgs: {res.n_iter} iterations, objective {res.objective:.8g}, {res.message}")
        if not res.converged:
            warnings.warn(
                f"{type(self).__name__}: lbfgs did not converge in max_iter={self.max_iter} "
                f"iterations ({res.message}); increase max_iter or scale the data",
                ConvergenceWarning,
                stacklevel=4,
            )

    # ------------------------------------------------------------------ prediction
    def _logits(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=_DTYPES)
        return self.model_.logits(X)

    def decision_function(self, X: Any) -> np.ndarray:
        """Confidence scores.

        Parameters
        ----------
        X : array-like (n_samples, n_features)

        Returns
        -------
        ndarray (n_samples,) or (n_samples, n_classes)
            For two classes the log-odds of ``classes_[1]`` (positive means ``classes_[1]``),
            otherwise the logits of every class.
        """
        z = self._logits(X)
        if z.ndim == 2 and z.shape[1] == 2:
            return z[:, 1] - z[:, 0]
        return z

    def predict(self, X: Any) -> np.ndarray:
        """Most probable class of each row, shape (n_samples,), labels from ``classes_``."""
        z = self._logits(X)
        idx = (z > 0).astype(np.intp) if z.ndim == 1 else z.argmax(axis=1)
        return self.classes_[idx]

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, shape (n_samples, n_classes), columns in ``classes_`` order."""
        z = self._logits(X)
        if z.ndim == 1:
            return np.column_stack([expit(-z), expit(z)])
        return softmax(z, axis=1)

    def predict_log_proba(self, X: Any) -> np.ndarray:
        """Log of :meth:`predict_proba`, computed stably, shape (n_samples, n_classes)."""
        z = self._logits(X)
        if z.ndim == 1:
            return np.column_stack([log_expit(-z), log_expit(z)])
        return log_softmax(z, axis=1)


_DOC_TEMPLATE = Template(
    """$summary
    Parameters
    ----------
$extra_params    penalty : {"l2", "l1"} or None
        Weight penalty; biases are never penalised.
    alpha : float
        Penalty strength: the objective is mean cross-entropy + ``alpha * sum(W**2)`` (L2) or
        ``alpha * sum(|W|)`` (L1). ``LogisticRegression(C=C)`` of scikit-learn on ``n``
        samples matches ``alpha = 1 / (2 * C * n)``.
    solver : $solvers
        Plain gradient descent full-batch ("gd"), in mini-batches of ``batch_size``
        ("minibatch") or on single samples drawn with replacement ("sgd"); the update rules
        "adam", "adamw", "rmsprop" and "nesterov" (:data:`digitlab.optim.OPTIMIZERS`, PyTorch's
        conventions) in mini-batches$lbfgs_doc.
    batch_size : int or "auto"
        Rows per step for ``solver="minibatch"``; "auto" is ``min(200, n_samples)``.
    learning_rate_init : float
        ``eta0`` of the gradient solvers.
    anneal_T : float or None
        Anneal the rate as ``eta0 / (1 + t / anneal_T)``, ``t`` in completed epochs;
        None keeps it constant.
    schedule : {"constant", "inverse_time", "cosine", "plateau"} or None
        The rate over epochs: None follows ``anneal_T``; "cosine" falls from ``eta0`` to 0
        over ``max_iter`` epochs (``digitlab.optim.WarmupCosine``); "plateau" divides it by 5
        whenever two epochs in a row have not lowered the epoch's mean batch objective
        (``loss_curve_``; scikit-learn's ``learning_rate="adaptive"``;
        ``digitlab.train.ReduceLROnPlateau``).
    momentum : float
        Heavy-ball momentum in [0, 1) ("gd", "minibatch", "sgd"); Nesterov's momentum for
        "nesterov" (must be > 0); RMSprop's momentum for "rmsprop".
    beta_1, beta_2 : float
        Decay rates of Adam's first and second moment estimates, in [0, 1) ("adam", "adamw").
    epsilon : float
        Added to the denominator of "adam", "adamw" and "rmsprop".
    weight_decay : float or None
        Decoupled weight decay of "adamw"; an L2 term added to the gradient for "adam",
        "rmsprop" and "nesterov" (on top of ``alpha``'s penalty). None: the update rule's
        default (0.01 for "adamw", else 0). Ignored by the plain solvers.
    max_iter : int
        Epochs for the gradient solvers; iterations for lbfgs.
    early_stopping : bool
        Hold out ``validation_fraction`` of the training rows (stratified), stop when the
        validation loss has not improved by ``tol`` for ``n_iter_no_change`` epochs, and
        restore the weights of the best epoch. Gradient solvers only.
    validation_fraction : float
    n_iter_no_change : int
        Patience, in epochs, of the stopping rule. Without ``early_stopping`` the rule
        watches the epoch's mean batch objective, ``loss_curve_``, as scikit-learn's
        ``MLPClassifier`` and ``SGDClassifier`` do (no pass over the data is added), and keeps
        the last weights.
    shuffle : bool
        Reshuffle the rows every epoch (``solver="minibatch"``).
    tol : float or None
        Minimum improvement for the stopping rule: training stops once the monitored value
        (``loss_curve_``, or the validation loss with ``early_stopping``) has not fallen below
        its best by more than ``tol`` for ``n_iter_no_change`` epochs in a row; for lbfgs,
        the gradient tolerance. None disables the stopping rule of the gradient solvers.
    random_state : int, RandomState or None
        Seeds the initial weights, batch order and validation split.
    warm_start : bool
        Start ``fit`` from the previous solution (the schedule and momentum restart).
    verbose : int
        Print one line per epoch.
    class_weight : dict, "balanced" or None
        Weight of each class's rows (``{label: weight}``, 1 for labels not given), multiplied
        into ``sample_weight``; "balanced" is ``n_samples / (n_classes * count)`` as in
        scikit-learn (not with ``partial_fit``).
    eval_train : bool
        Gradient solvers: also evaluate the whole training set after every epoch
        (``history_``'s ``train_loss``, ``train_objective``, ``train_acc``). It costs one
        more forward pass over the training rows per epoch (about 40% more time per epoch on
        MNIST), so it is off by default; ``loss_curve_`` is recorded either way.

    Attributes
    ----------
    classes_ : ndarray (n_classes,)
    n_features_in_ : int
    n_iter_ : int
        Epochs run in the current run (``fit`` plus later ``partial_fit`` calls), or lbfgs
        iterations.
    model_ : digitlab.models.Model
        The fitted digitlab model (float32 or float64, as the training data).
    history_ : digitlab.train.History
        One record per epoch: ``step``, ``epoch``, ``lr``, ``weight_norm``, ``time``,
        ``batch_objective`` (that epoch's ``loss_curve_`` value), with ``eval_train``
        ``train_loss``, ``train_objective``, ``train_acc`` and, with early stopping,
        ``val_loss``, ``val_objective``, ``val_acc``; the per-layer statistics follow
        (``layer_stats_``). lbfgs: one record at the optimum, with the ``train_`` values.
        With ``sample_weight``/``class_weight`` the ``train_`` values are weighted.
    layer_stats_ : dict of ndarray
        Gradient solvers: ``epoch`` and each per-layer statistic (weight, gradient and update
        norms, activation mean, spread, saturation, dead units and histogram on the first
        256 training rows; :mod:`digitlab.models.inspect`), each (n_epochs,).
    loss_curve_ : list of float
        Gradient solvers: each epoch's mean training objective over its batches (each
        batch's objective taken before its step, weighted by its rows), as scikit-learn's
        ``MLPClassifier``; what ``tol`` and ``schedule="plateau"`` watch; continued by
        ``partial_fit``.
    best_loss_ : float or None
        The minimum of ``loss_curve_``; None with ``early_stopping``.
    validation_scores_ : list of float or None
        With ``early_stopping``, the validation accuracy of every epoch, else None.
$extra_attrs"""
)


def _choices(names: tuple[str, ...]) -> str:
    return "{" + ", ".join(f'"{name}"' for name in names) + "}"


def _docstring(summary: str, *, lbfgs: bool, extra_params: str = "", extra_attrs: str) -> str:
    """Class docstring: summary, the shared parameters and attributes, and the class's own."""
    return _DOC_TEMPLATE.substitute(
        summary=summary,
        extra_params=extra_params,
        solvers=_choices((*_GRADIENT_SOLVERS, "lbfgs") if lbfgs else _GRADIENT_SOLVERS),
        lbfgs_doc='; exact L-BFGS in float64 (not with ``penalty="l1"``)' if lbfgs else "",
        extra_attrs=extra_attrs,
    )


class LogisticRegression(_DigitlabClassifier):
    _binary_only = True

    def _build_model(
        self, n_features: int, n_classes: int, dtype: np.dtype, rng: np.random.Generator
    ) -> Model:
        return LogisticModel(n_features, init="zeros", dtype=dtype)

    @property
    def coef_(self) -> np.ndarray:
        """Weights, shape (1, n_features) (a view of the model's ``W``)."""
        return self.model_.params["W"].T

    @property
    def intercept_(self) -> np.ndarray:
        """Bias, shape (1,)."""
        return self.model_.params["b"]


LogisticRegression.__doc__ = _docstring(
    """Binary logistic regression, ``P(classes_[1] | x) = sigmoid(x w + b)``.

    ``y`` must hold exactly two classes (any labels). The default ``alpha=1e-3`` was measured
    (``benchmarks/estimator_defaults.py``): on 10,000 MNIST and Fashion-MNIST images it predicts
    the test sets at least as well as scikit-learn's ``LogisticRegression()`` (``alpha=1e-4``
    overfits the Fashion-MNIST pair).
""",
    lbfgs=True,
    extra_attrs="""    coef_ : ndarray (1, n_features)
    intercept_ : ndarray (1,)
""",
)


class SoftmaxRegression(_DigitlabClassifier):
    def _build_model(
        self, n_features: int, n_classes: int, dtype: np.dtype, rng: np.random.Generator
    ) -> Model:
        return SoftmaxModel(n_features, n_classes, init="zeros", dtype=dtype)

    @property
    def coef_(self) -> np.ndarray:
        """Weights, shape (n_classes, n_features); (1, n_features) log-odds weights for two."""
        W = self.model_.params["W"]  # (d, k)
        if W.shape[1] == 2:
            return (W[:, 1] - W[:, 0])[None, :]
        return W.T

    @property
    def intercept_(self) -> np.ndarray:
        """Biases, shape (n_classes,); (1,) for two classes."""
        b = self.model_.params["b"]
        if b.shape[0] == 2:
            return b[1:] - b[:1]
        return b


SoftmaxRegression.__doc__ = _docstring(
    """Softmax (multinomial logistic) regression for any number of classes, two included.

    With two classes, ``coef_`` and ``intercept_`` are the differences of the two classes'
    weights and biases (the log-odds of ``classes_[1]``), as in scikit-learn. The default
    ``alpha=1e-3`` was measured as :class:`LogisticRegression`'s.
""",
    lbfgs=True,
    extra_attrs="""    coef_ : ndarray (n_classes, n_features), or (1, n_features) for two classes
    intercept_ : ndarray (n_classes,), or (1,) for two classes
""",
)

_ACTIVATIONS = {name: name for name in ACTIVATIONS} | {"logistic": "sigmoid"}


class MLPClassifier(_DigitlabClassifier):
    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        **_DigitlabClassifier._parameter_constraints,
        "solver": [StrOptions(set(_GRADIENT_SOLVERS))],
        "hidden_layer_sizes": ["array-like", Interval(Integral, 1, None, closed="left")],
        "activation": [StrOptions(set(_ACTIVATIONS))],
        "init": [StrOptions(set(INITS))],
        "dropout": [Interval(Real, 0, 1, closed="left"), "array-like"],
        "batch_norm": ["boolean"],
        "leaky_slope": [Interval(Real, 0, 1, closed="neither")],
    }

    def __init__(
        self,
        hidden_layer_sizes: int | tuple[int, ...] = (100,),
        activation: str = "relu",
        *,
        init: str = "fan_in",
        dropout: float | tuple[float, ...] = 0.0,
        batch_norm: bool = False,
        leaky_slope: float = 0.01,
        penalty: str | None = "l2",
        alpha: float = 1e-5,
        solver: str = "minibatch",
        batch_size: int | str = "auto",
        learning_rate_init: float = 0.1,
        anneal_T: float | None = 5.0,
        schedule: str | None = None,
        momentum: float = 0.9,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-8,
        weight_decay: float | None = None,
        max_iter: int = 200,
        early_stopping: bool = False,
        validation_fraction: float = 0.1,
        n_iter_no_change: int = 10,
        shuffle: bool = True,
        tol: float | None = 1e-4,
        random_state: int | np.random.RandomState | None = None,
        warm_start: bool = False,
        verbose: int = 0,
        class_weight: dict[Any, float] | str | None = None,
        eval_train: bool = False,
    ) -> None:
        super().__init__(
            penalty=penalty, alpha=alpha, solver=solver, batch_size=batch_size,
            learning_rate_init=learning_rate_init, anneal_T=anneal_T, schedule=schedule,
            momentum=momentum, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon,
            weight_decay=weight_decay, max_iter=max_iter, early_stopping=early_stopping,
            validation_fraction=validation_fraction, n_iter_no_change=n_iter_no_change,
            shuffle=shuffle, tol=tol, random_state=random_state, warm_start=warm_start,
            verbose=verbose, class_weight=class_weight, eval_train=eval_train,
        )  # fmt: skip
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.init = init
        self.dropout = dropout
        self.batch_norm = batch_norm
        self.leaky_slope = leaky_slope

    def _hidden(self) -> tuple[int, ...]:
        sizes = self.hidden_layer_sizes
        hidden = (int(sizes),) if isinstance(sizes, Integral) else tuple(int(h) for h in sizes)
        if any(h < 1 for h in hidden):
            raise ValueError(f"hidden_layer_sizes must be positive, got {hidden}")
        return hidden

    def _build_model(
        self, n_features: int, n_classes: int, dtype: np.dtype, rng: np.random.Generator
    ) -> Model:
        return MLPModel(
            n_features,
            n_classes,
            hidden=self._hidden(),
            activation=_ACTIVATIONS[self.activation],
            init=self.init,
            dropout=self.dropout if isinstance(self.dropout, Real) else tuple(self.dropout),
            batch_norm=self.batch_norm,
            leaky_slope=self.leaky_slope,
            rng=rng,
            dtype=dtype,
        )

    def _check_architecture(self, model: Model) -> None:
        same = (model.hidden, model.activation, model.batch_norm) == (
            self._hidden(), _ACTIVATIONS[self.activation], self.batch_norm
        )
        if not same:
            raise ValueError(
                f"cannot warm-start a {model.hidden} {model.activation} network "
                f"(batch_norm={model.batch_norm}) with hidden_layer_sizes="
                f"{self.hidden_layer_sizes}, activation={self.activation!r}, "
                f"batch_norm={self.batch_norm}"
            )

    @property
    def coefs_(self) -> list[np.ndarray]:
        """Weight matrices; entry ``i`` has shape (n_units[i], n_units[i + 1])."""
        return [self.model_.params[f"W{i}"] for i in range(1, self.model_.n_layers + 1)]

    @property
    def intercepts_(self) -> list[np.ndarray]:
        """Bias vectors; entry ``i`` has shape (n_units[i + 1],)."""
        return [self.model_.params[f"b{i}"] for i in range(1, self.model_.n_layers + 1)]


MLPClassifier.__doc__ = _docstring(
    """Multi-layer perceptron with a softmax output, trained by gradient descent.

    Unlike scikit-learn's MLPClassifier it offers L1 penalties, ``eta0 / (1 + t / T)``
    annealing, a validation-loss history and restore-best early stopping.

    The defaults are the measured recipe (``benchmarks/estimator_defaults.py``): ReLU units,
    mini-batches of 200 with heavy-ball momentum 0.9, rate 0.1 annealed as ``0.1 / (1 + t/5)``
    (t in epochs), a light L2 penalty ``alpha=1e-5``. At equal ``max_iter`` they reach a higher
    test accuracy on MNIST and Fashion-MNIST than scikit-learn's ``MLPClassifier()`` (Adam,
    rate 1e-3); the previous defaults (tanh, no momentum, no annealing) trailed it.
""",
    lbfgs=False,
    extra_params="""    hidden_layer_sizes : int or tuple of int
        Units of each hidden layer.
    activation : str
        Hidden activation: tanh, relu, sigmoid ("logistic", scikit-learn's name), scaled_tanh,
        leaky_relu, elu or gelu.
    init : str
        Weight initialisation (``digitlab.models.INITS``: fan_in, lecun_normal, glorot_uniform,
        glorot_normal, he_uniform, he_normal, ...).
    dropout : float or tuple of float
        Inverted-dropout rate of every hidden layer, or one per hidden layer, in [0, 1).
    batch_norm : bool
        Batch-normalise every hidden layer (running statistics used in prediction).
    leaky_slope : float
        Negative-side slope of ``leaky_relu`` in (0, 1).
""",
    extra_attrs="""    coefs_ : list of ndarray
        Entry ``i`` has shape (n_units[i], n_units[i + 1]).
    intercepts_ : list of ndarray
        Entry ``i`` has shape (n_units[i + 1],).
""",
)

__all__ = ["LogisticRegression", "MLPClassifier", "SoftmaxRegression"]
