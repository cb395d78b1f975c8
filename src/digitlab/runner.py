"""A training run from settings: data, preprocessing, model, trainer, and the run folder.

This is the layer between the CLI (and the experiments) and the library: it turns a flat,
validated :class:`Settings` record into arrays, a model and a trainer, runs it, and writes
the run's record (``config.toml``, ``history.csv``, ``metrics.json``, ``checkpoint.npz``).
It never prints; progress goes to an optional callback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from digitlab.checkpoint import atomic_write_bytes, load_checkpoint
from digitlab.data import SEED_SPLIT, Augmenter, Dataset, Preprocessor, Splits, load, make_splits
from digitlab.errors import CheckpointError, ConfigError
from digitlab.models import INITS, REDUCTIONS, Model, build_model
from digitlab.models.functional import ACTIVATIONS
from digitlab.optim import SGD, Constant, InverseTime, Schedule
from digitlab.train import Callback, Checkpoint, EarlyStopping, Progress, Trainer, evaluate

#: Datasets whose files number their classes from 1 (the Kaggle CSV keeps that numbering).
LABEL_OFFSET = {"emnist-letters": 1}


@dataclass
class Settings:
    """Every setting of a training run, flat, with the CLI's and TOML files' names.

    ``batch`` is ``"full"``, ``"sgd"`` (single samples drawn with replacement), an int
    (mini-batch size) or a float in (0, 1) (fraction of the training set). ``eval_every`` is
    ``"epoch"``, a float fraction of an epoch or an int number of steps. ``split="seed"``
    is the reports' split (:data:`SEED_SPLIT`); ``"all"`` uses ``n_train``/``n_test``
    (None: everything) and ``holdout``. ``early_stopping`` is the patience in evaluations
    (0: off), counted from epoch ``early_stopping_start``. ``init=None`` picks the model's
    default (zeros for the linear models, N(0, 1/fan_in) for the network).
    """

    model: str = "softmax"
    dataset: str = "mnist"
    data_root: str | None = None
    split: str = "all"
    n_train: int | None = None
    n_test: int | None = None
    holdout: float = 0.1
    holdout_mode: str = "front"
    classes: list[int] | None = None
    preprocess: str = "scale01"
    bias_column: bool = False
    hidden: list[int] = field(default_factory=lambda: [400])
    activation: str = "tanh"
    init: str | None = None
    l1: float = 0.0
    l2: float = 0.0
    reduction: str = "mean"
    regularize_bias: bool = False
    lr: float = 0.1
    anneal_T: float | None = None
    anneal_unit: str = "epoch"
    momentum: float = 0.0
    batch: Any = "full"
    shuffle: bool = True
    drop_last: bool = False
    epochs: int | None = 10
    steps: int | None = None
    eval_every: Any = "epoch"
    early_stopping: int = 0
    early_stopping_start: float = 0.0
    monitor: str = "val_loss"
    min_delta: float = 0.0
    augment: bool = False
    max_shift: int = 3
    max_rotation: float = 10.0
    seed: int = 0
    checkpoint_every: int | None = None
    dtype: str = "float32"

    # ------------------------------------------------------------------ construction
    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "settings") -> Settings:
        """Settings from a dict (TOML file, checkpoint), refusing unknown keys."""
        unknown = sorted(set(values) - set(cls.names()))
        if unknown:
            raise ConfigError(f"{where}: unknown setting(s) {', '.join(unknown)}")
        return cls(**values).validated()

    @classmethod
    def from_toml(cls, path: str | os.PathLike) -> Settings:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: no such config file")
        try:
            data = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc})") from None
        return cls.from_dict(data.get("train", data), where=str(path))

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes).validated()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # ------------------------------------------------------------------ validation
    def validated(self) -> Settings:
        """Check every value and cross-field rule; return self or raise ConfigError."""

        def one_of(name: str, options: tuple[str, ...] | list[str]) -> None:
            if getattr(self, name) not in options:
                raise ConfigError(
                    f"{name}={getattr(self, name)!r} is not one of {', '.join(map(str, options))}"
                )

        one_of("model", ("logistic", "softmax", "mlp"))
        one_of("split", ("all", "seed"))
        one_of("holdout_mode", ("front", "random"))
        one_of("preprocess", ("scale01", "symmetric", "standardize", "none"))
        one_of("activation", ACTIVATIONS)
        one_of("reduction", REDUCTIONS)
        one_of("anneal_unit", ("epoch", "step"))
        one_of("dtype", ("float32", "float64"))
        if self.init is not None:
            one_of("init", INITS)
        for name in ("l1", "l2", "min_delta", "max_rotation", "early_stopping_start"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"{name} must be a number >= 0, got {value!r}")
        if not isinstance(self.lr, int | float) or not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr!r}")
        if self.anneal_T is not None and not self.anneal_T > 0:
            raise ConfigError(f"anneal_T must be > 0, got {self.anneal_T!r}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if not 0 <= self.holdout < 1:
            raise ConfigError(f"holdout must be in [0, 1), got {self.holdout!r}")
        for name in ("n_train", "n_test", "epochs", "steps", "checkpoint_every"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"{name} must be a whole number >= 1, got {value!r}")
        if self.epochs is None and self.steps is None:
            raise ConfigError("give epochs or steps")
        if not isinstance(self.early_stopping, int) or self.early_stopping < 0:
            raise ConfigError(
                f"early_stopping (patience) must be >= 0, got {self.early_stopping!r}"
            )
        if self.early_stopping and self.holdout == 0:
            raise ConfigError("early stopping needs a validation split: set holdout > 0")
        if not isinstance(self.max_shift, int) or self.max_shift < 0:
            raise ConfigError(f"max_shift must be a whole number >= 0, got {self.max_shift!r}")
        if not self.hidden or any(not isinstance(h, int) or h < 1 for h in self.hidden):
            raise ConfigError(f"hidden must list layer sizes >= 1, got {self.hidden!r}")
        if self.model == "logistic":
            if self.classes is None or len(self.classes) != 2 or self.classes[0] == self.classes[1]:
                raise ConfigError(
                    "logistic regression needs two different classes = [positive, negative]"
                )
        elif self.classes is not None:
            raise ConfigError("classes (a binary pair) applies to the logistic model only")
        self.batch = parse_batch(self.batch)
        self.eval_every = parse_eval_every(self.eval_every)
        return self

    # ------------------------------------------------------------------ derived objects
    def schedule(self) -> Schedule:
        if self.anneal_T is None:
            return Constant(float(self.lr))
        return InverseTime(float(self.lr), float(self.anneal_T), self.anneal_unit)


def parse_batch(value: Any) -> Any:
    """``"full"``, ``"sgd"``, an int >= 1 or a float fraction in (0, 1); strings are parsed."""
    if isinstance(value, str) and value not in ("full", "sgd"):
        try:
            value = float(value) if "." in value or "e" in value.lower() else int(value)
        except ValueError:
            raise ConfigError(
                f"batch={value!r}: give full, sgd, a size (128) or a fraction (0.1)"
            ) from None
    if isinstance(value, bool) or not (
        value in ("full", "sgd")
        or (isinstance(value, int) and value >= 1)
        or (isinstance(value, float) and 0 < value < 1)
    ):
        raise ConfigError(f"batch={value!r}: give full, sgd, a size >= 1 or a fraction in (0, 1)")
    return value


def parse_eval_every(value: Any) -> Any:
    """``"epoch"``, a float fraction of an epoch in (0, 1], or an int number of steps."""
    if isinstance(value, str) and value != "epoch":
        try:
            value = float(value) if "." in value else int(value)
        except ValueError:
            raise ConfigError(
                f"eval_every={value!r}: give epoch, a fraction (0.2) or a step count"
            ) from None
    if isinstance(value, bool) or not (
        value == "epoch"
        or (isinstance(value, int) and value >= 1)
        or (isinstance(value, float) and 0 < value <= 1)
    ):
        raise ConfigError(f"eval_every={value!r}: give epoch, a fraction in (0, 1] or steps >= 1")
    return value


# ---------------------------------------------------------------------------------- data
@dataclass
class PreparedData:
    """Features and labels of each split, and what produced them.

    ``train``/``val``/``test`` are ``(X float32 (n, d), y int64 (n,))``; ``val`` may be None.
    ``train_images`` are the training images (n, h, w) uint8, kept for augmentation.
    """

    dataset: Dataset
    splits: Splits
    preprocessor: Preprocessor
    train: tuple[np.ndarray, np.ndarray]
    val: tuple[np.ndarray, np.ndarray] | None
    test: tuple[np.ndarray, np.ndarray]
    classes: tuple[str, ...]
    notes: list[str]


def prepare_data(settings: Settings, dataset: Dataset | None = None) -> PreparedData:
    """Load (unless given), split and preprocess the data that ``settings`` describe."""
    s = settings
    ds = dataset if dataset is not None else load(s.dataset, root=s.data_root)
    notes = [f"data: {ds.name} ({ds.source})"]
    n_train, n_test, holdout, mode = s.n_train, s.n_test, s.holdout, s.holdout_mode
    if s.split == "seed":
        n_train, n_test = SEED_SPLIT["n_train"], SEED_SPLIT["n_test"]
        holdout, mode = SEED_SPLIT["holdout"], SEED_SPLIT["holdout_mode"]
        if ds.is_sample or len(ds.y_train) < n_train or len(ds.y_test) < n_test:
            n_train, n_test = min(n_train, len(ds.y_train)), min(n_test, len(ds.y_test))
            notes.append(
                f"split scaled down to the data available: first {n_train} train, "
                f"last {n_test} test, first {holdout:.0%} held out"
            )
    classes = tuple(s.classes) if s.classes is not None else None
    if classes is not None:
        for c in classes:
            if not 0 <= c < ds.n_classes:
                raise ConfigError(f"class {c} is not a label of {ds.name} (0..{ds.n_classes - 1})")
    rng = np.random.default_rng(s.seed)
    splits = make_splits(
        ds, n_train=n_train, n_test=n_test, holdout=holdout, holdout_mode=mode,
        classes=classes, rng=rng,
    )  # fmt: skip
    prep = Preprocessor(s.preprocess, bias_column=s.bias_column).fit(splits.train[0])
    train = (prep.transform(splits.train[0]), splits.train[1])
    val = (prep.transform(splits.val[0]), splits.val[1]) if splits.val is not None else None
    test = (prep.transform(splits.test[0]), splits.test[1])
    if classes is not None:
        names = (f"{ds.classes[classes[1]]}", f"{ds.classes[classes[0]]}")  # label 0, label 1
    else:
        names = ds.classes
    return PreparedData(ds, splits, prep, train, val, test, tuple(names), notes)


def pixel_affine(prep: Preprocessor, d: int) -> tuple[np.ndarray, np.ndarray]:
    """``(scale, offset)``, each (d,), with ``pixels = features * scale + offset``."""
    if prep.method == "scale01":
        return np.full(d, 255.0, np.float32), np.zeros(d, np.float32)
    if prep.method == "symmetric":
        return np.full(d, 127.5, np.float32), np.full(d, 127.5, np.float32)
    if prep.method == "standardize":
        return prep.std_, prep.mean_
    return np.ones(d, np.float32), np.zeros(d, np.float32)


def feature_augmenter(
    prep: Preprocessor, image_shape: tuple[int, int], augmenter: Augmenter
) -> Callable[[np.ndarray, np.random.Generator], np.ndarray]:
    """Augmentation of preprocessed feature batches.

    Maps features back to pixels (the preprocessing is affine per pixel), shifts and rotates
    the images (background 0, as in pixel space), and maps them forward again; a bias column
    is kept as it is.
    """
    d = image_shape[0] * image_shape[1]
    scale, offset = pixel_affine(prep, d)

    def transform(Xb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        n = Xb.shape[0]
        pixels = (Xb[:, :d] * scale + offset).reshape(n, *image_shape)
        moved = augmenter(pixels, rng).reshape(n, d)
        out = np.empty_like(Xb)
        np.subtract(moved, offset, out=out[:, :d])
        out[:, :d] /= scale
        out[:, d:] = Xb[:, d:]
        return out

    return transform


# ---------------------------------------------------------------------------------- model
def build_run_model(settings: Settings, n_features: int, n_classes: int) -> Model:
    """The model that ``settings`` describe, initialised from ``settings.seed``."""
    s = settings
    config: dict[str, Any] = {
        "kind": s.model,
        "n_features": n_features,
        "l1": s.l1,
        "l2": s.l2,
        "reduction": s.reduction,
        "regularize_bias": s.regularize_bias,
        "dtype": s.dtype,
        "rng": np.random.default_rng([s.seed, 1]),
    }
    if s.init is not None:
        config["init"] = s.init
    if s.model == "logistic":
        config["bias"] = not s.bias_column
    elif s.model == "softmax":
        config |= {"n_classes": n_classes, "bias": not s.bias_column}
    else:
        config |= {"n_classes": n_classes, "hidden": s.hidden, "activation": s.activation}
    return build_model(config)


def set_params(model: Model, params: dict[str, np.ndarray]) -> None:
    """Copy ``params`` (name -> array) into ``model``; names and shapes must match."""
    if set(params) != set(model.params):
        raise CheckpointError(
            f"parameters {sorted(params)} do not fit this model {sorted(model.params)}"
        )
    for k, v in params.items():
        if v.shape != model.params[k].shape:
            raise CheckpointError(
                f"parameter {k} has shape {v.shape}, the model expects {model.params[k].shape}"
            )
        model.params[k][...] = v


def build_trainer(
    settings: Settings,
    model: Model,
    data: PreparedData,
    callbacks: list[Callback],
) -> Trainer:
    """A trainer for ``model`` with the batching, schedule and callbacks of ``settings``."""
    s = settings
    batch = 1 if s.batch == "sgd" else s.batch
    transform = None
    if s.augment:
        transform = feature_augmenter(
            data.preprocessor, data.dataset.image_shape, Augmenter(s.max_shift, s.max_rotation)
        )
    cbs = list(callbacks)
    if s.early_stopping:
        cbs.insert(
            0,
            EarlyStopping(
                s.monitor,
                patience=s.early_stopping,
                min_delta=s.min_delta,
                start_epoch=s.early_stopping_start,
            ),
        )
    return Trainer(
        model,
        optimizer=SGD(momentum=s.momentum),
        schedule=s.schedule(),
        batch_size=batch,
        shuffle=s.shuffle,
        drop_last=s.drop_last,
        replacement=s.batch == "sgd",
        eval_every=s.eval_every,
        callbacks=cbs,
        batch_transform=transform,
        rng=np.random.default_rng([s.seed, 2]),
    )


# ---------------------------------------------------------------------------------- runs
@dataclass
class RunResult:
    """What a run produced: its folder, final metrics and the trainer (for inspection)."""

    folder: Path
    metrics: dict[str, Any]
    trainer: Trainer
    data: PreparedData


def new_run_folder(root: str | os.PathLike, name: str) -> Path:
    """``root/name/<timestamp>`` (made unique), created."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(root) / name
    for i in range(1000):
        folder = base / (stamp if i == 0 else f"{stamp}-{i}")
        try:
            folder.mkdir(parents=True)
            return folder
        except FileExistsError:
            continue
    raise ConfigError(f"{base}: cannot create a new run folder")


def write_toml(path: Path, values: dict[str, Any]) -> None:
    """Write a flat dict as TOML (None values are left out: TOML has no null)."""

    def fmt(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, list | tuple):
            return "[" + ", ".join(fmt(x) for x in v) + "]"
        return json.dumps(str(v))

    lines = [f"{k} = {fmt(v)}" for k, v in values.items() if v is not None]
    atomic_write_bytes(path, lambda f: f.write(("\n".join(lines) + "\n").encode()))


def write_json(path: Path, values: dict[str, Any]) -> None:
    atomic_write_bytes(path, lambda f: f.write(json.dumps(values, indent=2).encode()))


def split_metrics(model: Model, data: PreparedData) -> dict[str, Any]:
    """``<split>_loss``, ``<split>_objective``, ``<split>_acc`` and ``n_<split>`` of ``model``
    on train, validation (``n_val`` = 0 when there is none) and test."""
    out: dict[str, Any] = {}
    for name, pair in (("train", data.train), ("val", data.val), ("test", data.test)):
        out[f"n_{name}"] = 0 if pair is None else len(pair[1])
        if pair is not None:
            out |= {f"{name}_{key}": value for key, value in evaluate(model, *pair).items()}
    return out


def final_metrics(trainer: Trainer, data: PreparedData) -> dict[str, Any]:
    """Loss and accuracy of the final (or restored best) model on every split."""
    out = split_metrics(trainer.model, data)
    out |= {
        "steps": trainer.step,
        "epochs": trainer.step / max(trainer.steps_per_epoch, 1),
        "seconds": trainer.elapsed,
        "stop_reason": trainer.stop_reason,
        "weight_norm": trainer.model.weight_norm(),
    }
    pred = trainer.model.predict(data.test[0])
    k = len(data.classes)
    out["confusion_test"] = (
        np.bincount(data.test[1] * k + pred, minlength=k * k).reshape(k, k).tolist()
    )
    es = next((c for c in trainer.callbacks if isinstance(c, EarlyStopping)), None)
    if es is not None:
        out |= {"best_epoch": es.best_epoch, "best_step": es.best_step, "early_stopped": es.stopped}
    return out


def _attach(trainer: Trainer, settings: Settings, data: PreparedData) -> None:
    """Put what `evaluate`/`predict`/`resume` need into the trainer's checkpoints."""
    prep = data.preprocessor.state_dict()
    arrays = {k: v for k, v in prep.items() if isinstance(v, np.ndarray)}
    trainer.extra_arrays = {f"prep_{k}": v for k, v in arrays.items()}
    trainer.extra_meta = {
        "settings": settings.to_dict(),
        "preprocessor": {k: v for k, v in prep.items() if not isinstance(v, np.ndarray)},
        "classes": list(data.classes),
        "dataset": data.dataset.name,
        "image_shape": list(data.dataset.image_shape),
        "label_offset": LABEL_OFFSET.get(data.dataset.name, 0),
    }


def run(
    settings: Settings,
    out: str | os.PathLike = "runs",
    name: str | None = None,
    *,
    data: PreparedData | None = None,
    progress: Callable[[int, int, dict[str, float]], None] | None = None,
    folder: Path | None = None,
    resume_from: tuple[dict[str, np.ndarray], dict[str, Any]] | None = None,
    handle_signals: bool = False,
    init_params: dict[str, np.ndarray] | None = None,
    eval_offset: int = 0,
) -> RunResult:
    """Train as ``settings`` say and write the run folder.

    Parameters
    ----------
    settings : Settings
    out : path-like
        Runs root; the run goes to ``out/name/<timestamp>/`` unless ``folder`` is given.
    name : str, optional
        Defaults to the model kind.
    data : PreparedData, optional
        Reuse prepared arrays (sweeps); else loaded from the settings.
    progress : callable, optional
        ``progress(step, total, info)`` (see :class:`~digitlab.train.Progress`).
    resume_from : (arrays, meta), optional
        A loaded checkpoint to continue from.
    handle_signals : bool
        Turn SIGINT/SIGTERM into a clean stop with a checkpoint (main thread only).
    init_params : dict, optional
        Start from these parameters (name -> array of the model's shapes) instead of the
        settings' initialisation: a chained experiment member.
    eval_offset : int
        Evaluate after steps ``eval_offset + k * eval_every`` (the experiment engine's
        ``eval_offset``; 0: after every ``eval_every`` steps).

    Returns
    -------
    RunResult
    """
    from digitlab.train import graceful_interrupts

    data = data if data is not None else prepare_data(settings)
    model = build_run_model(settings, data.train[0].shape[1], len(data.classes))
    folder = folder if folder is not None else new_run_folder(out, name or settings.model)
    callbacks: list[Callback] = [Checkpoint(folder / "checkpoint.npz", settings.checkpoint_every)]
    if progress is not None:
        callbacks.append(Progress(progress, every=1))
    trainer = build_trainer(settings, model, data, callbacks)
    if resume_from is not None:
        trainer.load_state_dict(*resume_from)

    if init_params is not None:
        set_params(model, init_params)
    trainer.eval_offset = eval_offset
    _attach(trainer, settings, data)
    write_toml(folder / "config.toml", settings.to_dict())
    guard = graceful_interrupts(trainer) if handle_signals else contextlib.nullcontext()
    try:
        with guard:
            trainer.fit(
                data.train, data.val, data.test, epochs=settings.epochs, steps=settings.steps
            )
    finally:
        trainer.history.to_csv(folder / "history.csv")
    metrics = final_metrics(trainer, data)
    metrics |= {"dataset": data.dataset.name, "source": data.dataset.source,
                "is_sample": data.dataset.is_sample, "notes": data.notes,
                "interrupted": trainer.interrupted}  # fmt: skip
    write_json(folder / "metrics.json", metrics)
    return RunResult(folder, metrics, trainer, data)


def load_run_checkpoint(path: str | os.PathLike) -> tuple[Model, Preprocessor, dict[str, Any]]:
    """Model, fitted preprocessor and metadata of a checkpoint written by :func:`run`."""
    arrays, meta = load_checkpoint(path)
    extra = meta.get("extra", {})
    if "settings" not in extra or "preprocessor" not in extra:
        raise CheckpointError(f"{path}: not a checkpoint of a digitlab run (no settings inside)")
    params = {k[len("model/") :]: v for k, v in arrays.items() if k.startswith("model/")}
    model = build_model(meta["model"], params)
    state = dict(extra["preprocessor"])
    state |= {k[len("extra/prep_") :]: v for k, v in arrays.items() if k.startswith("extra/prep_")}
    return model, Preprocessor.from_state_dict(state), meta
