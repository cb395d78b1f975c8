"""Resource caps for everything digitlab reads from files or the network.

Readers check the sizes a file *declares* (IDX header, gzip trailer, ``.npy`` member header,
``.mat`` variable header, PNG header) against these caps before allocating or decompressing
anything, so a small hostile file cannot make digitlab allocate gigabytes.

Each cap can be raised (or lowered) with an environment variable:

=============================  ==========================  =====================================
variable                       default                     what it bounds
=============================  ==========================  =====================================
``DIGITLAB_MAX_BYTES``         1 GiB (``1073741824``)      one array read from a file (IDX data,
                                                           a checkpoint member, a ``.mat``
                                                           variable), the decompressed text of
                                                           a CSV file times 4, all PNGs of a
                                                           folder together, and all members of
                                                           a checkpoint together
``DIGITLAB_MAX_PIXELS``        50,000,000 (a 50 MP photo)  pixels of one image, from its header
                                                           (dataset PNGs, ``predict``'s images
                                                           and the app's uploads alike)
``DIGITLAB_DOWNLOAD_DEADLINE`` 1800 (seconds)              one file's whole download
=============================  ==========================  =====================================
"""

from __future__ import annotations

import os

from digitlab.errors import ConfigError

__all__ = [
    "DEFAULT_DOWNLOAD_DEADLINE",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_PIXELS",
    "check",
    "download_deadline",
    "human_bytes",
    "max_bytes",
    "max_pixels",
]

DEFAULT_MAX_BYTES = 1 << 30
DEFAULT_MAX_PIXELS = 50_000_000
DEFAULT_DOWNLOAD_DEADLINE = 1800.0


def _env_number(name: str, default: float, *, integer: bool) -> float:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        kind = "a whole number" if integer else "a number"
        raise ConfigError(f"${name} must be {kind} > 0, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise ConfigError(f"${name} must be a finite number > 0, got {text!r}")
    return value


def max_bytes() -> int:
    """Largest array (in bytes) a reader allocates: ``$DIGITLAB_MAX_BYTES`` or 1 GiB."""
    return int(_env_number("DIGITLAB_MAX_BYTES", DEFAULT_MAX_BYTES, integer=True))


def max_pixels() -> int:
    """Largest image (in pixels) a reader decodes: ``$DIGITLAB_MAX_PIXELS`` or 50,000,000."""
    return int(_env_number("DIGITLAB_MAX_PIXELS", DEFAULT_MAX_PIXELS, integer=True))


def check() -> None:
    """Validate every cap's variable now (ConfigError naming the first bad one), so a bad
    value is one line at start-up, not an error in the middle of a batch or a request."""
    max_bytes()
    max_pixels()
    download_deadline()


def download_deadline() -> float:
    """Seconds one file's download may take in all: ``$DIGITLAB_DOWNLOAD_DEADLINE`` or 1800."""
    return _env_number("DIGITLAB_DOWNLOAD_DEADLINE", DEFAULT_DOWNLOAD_DEADLINE, integer=False)


def human_bytes(n: int) -> str:
    """``n`` bytes as a short human-readable string (``"3.0 GiB"``)."""
    size = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{int(size)} bytes" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"  # pragma: no cover - loop always returns
