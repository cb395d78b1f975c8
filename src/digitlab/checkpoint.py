"""Checkpoint files: one ``.npz`` of arrays with the JSON metadata stored beside them.

The metadata travels inside the same file as a UTF-8 byte array under the key ``meta.json``,
so a checkpoint is one file. Loading uses ``allow_pickle=False``: a checkpoint can never run
code. Writes go to a temporary file in the same folder, then ``os.replace``, so a crash never
leaves a half-written checkpoint under the final name.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from digitlab import limits
from digitlab.errors import CheckpointError, ConfigError, DigitlabError, OutputError

META_KEY = "meta.json"
FORMAT = "digitlab-checkpoint"
FORMAT_VERSION = 1
#: Largest metadata member read.
MAX_META_BYTES = 16 << 20
#: Most members a checkpoint file may list.
MAX_MEMBERS = 10_000
# The members a trainer writes; anything else in the file is never read.
_EXPECTED = re.compile(r"(model|optim|extra|cb[0-9]+)/.+|trainer/order")


def atomic_write_bytes(path: str | os.PathLike, write: Any) -> Path:
    """Call ``write(fileobj)`` on a temporary file beside ``path``, then rename it into place.

    Raises
    ------
    OutputError
        ``path`` is a folder or another non-regular file (a device is never replaced), or it
        cannot be written (its parent is a file, no permission, disk full); the temporary
        file is removed first.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a folder; give a file name to write")
    if path.exists() and not path.is_file():
        raise OutputError(f"{path}: exists and is not a regular file; not replaced")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise OutputError(f"{path}: cannot write there ({e.strerror or e})") from None
    try:
        os.fchmod(fd, new_file_mode())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, DigitlabError):
            raise
        raise OutputError(f"{path}: cannot write ({e.strerror or e})") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def new_file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: ``0o666`` less the process umask.

    (:func:`tempfile.mkstemp` always creates ``0o600``; files renamed into place get this.)
    """
    try:  # Linux: read the umask without changing it (os.umask is process-wide, racy)
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def save_checkpoint(
    path: str | os.PathLike, arrays: dict[str, np.ndarray], meta: dict[str, Any]
) -> Path:
    """Write ``arrays`` and JSON-able ``meta`` to one ``.npz`` file atomically.

    Parameters
    ----------
    path : path-like
        Destination (conventionally ending in ``.npz``).
    arrays : dict of ndarray
        Numeric arrays only (object arrays are refused).
    meta : dict
        JSON-serialisable metadata.

    Returns
    -------
    Path
    """
    if META_KEY in arrays:
        raise CheckpointError(f"array name {META_KEY!r} is reserved")
    for k, v in arrays.items():
        if np.asarray(v).dtype == object:
            raise CheckpointError(f"array {k!r} has dtype object; checkpoints hold numbers only")
    blob = json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION, **meta}).encode()
    payload = {**arrays, META_KEY: np.frombuffer(blob, dtype=np.uint8)}
    return atomic_write_bytes(path, lambda f: np.savez(f, **payload))


def load_checkpoint(
    path: str | os.PathLike, max_bytes: int | None = None
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read a checkpoint written by :func:`save_checkpoint`, with bounded memory.

    Nothing is decompressed before it is checked: the metadata member first (at most
    :data:`MAX_META_BYTES`), then the header of every expected member (``model/``,
    ``optim/``, ``cb<i>/``, ``extra/``, ``trainer/order``; any other member is never read):
    numeric dtype, declared size equal to the stored size, parameter shapes equal to those
    the metadata's model config implies, optimiser and callback state shaped like a
    parameter, and all of them together within ``max_bytes``.

    Parameters
    ----------
    path
        The ``.npz`` file.
    max_bytes
        Largest total size of the arrays read; default :func:`digitlab.limits.max_bytes`
        (``$DIGITLAB_MAX_BYTES``, 1 GiB).

    Returns
    -------
    arrays : dict of ndarray
        The expected members by name (``"model/W"``, ...).
    meta : dict
        The metadata, its structure checked (:func:`check_meta`).

    Raises
    ------
    CheckpointError
        Missing file, not a zip/npz, no or malformed metadata, a member that is not numeric,
        too large, or shaped unlike the metadata says. Always one line.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    cap = limits.max_bytes() if max_bytes is None else int(max_bytes)
    try:
        with zipfile.ZipFile(path) as zf:
            return _load_zip(path, zf, cap)
    except DigitlabError:
        raise
    except MemoryError:
        raise CheckpointError(f"{path}: not enough memory to read this checkpoint") from None
    except Exception as exc:  # zipfile/zlib/numpy raise many types on corrupt input
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable .npz checkpoint ({detail})") from None


def _load_zip(
    path: Path, zf: zipfile.ZipFile, cap: int
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    infos = zf.infolist()
    if len(infos) > MAX_MEMBERS:
        raise CheckpointError(
            f"{path}: {len(infos)} members; a checkpoint has at most {MAX_MEMBERS}"
        )
    members = {i.filename.removesuffix(".npy"): i for i in infos if i.filename.endswith(".npy")}
    if META_KEY not in members:
        raise CheckpointError(f"{path}: no {META_KEY} inside; not a digitlab checkpoint")
    meta_shape, meta_dtype, _ = _member_header(path, zf, members[META_KEY], META_KEY)
    if meta_dtype != np.uint8 or len(meta_shape) != 1 or meta_shape[0] > MAX_META_BYTES:
        raise CheckpointError(
            f"{path}: {META_KEY} must be at most {MAX_META_BYTES} bytes (uint8), got "
            f"{meta_dtype} {meta_shape}"
        )
    blob = _read_member(zf, members[META_KEY])
    try:
        meta = json.loads(blob.tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        detail = type(exc).__name__ if isinstance(exc, RecursionError) else exc
        raise CheckpointError(f"{path}: metadata is not valid JSON ({detail})") from None
    check_meta(meta, path)
    headers = {}
    for key, info in members.items():
        if key != META_KEY and _EXPECTED.fullmatch(key):
            headers[key] = _member_header(path, zf, info, key)
    _check_members(path, meta, {k: h[:2] for k, h in headers.items()}, cap)
    arrays = {key: _read_member(zf, members[key]) for key in headers}
    for key, arr in arrays.items():
        if key.startswith("model/") and not np.isfinite(arr).all():
            raise CheckpointError(f"{path}: parameter {key[6:]} holds NaN or infinite values")
    if meta["progress"]["has_order"]:
        trainer = meta.get("trainer")
        replacement = isinstance(trainer, dict) and trainer.get("replacement") is True
        _check_order(path, arrays["trainer/order"], permutation=not replacement)
    return arrays, meta


def _member_header(
    path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo, key: str
) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, data bytes) from a member's ``.npy`` header, without reading its data."""
    fmt = np.lib.format
    with zf.open(info) as f:
        version = fmt.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = fmt.read_array_header_2_0(f)
        else:
            raise CheckpointError(f"{path}: member {key!r} has .npy format {version}")
        header_len = f.tell()
    if dtype.hasobject or dtype.kind not in "biuf" or dtype.fields is not None:
        raise CheckpointError(f"{path}: member {key!r} has dtype {dtype}; numbers only")
    nbytes = math.prod(shape) * dtype.itemsize
    if info.file_size != header_len + nbytes:
        raise CheckpointError(
            f"{path}: member {key!r} declares shape {shape} ({nbytes} bytes) but stores "
            f"{info.file_size - header_len} bytes"
        )
    return tuple(int(d) for d in shape), dtype, nbytes


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    with zf.open(info) as f:
        return np.lib.format.read_array(f, allow_pickle=False)


def _state_shapes(model: dict[str, Any], path: Path) -> dict[str, tuple[int, ...]]:
    """Shapes of the model state (parameters and buffers) a model config implies, as the
    model class itself answers them (:meth:`digitlab.models.Model.state_shapes`)."""
    from digitlab.models import MODELS

    cls = MODELS.get(model.get("kind"))
    if cls is None:
        raise CheckpointError(f"{path}: unknown model kind {model.get('kind')!r} in the metadata")
    try:
        return cls.state_shapes(model)
    except ConfigError as exc:
        raise CheckpointError(f"{path}: {exc}") from None


def _check_members(
    path: Path,
    meta: dict[str, Any],
    headers: dict[str, tuple[tuple[int, ...], np.dtype]],
    cap: int,
) -> None:
    """Shapes and sizes of the expected members against the metadata, before any is read."""
    shapes = _state_shapes(meta["model"], path)
    total = sum(math.prod(s) * d.itemsize for s, d in headers.values())
    if total > cap:
        raise CheckpointError(
            f"{path}: its arrays declare {limits.human_bytes(total)}, more than the "
            f"{limits.human_bytes(cap)} limit (set $DIGITLAB_MAX_BYTES to raise it)"
        )
    params = {k[len("model/") :] for k in headers if k.startswith("model/")}
    if params != set(shapes):
        raise CheckpointError(
            f"{path}: parameters {sorted(params)} do not match the {meta['model']['kind']} "
            f"model of its metadata ({sorted(shapes)})"
        )
    allowed = set(shapes.values())
    for key, (shape, dtype) in headers.items():
        head, _, name = key.partition("/")
        last = key.rsplit("/", 1)[-1]
        if head == "model":
            if shape != shapes[name] or dtype.kind != "f":
                raise CheckpointError(
                    f"{path}: parameter {name} is {dtype} {shape}, the model in its metadata "
                    f"needs floating-point {shapes[name]}"
                )
        elif head == "optim" or head.startswith("cb"):
            what = "optimizer state" if head == "optim" else "callback state"
            if last in shapes and shape != shapes[last]:
                raise CheckpointError(
                    f"{path}: {what} {key} has shape {shape}, parameter {last} has {shapes[last]}"
                )
            if math.prod(shape) > 1 and shape not in allowed:
                raise CheckpointError(
                    f"{path}: {what} {key} has shape {shape}, which no parameter has"
                )
        elif key == "trainer/order" and (len(shape) != 1 or dtype.kind not in "iu"):
            raise CheckpointError(
                f"{path}: trainer/order must be 1-d integers, got {dtype} {shape}"
            )
    if meta["progress"]["has_order"] and "trainer/order" not in headers:
        raise CheckpointError(f"{path}: metadata says there is a shuffle order, none is stored")


def _check_order(path: Path, order: np.ndarray, permutation: bool) -> None:
    """The stored row order: indices >= 0, and a permutation of ``0..n-1`` unless the rows
    are drawn with replacement."""
    n = order.shape[0]
    if not n:
        return
    if order.min() < 0:
        raise CheckpointError(f"{path}: trainer/order holds a negative row index")
    if permutation and (order.max() >= n or np.bincount(order, minlength=n).max() > 1):
        raise CheckpointError(f"{path}: trainer/order is not a permutation of 0..{n - 1}")


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _need(path: str | os.PathLike, obj: dict, key: str, kind: type | tuple, where: str) -> Any:
    """``obj[key]``, checked to be present and of type ``kind`` (a bool only where ``kind``
    names bool); CheckpointError naming ``where + key`` otherwise."""
    if key not in obj:
        raise CheckpointError(f"{path}: metadata {where}{key} is missing")
    value, kinds = obj[key], kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise CheckpointError(
            f"{path}: metadata {where}{key} has the wrong type ({type(value).__name__}: "
            f"{str(value)[:60]!r})"
        )
    return value


def _check_format(meta: dict, path: str | os.PathLike) -> None:
    """The format marker, and a format version this digitlab reads."""
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a digitlab checkpoint (format {meta.get('format')!r})")
    version = meta.get("format_version", 0)
    if not _is_int(version):
        raise CheckpointError(f"{path}: format_version must be a whole number, got {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {version} is newer than this digitlab "
            f"reads ({FORMAT_VERSION}); upgrade digitlab"
        )


def _check_model(meta: dict, path: str | os.PathLike) -> None:
    """``model``: a dict with a ``kind`` and config fields of the types in ``_MODEL_FIELDS``."""
    model = _need(path, meta, "model", dict, "")
    _need(path, model, "kind", str, "model.")
    for key, kind in _MODEL_FIELDS.items():
        if key in model:
            _need(path, model, key, kind, "model.")


def _check_optimizer(meta: dict, path: str | os.PathLike) -> None:
    """``optimizer``: a dict with a ``name``; its hyperparameters numbers (flags booleans)."""
    optimizer = _need(path, meta, "optimizer", dict, "")
    _need(path, optimizer, "name", str, "optimizer.")
    for key in optimizer:
        if key != "name":
            _need(path, optimizer, key, (int, float, bool), "optimizer.")


def _check_progress(meta: dict, path: str | os.PathLike) -> None:
    """``progress``: the counters of ``_PROGRESS_MINIMUM`` whole numbers at or above their
    minimum, ``elapsed`` a finite number >= 0 and ``has_order`` a boolean."""
    progress = _need(path, meta, "progress", dict, "")
    for key, minimum in _PROGRESS_MINIMUM.items():
        if _need(path, progress, key, int, "progress.") < minimum:
            raise CheckpointError(f"{path}: metadata progress.{key} is negative")
    elapsed = _need(path, progress, "elapsed", (int, float), "progress.")
    if not math.isfinite(elapsed) or elapsed < 0:
        raise CheckpointError(f"{path}: metadata progress.elapsed must be >= 0, got {elapsed}")
    _need(path, progress, "has_order", bool, "progress.")


def _check_rng(meta: dict, path: str | os.PathLike) -> None:
    """``rng``: a dict that a PCG64 generator accepts as its state."""
    rng = _need(path, meta, "rng", dict, "")
    try:
        np.random.PCG64().state = rng
    except (ValueError, TypeError, KeyError, OverflowError) as exc:
        raise CheckpointError(
            f"{path}: metadata rng is not a valid generator state ({exc})"
        ) from None


def _check_legacy_rng(meta: dict, path: str | os.PathLike) -> None:
    """``legacy_rng`` (optional): a state numpy's legacy ``RandomState`` accepts."""
    if "legacy_rng" not in meta:
        return
    legacy = _need(path, meta, "legacy_rng", dict, "")
    keys = _need(path, legacy, "keys", list, "legacy_rng.")
    if len(keys) != 624 or not all(
        isinstance(k, int) and not isinstance(k, bool) and 0 <= k < 2**32 for k in keys
    ):
        raise CheckpointError(f"{path}: metadata legacy_rng.keys must be 624 uint32 numbers")
    pos = _need(path, legacy, "pos", int, "legacy_rng.")
    has_gauss = _need(path, legacy, "has_gauss", int, "legacy_rng.")
    gauss = _need(path, legacy, "gauss", (int, float), "legacy_rng.")
    if not (0 <= pos <= 624 and has_gauss in (0, 1) and math.isfinite(gauss)):
        raise CheckpointError(f"{path}: metadata legacy_rng is not a valid MT19937 state")


def _check_history_records(state: dict, path: str | os.PathLike, where: str) -> None:
    """A History state's ``records``: a list of objects whose values are numbers or None."""
    records = _need(path, state, "records", list, f"{where}state.")
    if not all(
        isinstance(r, dict) and all(_is_number(v) or v is None for v in r.values()) for r in records
    ):
        raise CheckpointError(f"{path}: metadata history records must be objects of numbers")


def _check_callbacks(meta: dict, path: str | os.PathLike) -> None:
    """``callbacks``: a list of ``{"class", "state"}`` objects, the states of known classes
    checked field by field."""
    for i, cb in enumerate(_need(path, meta, "callbacks", list, "")):
        where = f"callbacks[{i}]."
        if not isinstance(cb, dict):
            raise CheckpointError(f"{path}: metadata callbacks[{i}] must be an object")
        cls, state = _need(path, cb, "class", str, where), _need(path, cb, "state", dict, where)
        for key, kind in _CALLBACK_STATE.get(cls, {}).items():
            _need(path, state, key, kind, f"{where}state.")
        if cls == "History":
            _check_history_records(state, path, where)


def _check_extra(meta: dict, path: str | os.PathLike) -> None:
    """``extra`` (optional): an object whose runner fields have the types in ``_EXTRA``, an
    ``image_shape`` of two whole numbers >= 1 and ``classes`` a list of names."""
    extra = meta.get("extra", {})
    if not isinstance(extra, dict):
        raise CheckpointError(f"{path}: metadata extra must be an object")
    for key, kind in _EXTRA.items():
        if key in extra:
            _need(path, extra, key, kind, "extra.")
    shape = extra.get("image_shape", [1, 1])
    if len(shape) != 2 or not all(_is_int(v) and v >= 1 for v in shape):
        raise CheckpointError(f"{path}: metadata extra.image_shape must be two whole numbers >= 1")
    if not all(isinstance(c, str) for c in extra.get("classes", [])):
        raise CheckpointError(f"{path}: metadata extra.classes must be a list of names")


def check_meta(meta: object, path: str | os.PathLike = "checkpoint") -> None:
    """Check the structure of checkpoint metadata; CheckpointError naming the first fault.

    Checks what :meth:`digitlab.train.Trainer.load_state_dict` and the run commands read:
    the format marker, ``model`` (a dict with ``kind``), ``optimizer``, ``progress`` (whole
    numbers >= 0 and ``has_order``), ``rng`` (a valid PCG64 state), ``legacy_rng`` if present
    (an MT19937 state), ``callbacks`` (a list of
    ``{"class", "state"}``; EarlyStopping and History states field by field) and ``extra``.
    The sections are checked in that order, each by its own ``_check_*`` validator.
    """
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: metadata must be a JSON object, got {type(meta).__name__}")
    for check in _META_CHECKS:
        check(meta, path)


#: The section validators of :func:`check_meta`, in the order the sections are checked.
_META_CHECKS = (
    _check_format,
    _check_model,
    _check_optimizer,
    _check_progress,
    _check_rng,
    _check_legacy_rng,
    _check_callbacks,
    _check_extra,
)
#: Whole-number counters of ``meta["progress"]`` and the least value each may take.
_PROGRESS_MINIMUM: dict[str, int] = {"step": 0, "epoch": 0, "pos": 0, "last_eval_step": -1}


#: Types of the model config fields the models read (checked when present).
_MODEL_FIELDS: dict[str, type | tuple] = {
    "l1": (int, float),
    "l2": (int, float),
    "reduction": str,
    "regularize_bias": bool,
    "dtype": str,
    "activation": str,
    "init": str,
    "bias": bool,
    "hidden": list,
}
#: Fields of callback states, by callback class, checked before a trainer reads them.
_CALLBACK_STATE: dict[str, dict[str, type | tuple]] = {
    "EarlyStopping": {
        "best": (int, float),
        "best_step": int,
        "best_epoch": (int, float),
        "wait": int,
        "stopped": bool,
    },
}
#: Fields of ``meta["extra"]`` written by the runner, checked when present.
_EXTRA: dict[str, type | tuple] = {
    "settings": dict,
    "preprocessor": dict,
    "classes": list,
    "image_shape": list,
    "label_offset": int,
    "dataset": str,
}


def split_prefixed(arrays: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """The arrays whose names start with ``prefix + '/'``, with the prefix removed."""
    head = prefix + "/"
    return {k[len(head) :]: v for k, v in arrays.items() if k.startswith(head)}


def prefixed(prefix: str, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``{prefix/name: array}``, the inverse of :func:`split_prefixed`."""
    return {f"{prefix}/{k}": v for k, v in arrays.items()}
