"""Safe file access: atomic writes that follow no link, reads of regular files only.

Every file digitlab writes goes through :func:`atomic_write_bytes`: the bytes go to a
randomly named temporary file created in the target folder with ``O_EXCL | O_NOFOLLOW``
(:func:`tempfile.mkstemp`), are flushed to disk, then renamed over the target. A planted
symbolic link is never written through: a target that is a link, or a folder below the
caller's folder (``inside``) that is a link, is refused; concurrent writers never share a
temporary name.

Every file digitlab parses is read with :func:`read_bytes`: opened with ``O_NONBLOCK`` (a
FIFO can never block the reader), refused unless it is a regular file (a FIFO, socket or
device, or a link to one, is one line), and refused when it is larger than the caller's cap
before a byte is parsed. :func:`parse_json` and :func:`parse_toml` bound the nesting depth, so
a deeply nested file is one line, never a ``RecursionError``.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import tempfile
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from digitlab.errors import DigitlabError, FileReadError, OutputError

__all__ = [
    "MAX_NESTING",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_folder",
    "nesting_depth",
    "new_file_mode",
    "open_regular",
    "parse_json",
    "parse_toml",
    "read_bytes",
    "read_text",
]

#: Deepest nesting of lists and objects (tables) accepted in a JSON or TOML file.
MAX_NESTING = 64


# ---------------------------------------------------------------------------------- writes
def check_folder(folder: Path, inside: Path | None = None) -> None:
    """Refuse (OutputError) a write into ``folder`` through a symbolic link planted below
    ``inside``.

    Every folder below ``inside`` (the folder the caller chose, which may itself be a link)
    down to ``folder`` must be a real folder or not exist yet (the write creates it). Without
    ``inside`` there is nothing to check: the caller chose ``folder``.
    """
    if inside is None or not Path(folder).is_relative_to(inside):
        return
    rel = Path(folder).relative_to(inside).parts
    for part in (Path(inside, *rel[: i + 1]) for i in range(len(rel))):
        if part.is_symlink():
            raise OutputError(f"{part}: is a symbolic link; not writing through it")


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


def _check_target(path: Path) -> None:
    """Refuse a target that is a folder, a link or another non-regular file."""
    if path.is_symlink():
        raise OutputError(f"{path}: is a symbolic link; not replaced")
    if path.is_dir():
        raise OutputError(f"{path}: is a folder; give a file name to write")
    if path.exists() and not path.is_file():
        raise OutputError(f"{path}: exists and is not a regular file; not replaced")


def atomic_write_bytes(
    path: str | os.PathLike, write: Callable[[IO[bytes]], Any], *, inside: Path | None = None
) -> Path:
    """Call ``write(fileobj)`` on a new temporary file beside ``path``, then rename it there.

    Parameters
    ----------
    path : path-like
        The file to (re)place. Its folder is created if missing.
    write : callable
        Writes the content to the binary file object it is given.
    inside : Path, optional
        The folder the caller chose (e.g. a run folder): no folder below it on the way to
        ``path`` may be a symbolic link (default: the caller chose ``path``'s folder).

    Raises
    ------
    OutputError
        ``path`` is a folder, a link or another non-regular file (a device is never replaced),
        a folder on the way is a link, or it cannot be written (its parent is a file, no
        permission, disk full); the temporary file is removed first.
    """
    path = Path(path)
    _check_target(path)
    check_folder(path.parent, inside)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        check_folder(path.parent, inside)  # created now: still no link on the way
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        if isinstance(e, DigitlabError):
            raise
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


def atomic_write_text(path: str | os.PathLike, text: str, *, inside: Path | None = None) -> Path:
    """:func:`atomic_write_bytes` of ``text`` encoded as UTF-8."""
    return atomic_write_bytes(path, lambda f: f.write(text.encode("utf-8")), inside=inside)


# ---------------------------------------------------------------------------------- reads
def open_regular(path: str | os.PathLike) -> int:
    """A read-only descriptor of the regular file ``path`` (links followed, never blocking).

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    FileReadError
        It is a FIFO, socket, device or folder (or a link to one), a link loop, or unreadable.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # refuse before opening a device
            raise FileReadError(f"{path}: not a regular file; not read")
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise
    except OSError as e:
        if isinstance(e, DigitlabError):
            raise
        why = "a symbolic link loop" if e.errno == errno.ELOOP else e.strerror or str(e)
        raise FileReadError(f"{path}: cannot read ({why})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # swapped between stat and open
        os.close(fd)
        raise FileReadError(f"{path}: not a regular file; not read")
    return fd


def read_bytes(path: str | os.PathLike, limit: int) -> bytes:
    """The content of the regular file ``path``, refused when larger than ``limit`` bytes.

    Raises
    ------
    FileNotFoundError, FileReadError
        See :func:`open_regular`; also a file over ``limit`` bytes.
    """
    fd = open_regular(path)
    try:
        with os.fdopen(fd, "rb") as f:
            if os.fstat(f.fileno()).st_size > limit:
                raise FileReadError(f"{path}: larger than {limit} bytes; not read")
            data = f.read(limit + 1)
    except OSError as e:
        if isinstance(e, DigitlabError):
            raise
        raise FileReadError(f"{path}: cannot read ({e.strerror or e})") from None
    if len(data) > limit:
        raise FileReadError(f"{path}: larger than {limit} bytes; not read")
    return data


def read_text(path: str | os.PathLike, limit: int) -> str:
    """:func:`read_bytes` decoded as UTF-8 (FileReadError if it is not UTF-8)."""
    try:
        return read_bytes(path, limit).decode("utf-8")
    except UnicodeDecodeError as e:
        raise FileReadError(f"{path}: not UTF-8 text (byte {e.start})") from None


def nesting_depth(value: Any) -> int:
    """How deeply lists and dicts nest in ``value`` (0 for a scalar), without recursion."""
    depth, level = 0, [value]
    while level:
        nested = [v for v in level if isinstance(v, dict | list)]
        if not nested:
            break
        depth += 1
        level = [x for v in nested for x in (v.values() if isinstance(v, dict) else v)]
    return depth


def _bounded(value: Any, where: str) -> Any:
    if nesting_depth(value) > MAX_NESTING:
        raise FileReadError(f"{where}: nested more than {MAX_NESTING} levels deep")
    return value


def parse_json(text: str, where: str) -> Any:
    """``json.loads(text)``, refusing malformed JSON and nesting over :data:`MAX_NESTING`."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise FileReadError(f"{where}: nested more than {MAX_NESTING} levels deep") from None
    except ValueError as e:
        raise FileReadError(f"{where}: not valid JSON ({e})") from None
    return _bounded(value, where)


def parse_toml(text: str, where: str) -> dict[str, Any]:
    """``tomllib.loads(text)``, refusing malformed TOML and nesting over :data:`MAX_NESTING`."""
    try:
        value = tomllib.loads(text)
    except RecursionError:
        raise FileReadError(f"{where}: nested more than {MAX_NESTING} levels deep") from None
    except tomllib.TOMLDecodeError as e:
        raise FileReadError(f"{where}: not valid TOML ({e})") from None
    return _bounded(value, where)
