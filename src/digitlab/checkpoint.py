"""Checkpoint files: one ``.npz`` of arrays with the JSON metadata stored beside them.

The metadata travels inside the same file as a UTF-8 byte array under the key ``meta.json``,
so a checkpoint is one file. Loading uses ``allow_pickle=False``: a checkpoint can never run
code. Writes go to a temporary file in the same folder, then ``os.replace``, so a crash never
leaves a half-written checkpoint under the final name.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from digitlab.errors import CheckpointError

META_KEY = "meta.json"
FORMAT = "digitlab-checkpoint"
FORMAT_VERSION = 1


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, write: Any) -> Path:
    """Call ``write(fileobj)`` on a temporary file beside ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; files get the user's umask
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


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


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Returns
    -------
    arrays : dict of ndarray
    meta : dict
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise CheckpointError(f"{path}: not a readable .npz checkpoint ({exc})") from None
    blob = arrays.pop(META_KEY, None)
    if blob is None:
        raise CheckpointError(f"{path}: no {META_KEY} inside; not a digitlab checkpoint")
    try:
        meta = json.loads(blob.tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: metadata is not valid JSON ({exc})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a digitlab checkpoint (format {meta.get('format')!r})")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {meta['format_version']} is newer than this digitlab "
            f"reads ({FORMAT_VERSION}); upgrade digitlab"
        )
    return arrays, meta


def split_prefixed(arrays: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """The arrays whose names start with ``prefix + '/'``, with the prefix removed."""
    head = prefix + "/"
    return {k[len(head) :]: v for k, v in arrays.items() if k.startswith(head)}


def prefixed(prefix: str, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``{prefix/name: array}``, the inverse of :func:`split_prefixed`."""
    return {f"{prefix}/{k}": v for k, v in arrays.items()}
