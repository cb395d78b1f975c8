"""The files of a run folder: creating the folder, writing and reading its records.

A run folder ``runs/<name>/<timestamp>/`` holds ``config.toml`` (the resolved settings),
``history.csv`` (one row per evaluation, appended and flushed while the run trains),
``metrics.json`` (final numbers; always valid JSON: non-finite numbers are written as null) and
``checkpoint.npz``. This module is the only place that writes and parses them: the trainer's
history, the runner, the report, the app, ``evaluate``, ``predict`` and ``resume`` all go
through it. Writes go through :func:`digitlab.fileio.atomic_write_bytes`; reads open regular
files only, under a size cap, and check what a file declares before using it.

The columns of ``history.csv`` are declared once, in :data:`COLUMNS` (one row value each:
the trainer's own state, or computed from the model) and :data:`SPLIT_COLUMNS` (one per
evaluated split, ``<split>_<key>``, from :func:`digitlab.train.evaluate`); adding a column is
one :class:`Column` record given to :func:`register_column`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import shutil
import stat
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import numpy as np

from digitlab import limits
from digitlab.checkpoint import load_checkpoint
from digitlab.errors import CheckpointError, ConfigError, FileReadError, OutputError
from digitlab.fileio import (
    atomic_write_bytes,
    open_regular,
    parse_json,
    parse_toml,
    read_text,
)

__all__ = [
    "CHECKPOINT",
    "COLUMNS",
    "CONFIG",
    "HISTORY",
    "METRICS",
    "SPLIT_COLUMNS",
    "Column",
    "HistoryTail",
    "HistoryWriter",
    "check_confusion",
    "check_metrics",
    "check_run_name",
    "checkpoint_progress",
    "evaluation_record",
    "existing_ancestor",
    "find_checkpoint",
    "format_history",
    "history_column_names",
    "json_safe",
    "load_run_checkpoint",
    "new_run_folder",
    "read_config",
    "read_history",
    "read_history_tail",
    "read_json",
    "read_metrics",
    "register_column",
    "remove_run_folder",
    "run_class_count",
    "run_settings",
    "write_history",
    "write_json",
    "write_toml",
]

#: The file names of a run folder.
CONFIG, HISTORY, METRICS = "config.toml", "history.csv", "metrics.json"
CHECKPOINT = "checkpoint.npz"
#: Size caps of the text files read (history.csv is streamed: see :func:`read_history`).
MAX_CONFIG_BYTES = 1 << 20
MAX_METRICS_BYTES = 16 << 20
#: Longest line of ``history.csv`` read, and most columns.
MAX_LINE_BYTES = 1 << 16
MAX_HISTORY_COLUMNS = 512
#: Most rows :func:`read_history` keeps (larger histories are thinned evenly, see there).
MAX_HISTORY_ROWS = 20_000
#: Most classes a confusion matrix may have when the run's class count is unknown.
MAX_CLASSES = 64


# ---------------------------------------------------------------------------------- columns
@dataclass(frozen=True)
class Column:
    """One column of ``history.csv``.

    ``value(model) -> float`` computes it from the model at each evaluation; a column without
    one is the trainer's own state (step, epoch, learning rate, time), which the trainer
    passes to :func:`evaluation_record`. A split column (:data:`SPLIT_COLUMNS`) is named
    ``<split>_<name>`` and comes from the split's evaluation.
    """

    name: str
    help: str
    value: Callable[[Any], float] | None = None


def _weight_norm(model: Any) -> float:
    return model.weight_norm()


def _by_name(*columns: Column) -> dict[str, Column]:
    return {c.name: c for c in columns}


#: Columns of every evaluation row, in file order (the trainer's state or ``value(model)``).
COLUMNS: dict[str, Column] = _by_name(
    Column("step", "optimisation steps taken"),
    Column("epoch", "passes over the training split (steps / steps per epoch)"),
    Column("lr", "learning rate of the last step"),
    Column("weight_norm", "L2 norm of all weight matrices (biases excluded)", _weight_norm),
    Column("time", "seconds of training so far"),
)
#: Columns of each evaluated split, named ``<split>_<name>``, in file order.
SPLIT_COLUMNS: dict[str, Column] = _by_name(
    Column("loss", "mean cross-entropy"),
    Column("objective", "what the model optimises: cross-entropy plus penalty"),
    Column("acc", "accuracy (fraction correct)"),
)
#: The splits a run evaluates, in file order.
SPLITS = ("train", "val", "test")


def register_column(column: Column) -> Column:
    """Add ``column`` to every evaluation row (after the columns declared before it)."""
    if column.name in COLUMNS or not re.fullmatch(r"[a-z][a-z0-9_]*", column.name):
        raise ConfigError(f"history column {column.name!r}: taken, or not a plain lower name")
    if column.value is None:
        raise ConfigError(f"history column {column.name!r}: give value(model)")
    COLUMNS[column.name] = column
    return column


def history_column_names(splits: Iterable[str] = SPLITS) -> list[str]:
    """The columns of a history row that evaluates ``splits``, in file order."""
    names = list(COLUMNS)
    return names + [f"{s}_{c}" for s in splits for c in SPLIT_COLUMNS]


def evaluation_record(
    model: Any, state: Mapping[str, float], splits: Mapping[str, Mapping[str, float]]
) -> dict[str, float]:
    """One evaluation row: every declared column, in file order.

    Parameters
    ----------
    model : Model
        The model evaluated (columns with ``value`` are computed from it).
    state : mapping
        The trainer's own columns (``step``, ``epoch``, ``lr``, ``time``).
    splits : mapping
        Split name -> its evaluation (``loss``, ``objective``, ``acc``), in file order.
    """
    record = {
        c.name: float(c.value(model)) if c.value is not None else state[c.name]
        for c in COLUMNS.values()
    }
    for split, values in splits.items():
        record |= {f"{split}_{key}": values[key] for key in SPLIT_COLUMNS}
    return record


# ---------------------------------------------------------------------------------- folders
def check_run_name(name: str) -> None:
    """Refuse (ConfigError) a run name that is not one plain, printable folder name."""
    parts = Path(name).parts
    if not name or Path(name).is_absolute() or ".." in parts or len(parts) != 1:
        raise ConfigError(f"run name {name!r}: give a plain folder name (no / or ..)")
    if not name.isprintable() or name.startswith("."):
        raise ConfigError(
            f"run name {name!r}: give a plain folder name (printable, not starting with a dot)"
        )


def new_run_folder(root: str | os.PathLike, name: str) -> Path:
    """``root/name/<timestamp>`` (made unique), created.

    Raises
    ------
    ConfigError
        ``name`` is empty, absolute or climbs out of ``root``; ``root`` is a file or cannot be
        written.
    """
    check_run_name(name)
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise ConfigError(f"{root}: the runs root is a file, not a folder")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = root / name
    for i in range(1000):
        folder = base / (stamp if i == 0 else f"{stamp}-{i}")
        try:
            folder.mkdir(parents=True)
            return folder
        except FileExistsError:
            continue
        except NotADirectoryError:
            raise ConfigError(f"{base}: a file is in the way of the run folder") from None
        except OSError as exc:
            raise ConfigError(f"{base}: cannot create a run folder ({exc.strerror})") from None
    raise ConfigError(f"{base}: cannot create a new run folder")


def existing_ancestor(path: str | os.PathLike) -> Path:
    """``path`` itself or its nearest ancestor that exists (what a cleanup must keep)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def remove_run_folder(folder: Path, keep: Path) -> None:
    """Delete a run folder this process created, and its parents up to ``keep`` left empty."""
    shutil.rmtree(folder, ignore_errors=True)
    parent, keep = folder.absolute().parent, keep.absolute()
    while parent != keep and keep in parent.parents:
        try:
            parent.rmdir()
        except OSError:
            break
        parent = parent.parent


def write_toml(path: Path, values: dict[str, Any]) -> None:
    """Write a flat dict as TOML (None as ``"none"``: TOML has no null; settings read it back)."""

    def fmt(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, list | tuple):
            return "[" + ", ".join(fmt(x) for x in v) + "]"
        return json.dumps(str(v))

    lines = [f"{k} = {fmt('none' if v is None else v)}" for k, v in values.items()]
    atomic_write_bytes(path, lambda f: f.write(("\n".join(lines) + "\n").encode()))


def json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities replaced by None (JSON has no such numbers)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, np.floating | np.integer):
        return json_safe(value.item())
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def write_json(path: Path, values: dict[str, Any]) -> None:
    """Write ``values`` as strict JSON (non-finite numbers become null)."""
    text = json.dumps(json_safe(values), indent=2, allow_nan=False)
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def load_run_checkpoint(path: str | os.PathLike) -> tuple[Any, Any, dict[str, Any]]:
    """Model, fitted preprocessor and metadata of a checkpoint written by a run.

    Returns
    -------
    model : digitlab.models.Model
    preprocessor : digitlab.data.Preprocessor
    meta : dict
        The checkpoint metadata (``meta["extra"]`` holds the run's settings, classes, dataset).
    """
    from digitlab.data import Preprocessor
    from digitlab.models import build_model

    arrays, meta = load_checkpoint(path)
    extra = meta.get("extra") if isinstance(meta, dict) else None
    if not isinstance(extra, dict) or "settings" not in extra or "preprocessor" not in extra:
        raise CheckpointError(f"{path}: not a checkpoint of a digitlab run (no settings inside)")
    if not isinstance(meta.get("model"), dict) or not isinstance(extra["preprocessor"], dict):
        raise CheckpointError(f"{path}: malformed checkpoint metadata")
    params = {k[len("model/") :]: v for k, v in arrays.items() if k.startswith("model/")}
    try:
        model = build_model(meta["model"], params)
    except ConfigError as exc:  # a model setting out of range: name the file
        raise CheckpointError(f"{path}: {exc}") from None
    state = dict(extra["preprocessor"])
    state |= {k[len("extra/prep_") :]: v for k, v in arrays.items() if k.startswith("extra/prep_")}
    try:
        prep = Preprocessor.from_state_dict(state)
    except (ConfigError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: malformed preprocessor state ({exc})") from None
    check_run_extra(model, prep, extra, path)
    return model, prep, meta


#: Largest weight magnitude a run checkpoint may hold: trained weights stay far below it, and
#: sums of products of larger ones overflow float32 (max 3.4e38) on ordinary inputs.
MAX_WEIGHT = 1e15


def check_run_extra(model: Any, prep: Any, extra: dict[str, Any], path: str | os.PathLike) -> None:
    """Refuse (CheckpointError) a run checkpoint whose record disagrees with its model.

    Checks the image shape (two sizes whose product is the preprocessor's input size and,
    after it, the model's), the class list (one name per model output), the label offset,
    and that every weight is finite and below :data:`MAX_WEIGHT` in magnitude.
    """
    shape = extra.get("image_shape")
    ok = isinstance(shape, list | tuple) and len(shape) == 2
    ok = ok and all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape)
    if not ok:
        raise CheckpointError(f"{path}: malformed checkpoint metadata (image_shape {shape!r})")
    d = shape[0] * shape[1]
    if (prep.n_features_in_ not in (None, d)) or prep.n_features_out(d) != model.n_features:
        raise CheckpointError(
            f"{path}: image_shape {shape[0]}x{shape[1]} does not match the model's "
            f"{model.n_features} input features"
        )
    classes = extra.get("classes")
    k = 2 if model.kind == "logistic" else int(model.n_classes)
    if not isinstance(classes, list) or len(classes) != k:
        n = len(classes) if isinstance(classes, list) else classes
        raise CheckpointError(f"{path}: the model has {k} classes but its class list holds {n!r}")
    offset = extra.get("label_offset", 0)
    if isinstance(offset, bool) or not isinstance(offset, int):
        raise CheckpointError(f"{path}: malformed checkpoint metadata (label_offset {offset!r})")
    for name, w in model.params.items():
        if not np.all(np.isfinite(w)) or (w.size and float(np.abs(w).max()) > MAX_WEIGHT):
            raise CheckpointError(
                f"{path}: parameter {name} holds non-finite values or values above "
                f"{MAX_WEIGHT:.0e} in magnitude (an overflowing or diverged model)"
            )


def checkpoint_progress(meta: dict[str, Any], path: str | os.PathLike) -> dict[str, int]:
    """``{"step": ..., "epoch": ...}`` of a checkpoint, checked (whole numbers >= 0)."""
    progress = meta.get("progress") if isinstance(meta, dict) else None
    values = {k: progress.get(k) for k in ("step", "epoch")} if isinstance(progress, dict) else {}
    if not values or any(
        isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in values.values()
    ):
        raise CheckpointError(f"{path}: malformed checkpoint metadata (progress)")
    return values


def run_settings(meta: dict[str, Any], path: str | os.PathLike) -> Any:
    """The validated :class:`~digitlab.settings.Settings` recorded in a run checkpoint."""
    from digitlab.settings import Settings

    extra = meta.get("extra") if isinstance(meta, dict) else None
    saved = extra.get("settings") if isinstance(extra, dict) else None
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path}: not a checkpoint of a digitlab run (no settings inside)")
    try:
        return Settings.from_dict(saved, where=f"checkpoint {path}")
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None


def find_checkpoint(folder: str | os.PathLike) -> Path | None:
    """``folder/checkpoint.npz`` when it is a regular file (links followed), else None."""
    path = Path(folder) / CHECKPOINT
    try:
        return path if stat.S_ISREG(os.stat(path).st_mode) else None
    except OSError:
        return None


# ---------------------------------------------------------------------------------- history
def _cell(value: Any) -> Any:
    return repr(float(value)) if isinstance(value, float) else value


def _csv_lines(rows: Iterable[Iterable[Any]]) -> str:
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows(rows)
    return text.getvalue()


def format_history(records: list[dict[str, float]]) -> str:
    """``history.csv`` of ``records``: a header (every key, first seen first), a row each."""
    names = list(dict.fromkeys(k for r in records for k in r))
    return _csv_lines([names, *([_cell(r.get(k, "")) for k in names] for r in records)])


def write_history(path: str | os.PathLike, records: list[dict[str, float]]) -> Path:
    """Write ``history.csv`` whole, atomically (a resumed run's restored rows, a final copy)."""
    text = format_history(records)
    return atomic_write_bytes(path, lambda f: f.write(text.encode()))


class HistoryWriter:
    """Writes one run's ``history.csv`` as it trains.

    :meth:`append` adds one evaluation row and flushes it, so the run can be followed while
    it trains (the header is written first into an empty file); :meth:`rewrite` replaces the
    whole file atomically (when a checkpoint is restored, and once a checkpoint exists at the
    end). The file is opened without following a link, and only a regular file is appended to.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._file: IO[str] | None = None
        self._names: list[str] = []

    def _open(self, record: Mapping[str, float]) -> IO[str]:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
        try:
            fd = os.open(self.path, flags | getattr(os, "O_CLOEXEC", 0), 0o666)
        except OSError as e:
            raise OutputError(f"{self.path}: cannot append ({e.strerror or e})") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise OutputError(f"{self.path}: not a regular file; not appended to")
        os.set_blocking(fd, True)
        f = os.fdopen(fd, "a", newline="")
        if st.st_size == 0:
            self._names = list(record)
            f.write(_csv_lines([self._names]))
        elif not self._names:  # appending to rows written before: their columns
            self._names = _header(self.path, _history_lines(self.path)) or list(record)
        return f

    def append(self, record: Mapping[str, float]) -> None:
        """Append one evaluation (in the file's columns; other keys are left out)."""
        if self._file is None:
            self._file = self._open(record)
        self._file.write(_csv_lines([[_cell(record.get(k, "")) for k in self._names]]))
        self._file.flush()

    def rewrite(self, records: list[dict[str, float]]) -> None:
        """Replace the file with ``records`` (later rows are appended to the new file)."""
        self.close()
        write_history(self.path, records)
        self._names = list(dict.fromkeys(k for r in records for k in r))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _history_lines(path: str | os.PathLike) -> Iterator[tuple[int, bytes]]:
    """``(line number, line without its newline)`` of every complete line of a history file.

    A last line without its newline (a row being appended right now) is left out.
    """
    fd = open_regular(path)
    cap = limits.max_bytes()
    with os.fdopen(fd, "rb") as f:
        if os.fstat(f.fileno()).st_size > cap:
            raise FileReadError(f"{path}: larger than {cap} bytes; not read")
        for n, line in enumerate(iter(lambda: f.readline(MAX_LINE_BYTES + 1), b""), start=1):
            if not line.endswith(b"\n"):
                if len(line) > MAX_LINE_BYTES:
                    raise FileReadError(f"{path}: line {n} is longer than {MAX_LINE_BYTES} bytes")
                return
            yield n, line[:-1]


def _split_line(path: str | os.PathLike, n: int, line: bytes) -> list[str]:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise FileReadError(f"{path}: line {n} is not UTF-8 text") from None
    if "\x00" in text:
        raise FileReadError(f"{path}: line {n} holds a NUL byte")
    return text.split(",") if '"' not in text else next(csv.reader([text]), [])


def _numbers(path: str | os.PathLike, n: int, cells: list[str], header: list[str]) -> list[float]:
    if len(cells) != len(header):
        raise FileReadError(f"{path}: line {n} has {len(cells)} cells, the header {len(header)}")
    try:
        return [float(c) if c else math.nan for c in cells]
    except ValueError:
        bad = next(h for h, c in zip(header, cells, strict=True) if not _is_number(c))
        raise FileReadError(f"{path}: line {n}: column {bad!r} is not a number") from None


def _is_number(cell: str) -> bool:
    try:
        float(cell or "nan")
    except ValueError:
        return False
    return True


def _header(path: str | os.PathLike, lines: Iterator[tuple[int, bytes]]) -> list[str]:
    first = next(lines, None)
    if first is None:
        return []
    header = _split_line(path, *first)
    if len(header) > MAX_HISTORY_COLUMNS or len(set(header)) != len(header) or "" in header:
        raise FileReadError(f"{path}: malformed header (empty, repeated or too many columns)")
    return header


def read_layer_stats(folder: str | os.PathLike) -> dict[str, np.ndarray]:
    """The per-layer statistics of a run folder: ``step`` and every layer column of its
    ``history.csv``, each float64 (n_evaluations,) (:func:`read_history`'s bounds apply)."""
    from digitlab.models.inspect import LAYER_COLUMN

    history = read_history(Path(folder) / HISTORY)
    keep = ["step", *(k for k in history if LAYER_COLUMN.fullmatch(k))]
    return {k: history[k] for k in keep if k in history}


def read_history(
    path: str | os.PathLike, max_rows: int = MAX_HISTORY_ROWS
) -> dict[str, np.ndarray]:
    """Columns of a ``history.csv``, each float64 (n_rows,), NaN where a cell is empty.

    Memory stays bounded whatever the file's size: when it has more than ``max_rows`` rows,
    every ``k``-th row is kept (``k`` a power of two, doubled each time the kept rows would
    pass ``max_rows``) and the last row always, so at most ``max_rows + 1`` rows come back,
    spread evenly over the whole run. A last line still being written is left out.

    Raises
    ------
    FileNotFoundError
        No such file.
    FileReadError
        Not a regular file, a link loop, larger than ``$DIGITLAB_MAX_BYTES``, a line over
        :data:`MAX_LINE_BYTES`, not UTF-8, a NUL byte, a row of another length than the header,
        or a cell that is not a number.
    """
    lines = _history_lines(path)
    header = _header(path, lines)
    kept: list[list[float]] = []
    last: list[float] | None = None
    stride, count = 1, 0
    for n, line in lines:
        last = _numbers(path, n, _split_line(path, n, line), header)
        if count % stride == 0:
            kept.append(last)
            if len(kept) > max_rows:
                kept, stride = kept[::2], stride * 2
        count += 1
    if last is not None and (count - 1) % stride:
        kept.append(last)
    table = np.array(kept, dtype=np.float64).reshape(len(kept), len(header))
    return {h: table[:, i].copy() for i, h in enumerate(header)}


@dataclass
class HistoryTail:
    """What the app's runs list needs of a ``history.csv``, read in one cheap pass.

    ``last`` is the last complete row (column -> value, NaN for an empty cell), ``best`` the
    largest finite value of each column asked for, ``rows`` the number of complete rows.
    """

    last: dict[str, float]
    best: dict[str, float]
    rows: int


def read_history_tail(path: str | os.PathLike, best: tuple[str, ...] = ("val_acc",)) -> HistoryTail:
    """The last row, the best values of ``best`` columns and the row count of a history file.

    Only the ``best`` cells of each row are converted; errors as :func:`read_history`.
    """
    lines = _history_lines(path)
    header = _header(path, lines)
    where = [header.index(b) for b in best if b in header]
    top = {header[i]: -math.inf for i in where}
    rows, last = 0, None
    for n, line in lines:
        rows, last = rows + 1, (n, line)
        cells = line.split(b",")
        for i in where:
            if i < len(cells) and cells[i]:
                try:
                    v = float(cells[i])
                except ValueError:
                    continue
                if math.isfinite(v) and v > top[header[i]]:
                    top[header[i]] = v
    values = [] if last is None else _numbers(path, last[0], _split_line(path, *last), header)
    found = {k: v for k, v in top.items() if v > -math.inf}
    return HistoryTail(dict(zip(header, values, strict=False)), found, rows)


# ---------------------------------------------------------------------------------- metrics
def _number_or_none(v: Any) -> bool:
    return v is None or (isinstance(v, int | float) and not isinstance(v, bool))


def _whole(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


#: Value checks of the keys of ``metrics.json`` (keys ``<split>_<column>`` and ``n_<split>``
#: are checked as numbers and whole numbers; other keys are kept unchecked).
METRIC_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "steps": (_whole, "a whole number >= 0"),
    "best_step": (lambda v: v is None or isinstance(v, int) and not isinstance(v, bool),
                  "a whole number"),
    "epochs": (_number_or_none, "a number"),
    "seconds": (_number_or_none, "a number"),
    "weight_norm": (_number_or_none, "a number"),
    "best_epoch": (_number_or_none, "a number"),
    "stop_reason": (lambda v: v is None or isinstance(v, str), "a string"),
    "dataset": (lambda v: isinstance(v, str), "a string"),
    "source": (lambda v: isinstance(v, str), "a string"),
    "notes": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
              "a list of strings"),
    "early_stopped": (lambda v: isinstance(v, bool), "true or false"),
    "interrupted": (lambda v: isinstance(v, bool), "true or false"),
    "is_sample": (lambda v: isinstance(v, bool), "true or false"),
}  # fmt: skip


def _metric_check(key: str) -> tuple[Callable[[Any], bool], str] | None:
    if key in METRIC_CHECKS:
        return METRIC_CHECKS[key]
    split, _, column = key.partition("_")
    if split in SPLITS and column in SPLIT_COLUMNS:
        return _number_or_none, "a number"
    if split == "n" and column in SPLITS:
        return _whole, "a whole number >= 0"
    return None


def check_confusion(matrix: Any, where: str, n_classes: int | None) -> None:
    """Refuse a ``confusion_test`` that is not a k x k table of counts, k the run's classes.

    The sizes are checked before anything proportional to them is built.
    """
    if not isinstance(matrix, list) or not matrix:
        raise FileReadError(f"{where}: confusion_test is not a table of counts")
    size = len(matrix)
    if n_classes is not None and size != n_classes:
        raise FileReadError(f"{where}: confusion_test has {size} rows, the run {n_classes} classes")
    if size > MAX_CLASSES:
        raise FileReadError(f"{where}: confusion_test has {size} rows, at most {MAX_CLASSES} read")
    if not all(isinstance(r, list) and len(r) == size and all(map(_whole, r)) for r in matrix):
        raise FileReadError(f"{where}: confusion_test is not a square table of whole counts")


def check_metrics(value: Any, where: str, n_classes: int | None = None) -> dict[str, Any]:
    """``value`` if it is a valid ``metrics.json`` object, else FileReadError (one line).

    Known keys must have their types (:data:`METRIC_CHECKS`, numbers for split columns);
    ``confusion_test`` must be ``n_classes`` x ``n_classes`` counts (at most
    :data:`MAX_CLASSES` when the run's class count is unknown).
    """
    if not isinstance(value, dict):
        raise FileReadError(f"{where}: expected a JSON object")
    for key, v in value.items():
        check = _metric_check(key)
        if check is not None and not check[0](v):
            raise FileReadError(f"{where}: {key!r} must be {check[1]}, got {str(v)[:40]!r}")
    if "confusion_test" in value:
        check_confusion(value["confusion_test"], where, n_classes)
    return value


def read_metrics(path: str | os.PathLike, n_classes: int | None = None) -> dict[str, Any]:
    """A run's ``metrics.json``, checked (:func:`check_metrics`).

    Raises
    ------
    FileNotFoundError
        No such file.
    FileReadError
        Not a regular file, over :data:`MAX_METRICS_BYTES`, not JSON, nested too deep, or a
        value of the wrong type or size.
    """
    text = read_text(path, MAX_METRICS_BYTES)
    return check_metrics(parse_json(text, str(path)), str(path), n_classes)


def run_class_count(settings: Mapping[str, Any]) -> int | None:
    """Classes of a run from its settings (2 for a class pair, else its dataset's), or None."""
    from digitlab.data import DATASETS

    classes, dataset = settings.get("classes"), settings.get("dataset")
    if isinstance(classes, list) and len(classes) == 2:
        return 2
    spec = DATASETS.get(dataset) if isinstance(dataset, str) else None
    return None if spec is None else len(spec.classes)


# ---------------------------------------------------------------------------------- config
def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """A run's ``config.toml`` as a dict (its ``[train]`` table if it has one).

    Raises
    ------
    FileNotFoundError
        No such file.
    FileReadError
        Not a regular file, over :data:`MAX_CONFIG_BYTES`, not TOML or nested too deep.
    """
    data = parse_toml(read_text(path, MAX_CONFIG_BYTES), str(path))
    train = data.get("train")
    return dict(train) if isinstance(train, dict) else data


def read_json(path: str | os.PathLike, limit: int = MAX_METRICS_BYTES * 4) -> Any:
    """Any other JSON file of a run or experiment folder, read safely (``experiment.json``,
    ``lbfgs.json``); errors as :func:`read_metrics`."""
    return parse_json(read_text(path, limit), str(path))
