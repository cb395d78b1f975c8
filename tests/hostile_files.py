"""Builders of hostile files: small on disk, huge (or lying) once decoded.

Used by the fuzz tests and by ``scripts/hostile_battery.py``. Every builder is fast: a long
run of zeros is one deflate block compressed once and repeated (each block ends in a full
flush, so the copies concatenate into one valid stream).
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np

_BLOCK = 1 << 24


def deflate_zeros(n: int, prefix: bytes = b"", crc: bool = True) -> tuple[bytes, int]:
    """Raw deflate stream of ``prefix`` then ``n`` zero bytes, and the CRC-32 of all of it
    (0 when ``crc`` is false: for streams a reader must give up on before their end)."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = c.compress(prefix) + c.flush(zlib.Z_FULL_FLUSH)
    block = c.compress(bytes(_BLOCK)) + c.flush(zlib.Z_FULL_FLUSH)
    full, rest = divmod(n, _BLOCK)
    tail = c.compress(bytes(rest)) + c.flush()
    if not crc:
        return head + block * full + tail, 0
    value = zlib.crc32(prefix)
    zeros = bytes(_BLOCK)
    for _ in range(full):
        value = zlib.crc32(zeros, value)
    value = zlib.crc32(bytes(rest), value)
    return head + block * full + tail, value


def gzip_zeros(
    path: Path, n: int, prefix: bytes = b"", isize: int | None = None, crc: bool = True
) -> Path:
    """A gzip file of ``prefix`` + ``n`` zeros; ``isize`` overrides the trailer's length."""
    body, crc = deflate_zeros(n, prefix, crc)
    size = (len(prefix) + n) % 2**32 if isize is None else isize
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    path.write_bytes(header + body + struct.pack("<II", crc, size))
    return path


def idx_header(code: int, shape: tuple[int, ...]) -> bytes:
    """IDX magic and dimensions."""
    return bytes([0, 0, code, len(shape)]) + struct.pack(f">{len(shape)}I", *shape)


def npy_header(dtype: str, shape: tuple[int, ...]) -> bytes:
    """A version 1.0 ``.npy`` header for ``dtype``/``shape``."""
    d = repr({"descr": np.dtype(dtype).str, "fortran_order": False, "shape": shape})
    d = d.encode("latin1")
    pad = 64 - (10 + len(d) + 1) % 64
    d = d + b" " * pad + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(d)) + d


def write_zip(path: Path, members: list[tuple[str, bytes, int, int, int]]) -> Path:
    """A zip of pre-compressed members ``(name, data, method, crc, uncompressed size)``."""
    out, central = bytearray(), bytearray()
    for name, data, method, crc, size in members:
        fn = name.encode()
        offset = len(out)
        out += struct.pack(
            "<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0x21, crc, len(data), size, len(fn), 0
        )
        out += fn + data
        central += struct.pack(
            "<IHHHHHHIIIHHHHHII",
            0x02014B50, 20, 20, 0, method, 0, 0x21, crc, len(data), size, len(fn),
            0, 0, 0, 0, 0, offset,
        )  # fmt: skip
        central += fn
    n = len(members)
    eocd = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, n, n, len(central), len(out), 0)
    path.write_bytes(bytes(out + central + eocd))
    return path


def stored(name: str, data: bytes) -> tuple[str, bytes, int, int, int]:
    """An uncompressed zip member."""
    return name, data, 0, zlib.crc32(data), len(data)


def zero_array_member(name: str, dtype: str, shape: tuple[int, ...], crc: bool = True) -> tuple:
    """A deflated ``.npy`` member of zeros with ``shape``: tiny on disk, full size inflated."""
    header = npy_header(dtype, shape)
    n = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    data, crc = deflate_zeros(n, header, crc)
    return name, data, 8, crc, len(header) + n


def checkpoint_members(meta: dict, arrays: dict[str, np.ndarray]) -> list[tuple]:
    """Stored members of a checkpoint with ``meta`` (JSON-able) and ``arrays``."""
    import io

    out = []
    blob = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    for key, arr in [*arrays.items(), ("meta.json", blob)]:
        buf = io.BytesIO()
        np.lib.format.write_array(buf, np.asarray(arr), allow_pickle=False)
        out.append(stored(f"{key}.npy", buf.getvalue()))
    return out


def png_bytes(width: int, height: int, idat: bytes | None = None, color_type: int = 0) -> bytes:
    """A PNG with the given header; ``idat`` defaults to zero rows for the whole image."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    if idat is None:  # zlib stream: header, raw deflate, Adler-32 (of n zeros: n << 16 | 1)
        channels = {0: 1, 2: 3, 4: 2, 6: 4}[color_type]
        n = height * (1 + width * channels)
        raw, _ = deflate_zeros(n, crc=False)
        idat = b"\x78\xda" + raw + struct.pack(">I", ((n % 65521) << 16) | 1)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
