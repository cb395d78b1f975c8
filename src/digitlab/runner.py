"""A training run from settings: data, preprocessing, model, trainer, and the run folder.

This is the layer between the CLI (and the experiments) and the library: it turns a flat,
validated :class:`Settings` record into arrays, a model and a trainer, runs it, and writes
the run's record (``config.toml``, ``history.csv``, ``metrics.json``, ``checkpoint.npz``).
It never prints; progress goes to the callbacks a caller passes.
"""

from __future__ import annotations

import contextlib
import os
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from digitlab.data import SEED_SPLIT, Augmenter, Dataset, Preprocessor, Splits, load, make_splits
from digitlab.data.rows import ImageRows
from digitlab.errors import ConfigError, DataError
from digitlab.models import MODELS, Model
from digitlab.optim import make_optimizer
from digitlab.runfiles import (
    CHECKPOINT,
    CONFIG,
    HISTORY,
    METRICS,
    HistoryWriter,
    check_run_name,
    checkpoint_progress,
    existing_ancestor,
    find_checkpoint,
    new_run_folder,
    remove_run_folder,
    run_settings,
    write_history,
    write_json,
    write_toml,
)
from digitlab.settings import COMMAND_LINE, SPECS, Settings
from digitlab.train import (
    Callback,
    Checkpoint,
    EarlyStopping,
    Trainer,
    evaluate,
    fit_together,
    graceful_interrupts,
    predict,
    resolve_batch_size,
)
from digitlab.train.batching import steps_per_epoch
from digitlab.train.callbacks import SaveClock
from digitlab.train.layerstats import PROBE_ROWS, LayerStats


# ---------------------------------------------------------------------------------- data
@dataclass
class PreparedData:
    """Features and labels of each split, and what produced them.

    ``train``/``val``/``test`` are ``(X (n, d), y int64 (n,))``; ``val`` may be None. ``X`` is
    an :class:`~digitlab.data.rows.ImageRows`: the split's uint8 images, turned into float32
    features a batch (or an evaluation chunk) at a time, so no float32 copy of a split is
    kept; ``numpy.asarray(X)`` gives the whole feature matrix when one is wanted.
    """

    dataset: Dataset
    splits: Splits
    preprocessor: Preprocessor
    train: tuple[ImageRows, np.ndarray]
    val: tuple[ImageRows, np.ndarray] | None
    test: tuple[ImageRows, np.ndarray]
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
    splits.check_trainable()  # empty or one-image splits: one line, before any training
    prep = Preprocessor(s.preprocess, bias_column=s.bias_column).fit(splits.train[0])
    train = (ImageRows(splits.train[0], prep), splits.train[1])
    val = (ImageRows(splits.val[0], prep), splits.val[1]) if splits.val is not None else None
    test = (ImageRows(splits.test[0], prep), splits.test[1])
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

    Maps features back to pixels (the preprocessing is affine per pixel), shifts, rotates and
    elastically distorts the images as ``augmenter`` says (background 0, as in pixel space),
    and maps them forward again; a bias column is kept as it is.
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
    """The model that ``settings`` describe, initialised from ``settings.seed``: ``n_classes``
    outputs, or ``settings.outputs`` (the extra ones never a label)."""
    cls = MODELS[settings.model]
    if settings.outputs:
        if settings.outputs < n_classes:
            raise ConfigError(
                f"outputs = {settings.outputs} is fewer than the {n_classes} classes"
            )
        n_classes = settings.outputs
    return cls.from_settings(
        settings, n_features, n_classes, np.random.default_rng([settings.seed, 1])
    )


def run_length(settings: Settings, n: int) -> float:
    """The length of a run of ``settings`` on ``n`` training rows in ``anneal_unit``: its
    total steps, or those over the steps per epoch."""
    s = settings
    batch = 1 if s.batch == "sgd" else s.batch
    spe = steps_per_epoch(
        resolve_batch_size(batch, n), n, drop_last=s.drop_last, replacement=s.batch == "sgd"
    )
    total = min(t for t in (s.epochs and s.epochs * spe, s.steps) if t is not None)
    return total if s.anneal_unit == "step" else total / spe


def build_trainer(
    settings: Settings,
    model: Model,
    data: PreparedData,
    callbacks: list[Callback],
) -> Trainer:
    """A trainer for ``model`` with the batching, optimiser, schedule and callbacks of
    ``settings``."""
    s = settings
    batch = 1 if s.batch == "sgd" else s.batch
    transform = None
    if s.augment:
        augmenter = Augmenter(
            s.max_shift, s.max_rotation,
            elastic_alpha=s.elastic_alpha, elastic_sigma=s.elastic_sigma,
        )  # fmt: skip
        transform = feature_augmenter(data.preprocessor, data.dataset.image_shape, augmenter)
    cbs = list(callbacks)
    if s.layer_stats:  # a fixed probe batch: the first rows of the validation split
        rows, _ = data.val if data.val is not None else data.train
        head = slice(0, min(PROBE_ROWS, len(rows)))
        cbs.append(LayerStats(rows[head] if isinstance(rows, np.ndarray) else rows.take(head)))
    plateau = s.plateau_callback()
    if plateau is not None:
        cbs.insert(0, plateau)
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
        optimizer=make_optimizer(s.optimizer_config()),
        schedule=s.make_schedule(run_length(s, len(data.train[1]))),
        batch_size=batch,
        shuffle=s.shuffle,
        drop_last=s.drop_last,
        replacement=s.batch == "sgd",
        eval_every=s.eval_every,
        callbacks=cbs,
        batch_transform=transform,
        rng=np.random.default_rng([s.seed, 2]),
        shuffle_rng=np.random.RandomState(s.seed) if s.legacy_shuffle else None,
    )


# ---------------------------------------------------------------------------------- runs
@dataclass
class RunResult:
    """What a run produced: its folder, final metrics and the trainer (for inspection)."""

    folder: Path
    metrics: dict[str, Any]
    trainer: Trainer
    data: PreparedData


class HistoryFile(Callback):
    """Append each evaluation to ``history.csv`` and flush, so a run can be followed live.

    The file is (re)written with the records already in the trainer's history when training
    begins (a resumed run keeps its earlier rows); :class:`~digitlab.runfiles.HistoryWriter`
    writes it.
    """

    def __init__(self, path: Path) -> None:
        self.writer = HistoryWriter(path)

    def on_train_begin(self, trainer: Trainer) -> None:
        if trainer.history.records:
            self.writer.rewrite(trainer.history.records)

    def on_evaluate(self, trainer: Trainer, record: dict[str, float]) -> None:
        self.writer.append(record)

    def on_train_end(self, trainer: Trainer) -> None:
        self.writer.close()


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
    pred = predict(trainer.model, data.test[0])
    k = len(data.classes)
    other = pred >= k  # an output that is never a label (settings.outputs)
    y, pred = data.test[1][~other], pred[~other]
    out["confusion_test"] = np.bincount(y * k + pred, minlength=k * k).reshape(k, k).tolist()
    if trainer.model.n_classes > k:
        out["test_predicted_other"] = int(other.sum())
    if trainer.trained_with > 1:  # its seconds are the lock-step group's, shared by that many
        out["trained_together"] = trainer.trained_with
    es = next((c for c in trainer.callbacks if isinstance(c, EarlyStopping)), None)
    if es is not None:
        out |= {"best_epoch": es.best_epoch, "best_step": es.best_step, "early_stopped": es.stopped}
    return out


def data_record(ds: Dataset) -> dict[str, Any]:
    """What a checkpoint records of the data it trained on (compared by :func:`check_same_data`)."""
    crc = zlib.crc32(_bytes(ds.y_train))
    for a in (ds.x_train, ds.y_test, ds.x_test):
        crc = zlib.crc32(_bytes(a), crc)
    return {"name": ds.name, "n_train": len(ds.y_train), "n_test": len(ds.y_test),
            "crc32": f"{crc:08x}", "source": ds.source, "is_sample": ds.is_sample}  # fmt: skip


def data_identity(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The identity (name, sizes, checksum: :func:`data_record`) of the dataset that a job's
    ``settings`` resolve to here: what the client sends with each cluster job."""
    s = Settings.from_dict(dict(settings))
    return data_record(load(s.dataset, root=s.data_root))


def check_data_identity(expected: Mapping[str, Any] | None, ds: Dataset) -> None:
    """Refuse (DataError, naming this worker) data other than the client's ``expected``
    :func:`data_identity`: a worker without ``DIGITLAB_DATA`` finds the embedded sample instead of
    full MNIST, and must say so rather than train on it or fail on its sizes."""
    import socket

    if not expected:
        return
    now = data_record(ds)
    if any(expected.get(k) != now[k] for k in ("name", "n_train", "n_test", "crc32")):
        n_tr, n_te = expected.get("n_train"), expected.get("n_test")
        was = f"{expected.get('name')} ({n_tr} train / {n_te} test)"
        raise DataError(
            f"worker {socket.gethostname()} (pid {os.getpid()}) finds {ds.name} "
            f"({now['n_train']} train / {now['n_test']} test, {ds.source}) but the job was "
            f"planned on {was}; give the workers the same data (DIGITLAB_DATA or --data-root "
            "on a shared folder)"
        )


def _bytes(a: np.ndarray) -> np.ndarray:
    """The bytes of ``a`` in C order (uint8 (nbytes,)), without a copy when it is contiguous."""
    return np.ascontiguousarray(a).reshape(-1).view(np.uint8)


def check_same_data(meta: Mapping[str, Any], ds: Dataset, path: str | os.PathLike) -> None:
    """Refuse a dataset other than the one the checkpoint trained on.

    Raises
    ------
    DataError
        Name, sizes or content differ (e.g. the embedded sample found instead of full MNIST).
    """
    extra = meta.get("extra", {})
    saved = extra.get("data") if isinstance(extra, dict) else None
    if not isinstance(saved, dict):  # checkpoints from before the record: name only
        name = extra.get("dataset") if isinstance(extra, dict) else None
        saved = {"name": name} if isinstance(name, str) else {}
    now = data_record(ds)
    differs = [
        k for k in ("name", "n_train", "n_test", "crc32") if k in saved and saved[k] != now[k]
    ]
    if differs:
        n_tr, n_te = saved.get("n_train", "?"), saved.get("n_test", "?")
        was = f"{saved.get('name')} ({n_tr} train / {n_te} test)"
        raise DataError(
            f"{path} was trained on {was}, but the data found now is {ds.name} "
            f"({now['n_train']} train / {now['n_test']} test, {ds.source}); set DIGITLAB_DATA "
            "to the original data's folder, or give --data-root or --dataset to choose the data"
        )


def output_names(classes: Sequence[str], model: Model) -> list[str]:
    """A name per output of ``model``: the class names, then ``"(output i)"`` for each
    output that is never a label (``settings.outputs`` above the number of classes)."""
    k = 2 if model.kind == "logistic" else model.n_classes
    return [*classes, *(f"(output {i})" for i in range(len(classes), k))]


def _attach(trainer: Trainer, settings: Settings, data: PreparedData) -> None:
    """Put what `evaluate`/`predict`/`resume` need into the trainer's checkpoints."""
    prep = data.preprocessor.state_dict()
    arrays = {k: v for k, v in prep.items() if isinstance(v, np.ndarray)}
    trainer.extra_arrays = {f"prep_{k}": v for k, v in arrays.items()}
    trainer.extra_meta = {
        "settings": settings.to_dict(),
        "preprocessor": {k: v for k, v in prep.items() if not isinstance(v, np.ndarray)},
        "classes": output_names(data.classes, trainer.model),
        "dataset": data.dataset.name,
        "data": data_record(data.dataset),
        "image_shape": list(data.dataset.image_shape),
        "label_offset": data.dataset.label_offset,
    }


@dataclass(frozen=True)
class RunOptions:
    """How a run is opened, besides its settings.

    Attributes
    ----------
    out : path-like
        Runs root; the run goes to ``out/name/<timestamp>/`` unless ``folder`` is given.
    name : str, optional
        The run's group under ``out``; defaults to the model kind.
    data : PreparedData, optional
        Reuse prepared arrays (sweeps); else loaded from the settings.
    callbacks : sequence of Callback
        More callbacks (e.g. the CLI's progress lines).
    folder : Path, optional
        Write into this folder (created by the caller) instead of a new one.
    resume_from : (arrays, meta), optional
        A loaded checkpoint to continue from.
    init_params : dict, optional
        Start from these parameters (name -> array of the model's shapes) instead of the
        settings' initialisation: a chained experiment member.
    eval_offset : int
        Evaluate after steps ``eval_offset + k * eval_every``.
    handle_signals : bool
        Turn SIGINT/SIGTERM into a clean stop with a checkpoint (main thread only).
    restart_momentum : bool
        Resume from a checkpoint that lacks optimiser state (it restarts from zero).
    checkpoint_seconds : float, optional
        Also checkpoint after this many seconds of training since the last checkpoint (the
        experiment engine's jobs, which resume from it when killed).
    checkpoint_clock : SaveClock, optional
        Decides those checkpoints instead (one clock shared by runs trained in lock-step).
    """

    out: str | os.PathLike = "runs"
    name: str | None = None
    data: PreparedData | None = None
    callbacks: Sequence[Callback] = field(default_factory=tuple)
    folder: Path | None = None
    resume_from: tuple[dict[str, np.ndarray], dict[str, Any]] | None = None
    init_params: dict[str, np.ndarray] | None = None
    eval_offset: int = 0
    handle_signals: bool = False
    restart_momentum: bool = False
    checkpoint_seconds: float | None = None
    checkpoint_clock: SaveClock | None = None


def run(settings: Settings, options: RunOptions | None = None, **kwargs: Any) -> RunResult:
    """Train as ``settings`` say and write the run folder.

    ``options`` (or its fields as keywords, e.g. ``run(s, out="runs", name="sgd")``) say where
    and from what (:class:`RunOptions`). The folder is created only once the data are loaded
    and the model, trainer and any checkpoint to resume are in place; if training fails before
    the first checkpoint is written, a folder this call created is removed again.
    """
    opts = RunOptions(**kwargs) if options is None else options
    r = _open_run(settings, opts)
    guard = graceful_interrupts(r.trainer) if opts.handle_signals else contextlib.nullcontext()
    try:
        try:
            with guard:
                r.trainer.fit(
                    r.data.train, r.data.val, r.data.test,
                    epochs=settings.epochs, steps=settings.steps,
                )  # fmt: skip
        finally:
            r.keep_history()
    except BaseException:
        r.discard()
        raise
    return r.result()


def run_together(
    settings: list[Settings],
    folders: list[Path],
    *,
    data: PreparedData,
    init_params: list[dict[str, np.ndarray] | None] | None = None,
    eval_offset: int = 0,
    checkpoint_seconds: float | None = None,
    resume_from: list[tuple[dict[str, np.ndarray], dict[str, Any]] | None] | None = None,
) -> list[RunResult]:
    """:func:`run` for several settings on the same data, trained in lock-step.

    ``resume_from`` holds a loaded checkpoint (or None) per run; checkpoints by time
    (``checkpoint_seconds``) are written at the same steps for all runs, so that stopped, they
    continue in lock-step.

    The settings must agree on the length of training (``epochs``/``steps``); repeats of an
    experiment member that differ only in their seed (their random start) share each step's
    matrix products (:func:`~digitlab.train.fit_together`), other combinations train one
    after another. Each run writes its own folder, as :func:`run` does; if any fails, the
    folders without a checkpoint are removed.
    """
    if len({(s.epochs, s.steps) for s in settings}) > 1:
        raise ConfigError("runs trained together need the same epochs/steps")
    inits = init_params if init_params is not None else [None] * len(settings)
    resumes = resume_from if resume_from is not None else [None] * len(settings)
    clock = None if checkpoint_seconds is None else SaveClock(checkpoint_seconds)
    runs: list[_OpenRun] = []
    try:
        for s, folder, init, resume in zip(settings, folders, inits, resumes, strict=True):
            opts = RunOptions(out=folder.parent, data=data, folder=folder, init_params=init,
                              eval_offset=eval_offset, resume_from=resume,
                              checkpoint_clock=clock)  # fmt: skip
            runs.append(_open_run(s, opts))
        try:
            fit_together(
                [r.trainer for r in runs], data.train, data.val, data.test,
                epochs=settings[0].epochs, steps=settings[0].steps,
            )  # fmt: skip
        finally:
            for r in runs:
                r.keep_history()
    except BaseException:
        for r in runs:
            r.discard()
        raise
    return [r.result() for r in runs]


@dataclass
class _OpenRun:
    """A run whose folder, model and trainer are in place, before or while it trains."""

    settings: Settings
    data: PreparedData
    trainer: Trainer
    checkpoint: Checkpoint
    folder: Path
    made: bool
    keep: Path | None

    def keep_history(self) -> None:
        """Rewrite ``history.csv`` whole once a checkpoint exists (it matches that)."""
        if self.checkpoint.saved:
            write_history(self.folder / HISTORY, self.trainer.history.records)

    def discard(self) -> None:
        """Remove a folder this run made if training failed before its first checkpoint."""
        if self.made and not checkpoint_saved(self.folder):
            remove_run_folder(self.folder, self.keep)

    def result(self) -> RunResult:
        """Final metrics, written to ``metrics.json``."""
        trainer, data = self.trainer, self.data
        metrics = final_metrics(trainer, data)
        metrics |= {"dataset": data.dataset.name, "source": data.dataset.source,
                    "is_sample": data.dataset.is_sample, "notes": data.notes,
                    "interrupted": trainer.interrupted}  # fmt: skip
        write_json(self.folder / METRICS, metrics)
        return RunResult(self.folder, metrics, trainer, data)


def check_batch_rows(settings: Settings, model: Model, n: int) -> None:
    """Refuse (ConfigError), before anything is written, a batch-normalised model whose
    training would meet a batch of one row (single samples, or an epoch's last batch)."""
    if not model.batch_coupled:
        return
    if settings.batch == "sgd":
        smallest = 1
    else:
        size = resolve_batch_size(settings.batch, n)
        smallest = size if settings.drop_last or n % size == 0 else n % size
    if smallest >= 2:
        return
    why = (
        "single-sample training (batch sgd) has 1 row per batch"
        if settings.batch == "sgd"
        else f"{n} training images in batches of {settings.batch} leave a batch of 1 row: set "
        "drop_last or another batch size"
    )
    raise ConfigError(f"batch_norm needs training batches of at least 2 rows, but {why}")


def _open_run(settings: Settings, opts: RunOptions) -> _OpenRun:
    """Data, model, trainer and resume state, then the folder with ``config.toml``."""
    name = settings.model if opts.name is None else opts.name
    check_run_name(name)
    data = opts.data if opts.data is not None else prepare_data(settings)
    if len(data.train[1]) == 0:
        raise DataError(f"{data.dataset.name}: the training split is empty")
    model = build_run_model(settings, data.train[0].shape[1], len(data.classes))
    check_batch_rows(settings, model, len(data.train[1]))
    trainer = build_trainer(settings, model, data, list(opts.callbacks))
    if opts.resume_from is not None:
        trainer.load_state_dict(*opts.resume_from, restart_missing=opts.restart_momentum)
    if opts.init_params is not None:
        model.load_state(opts.init_params)
    trainer.eval_offset = opts.eval_offset
    keep = existing_ancestor(opts.out)
    made = opts.folder is None
    folder = opts.folder if opts.folder is not None else new_run_folder(opts.out, name)
    checkpoint = Checkpoint(
        folder / CHECKPOINT, settings.checkpoint_every, seconds=opts.checkpoint_seconds,
        clock=opts.checkpoint_clock,
    )  # fmt: skip
    opened = _OpenRun(settings, data, trainer, checkpoint, folder, made, keep)
    try:
        trainer.callbacks += [checkpoint, HistoryFile(folder / HISTORY)]
        _attach(trainer, settings, data)
        write_toml(folder / CONFIG, settings.to_dict())
    except BaseException:
        opened.discard()
        raise
    return opened


def checkpoint_saved(folder: Path) -> bool:
    return find_checkpoint(folder) is not None


# ---------------------------------------------------------------------------------- resume
@dataclass
class ResumePlan:
    """A checkpoint to continue from and the settings to continue with."""

    settings: Settings
    checkpoint: tuple[dict[str, np.ndarray], dict[str, Any]]
    step: int
    #: resume even if the checkpoint lacks optimiser state (it then restarts from zero)
    restart_momentum: bool = False


def plan_resume(
    path: str | os.PathLike,
    options: Mapping[str, Any],
    *,
    more_steps: int | None = None,
    more_epochs: int | None = None,
    restart_momentum: bool = False,
) -> ResumePlan:
    """The settings a resumed run continues with: the checkpoint's, with ``options`` applied.

    ``options`` are command-line values (text). Settings declared ``fixed`` (model shape,
    data, batching, seed) cannot change; ``lr`` sets the schedule's start again (annealing
    still counts from the run's step). ``more_steps``/``more_epochs`` extend the run. A
    checkpoint without the optimiser state its run had (an MLP's velocity) is refused unless
    ``restart_momentum`` (then that state restarts from zero).

    Raises
    ------
    ConfigError
        A fixed setting changed, or a value is invalid.
    CheckpointError
        Not a checkpoint of a digitlab run.
    """
    from digitlab.checkpoint import load_checkpoint

    arrays, meta = load_checkpoint(path)
    saved = run_settings(meta, path)
    progress = checkpoint_progress(meta, path)
    settings = Settings.merge([(f"checkpoint {path}", saved.to_dict()), (COMMAND_LINE, options)])
    changed = sorted(
        k for k in options if SPECS[k].fixed and getattr(settings, k) != getattr(saved, k)
    )
    if changed:
        raise ConfigError(f"cannot change {', '.join(changed)} when resuming; start a new run")
    step = progress["step"]
    for what, value in (("--more-steps", more_steps), ("--more-epochs", more_epochs)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise ConfigError(f"option {what} {value!r}: expected a whole number >= 1")
    if more_steps is not None:
        settings = settings.replace(steps=step + more_steps, epochs=None)
    elif more_epochs is not None:
        settings = settings.replace(epochs=progress["epoch"] + more_epochs)
    return ResumePlan(settings, (arrays, meta), step, restart_momentum)


def data_for_checkpoint(
    settings: Settings, meta: Mapping[str, Any], path: str | os.PathLike, *, dataset_given: bool
) -> PreparedData:
    """The prepared data of a checkpoint's run, refusing different data unless the dataset or
    its folder was given explicitly (``dataset_given``)."""
    data = prepare_data(settings)
    if not dataset_given:
        check_same_data(meta, data.dataset, path)
    return data


# ---------------------------------------------------------------------------------- gradcheck
def gradcheck_problem(
    model: str, hidden: list[int], activation: str, l1: float, l2: float, *, n: int,
    dataset: str = "mnist", data_root: str | None = None, layers: Mapping[str, Any] = {},
) -> tuple[Model, np.ndarray, np.ndarray, str]:  # fmt: skip
    """A float64 model and ``n`` real images to check its gradient on.

    The logistic model gets 2s (label 1) and 3s (label 0); the weights start from N(0, 1)
    when ``l1`` is set (so no weight sits at the kink of ``|w|``). ``layers`` holds more
    settings of the model (``dropout``, ``batch_norm``, ``init``, ``leaky_slope``), as
    command-line text or values.

    Returns
    -------
    model, X (n, d) float32 in [0, 1], y (n,) int64, dataset name
    """
    logistic = model == "logistic"
    base = {"model": model, "hidden": hidden, "activation": activation, "l1": l1, "l2": l2,
            "init": "normal" if l1 else None, "dtype": "float64",
            "classes": [2, 3] if logistic else None}  # fmt: skip
    settings = Settings.merge([("gradcheck options", base), (COMMAND_LINE, dict(layers))])
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"option --n {n!r}: expected a whole number >= 1")
    ds = load(dataset, root=data_root)
    x, y = ds.x_train, ds.y_train
    if logistic:
        keep = np.isin(y, (2, 3))
        x, y = x[keep], (y[keep] == 2).astype(np.int64)
    x, y = x[:n], y[:n]
    X = Preprocessor("scale01").fit_transform(x)
    m = build_run_model(settings, X.shape[1], 2 if logistic else ds.n_classes)
    return m, X, y, ds.name
