"""PNG encoding of small NumPy images (zlib only) and the colour maps the server uses."""

from __future__ import annotations

import struct
import zlib

import numpy as np

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def encode_png(image: np.ndarray) -> bytes:
    """An 8-bit PNG of ``image``.

    Parameters
    ----------
    image : ndarray of uint8, (h, w) grey or (h, w, 3) RGB

    Returns
    -------
    bytes
    """
    img = np.ascontiguousarray(image, dtype=np.uint8)
    if img.ndim == 2:
        colour = 0
    elif img.ndim == 3 and img.shape[2] == 3:
        colour = 2
    else:
        raise ValueError(f"expected (h, w) or (h, w, 3), got {img.shape}")
    h, w = img.shape[:2]
    raw = np.zeros((h, 1 + img[0].size), dtype=np.uint8)  # filter byte 0 on every row
    raw[:, 1:] = img.reshape(h, -1)
    header = struct.pack(">IIBBBBB", w, h, 8, colour, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(raw.tobytes(), 6))
        + _chunk(b"IEND", b"")
    )


def diverging(values: np.ndarray) -> np.ndarray:
    """Blue (negative) - white (0) - red (positive) RGB of ``values`` scaled by max |value|.

    Parameters
    ----------
    values : ndarray (h, w)

    Returns
    -------
    ndarray of uint8 (h, w, 3)
    """
    v = np.asarray(values, dtype=np.float32)
    scale = float(np.max(np.abs(v))) if v.size else 0.0
    t = np.clip(v / scale, -1.0, 1.0) if scale > 0 else np.zeros_like(v)
    pos, neg = np.clip(t, 0, 1), np.clip(-t, 0, 1)
    # white -> (178, 24, 43) for positive, white -> (33, 102, 172) for negative
    r = 255 - neg * (255 - 33) - pos * (255 - 178)
    g = 255 - neg * (255 - 102) - pos * (255 - 24)
    b = 255 - neg * (255 - 172) - pos * (255 - 43)
    return np.stack([r, g, b], axis=-1).round().astype(np.uint8)


def tile(images: np.ndarray, cols: int, gap: int = 1, fill: int = 255) -> np.ndarray:
    """Images (n, h, w[, c]) laid out ``cols`` per row with ``gap`` pixels between them."""
    n, h, w = images.shape[:3]
    rows = max(1, -(-n // cols))
    extra = images.shape[3:]
    out = np.full(
        (rows * (h + gap) - gap, cols * (w + gap) - gap, *extra), fill, dtype=images.dtype
    )
    for i in range(n):  # a few dozen tiles at most, not pixels
        r, c = divmod(i, cols)
        out[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = images[i]
    return out
