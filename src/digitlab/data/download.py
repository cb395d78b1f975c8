"""Verified, atomic downloads with the standard library only.

A file is streamed into a temporary file beside its destination, its SHA-256 is checked, it
is flushed to disk and only then renamed into place, so an interrupted or corrupted download
never leaves a file under the final name (and never leaves the temporary file either).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from digitlab.errors import ConfigError, DownloadError

__all__ = ["fetch", "sha256_file"]

_CHUNK = 1 << 20
_HEX64 = re.compile(r"[0-9a-f]{64}")
_USER_AGENT = "digitlab/0.1 (+urllib)"


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Return the lowercase hex SHA-256 digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def fetch(url: str, dest: str | os.PathLike[str], sha256: str, timeout: float = 60) -> Path:
    """Download ``url`` to ``dest`` if and only if its bytes have SHA-256 ``sha256``.

    Parameters
    ----------
    url
        ``http://`` or ``https://`` address.
    dest
        Final file path; its folder is created if missing. An existing file is replaced only
        after the new one has been verified.
    sha256
        Expected lowercase or uppercase hex digest (64 characters).
    timeout
        Seconds to wait on connecting and on each read.

    Returns
    -------
    pathlib.Path
        ``dest``.

    Raises
    ------
    DownloadError
        HTTP error status, connection failure or timeout, a body shorter or longer than its
        Content-Length, or a digest mismatch. The temporary file is removed first.
    ConfigError
        ``sha256`` is not a 64-digit hex string or ``url`` is not http(s).
    """
    expected = sha256.strip().lower()
    if not _HEX64.fullmatch(expected):
        raise ConfigError(f"sha256 must be 64 hex digits, got {sha256!r}")
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"only http:// and https:// URLs can be fetched, got {url!r}")
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    except OSError as e:
        raise DownloadError(f"{url}: cannot write in {dest.parent} ({e})") from None
    tmp = Path(tmp_name)
    done = False
    try:
        with os.fdopen(fd, "wb") as out:
            digest, size, declared = _stream(url, out, timeout)
            if declared is not None and size != declared:
                raise DownloadError(
                    f"{url}: truncated body: got {size} bytes, Content-Length says {declared}"
                )
            if digest != expected:
                raise DownloadError(
                    f"{url}: SHA-256 mismatch: expected {expected}, got {digest} ({size} bytes)"
                )
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest)
        done = True
    except OSError as e:  # disk full, permissions, ...
        raise DownloadError(f"{url}: cannot write {dest} ({e})") from None
    finally:
        if not done:
            tmp.unlink(missing_ok=True)
    _fsync_dir(dest.parent)
    return dest


def _stream(url: str, out, timeout: float) -> tuple[str, int, int | None]:
    """Copy the body of ``url`` into ``out``; return (hex digest, byte count, Content-Length)."""
    h = hashlib.sha256()
    size = 0
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            declared = int(length) if length is not None and length.isdigit() else None
            while block := response.read(_CHUNK):
                h.update(block)
                out.write(block)
                size += len(block)
    except urllib.error.HTTPError as e:
        raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise DownloadError(f"{url}: cannot connect ({e.reason})") from None
    except http.client.IncompleteRead as e:
        got = size + len(e.partial)
        raise DownloadError(f"{url}: truncated body: connection closed after {got} bytes") from None
    except (http.client.HTTPException, TimeoutError, ConnectionError) as e:
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
