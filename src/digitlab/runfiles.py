"""The files of a run folder: creating the folder, writing its records, reading its checkpoint.

A run folder ``runs/<name>/<timestamp>/`` holds ``config.toml`` (the resolved settings),
``history.csv`` (one row per evaluation, appended while the run trains), ``metrics.json``
(final numbers; always valid JSON: non-finite numbers are written as null) and
``checkpoint.npz``. The report, ``evaluate``, ``predict`` and ``resume`` read runs through
this module only.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from digitlab.checkpoint import atomic_write_bytes, load_checkpoint
from digitlab.errors import CheckpointError, ConfigError

__all__ = [
    "checkpoint_progress",
    "existing_ancestor",
    "json_safe",
    "load_run_checkpoint",
    "new_run_folder",
    "remove_run_folder",
    "run_settings",
    "write_json",
    "write_toml",
]


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
    model = build_model(meta["model"], params)
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
