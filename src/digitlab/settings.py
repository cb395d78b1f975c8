"""Every setting of a training run, declared once.

Each field of :class:`Settings` carries its declaration (:class:`Spec`: type, default, range or
choices, help text, group, command-line flag, whether a resumed run may change it). From that
one description come

- the validation of values from every source (command-line options, TOML files, experiment
  files, checkpoint metadata): types strictly (no bool for an int, no NaN or inf, no string for
  a number), ranges, choices and size caps, with one-line errors naming the setting, the value
  and where it came from (:func:`Settings.merge`);
- the ``train``/``resume`` options of the command (:func:`add_options`), defaults in ``--help``;
- the settings table of the README (:func:`markdown_table`).

Choices are read from the registries of the modules that own the concepts (models,
activations, initialisations, reductions, preprocessing, hold-out modes, schedule units,
optimisers), so a new entry there is a new valid setting here.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import math
import os
import reprlib
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from digitlab.errors import ConfigError

#: Largest hidden layer and deepest network accepted (bigger ones fail with a clear error
#: instead of a MemoryError).
MAX_HIDDEN_UNITS = 16384
MAX_HIDDEN_LAYERS = 16
#: Largest settings file read.
MAX_TOML_BYTES = 2**20
#: ``split`` values: name -> meaning.
SPLITS: dict[str, str] = {
    "all": "every image, or the first n_train / last n_test",
    "seed": "the reports' split: first 20,000 train, last 2,000 test, first 10% held out",
}
#: ``schedule`` values: name -> rule (``t`` as ``anneal_unit`` says).
SCHEDULE_TEXT: dict[str, str] = {
    "constant": "lr",
    "inverse_time": "lr / (1 + t/anneal_T)",
    "step": "lr * step_gamma^floor(t/step_every)",
    "cosine": "linear warm-up over warmup, then cosine from lr to eta_min at the run's end",
    "plateau": "lr times plateau_factor after plateau_patience evaluations without "
    "improvement of plateau_monitor",
}
#: Metrics early stopping can watch (the trainer's evaluation records): name -> meaning.
MONITORS: dict[str, str] = {
    f"{split}_{key}": f"{what} on the {name} split"
    for split, name in (("val", "validation"), ("train", "training"))
    for key, what in (("loss", "cross-entropy"), ("objective", "objective"), ("acc", "accuracy"))
}


def _registry(module: str, name: str) -> Callable[[], Any]:
    """A deferred look-up of the registry ``module.name`` (importing it here would be circular)."""

    def get() -> Any:
        return getattr(importlib.import_module(module), name)

    get.__name__ = f"_{name.lower()}"
    return get


_models = _registry("digitlab.models", "MODELS")
_activations = _registry("digitlab.models", "ACTIVATIONS")
_inits = _registry("digitlab.models", "INITS")
_reductions = _registry("digitlab.models", "REDUCTIONS")
_dtypes = _registry("digitlab.models", "DTYPES")
_methods = _registry("digitlab.data.preprocess", "METHODS")
_holdout_modes = _registry("digitlab.data.splits", "HOLDOUT_MODES")
_units = _registry("digitlab.optim.schedules", "UNITS")
_optimizers = _registry("digitlab.optim", "OPTIMIZERS")


# ------------------------------------------------------------------------------ declaration
@dataclass(frozen=True)
class Spec:
    """The declaration of one setting.

    ``kind`` is ``"str"``, ``"int"``, ``"float"``, ``"bool"``, ``"ints"``/``"floats"`` (lists of
    numbers), ``"batch"`` or ``"eval_every"``. ``low``/``high`` bound numbers (and list
    entries); ``open_low``/``open_high`` exclude the bound. ``optional`` allows None (TOML and
    the command line: ``"none"``). ``by_model`` gives per-model defaults (model name -> value,
    else ``default``) used when the setting is not given. ``flag`` is the command-line option
    (``""``: ``--kebab-name``); ``const`` makes it a switch that stores that value. ``fixed``
    settings cannot change on resume.
    """

    name: str
    kind: str
    default: Any
    help: str
    group: str
    choices: Callable[[], Iterable[str]] | None = None
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    optional: bool = False
    by_model: Mapping[str, Any] | None = None
    flag: str = ""
    const: Any = None
    metavar: str | None = None
    max_len: int | None = None
    fixed: bool = False
    per_optimizer: bool = False

    def choice_names(self) -> list[str]:
        return list(self.choices()) if self.choices is not None else []

    def default_for(self, model: str, optimizer: str = "sgd") -> Any:
        """The value when the setting is not given.

        An optimiser hyperparameter takes the optimiser's own default (``by_model`` then
        applies to ``"sgd"`` only); other settings take ``by_model[model]`` or ``default``.
        """
        if self.by_model is not None and (not self.per_optimizer or optimizer == "sgd"):
            return self.by_model.get(model, self.default)
        if self.per_optimizer:
            return _optimizers()[optimizer].hyperparameters.get(self.name, self.default)
        return self.default

    def default_text(self) -> str:
        """The default as the README and ``--help`` show it."""
        if self.per_optimizer:
            parts = []
            for name, cls in _optimizers().items():
                if self.name in cls.hyperparameters:
                    sgd_by_model = name == "sgd" and self.by_model is not None
                    value = (
                        self._by_model_text()
                        if sgd_by_model
                        else _text(cls.hyperparameters[self.name])
                    )
                    parts.append(f"{name}: {value}")
            return "; ".join(parts) or _text(self.default)
        if self.by_model is None:
            return _text(self.default)
        return self._by_model_text()

    def _by_model_text(self) -> str:
        assert self.by_model is not None
        text = ", ".join(f"{m} {_text(v)}" for m, v in self.by_model.items())
        if set(self.by_model) >= set(_models()):
            return text
        return f"{text}, else {_text(self.default)}"

    def range_text(self) -> str:
        if self.choices is not None:
            return " | ".join(self.choice_names())
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.open_low else '>='} {_text(self.low)}")
        if self.high is not None:
            parts.append(f"{'<' if self.open_high else '<='} {_text(self.high)}")
        return ", ".join(parts)


def _text(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return ",".join(map(str, value))
    if isinstance(value, float) and value.is_integer() and abs(value) >= 1e6:
        return f"{value:g}"
    return str(value)


_MODEL_DEFAULT: Any = type("ModelDefault", (), {"__repr__": lambda self: "<model default>"})()


def setting(
    default: Any, help: str, group: str, *, kind: str | None = None, flag: str | None = None,
    **spec: Any,
) -> Any:  # fmt: skip
    """A dataclass field carrying its :class:`Spec` (name and kind filled in by the class)."""
    meta = {"help": help, "group": group, "default": default, "flag": flag, **spec}
    if kind is not None:
        meta["kind"] = kind
    if spec.get("by_model") is not None or spec.get("per_optimizer"):
        return field(default=_MODEL_DEFAULT, metadata=meta)
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


_KINDS = {"str": "str", "int": "int", "float": "float", "bool": "bool", "list[int]": "ints",
          "list[float]": "floats"}  # fmt: skip


@dataclass
class Settings:
    """Every setting of a training run, flat, with the TOML files' names.

    Construct with :meth:`from_dict`, :meth:`from_toml` or :meth:`merge` (which say where a bad
    value came from); direct construction validates too. ``batch`` is ``"full"``, ``"sgd"``
    (single samples drawn with replacement), an int (mini-batch size) or a float in (0, 1)
    (fraction of the training set). ``eval_every`` is ``"epoch"``, a float fraction of an
    epoch or an int number of steps. ``init=None`` picks the model's default.
    """

    # -- model
    model: str = setting("softmax", "model kind", "model", choices=_models, fixed=True)
    hidden: list[int] = setting(
        [400], "MLP hidden layer sizes, e.g. 400 or 256,128", "model", low=1,
        high=MAX_HIDDEN_UNITS, max_len=MAX_HIDDEN_LAYERS, fixed=True,
    )  # fmt: skip
    activation: str = setting(
        "tanh", "MLP hidden activation", "model", choices=_activations, fixed=True,
        by_model={"mlp": "relu"},
    )  # fmt: skip
    init: str | None = setting(
        None, "weight init (none: zeros for the linear models, fan_in for the MLP)", "model",
        choices=_inits, optional=True, fixed=True,
    )  # fmt: skip
    dropout: list[float] = setting(
        [0.0], "MLP: probability of dropping a hidden unit in training (inverted dropout), one "
        "rate or one per hidden layer, e.g. 0.5 or 0.2,0.5", "model", low=0, high=1,
        open_high=True, max_len=MAX_HIDDEN_LAYERS,
    )  # fmt: skip
    batch_norm: bool = setting(
        False, "MLP: batch-normalise each hidden layer's pre-activations", "model", fixed=True
    )
    leaky_slope: float = setting(
        0.01, "negative-side slope of leaky_relu (and He init's a)", "model", low=0, high=1,
        open_low=True, open_high=True, fixed=True,
    )  # fmt: skip
    l1: float = setting(0.0, "L1 strength lambda: + l1 * sum |w|", "model", low=0)
    l2: float = setting(0.0, "L2 strength lambda: + l2 * sum w^2", "model", low=0)
    reduction: str = setting(
        "mean", "cross-entropy averaged or summed over the batch", "model",
        choices=_reductions, fixed=True,
    )  # fmt: skip
    regularize_bias: bool = setting(False, "penalise the biases too", "model", fixed=True)
    dtype: str = setting("float32", "parameter precision", "model", choices=_dtypes, fixed=True)
    outputs: int = setting(
        0, "softmax outputs (0: one per class); more adds outputs that are never a label",
        "model", low=0, high=MAX_HIDDEN_UNITS, fixed=True,
    )  # fmt: skip
    # -- data
    dataset: str = setting("mnist", "dataset name (digitlab data list)", "data", fixed=True)
    data_root: str | None = setting(
        None, "folder holding the dataset files (none: search the usual places)", "data",
        optional=True,
    )  # fmt: skip
    split: str = setting(
        "all", "all, or seed: the reports' split (first 20,000 train, last 2,000 test, first "
        "10% held out)", "data", choices=lambda: SPLITS, flag="--seed-split", const="seed",
        fixed=True,
    )  # fmt: skip
    n_train: int | None = setting(
        None, "use the first N training images", "data", low=1, optional=True, fixed=True
    )
    n_test: int | None = setting(
        None, "use the last N test images", "data", low=1, optional=True, fixed=True
    )
    holdout: float = setting(
        0.1, "validation fraction of the training part", "data", low=0, high=1, open_high=True,
        fixed=True,
    )  # fmt: skip
    holdout_mode: str = setting(
        "front", "which training images are held out", "data", choices=_holdout_modes,
        fixed=True,
    )  # fmt: skip
    classes: list[int] | None = setting(
        None, "logistic: POSITIVE,NEGATIVE labels, e.g. 2,3", "data", low=0, high=1000,
        max_len=2, optional=True, fixed=True,
    )  # fmt: skip
    preprocess: str = setting(
        "scale01", "pixel preprocessing", "data", choices=_methods, fixed=True
    )
    bias_column: bool = setting(
        False, "append a column of ones (the bias trick) instead of a bias vector", "data",
        fixed=True,
    )  # fmt: skip
    augment: bool = setting(
        False, "random shifts, rotations and elastic distortions of training batches", "data"
    )
    max_shift: int = setting(3, "augmentation: largest shift in pixels", "data", low=0, high=14)
    max_rotation: float = setting(
        10.0, "augmentation: largest rotation in degrees", "data", low=0, high=180
    )
    elastic_alpha: float = setting(
        0.0, "augmentation: elastic distortion scale in pixels (0: off; 34 in Simard et al. "
        "2003 for 28x28 digits)", "data", low=0, high=1000,
    )  # fmt: skip
    elastic_sigma: float = setting(
        4.0, "augmentation: width in pixels of the Gaussian smoothing the elastic displacement "
        "fields", "data", low=0, open_low=True, high=100,
    )  # fmt: skip
    # -- optimisation
    optimizer: str = setting("sgd", "update rule", "optimisation", choices=_optimizers)
    lr: float = setting(
        0.1, "learning rate eta0; the defaults suit sgd (resume: the schedule's start, annealing "
        "continues from the run's step)", "optimisation", low=0, open_low=True, high=1e6,
        by_model={"logistic": 0.1, "softmax": 0.5, "mlp": 0.1},  # tuned for sgd
    )  # fmt: skip
    anneal_T: float | None = setting(
        None, "anneal lr as eta0 / (1 + t/T) (none: constant)", "optimisation", low=0,
        open_low=True, optional=True, flag="--anneal-T",
        by_model={"logistic": None, "softmax": None, "mlp": 2.0},
    )  # fmt: skip
    anneal_unit: str = setting(
        "epoch", "what t counts (completed epochs or steps, from 0) for inverse_time, step and "
        "cosine, and the unit of step_every and warmup", "optimisation", choices=_units,
    )  # fmt: skip
    schedule: str | None = setting(
        None, "learning-rate schedule (none: inverse_time if anneal_T is set, else constant): "
        + "; ".join(f"{k} {v}" for k, v in SCHEDULE_TEXT.items()), "optimisation",
        choices=lambda: SCHEDULE_TEXT, optional=True,
    )  # fmt: skip
    step_gamma: float = setting(
        0.1, "step: factor applied every step_every", "optimisation", low=0, open_low=True,
        high=1,
    )  # fmt: skip
    step_every: int = setting(
        10, "step: decay period (in anneal_unit)", "optimisation", low=1, high=10**12
    )
    warmup: int = setting(
        0, "cosine: linear warm-up length (in anneal_unit), shorter than the run",
        "optimisation", low=0, high=10**12,
    )  # fmt: skip
    eta_min: float = setting(
        0.0, "cosine: final rate; plateau: lowest rate (below lr)", "optimisation", low=0,
        high=1e6,
    )  # fmt: skip
    plateau_monitor: str = setting(
        "val_loss", "plateau: what it watches", "optimisation", choices=lambda: MONITORS
    )
    plateau_patience: int = setting(
        2, "plateau: evaluations without improvement before the rate drops", "optimisation",
        low=0, high=10**6,
    )  # fmt: skip
    plateau_factor: float = setting(
        0.5, "plateau: factor applied to the rate", "optimisation", low=0, high=1,
        open_low=True, open_high=True,
    )  # fmt: skip
    # optimiser hyperparameters: unset, each takes the chosen optimiser's own default
    momentum: float = setting(
        0.0, "momentum mu (sgd: v <- mu v + g)", "optimisation", low=0, high=1,
        open_high=True, by_model={"logistic": 0.0, "softmax": 0.0, "mlp": 0.9},
        per_optimizer=True,
    )  # fmt: skip
    beta1: float = setting(
        0.9, "first-moment decay", "optimisation", low=0, high=1, open_high=True,
        per_optimizer=True,
    )  # fmt: skip
    beta2: float = setting(
        0.999, "second-moment decay", "optimisation", low=0, high=1, open_high=True,
        per_optimizer=True,
    )  # fmt: skip
    eps: float = setting(
        1e-8, "denominator epsilon", "optimisation", low=0, open_low=True, high=1,
        per_optimizer=True,
    )  # fmt: skip
    weight_decay: float = setting(
        0.0, "weight decay (adamw: decoupled)", "optimisation", low=0, high=1,
        per_optimizer=True,
    )  # fmt: skip
    alpha: float = setting(
        0.99, "squared-gradient decay", "optimisation", low=0, high=1, open_high=True,
        per_optimizer=True,
    )  # fmt: skip
    batch: Any = setting(
        64,
        "full, sgd, a size (128) or a fraction (0.1)",
        "optimisation",
        kind="batch",
        fixed=True,
    )
    shuffle: bool = setting(
        True, "shuffle the training set every epoch", "optimisation", fixed=True
    )
    legacy_shuffle: bool = setting(
        False, "draw each epoch's order as np.random.seed(SEED) then np.random.shuffle would "
        "(numpy's legacy stream, as the sources' own code did)", "optimisation", fixed=True,
    )  # fmt: skip
    drop_last: bool = setting(
        False, "skip the last, smaller mini-batch of an epoch", "optimisation", fixed=True
    )
    epochs: int | None = setting(
        5, "training length in epochs (a resumed run continues to it)", "optimisation", low=1,
        high=10**6, optional=True,
    )  # fmt: skip
    steps: int | None = setting(
        None, "training length in steps (stops at whichever comes first)", "optimisation",
        low=1, high=10**12, optional=True,
    )  # fmt: skip
    eval_every: Any = setting(
        "epoch", "epoch, a fraction of an epoch (0.2) or a number of steps", "optimisation",
        kind="eval_every",
    )  # fmt: skip
    early_stopping: int = setting(
        0, "stop after PATIENCE evaluations without improvement (0: off); restores the best",
        "optimisation", low=0, high=10**6, metavar="PATIENCE",
    )  # fmt: skip
    early_stopping_start: float = setting(
        0.0, "count patience only from this epoch on", "optimisation", low=0, metavar="EPOCH"
    )
    monitor: str = setting(
        "val_loss", "what early stopping watches", "optimisation", choices=lambda: MONITORS
    )
    min_delta: float = setting(
        0.0, "smallest change that counts as an improvement", "optimisation", low=0
    )
    seed: int = setting(
        0, "one seed for everything random", "optimisation", low=0, high=2**32 - 1, fixed=True
    )
    checkpoint_every: int | None = setting(
        None, "also checkpoint every STEPS steps (none: at the end and on Ctrl-C)",
        "optimisation", low=1, optional=True, metavar="STEPS",
    )  # fmt: skip
    layer_stats: bool = setting(
        True, "record each layer's weight, gradient, update and activation statistics at every "
        "evaluation (history.csv columns; see digitlab.models.inspect)", "optimisation",
    )  # fmt: skip

    def __post_init__(self) -> None:
        _check_fields(self, "settings")

    # ------------------------------------------------------------------ construction
    @classmethod
    def names(cls) -> list[str]:
        return list(SPECS)

    @classmethod
    def merge(cls, layers: Sequence[tuple[str, Mapping[str, Any]]]) -> Settings:
        """Settings from layers of values, later layers overriding earlier ones.

        Each layer is ``(where, values)``; ``where`` names the source in error messages (a
        file path, ``"checkpoint PATH"``, or ``"command line"``, whose values are the
        options' text, parsed here).
        """
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}
        for where, layer in layers:
            if not isinstance(layer, Mapping):
                raise ConfigError(f"{where}: expected a table of settings, got {_short(layer)}")
            unknown = sorted(str(k) for k in layer if k not in SPECS)
            if unknown:
                raise ConfigError(f"{where}: unknown setting(s) {', '.join(unknown)}")
            text = where == COMMAND_LINE
            for name, value in layer.items():
                values[name] = check_value(SPECS[name], value, where, text=text)
                sources[name] = where
        try:
            return cls(**values)
        except ConfigError as exc:
            raise ConfigError(_with_sources(str(exc), sources)) from None

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str = "settings") -> Settings:
        """Settings from a dict (TOML file, checkpoint, experiment), refusing unknown keys."""
        return cls.merge([(where, values)])

    @classmethod
    def from_toml(cls, path: str | os.PathLike) -> Settings:
        """Settings from a TOML file (top level, or its ``[train]`` table)."""
        return cls.merge([(str(path), read_toml(path))])

    def replace(self, **changes: Any) -> Settings:
        """A validated copy with ``changes`` (per-model defaults stay as already resolved)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # ------------------------------------------------------------------ derived objects
    @property
    def schedule_name(self) -> str:
        """The schedule in use: ``schedule``, or for none ``inverse_time`` when ``anneal_T``
        is set and ``constant`` otherwise."""
        if self.schedule is not None:
            return self.schedule
        return "constant" if self.anneal_T is None else "inverse_time"

    def make_schedule(self, total: float | None = None) -> Any:
        """The stateless learning-rate schedule (:mod:`digitlab.optim.schedules`).

        ``total`` is the run's length in ``anneal_unit`` (the cosine schedule needs it).
        ``plateau`` gives the constant ``lr``: the reduction is the callback of
        :meth:`plateau_callback`.
        """
        from digitlab.optim import Constant, InverseTime, StepDecay, WarmupCosine

        name, lr, unit = self.schedule_name, float(self.lr), self.anneal_unit
        if name == "inverse_time":
            return InverseTime(lr, float(self.anneal_T or 1.0), unit)
        if name == "step":
            return StepDecay(lr, self.step_gamma, self.step_every, unit)
        if name == "cosine":
            if total is None:
                raise ConfigError("the cosine schedule needs the run's total length")
            return WarmupCosine(lr, total, self.warmup, self.eta_min, unit)
        return Constant(lr)

    def plateau_callback(self) -> Any:
        """The reduce-on-plateau callback for ``schedule = "plateau"``, else None."""
        from digitlab.train.plateau import ReduceLROnPlateau

        if self.schedule_name != "plateau":
            return None
        return ReduceLROnPlateau(
            self.plateau_monitor, factor=self.plateau_factor, patience=self.plateau_patience,
            min_lr=self.eta_min,
        )  # fmt: skip

    def optimizer_config(self) -> dict[str, Any]:
        """``{"name": optimizer, **its hyperparameters}`` for ``digitlab.optim.make_optimizer``."""
        cls = _optimizers()[self.optimizer]
        return {"name": self.optimizer, **{k: getattr(self, k) for k in cls.hyperparameters}}


COMMAND_LINE = "command line"

#: The declaration of every setting, by name, in the order of the fields.
SPECS: dict[str, Spec] = {}


def _build_specs() -> None:
    for f in dataclasses.fields(Settings):
        meta = dict(f.metadata)
        kind = meta.pop("kind", None) or _KINDS[str(f.type).removesuffix(" | None")]
        flag = meta.pop("flag") or "--" + f.name.replace("_", "-")
        SPECS[f.name] = Spec(name=f.name, kind=kind, flag=flag, **meta)


_build_specs()


# ------------------------------------------------------------------------------ validation
_repr = reprlib.Repr()
_repr.maxlevel, _repr.maxlist, _repr.maxdict, _repr.maxstring = 2, 4, 4, 40


def _short(value: Any) -> str:
    """A bounded repr (safe on deeply nested values)."""
    return _repr.repr(value)


def _where_text(spec: Spec, value: Any, where: str) -> str:
    if where == COMMAND_LINE:
        shown = "" if spec.const is not None else f" {_short(value)}"
        return f"option {spec.flag}{shown}"
    return f"{spec.name} = {_short(value)} ({where})"


def check_value(spec: Spec, value: Any, where: str, *, text: bool = False) -> Any:
    """``value`` checked (and, from the command line, parsed) against ``spec``.

    Raises
    ------
    ConfigError
        ``"<setting> = <value> (<where>): <what is expected>"``.
    """
    try:
        if text and spec.const is not None:
            return value
        return _check(spec, _parse_text(spec, value) if text else value)
    except _Bad as exc:
        raise ConfigError(f"{_where_text(spec, value, where)}: expected {exc}") from None


class _Bad(Exception):
    """What a value should have been (internal, turned into a ConfigError)."""


def _parse_text(spec: Spec, text: Any) -> Any:
    if not isinstance(text, str):
        return text
    kind = spec.kind
    if spec.optional and text.lower() == "none":
        return None
    try:
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
        if kind in ("ints", "floats"):
            typ = int if kind == "ints" else float
            return [typ(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise _Bad(_expected(spec)) from None
    return text


def _expected(spec: Spec) -> str:
    what = {
        "int": "a whole number", "float": "a finite number", "bool": "true or false",
        "ints": "a list of whole numbers", "floats": "a list of numbers", "str": "a string",
        "batch": "full, sgd, a size >= 1 or a fraction in (0, 1)",
        "eval_every": "epoch, a fraction in (0, 1] or a step count >= 1",
    }[spec.kind]  # fmt: skip
    rng = spec.range_text()
    if spec.choices is not None:
        what = f"one of {rng.replace(' | ', ', ')}"
    elif rng and spec.kind in ("int", "float", "ints", "floats"):
        what += f" ({rng})"
    return what + (" or none" if spec.optional else "")


def _check(spec: Spec, value: Any) -> Any:
    if value is None or (spec.optional and value == "none"):  # TOML has no null: "none"
        if spec.optional:
            return None
        raise _Bad(_expected(spec))
    kind = spec.kind
    if kind == "batch":
        return _batch(value)
    if kind == "eval_every":
        return _eval_every(value)
    if kind == "bool":
        if not isinstance(value, bool):
            raise _Bad(_expected(spec))
        return value
    if kind == "str":
        if not isinstance(value, str) or (spec.choices and value not in spec.choice_names()):
            raise _Bad(_expected(spec))
        return value
    if kind in ("ints", "floats"):
        if not isinstance(value, list | tuple) or not value:
            raise _Bad(_expected(spec))
        if spec.max_len is not None and len(value) > spec.max_len:
            raise _Bad(f"at most {spec.max_len} entries")
        return [_number(spec, v, int if kind == "ints" else float) for v in value]
    return _number(spec, value, int if kind == "int" else float)


def _number(spec: Spec, value: Any, typ: type) -> Any:
    ok = isinstance(value, int) if typ is int else isinstance(value, int | float)
    if isinstance(value, bool) or not ok or (typ is float and not math.isfinite(value)):
        raise _Bad(_expected(spec))
    value = typ(value)
    lo, hi = spec.low, spec.high
    if (lo is not None and (value < lo or (spec.open_low and value == lo))) or (
        hi is not None and (value > hi or (spec.open_high and value == hi))
    ):
        raise _Bad(_expected(spec))
    return value


def _batch(value: Any) -> Any:
    """``"full"``, ``"sgd"``, an int >= 1 or a float fraction in (0, 1); strings are parsed."""
    if isinstance(value, str) and value not in ("full", "sgd"):
        try:
            value = float(value) if "." in value or "e" in value.lower() else int(value)
        except ValueError:
            raise _Bad("full, sgd, a size (128) or a fraction (0.1)") from None
    if isinstance(value, bool) or not (
        value in ("full", "sgd")
        or (isinstance(value, int) and value >= 1)
        or (isinstance(value, float) and 0 < value < 1)
    ):
        raise _Bad("full, sgd, a size >= 1 or a fraction in (0, 1)")
    return value


def _eval_every(value: Any) -> Any:
    """``"epoch"``, a float fraction of an epoch in (0, 1], or an int number of steps."""
    if isinstance(value, str) and value != "epoch":
        try:
            value = float(value) if "." in value else int(value)
        except ValueError:
            raise _Bad("epoch, a fraction (0.2) or a step count") from None
    if isinstance(value, bool) or not (
        value == "epoch"
        or (isinstance(value, int) and value >= 1)
        or (isinstance(value, float) and 0 < value <= 1)
    ):
        raise _Bad("epoch, a fraction in (0, 1] or steps >= 1")
    return value


def _check_fields(s: Settings, where: str) -> None:
    """Resolve per-model defaults, check every field, then the rules between fields."""
    s.model = check_value(SPECS["model"], s.model, where)
    s.optimizer = check_value(SPECS["optimizer"], s.optimizer, where)
    for name, spec in SPECS.items():
        value = getattr(s, name)
        if value is _MODEL_DEFAULT:
            value = spec.default_for(s.model, s.optimizer)
        setattr(s, name, check_value(spec, value, where))
    _check_rules(s)


def _check_rules(s: Settings) -> None:
    """Rules between settings (each message names the settings involved)."""
    if s.epochs is None and s.steps is None:
        raise ConfigError("give epochs or steps")
    if s.early_stopping and s.holdout == 0:
        raise ConfigError("early_stopping needs a validation split: set holdout > 0")
    if s.schedule == "inverse_time" and s.anneal_T is None:
        raise ConfigError("schedule inverse_time needs anneal_T")
    if s.schedule_name in ("cosine", "plateau") and s.eta_min >= s.lr:
        raise ConfigError(f"eta_min must be below lr for the {s.schedule_name} schedule")
    if s.schedule == "plateau" and s.plateau_monitor.startswith("val_") and s.holdout == 0:
        raise ConfigError("plateau_monitor on the validation split needs holdout > 0")
    if s.elastic_alpha and not s.augment:
        raise ConfigError("elastic_alpha distorts augmented batches: set augment too")
    _check_model_rules(s)


def _check_model_rules(s: Settings) -> None:
    """Rules between the model kind and the settings that apply to some kinds only."""
    if s.model == "logistic":
        if s.classes is None or len(s.classes) != 2 or s.classes[0] == s.classes[1]:
            raise ConfigError(
                "the logistic model needs two different classes = [positive, negative]"
            )
    elif s.classes is not None:
        raise ConfigError("classes (a binary pair) applies to the logistic model only")
    if s.outputs and s.model != "softmax":
        raise ConfigError("outputs applies to the softmax model only")
    if s.model != "mlp" and (any(s.dropout) or s.batch_norm):
        raise ConfigError("dropout and batch_norm apply to the MLP's hidden layers only")
    if s.model == "mlp" and len(s.dropout) not in (1, len(s.hidden)):
        raise ConfigError(
            f"dropout: give one rate or one per hidden layer ({len(s.hidden)}), "
            f"got {len(s.dropout)}"
        )


def _with_sources(message: str, sources: Mapping[str, str]) -> str:
    """Append where the settings a cross-field message names came from."""
    named = [n for n in SPECS if n in sources and n in message.replace("-", "_")]
    if not named:
        return message
    return message + " (" + "; ".join(f"{n} from {sources[n]}" for n in named) + ")"


# ------------------------------------------------------------------------------ TOML
def read_toml(path: str | os.PathLike) -> dict[str, Any]:
    """The settings table of a TOML file: its top level, or its ``[train]`` table."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    if path.stat().st_size > MAX_TOML_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_TOML_BYTES // 2**20} MiB; not a config file")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    if "train" not in data:
        return data
    others = sorted(set(data) - {"train"})
    if others:
        raise ConfigError(
            f"{path}: {', '.join(others)} outside the [train] table; put every setting in it"
        )
    return data["train"]


# ------------------------------------------------------------------------------ generated
def add_options(parser: argparse.ArgumentParser, *, changeable_only: bool = False) -> None:
    """One option per setting, grouped, default shown; only options given end up in the
    namespace (as text, parsed by :meth:`Settings.merge` with ``where="command line"``).
    ``changeable_only``: leave out the settings a resumed run cannot change (``fixed``)."""
    groups: dict[str, Any] = {}
    for spec in SPECS.values():
        if changeable_only and spec.fixed:
            continue
        g = groups.get(spec.group)
        if g is None:
            g = groups[spec.group] = parser.add_argument_group(spec.group)
        dest, S = spec.name, argparse.SUPPRESS
        help = f"{spec.help} (default: {spec.default_text()})".replace("%", "%%")
        if spec.kind == "bool":
            g.add_argument(spec.flag, dest=dest, action="store_true", default=S, help=help)
            no = "--no-" + spec.flag[2:]
            g.add_argument(no, dest=dest, action="store_false", default=S,
                           help=f"turn {spec.flag} off")  # fmt: skip
        elif spec.const is not None:  # a flag: sets the setting to one value
            text = f"{spec.name} = {spec.const} (default: {spec.default_text()}); {spec.help}"
            g.add_argument(spec.flag, dest=dest, action="store_const", const=spec.const,
                           default=S, help=text.replace("%", "%%"))  # fmt: skip
        else:
            metavar = spec.metavar or ("{" + ",".join(spec.choice_names()) + "}" if spec.choices
                                       else spec.name.upper())  # fmt: skip
            g.add_argument(spec.flag, dest=dest, default=S, metavar=metavar, help=help)


def options_given(namespace: argparse.Namespace) -> dict[str, Any]:
    """The settings among parsed options (those given on the command line)."""
    return {k: v for k, v in vars(namespace).items() if k in SPECS}


def markdown_table() -> str:
    """The README's settings table, generated from the declarations."""
    lines = [
        "| setting (TOML) | option | default | values | meaning |",
        "|---|---|---|---|---|",
    ]
    for spec in SPECS.values():
        flag = spec.flag if spec.kind != "bool" else f"{spec.flag}, --no-{spec.flag[2:]}"
        values = spec.range_text() if spec.kind not in ("batch", "eval_every") else ""
        cells = [f"`{spec.name}`", f"`{flag}`", spec.default_text(), values, spec.help]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)
