"""Verified, atomic downloads with the standard library only.

A file is streamed into a temporary file beside its destination, its SHA-256 is checked, it
is flushed to disk and only then renamed into place, so an interrupted or corrupted download
never leaves a file under the final name (and never leaves the temporary file either).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import http.client
import os
import re
import signal
import socket
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from digitlab import limits
from digitlab.errors import ConfigError, DownloadError
from digitlab.fileio import new_file_mode

__all__ = ["fetch", "sha256_file"]

_CHUNK = 1 << 20
_HEX64 = re.compile(r"[0-9a-f]{64}")
_USER_AGENT = "digitlab/0.1 (+urllib)"
#: Seconds without a write after which a ``.part`` file of unknown owner is stale.
_STALE_AGE = 24 * 3600.0


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Return the lowercase hex SHA-256 digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def _verified_body(
    url: str, out: Any, expected: str, bounds: tuple[float, float, int | None]
) -> None:
    """Stream ``url``'s body into ``out`` (``bounds``: read timeout, deadline, byte cap) and
    check its length against Content-Length and its SHA-256 against ``expected``."""
    digest, size, declared = _stream(url, out, *bounds)
    if declared is not None and size != declared:
        raise DownloadError(
            f"{url}: truncated body: got {size} bytes, Content-Length says {declared}"
        )
    if digest != expected:
        raise DownloadError(
            f"{url}: SHA-256 mismatch: expected {expected}, got {digest} ({size} bytes)"
        )


def fetch(
    url: str,
    dest: str | os.PathLike[str],
    sha256: str,
    timeout: float = 60,
    *,
    max_bytes: int | None = None,
    deadline: float | None = None,
) -> Path:
    """Download ``url`` to ``dest`` if and only if its bytes have SHA-256 ``sha256``.

    The body goes to a ``.part`` file beside ``dest`` (its name holds this process's id) that
    is removed on any failure, including SIGTERM or SIGHUP during the transfer (the signal is
    then re-delivered to the handler that was in place before); ``.part`` files left by
    processes that no longer run are removed first.

    Parameters
    ----------
    url
        ``http://`` or ``https://`` address.
    dest
        Final file path; its folder is created if missing (and removed again if the download
        fails and the folder is left empty). An existing file is replaced only after the new
        one has been verified.
    sha256
        Expected lowercase or uppercase hex digest (64 characters).
    timeout
        Seconds to wait on connecting and on each read.
    max_bytes
        Largest body accepted (the registry's expected size): a larger Content-Length is
        refused before reading, and the transfer stops as soon as more bytes arrive.
        None: no cap.
    deadline
        Seconds the whole download may take, however the server trickles its bytes;
        default :func:`digitlab.limits.download_deadline` (``$DIGITLAB_DOWNLOAD_DEADLINE``).

    Returns
    -------
    pathlib.Path
        ``dest``.

    Raises
    ------
    DownloadError
        HTTP error status, connection failure or timeout, the deadline passed, a body over
        ``max_bytes``, shorter or longer than its Content-Length, or a digest mismatch. The
        temporary file is removed first.
    ConfigError
        ``sha256`` is not a 64-digit hex string or ``url`` is not http(s).
    """
    expected = sha256.strip().lower()
    if not _HEX64.fullmatch(expected):
        raise ConfigError(f"sha256 must be 64 hex digits, got {sha256!r}")
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"only http:// and https:// URLs can be fetched, got {url!r}")
    limit = limits.download_deadline() if deadline is None else float(deadline)
    dest = Path(dest)
    created = _missing_folders(dest.parent)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_parts(dest)
        fd, tmp_name = tempfile.mkstemp(
            dir=dest.parent, prefix=f".{dest.name}.{os.getpid()}.", suffix=".part"
        )
    except OSError as e:
        _remove_empty(created)
        raise DownloadError(f"{url}: cannot write in {dest.parent} ({e})") from None
    tmp = Path(tmp_name)
    done = False
    try:
        with _signals_raise():
            try:
                os.fchmod(fd, new_file_mode())
                with os.fdopen(fd, "wb") as out:
                    _verified_body(url, out, expected, (timeout, limit, max_bytes))
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(tmp, dest)
                done = True
            finally:
                if not done:
                    tmp.unlink(missing_ok=True)
                    _remove_empty(created)
    except _Signalled as e:  # handlers restored: clean up, then act as the signal would have
        if not done:  # again: the signal may have cut the cleanup above short
            tmp.unlink(missing_ok=True)
            _remove_empty(created)
        signal.raise_signal(e.signum)
        raise DownloadError(
            f"{url}: download interrupted by {signal.Signals(e.signum).name}"
        ) from None
    except OSError as e:  # disk full, permissions, ...
        raise DownloadError(f"{url}: cannot write {dest} ({e})") from None
    _fsync_dir(dest.parent)
    return dest


class _Signalled(BaseException):
    """Raised inside :func:`fetch` by SIGTERM/SIGHUP so that the ``.part`` file is removed."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


_CAUGHT = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n))


@contextlib.contextmanager
def _signals_raise() -> Iterator[None]:
    """Turn SIGTERM/SIGHUP into :class:`_Signalled` for the duration (unless ignored, as under
    ``nohup``); restore the handlers after.

    Only in the main thread (the only one that may set handlers); elsewhere a no-op.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise _Signalled(signum)

    # a signal ignored when the download starts (SIGHUP under nohup) stays ignored: it would
    # not have stopped the process, so it does not stop the download
    watched = [s for s in _CAUGHT if signal.getsignal(s) is not signal.SIG_IGN]
    previous = {s: signal.signal(s, handler) for s in watched}
    try:
        yield
    finally:
        # a signal between two restores would find this handler on the one not yet restored
        # (and raise out of the loop): held back while all are restored, it then meets the
        # original handler
        mask = getattr(signal, "pthread_sigmask", None)
        held = mask(signal.SIG_BLOCK, _CAUGHT) if mask is not None else None
        try:
            for s, h in previous.items():
                signal.signal(s, h)
        finally:
            if mask is not None and held is not None:
                mask(signal.SIG_SETMASK, held)


def _missing_folders(folder: Path) -> list[Path]:
    """``folder`` and its ancestors that do not exist yet, deepest first."""
    out = []
    for p in (folder, *folder.parents):
        if p.exists() or p.is_symlink():
            break
        out.append(p)
    return out


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders this download created, deepest first, while they are empty."""
    for p in folders:
        try:
            p.rmdir()
        except OSError:
            return


def _remove_stale_parts(dest: Path) -> None:
    """Remove ``.part`` files of ``dest`` whose writer no longer runs (or, for names without a
    process id, that nothing has written to for a day)."""
    now = time.time()
    for part in dest.parent.glob(f".{glob.escape(dest.name)}.*.part"):
        middle = part.name[len(dest.name) + 2 : -len(".part")]
        pid_text = middle.split(".", 1)[0]
        try:
            stale = not _alive(int(pid_text)) if "." in middle else False
            if not stale:
                stale = now - part.stat().st_mtime > _STALE_AGE
            if stale:
                part.unlink()
        except (ValueError, OSError):
            continue


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # an earlier attempt of this very process, which is over
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _Watch:
    """Shuts down every connection it tracks once the deadline passes."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False
        self.conns: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self.expire)
        self._timer.daemon = True

    def track(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            self.conns.append(conn)
            if self.expired:
                _shutdown(conn)

    def expire(self) -> None:
        with self._lock:
            self.expired = True
            for conn in self.conns:
                _shutdown(conn)

    def __enter__(self) -> _Watch:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()


def _shutdown(conn: http.client.HTTPConnection) -> None:
    sock = getattr(conn, "sock", None)
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _opener(watch: _Watch) -> urllib.request.OpenerDirector:
    """A urllib opener whose HTTP(S) connections are registered with ``watch``."""

    def factory(cls: type[http.client.HTTPConnection]):
        def make(*args, **kwargs):
            conn = cls(*args, **kwargs)
            original = conn.connect

            def connect() -> None:
                original()
                watch.track(conn)

            conn.connect = connect  # type: ignore[method-assign]
            return conn

        return make

    class Http(urllib.request.HTTPHandler):
        def http_open(self, req):  # noqa: ANN001 - urllib's signature
            return self.do_open(factory(http.client.HTTPConnection), req)

    class Https(urllib.request.HTTPSHandler):
        def https_open(self, req):  # noqa: ANN001
            return self.do_open(factory(http.client.HTTPSConnection), req, context=self._context)

    return urllib.request.build_opener(Http(), Https())


def _open(request: urllib.request.Request, timeout: float, watch: _Watch):
    """Open ``request`` (a seam for tests)."""
    return _opener(watch).open(request, timeout=timeout)


def _declared_length(url: str, response, max_bytes: int | None) -> int | None:
    """The response's Content-Length (None when absent or not a whole number); DownloadError
    when it is more than ``max_bytes``."""
    length = response.headers.get("Content-Length")
    declared = int(length) if length is not None and length.isdigit() else None
    if max_bytes is not None and declared is not None and declared > max_bytes:
        raise DownloadError(
            f"{url}: Content-Length {declared} is more than the {max_bytes} bytes expected; refused"
        )
    return declared


def _stream(
    url: str, out, timeout: float, deadline: float, max_bytes: int | None
) -> tuple[str, int, int | None]:
    """Copy the body of ``url`` into ``out``; return (hex digest, byte count, Content-Length)."""
    h = hashlib.sha256()
    size = 0
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    start = time.monotonic()
    late = DownloadError(f"{url}: download did not finish within its deadline of {deadline:g} s")
    try:
        with _Watch(deadline) as watch, _open(request, min(timeout, deadline), watch) as response:
            declared = _declared_length(url, response, max_bytes)
            read = getattr(response, "read1", response.read)
            while block := read(_CHUNK):
                size += len(block)
                if max_bytes is not None and size > max_bytes:
                    raise DownloadError(
                        f"{url}: body is longer than the {max_bytes} bytes expected; stopped"
                    )
                h.update(block)
                out.write(block)
                if time.monotonic() - start > deadline:
                    raise late
            if watch.expired:
                raise late
    except urllib.error.HTTPError as e:
        raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        if time.monotonic() - start >= deadline:
            raise late from None
        raise DownloadError(f"{url}: cannot connect ({e.reason})") from None
    except http.client.IncompleteRead as e:
        if time.monotonic() - start >= deadline:
            raise late from None
        got = size + len(e.partial)
        raise DownloadError(f"{url}: truncated body: connection closed after {got} bytes") from None
    except (http.client.HTTPException, TimeoutError, ConnectionError, OSError) as e:
        if time.monotonic() - start >= deadline:
            raise late from None
        raise DownloadError(f"{url}: transfer failed ({type(e).__name__}: {e})") from None
    return h.hexdigest(), size, declared


def _fsync_dir(folder: Path) -> None:
    """Best-effort fsync of a folder so the rename survives a crash (no-op where unsupported)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
