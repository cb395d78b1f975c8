"""Read and write IDX files, the format of MNIST, Fashion-MNIST, KMNIST and EMNIST.

An IDX file is a 4-byte magic number ``00 00 TT RR`` (``TT`` the element type, ``RR`` the
rank), ``RR`` big-endian uint32 dimensions, then the elements in C order, big-endian.
Files may be gzip-compressed; compression is detected from the gzip magic bytes, not the name.
"""

from __future__ import annotations

import gzip
import math
import os
import stat
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from digitlab import limits
from digitlab.errors import DataError, DatasetNotFoundError

__all__ = ["IDX_DTYPES", "MAX_RANK", "read_idx", "write_idx"]

#: Highest IDX rank read or written (images with channels are rank 4).
MAX_RANK = 4

#: IDX element-type code -> big-endian dtype on disk.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES: dict[np.dtype, int] = {dt.newbyteorder("="): code for code, dt in IDX_DTYPES.items()}

_GZIP_MAGIC = b"\x1f\x8b"
# deflate cannot expand data by more than ~1032:1, so a header that claims more than this
# many bytes per compressed byte is certainly truncated; checked before allocating.
_MAX_DEFLATE_RATIO = 1032
#: Bytes per read (bounds the temporary a gzip read allocates).
_CHUNK = 1 << 20


def _read_exact(f: BinaryIO, buf: memoryview) -> int:
    """Fill ``buf`` from ``f``; return the number of bytes read (short only at end of file)."""
    got = 0
    while got < len(buf):  # in pieces: gzip's readinto decompresses into a bytes of the size
        n = f.readinto(buf[got : got + _CHUNK])
        if not n:
            break
        got += n
    return got


def read_idx(
    path: str | os.PathLike[str], max_bytes: int | None = None, *, mmap: bool = False
) -> np.ndarray:
    """Read an IDX file, gzip-compressed or raw, with bounded memory.

    The size the header declares is checked before anything is allocated: against
    ``max_bytes``, against the file size (raw files), and against the gzip trailer's length
    field (compressed files; a disagreement is settled by counting the decompressed stream
    without keeping it). A small file that claims a huge array therefore fails at once.

    With ``mmap=True`` an uncompressed regular file of one-byte elements (uint8, int8) is
    memory-mapped read-only instead of read: it costs no memory until its pages are touched
    (then page cache, shared and reclaimable), so ``max_bytes`` does not apply to it; its
    declared size must still match the file size exactly. Other files are read as usual.

    Parameters
    ----------
    path
        File to read. Compression is detected from the first two bytes.
    max_bytes
        Largest data size accepted; default :func:`digitlab.limits.max_bytes`
        (``$DIGITLAB_MAX_BYTES``, 1 GiB). Not applied to a memory-mapped file.
    mmap
        Memory-map an uncompressed file of one-byte elements instead of reading it.

    Returns
    -------
    numpy.ndarray
        Array of the file's shape ``(d0, d1, ...)`` (rank 1 to :data:`MAX_RANK`) and element
        type (uint8, int8, int16, int32, float32 or float64), native byte order; writable,
        or a read-only :class:`numpy.memmap` when mapped.

    Raises
    ------
    DatasetNotFoundError
        The file does not exist.
    DataError
        The header is malformed, the rank exceeds :data:`MAX_RANK`, the declared size
        exceeds ``max_bytes``, the data is truncated or followed by trailing bytes, or the
        gzip stream is corrupt.
    """
    path = Path(path)
    name = str(path)
    cap = limits.max_bytes() if max_bytes is None else int(max_bytes)
    try:
        raw = open(path, "rb")
    except FileNotFoundError:
        raise DatasetNotFoundError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{name}: is a folder, not an IDX file") from None
    except OSError as e:
        raise DataError(f"{name}: cannot open ({e.strerror or e})") from None
    try:
        with raw:
            compressed = raw.read(2) == _GZIP_MAGIC
            raw.seek(0)
            info = os.fstat(raw.fileno())
            file_size = info.st_size
            if not compressed:
                return _read_raw(raw, name, cap, mmap and stat.S_ISREG(info.st_mode))
            isize = _gzip_isize(raw, file_size)
            with gzip.GzipFile(fileobj=raw, mode="rb") as f:
                shape, dtype, expected = _read_header(f, name)
                if expected > _MAX_DEFLATE_RATIO * file_size + 1024:
                    raise DataError(
                        f"{name}: truncated: header {shape} needs {expected} data bytes, more "
                        f"than a {file_size}-byte gzip file can hold"
                    )
                _check_cap(name, shape, expected, cap)
                total = 4 + 4 * len(shape) + expected
                if isize == total % 2**32:
                    return _read_body(f, name, shape, dtype, expected)
                # The trailer disagrees (a forged header, or a multi-member gzip file whose
                # trailer covers only the last member): count the data without keeping it.
                got = _skip(f, expected + 1)
                if got != expected:
                    problem = "truncated" if got < expected else "trailing bytes"
                    raise DataError(
                        f"{name}: {problem}: header {shape} of {dtype.name} needs {expected} "
                        f"data bytes, the gzip stream holds {'more' if got > expected else got}"
                    )
            raw.seek(0)
            with gzip.GzipFile(fileobj=raw, mode="rb") as f:
                _read_header(f, name)
                return _read_body(f, name, shape, dtype, expected)
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise DataError(f"{name}: corrupt gzip stream ({e})") from None
    except MemoryError:
        raise DataError(f"{name}: not enough memory to read it") from None
    except OSError as e:
        raise DataError(f"{name}: cannot read ({e.strerror or e})") from None


def _read_raw(raw: BinaryIO, name: str, cap: int, mmap: bool) -> np.ndarray:
    """An uncompressed IDX file: size checked against the header, then mapped or read."""
    file_size = os.fstat(raw.fileno()).st_size
    shape, dtype, expected = _read_header(raw, name)
    header = 4 + 4 * len(shape)
    if file_size - header != expected:
        problem = "truncated" if file_size - header < expected else "trailing bytes"
        raise DataError(
            f"{name}: {problem}: header {shape} of {dtype.name} needs {expected} "
            f"data bytes, file has {file_size - header}"
        )
    if mmap and dtype.itemsize == 1:
        return _map_body(raw, shape, dtype, header)
    _check_cap(name, shape, expected, cap)
    return _read_body(raw, name, shape, dtype, expected)


def _gzip_isize(raw: BinaryIO, file_size: int) -> int:
    """The gzip trailer's ISIZE field: uncompressed length mod 2**32 (of the last member)."""
    if file_size < 18:  # 10-byte header + 8-byte trailer
        return -1
    raw.seek(file_size - 4)
    isize = int.from_bytes(raw.read(4), "little")
    raw.seek(0)
    return isize


def _skip(f: BinaryIO, limit: int) -> int:
    """Read and discard up to ``limit`` bytes of ``f``; return how many there were."""
    got = 0
    while got < limit:
        block = f.read(min(_CHUNK, limit - got))
        if not block:
            break
        got += len(block)
    return got


def _check_cap(name: str, shape: tuple[int, ...], expected: int, cap: int) -> None:
    if expected > cap:
        raise DataError(
            f"{name}: header {shape} declares {limits.human_bytes(expected)} of data, more "
            f"than the {limits.human_bytes(cap)} limit (set $DIGITLAB_MAX_BYTES to raise it)"
        )


def _read_header(f: BinaryIO, name: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """Parse the magic and dimensions; return (shape, on-disk dtype, data bytes)."""
    magic = f.read(4)
    if len(magic) < 4:
        raise DataError(f"{name}: not an IDX file (only {len(magic)} bytes, need a 4-byte magic)")
    if magic[0] != 0 or magic[1] != 0:
        raise DataError(
            f"{name}: not an IDX file (magic {magic.hex()} does not start with two zero bytes)"
        )
    code, rank = magic[2], magic[3]
    if code not in IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in IDX_DTYPES)
        raise DataError(f"{name}: unknown IDX data type code 0x{code:02X} (known: {known})")
    if rank < 1:
        raise DataError(f"{name}: IDX rank is 0; need at least one dimension")
    if rank > MAX_RANK:
        raise DataError(f"{name}: IDX rank {rank} is more than digitlab reads ({MAX_RANK})")
    dims_raw = f.read(4 * rank)
    if len(dims_raw) < 4 * rank:
        raise DataError(f"{name}: truncated IDX header (rank {rank} needs {4 * rank} dim bytes)")
    shape = tuple(int(d) for d in np.frombuffer(dims_raw, dtype=">u4"))
    dtype = IDX_DTYPES[code]
    return shape, dtype, math.prod(shape) * dtype.itemsize


def _read_body(
    f: BinaryIO, name: str, shape: tuple[int, ...], dtype: np.dtype, expected: int
) -> np.ndarray:
    """Read exactly ``expected`` bytes into a new array; refuse short or longer streams."""
    out = np.empty(shape, dtype=dtype)
    got = _read_exact(f, memoryview(out.reshape(-1).view(np.uint8)))
    if got < expected:
        raise DataError(f"{name}: truncated: header {shape} needs {expected} data bytes, got {got}")
    if f.read(1):
        raise DataError(f"{name}: trailing bytes after the {expected} data bytes")
    if not dtype.isnative:
        out.byteswap(inplace=True)
    return out.view(dtype.newbyteorder("="))


def _map_body(raw: BinaryIO, shape: tuple[int, ...], dtype: np.dtype, offset: int) -> np.ndarray:
    """The data of an open uncompressed IDX file (size already checked) as a read-only
    memmap; the mapping outlives the file object."""
    native = dtype.newbyteorder("=")
    if math.prod(shape) == 0:  # mmap cannot map zero bytes
        empty = np.zeros(shape, dtype=native)
        empty.setflags(write=False)
        return empty
    return np.memmap(raw, dtype=native, mode="r", offset=offset, shape=shape)


def write_idx(path: str | os.PathLike[str], array: np.ndarray) -> Path:
    """Write ``array`` as an IDX file, gzip-compressed when ``path`` ends in ``.gz``.

    Parameters
    ----------
    path
        Destination file; overwritten if it exists.
    array
        Array of shape ``(d0, ...)`` with at least one dimension and dtype uint8, int8, int16,
        int32, float32 or float64 (any byte order).

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    DataError
        The dtype has no IDX code, the array is 0-d, or a dimension does not fit in uint32.
    """
    path = Path(path)
    arr = np.asarray(array)
    native = arr.dtype.newbyteorder("=")
    if native not in _CODES:
        known = ", ".join(np.dtype(d).name for d in _CODES)
        raise DataError(f"{path}: cannot write dtype {arr.dtype} as IDX (supported: {known})")
    if arr.ndim < 1 or arr.ndim > MAX_RANK:
        raise DataError(f"{path}: IDX needs 1 to {MAX_RANK} dimensions, got {arr.ndim}")
    if any(d >= 2**32 for d in arr.shape):
        raise DataError(f"{path}: dimension {arr.shape} does not fit in uint32")
    code = _CODES[native]
    header = bytes([0, 0, code, arr.ndim]) + np.asarray(arr.shape, dtype=">u4").tobytes()
    body = np.ascontiguousarray(arr, dtype=IDX_DTYPES[code])
    if path.name.endswith(".gz"):
        with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
            f.write(header)
            f.write(memoryview(body.reshape(-1).view(np.uint8)))
    else:
        with open(path, "wb") as f:
            f.write(header)
            f.write(memoryview(body.reshape(-1).view(np.uint8)))
    return path
