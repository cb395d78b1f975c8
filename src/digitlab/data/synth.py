"""Write an infinite-MNIST-style training set: the source digits, then deformed copies.

Row ``i`` of the synthesised training set shows source digit ``i % n_src`` with its label;
rows ``0 .. n_src-1`` are the source digits themselves, every later row a deformed copy
(:func:`deform`: an elastic distortion, Simard et al. 2003, plus a small random scaling,
rotation and shift; Loosli, Canu & Bottou 2007 built MNIST8M the same way). Rows are made in
batches of ``batch`` rows; batch ``b`` draws all its randomness from
``numpy.random.default_rng([seed, b])``, always for a full batch, so the set does not depend
on where a run was interrupted, and a smaller ``n`` gives a prefix of a larger one.

The files are written as uncompressed IDX (memory-mapped when loaded) under ``*.part``
names, with a small JSON progress record updated after every batch (data fsynced first); a
rerun continues from the last recorded batch, and the final names appear only when the set
is complete. The source's test files are copied unchanged.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import shutil
import tempfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from digitlab import limits
from digitlab.data.augment import elastic_fields, warp
from digitlab.errors import ConfigError, DataError, OutputError, ShapeError

__all__ = [
    "SYNTH_BATCH",
    "TRAIN_FILES",
    "Deformation",
    "SynthResult",
    "deform",
    "synthesize",
]

#: Rows per batch (the unit of randomness and of resumption).
SYNTH_BATCH = 10_000
#: Names of the synthesised training files (uncompressed IDX).
TRAIN_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
RECORD = "synth.json"  # written when complete: how the set was made
PROGRESS = "synth.json.part"  # the resumable state while writing
_FORMAT = 1
_MAX_ROWS = 2**32 - 1  # an IDX dimension is a uint32


@dataclass(frozen=True)
class Deformation:
    """How a copy is deformed (:func:`deform`).

    Attributes
    ----------
    elastic_alpha, elastic_sigma
        Elastic distortion scale and smoothing width in pixels (Simard et al. use 34 and 4).
    max_scale
        Scale factor uniform in ``[1 - max_scale, 1 + max_scale]`` about the image centre.
    max_rotation
        Rotation uniform in ``[-max_rotation, max_rotation]`` degrees.
    max_shift
        Shift uniform in ``[-max_shift, max_shift]`` pixels along each axis.
    """

    elastic_alpha: float = 34.0
    elastic_sigma: float = 4.0
    max_scale: float = 0.1
    max_rotation: float = 10.0
    max_shift: float = 2.0

    def __post_init__(self) -> None:
        for key, value in asdict(self).items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"deformation {key} must be a number, got {value!r}")
            if not 0 <= value < math.inf:
                raise ConfigError(f"deformation {key} must be finite and >= 0, got {value!r}")
        if self.elastic_sigma <= 0:
            raise ConfigError(f"deformation elastic_sigma must be > 0, got {self.elastic_sigma}")
        if self.max_scale >= 1:
            raise ConfigError(f"deformation max_scale must be < 1, got {self.max_scale}")


def deform(
    images: np.ndarray, rng: np.random.Generator, deformation: Deformation = Deformation()
) -> np.ndarray:
    """Deform every image by its own random scaling, elastic distortion, rotation and shift.

    Output pixel ``p`` shows the input at ``c + R((p - c) / s + e(p)) - t``: ``c`` the image
    centre, ``s`` the scale, ``e`` the elastic displacement field, ``R`` the rotation and
    ``t`` the shift (one bilinear resampling, background 0), rounded to uint8.
    Draws, in this order: shifts (n, 2), angles (n,), scales (n,), then the fields.

    Parameters
    ----------
    images : ndarray (n, h, w)
        Pixels 0..255 (uint8 or float).
    rng : numpy.random.Generator
    deformation : Deformation

    Returns
    -------
    ndarray
        uint8 (n, h, w).
    """
    x = np.asarray(images)
    if x.ndim != 3:
        raise ShapeError(f"images must have shape (n, h, w), got {x.shape}")
    n, h, w = x.shape
    d = deformation
    shifts = rng.uniform(-d.max_shift, d.max_shift, size=(n, 2))
    angles = rng.uniform(-d.max_rotation, d.max_rotation, size=n)
    scales = rng.uniform(1 - d.max_scale, 1 + d.max_scale, size=n)
    if d.elastic_alpha > 0:
        disp = elastic_fields(n, (h, w), d.elastic_alpha, d.elastic_sigma, rng)
    else:
        disp = np.zeros((n, 2, h, w), dtype=np.float32)
    grow = (1 / scales - 1).astype(np.float32)[:, None, None]  # (n, 1, 1)
    disp[:, 0] += (np.arange(h, dtype=np.float32) - np.float32((h - 1) / 2))[:, None] * grow
    disp[:, 1] += (np.arange(w, dtype=np.float32) - np.float32((w - 1) / 2))[None, :] * grow
    moved = warp(x, shifts, angles, 0.0, disp)
    np.rint(moved, out=moved)
    np.clip(moved, 0, 255, out=moved)
    return moved.astype(np.uint8)


def make_batch(
    x_src: np.ndarray, y_src: np.ndarray, b: int, rows: int, seed: int, batch: int,
    deformation: Deformation,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Rows ``b * batch .. b * batch + rows - 1`` of the synthesised set.

    Returns
    -------
    images : ndarray uint8 (rows, h, w)
    labels : ndarray uint8 (rows,)
    """
    n_src = len(y_src)
    start = b * batch
    index = np.arange(start, start + batch) % n_src
    images = x_src[index[:rows]]  # a copy: the deformed rows are written into it
    labels = y_src[index[:rows]].astype(np.uint8)
    first_copy = max(0, n_src - start)  # rows before this position are the source digits
    if first_copy < rows:
        # draw for the whole batch, so a short last batch is a prefix of the full one
        full = x_src[index[first_copy:]]
        moved = deform(full, np.random.default_rng([seed, b]), deformation)
        images[first_copy:] = moved[: rows - first_copy]
    return images, labels


@dataclass(frozen=True)
class SynthResult:
    """What :func:`synthesize` did: the folder, the rows written now and in all."""

    folder: Path
    n: int
    written: int
    resumed_from: int
    already_complete: bool


def _crc(images: np.ndarray, labels: np.ndarray) -> str:
    """CRC-32 of the source's pixels then its labels as uint8 (as written)."""
    crc = zlib.crc32(np.ascontiguousarray(images).reshape(-1).view(np.uint8))
    return f"{zlib.crc32(np.asarray(labels).astype(np.uint8), crc):08x}"


def _plan(
    name: str, x_src: np.ndarray, y_src: np.ndarray, n: int, seed: int, batch: int,
    deformation: Deformation,
) -> dict[str, Any]:  # fmt: skip
    """The settings a set is made from (compared on resume and against a finished set)."""
    return {"format": _FORMAT, "dataset": name, "n": n, "seed": seed, "batch": batch,
            "deformation": asdict(deformation),
            "source": {"n": int(len(y_src)), "image_shape": list(x_src.shape[1:]),
                       "crc32": _crc(x_src, y_src)}}  # fmt: skip


def _check_args(x_src: np.ndarray, y_src: np.ndarray, n: int, seed: int, batch: int) -> None:
    for what, value, low in (("n", n, 1), ("seed", seed, 0), ("batch", batch, 1)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
            raise ConfigError(f"synth {what} must be a whole number >= {low}, got {value!r}")
    if n > _MAX_ROWS:
        raise ConfigError(f"synth n={n} is more rows than an IDX file holds ({_MAX_ROWS})")
    if np.ndim(x_src) != 3 or np.asarray(x_src).dtype != np.uint8:
        raise ShapeError(f"source images must be uint8 (n, h, w), got {np.shape(x_src)}")
    if np.shape(y_src) != (len(x_src),) or len(x_src) == 0:
        raise ShapeError(f"source needs (n,) labels for {len(x_src)} images (n >= 1)")
    if y_src.min() < 0 or y_src.max() > 255:
        raise DataError("source labels must lie in 0..255 to be written as uint8 IDX labels")


def _header(shape: tuple[int, ...]) -> bytes:
    return bytes([0, 0, 0x08, len(shape)]) + np.asarray(shape, dtype=">u4").tobytes()


def _write_json(path: Path, values: dict[str, Any]) -> None:
    """Write ``values`` atomically and durably (a new randomly named temporary file, fsync,
    rename): no fixed temporary name, so nothing planted there is written through."""
    text = json.dumps(values, indent=1) + "\n"
    _replace_with(path, lambda f: f.write(text.encode()))


def _replace_with(path: Path, write: Callable[[Any], Any]) -> None:
    """Call ``write(binary file)`` on a new temporary file beside ``path`` (created with
    O_EXCL under a random name: never a planted link), fsync it, rename it to ``path``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _open_part(path: Path, mode: str) -> Any:
    """``open(path, mode)`` for a ``*.part`` file that refuses to follow a symbolic link
    (O_NOFOLLOW), so a link planted under that name is never written through."""
    flags = {"wb": os.O_WRONLY | os.O_CREAT | os.O_TRUNC, "r+b": os.O_RDWR,
             "ab": os.O_WRONLY | os.O_APPEND}[mode]  # fmt: skip
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW, 0o666)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise OutputError(f"{path}: is a symbolic link; data synth writes only regular "
                              "files") from None  # fmt: skip
        raise
    return os.fdopen(fd, mode)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:  # deep nesting too
        raise DataError(f"{path}: unreadable synth record ({e}); delete it to start again") \
            from None
    if not isinstance(value, dict):
        raise DataError(f"{path}: not a synth record; delete it to start again")
    return value


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (one synthesis per folder at a time)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise OutputError(f"{folder}: another digitlab data synth is writing here") \
                    from None
            raise
        yield
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _differences(saved: dict[str, Any], plan: dict[str, Any]) -> list[str]:
    return [f"{k} {saved.get(k)!r}" for k in plan if saved.get(k) != plan[k]]


def _check_space(folder: Path, needed: int) -> None:
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise OutputError(
            f"{folder}: the set needs {limits.human_bytes(needed)} more, only "
            f"{limits.human_bytes(free)} free"
        )


def synthesize(
    folder: str | os.PathLike[str],
    x_src: np.ndarray,
    y_src: np.ndarray,
    test_files: tuple[str | os.PathLike[str], ...],
    n: int,
    seed: int = 0,
    *,
    name: str = "synth",
    batch: int = SYNTH_BATCH,
    deformation: Deformation = Deformation(),
    progress: Callable[[int, int], None] | None = None,
) -> SynthResult:
    """Write (or finish writing) the synthesised set of ``n`` rows into ``folder``.

    Memory is O(``batch``) beyond the source arrays: each batch is made, appended to the
    ``*.part`` files, fsynced and recorded before the next.

    Parameters
    ----------
    folder : path
        Destination (created if missing, parents too).
    x_src : ndarray uint8 (n_src, h, w)
    y_src : ndarray of int (n_src,)
        Source digits and labels (0..255).
    test_files : paths
        Files copied unchanged into ``folder`` (the source's test images and labels).
    n : int
        Rows of the training set, 1 .. 2**32 - 1 (``n <= n_src``: the first ``n`` source
        digits).
    seed : int
    name : str
        Dataset name, kept in the record.
    batch : int
        Rows per batch; part of what the set is (a different batch gives different copies).
    deformation : Deformation
    progress : callable, optional
        ``progress(rows_done, n)`` after the resumption point is known and after every batch
        (raising from it stops the run, resumable).

    Returns
    -------
    SynthResult

    Raises
    ------
    ConfigError
        ``n``, ``seed`` or ``batch`` out of range.
    DataError
        The folder holds an unfinished set made with other settings, a corrupt record, or
        finished files not made by this synthesis.
    OutputError
        Not enough disk space, another synthesis writing the same folder, or the folder is
        a file.
    """
    _check_args(x_src, y_src, n, seed, batch)
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{folder}: exists and is not a folder")
    tests = [Path(p) for p in test_files]
    for p in tests:
        if not p.is_file():
            raise DataError(f"{p}: source test file missing")
    plan = _plan(name, x_src, y_src, n, seed, batch, deformation)
    made = [p for p in (folder, *folder.parents) if not p.exists()]  # deepest first
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with _locked(folder):
            return _synthesize_locked(folder, x_src, y_src, tests, plan, progress)
    except BaseException:
        for p in made:  # nothing recorded: leave no empty folder behind
            if any(p.iterdir()):
                break
            p.rmdir()
        raise


def _synthesize_locked(
    folder: Path, x_src: np.ndarray, y_src: np.ndarray, tests: list[Path],
    plan: dict[str, Any], progress: Callable[[int, int], None] | None,
) -> SynthResult:  # fmt: skip
    n = plan["n"]
    state = folder / PROGRESS
    parts = [folder / (f + ".part") for f in TRAIN_FILES]
    finals = [folder / f for f in TRAIN_FILES]
    ours = [*parts, *finals, state, folder / RECORD, *(folder / t.name for t in tests)]
    for p in ours + [p.with_name(p.name + ".tmp") for p in (state, folder / RECORD)]:
        if p.is_symlink():  # writing through it would overwrite whatever it points to
            raise OutputError(f"{p}: is a symbolic link; data synth writes only regular files")
    done = _resume_point(folder, plan, finals)
    if done is None:
        if progress is not None:
            progress(n, n)
        return SynthResult(folder, n, 0, n, already_complete=True)
    shape = x_src.shape[1:]
    row_bytes = math.prod(shape)
    heads = [_header((n, *shape)), _header((n,))]
    sizes = [len(heads[0]) + n * row_bytes, len(heads[1]) + n]
    if done < n:  # done == n: only the last steps of _finish are left (a stop between renames)
        _check_space(folder, sum(sizes) - sum(p.stat().st_size for p in parts if p.exists()))
        _open_parts(parts, heads, [len(h) for h in heads], [row_bytes, 1], done, state)
        if not state.exists():
            _write_json(state, plan | {"done": 0})
    resumed = done
    if progress is not None:
        progress(done, n)
    if done < n:
        done = _write_batches(parts, state, x_src, y_src, plan, done, progress)
    _finish(folder, parts, finals, tests, plan, sizes)
    return SynthResult(folder, n, n - resumed, resumed, already_complete=False)


def _resume_point(folder: Path, plan: dict[str, Any], finals: list[Path]) -> int | None:
    """Rows already written (0 for a fresh start), or None when the set is complete."""
    record, state = folder / RECORD, folder / PROGRESS
    if state.exists():
        saved = _read_json(state)
        if _differences(saved, plan):
            raise DataError(
                f"{folder} holds an unfinished set made with "
                f"{', '.join(_differences(saved, plan))}; rerun with those options to finish "
                f"it, or delete its *.part files to start again"
            )
        done = saved.get("done")
        if isinstance(done, bool) or not isinstance(done, int) or not 0 <= done <= plan["n"]:
            raise DataError(f"{state}: bad 'done' count {done!r}; delete it to start again")
        return done
    if record.exists():
        saved = _read_json(record)
        if _differences(saved, plan):
            raise DataError(
                f"{folder} already holds a finished set made with "
                f"{', '.join(_differences(saved, plan))}; delete the folder or choose "
                "another --root to make a different one"
            )
        if all(p.is_file() for p in finals):
            return None
    elif any(p.exists() for p in finals):
        raise DataError(
            f"{folder} already holds {finals[0].name} not made by digitlab data synth; "
            "delete it or choose another --root"
        )
    return 0


def _open_parts(
    parts: list[Path], heads: list[bytes], head_sizes: list[int], row_sizes: list[int],
    done: int, state: Path,
) -> None:  # fmt: skip
    """Create the ``*.part`` files (header only), or cut them back to ``done`` rows."""
    if done == 0 or not state.exists():
        for part, head in zip(parts, heads, strict=True):
            with _open_part(part, "wb") as f:
                f.write(head)
                f.flush()
                os.fsync(f.fileno())
        return
    for part, head, hsize, rsize in zip(parts, heads, head_sizes, row_sizes, strict=True):
        want = hsize + done * rsize
        if not part.is_file() or part.stat().st_size < want:
            raise DataError(
                f"{part}: shorter than the {done} rows its record says were written; "
                "delete the *.part files to start again"
            )
        with _open_part(part, "r+b") as f:
            if f.read(hsize) != head:
                raise DataError(f"{part}: header does not match its record; delete the *.part "
                                "files to start again")  # fmt: skip
            f.truncate(want)  # drop a batch written after the last record


def _write_batches(
    parts: list[Path], state: Path, x_src: np.ndarray, y_src: np.ndarray,
    plan: dict[str, Any], done: int, progress: Callable[[int, int], None] | None,
) -> int:  # fmt: skip
    n, seed, batch = plan["n"], plan["seed"], plan["batch"]
    deformation = Deformation(**plan["deformation"])
    if done % batch and done != n:
        raise DataError(f"{state}: {done} rows is not a whole number of batches of {batch}")
    with _open_part(parts[0], "ab") as fx, _open_part(parts[1], "ab") as fy:
        for b in range(done // batch, math.ceil(n / batch)):
            rows = min(batch, n - b * batch)
            images, labels = make_batch(x_src, y_src, b, rows, seed, batch, deformation)
            fx.write(memoryview(images.reshape(-1)))
            fy.write(memoryview(labels))
            for f in (fx, fy):
                f.flush()
                os.fsync(f.fileno())
            done = b * batch + rows
            _write_json(state, plan | {"done": done})
            if progress is not None:
                progress(done, n)
    return done


def _finish(
    folder: Path, parts: list[Path], finals: list[Path], tests: list[Path],
    plan: dict[str, Any], sizes: list[int],
) -> None:  # fmt: skip
    """Copy the test files, write the record, give the training files their final names."""
    for part, final, size in zip(parts, finals, sizes, strict=True):
        have = part if part.exists() else final
        if not have.is_file() or have.stat().st_size != size:
            raise DataError(f"{have}: expected {size} bytes when complete; delete the *.part "
                            "files to start again")  # fmt: skip
    for src in tests:
        with open(src, "rb") as fsrc:
            _replace_with(folder / src.name, lambda f, fsrc=fsrc: shutil.copyfileobj(fsrc, f))
    _write_json(folder / RECORD, plan)
    for part, final in zip(parts, finals, strict=True):
        if part.exists():
            os.replace(part, final)
    _fsync_dir(folder)
    (folder / PROGRESS).unlink(missing_ok=True)
    for stale in folder.glob(".*.tmp"):  # left by a stop mid-write (ours: random names)
        names = [*(p.name for p in finals), *(t.name for t in tests), RECORD, PROGRESS]
        if stale.name.startswith(tuple(f".{name}." for name in names)):
            stale.unlink(missing_ok=True)
