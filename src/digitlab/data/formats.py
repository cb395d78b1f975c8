"""Readers for the other layouts handwritten-character data comes in.

- Kaggle CSV: a header ``label,pixel0,...,pixel783`` and one image per row (test files have
  only the pixel columns).
- The letters ``.mat`` file of source 003 (``train_x`` (n, 784) uint8, ``train_y`` (n, 1) with
  labels 1..26, ``test_x`` (m, 784)); rows are images unrolled in C (row-major) order.
- A folder of PNG files, for ``digitlab predict``.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np

from digitlab import limits
from digitlab.errors import DataError, DatasetNotFoundError, DigitlabError, ShapeError

__all__ = ["read_csv", "read_image_folder", "read_letters_mat", "write_csv"]

# ITU-R BT.601 luma weights, as PIL's "L" conversion uses.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _require_file(path: Path) -> None:
    if not path.exists():
        raise DatasetNotFoundError(f"{path}: no such file")
    if not path.is_file():
        raise DataError(f"{path}: not a file")


def _side(n_pixels: int, path: Path) -> int:
    """Side of a square image with ``n_pixels`` pixels, or DataError."""
    side = math.isqrt(n_pixels)
    if n_pixels == 0 or side * side != n_pixels:
        raise DataError(f"{path}: {n_pixels} pixel columns do not form a square image")
    return side


def _to_uint8_pixels(values: np.ndarray, path: Path, what: str) -> np.ndarray:
    """Check that ``values`` are whole numbers in 0..255 and return them as uint8 (same shape)."""
    if values.size == 0:
        return values.astype(np.uint8)
    if not np.issubdtype(values.dtype, np.number) or np.iscomplexobj(values):
        raise DataError(f"{path}: {what} has non-numeric dtype {values.dtype}")
    lo, hi = values.min(), values.max()
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo < 0 or hi > 255:
        raise DataError(f"{path}: {what} values must lie in 0..255, found {lo}..{hi}")
    if np.issubdtype(values.dtype, np.floating) and not np.array_equal(values, np.round(values)):
        raise DataError(f"{path}: {what} has non-integer pixel values")
    return values.astype(np.uint8)


def _is_number(field: str) -> bool:
    try:
        float(field)
    except ValueError:
        return False
    return True


def _open_text(path: Path):
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def _check_text_size(path: Path) -> None:
    """Refuse a CSV whose (decompressed) text exceeds a quarter of the byte cap.

    Parsed as int32, a CSV takes at most twice its text size; the cap keeps that well within
    :func:`digitlab.limits.max_bytes`. A ``.gz`` file is measured by streaming through it
    (constant memory), stopping as soon as the cap is passed.
    """
    cap = limits.max_bytes() // 4
    if path.name.endswith(".gz"):
        size = 0
        try:
            with gzip.open(path, "rb") as f:
                while size <= cap and (block := f.read(1 << 20)):
                    size += len(block)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path}: corrupt gzip stream ({e})") from None
    else:
        size = path.stat().st_size
    if size > cap:
        raise DataError(
            f"{path}: more than {limits.human_bytes(cap)} of CSV text, a quarter of the "
            f"{limits.human_bytes(limits.max_bytes())} limit (set $DIGITLAB_MAX_BYTES to raise it)"
        )


def read_csv(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray | None]:
    """Read images (and labels) from a Kaggle-style CSV file (optionally ``.gz``).

    The first line may be a header. With a header, a first column named ``label`` holds the
    labels and the rest are pixels; without one, a column count that is a perfect square means
    pixels only, and one more than a perfect square means label first, then pixels.

    Parameters
    ----------
    path
        CSV file, one image per row, pixels unrolled in row-major order.

    Returns
    -------
    images : numpy.ndarray
        uint8 array of shape (n, s, s), where s * s is the number of pixel columns.
    labels : numpy.ndarray or None
        int64 array of shape (n,), or None when the file has no label column.

    Raises
    ------
    DatasetNotFoundError
        The file does not exist.
    DataError
        Empty file, ragged or non-numeric rows, pixel values outside 0..255, negative labels or
        a pixel count that is not a square.
    """
    path = Path(path)
    _require_file(path)
    _check_text_size(path)
    blank = 0  # blank lines before the first line (numpy skips blank lines, but counts them)
    try:
        with _open_text(path) as f:
            first = f.readline()
            while first and not first.strip() and blank < 10_000:
                blank += 1
                first = f.readline()
            first = first.strip()
    except (OSError, UnicodeDecodeError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot read as text ({e})") from None
    if not first:
        raise DataError(f"{path}: empty file" if not blank else f"{path}: only blank lines")
    fields = [x.strip().strip('"').lower() for x in first.split(",")]
    has_header = not all(_is_number(x) for x in fields)
    if has_header:
        labelled = fields[0] == "label"
    else:
        labelled = math.isqrt(len(fields)) ** 2 != len(fields)
    n_pixels = len(fields) - labelled
    side = _side(n_pixels, path)
    try:
        with warnings.catch_warnings():  # "input contained no data": an empty table is fine
            warnings.simplefilter("ignore", UserWarning)
            table = np.loadtxt(
                path, delimiter=",", skiprows=blank + int(has_header), dtype=np.int32, ndmin=2
            )
    except (ValueError, OverflowError, OSError, EOFError, UnicodeDecodeError, zlib.error) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"{path}: malformed CSV ({msg})") from None
    if table.size == 0:  # a header and no rows: no images
        table = np.zeros((0, len(fields)), dtype=np.int32)
    if table.shape[1] != len(fields):
        raise DataError(f"{path}: rows have {table.shape[1]} columns, header has {len(fields)}")
    pixels = table[:, int(labelled) :]
    images = _to_uint8_pixels(pixels, path, "pixel columns").reshape(-1, side, side)
    labels = None
    if labelled:
        labels = table[:, 0].astype(np.int64)
        if labels.size and labels.min() < 0:
            raise DataError(f"{path}: negative label {labels.min()}")
    return images, labels


def write_csv(
    path: str | os.PathLike[str], images: np.ndarray, labels: np.ndarray | None = None
) -> Path:
    """Write images (and labels) in the Kaggle CSV layout read by :func:`read_csv`.

    Parameters
    ----------
    path
        Destination file (gzip-compressed when it ends in ``.gz``).
    images
        Integer array of shape (n, h, w) with values in 0..255.
    labels
        Integer array of shape (n,), or None to write pixel columns only.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    path = Path(path)
    images = np.asarray(images)
    if images.ndim != 3:
        raise ShapeError(f"images must have shape (n, h, w), got {images.shape}")
    n = images.shape[0]
    flat = images.reshape(n, images.shape[1] * images.shape[2]).astype(np.int64)
    header = [f"pixel{i}" for i in range(flat.shape[1])]
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (n,):
            raise ShapeError(f"labels must have shape ({n},), got {labels.shape}")
        flat = np.column_stack([labels.astype(np.int64), flat])
        header.insert(0, "label")
    np.savetxt(path, flat, fmt="%d", delimiter=",", header=",".join(header), comments="")
    return path


def read_letters_mat(
    path: str | os.PathLike[str], transpose: bool = False
) -> dict[str, np.ndarray]:
    """Read the EMNIST-letters ``.mat`` file of source 003 (``data/letters_data.mat``).

    The file holds ``train_x`` (n, 784), ``train_y`` (n, 1) with labels 1..26 and ``test_x``
    (m, 784) (and ``test_y`` if present). Rows are unrolled in row-major order, as the seed's
    ``np.reshape(x, (28, 28))`` reads them.

    Parameters
    ----------
    path
        MATLAB v5/v7 ``.mat`` file (v7.3/HDF5 files are not supported).
    transpose
        Transpose every image after reshaping, for exports that store columns first.

    Returns
    -------
    dict
        ``"train_x"``: uint8 (n, 28, 28); ``"train_y"``: int64 (n,) in 0..25;
        ``"test_x"``: uint8 (m, 28, 28); ``"test_y"``: int64 (m,) if the file has it.
        Labels are shifted down by one when their minimum is at least 1 (1..26 -> 0..25).

    Raises
    ------
    DatasetNotFoundError
        The file does not exist.
    DataError
        Not a readable .mat file, a variable missing, shapes inconsistent, pixels outside
        0..255 or labels outside 1..26 / 0..25.
    """
    import scipy.io

    path = Path(path)
    _require_file(path)
    try:
        _check_mat_elements(path)
        listed = scipy.io.whosmat(path)
        wanted = _check_mat_variables(path, listed)
        raw = scipy.io.loadmat(path, variable_names=wanted)
    except DigitlabError:
        raise
    except MemoryError:
        raise DataError(f"{path}: not enough memory to read this .mat file") from None
    except NotImplementedError:
        raise DataError(f"{path}: MATLAB v7.3 (HDF5) .mat files are not supported") from None
    except Exception as e:  # scipy raises ValueError, MatReadError, TypeError, OSError, ...
        raise DataError(f"{path}: not a readable .mat file ({type(e).__name__}: {e})") from None
    variables = sorted(k for k in raw if not k.startswith("__"))
    out: dict[str, np.ndarray] = {}
    for key in ("train_x", "test_x"):
        if key not in raw:
            raise DataError(f"{path}: variable {key!r} missing (found {', '.join(variables)})")
        out[key] = _mat_images(np.asarray(raw[key]), path, key, transpose)
    if "train_y" not in raw:
        raise DataError(f"{path}: variable 'train_y' missing (found {', '.join(variables)})")
    for key, images_key in (("train_y", "train_x"), ("test_y", "test_x")):
        if key not in raw:
            continue
        out[key] = _mat_labels(np.asarray(raw[key]), path, key, len(out[images_key]))
    return out


_MAT_VARIABLES = ("train_x", "train_y", "test_x", "test_y")
_MAT_ITEMSIZE = {
    "double": 8, "single": 4, "int8": 1, "uint8": 1, "int16": 2, "uint16": 2,
    "int32": 4, "uint32": 4, "int64": 8, "uint64": 8, "logical": 1,
}  # fmt: skip


def _check_mat_variables(path: Path, listed: list[tuple[str, tuple[int, ...], str]]) -> list[str]:
    """From ``scipy.io.whosmat`` headers: the wanted variables are numeric and within the cap."""
    cap = limits.max_bytes()
    wanted, total = [], 0
    for name, shape, cls in listed:
        if name not in _MAT_VARIABLES or name in wanted:
            continue
        if cls not in _MAT_ITEMSIZE:
            raise DataError(f"{path}: {name} is a MATLAB {cls} array; numbers expected")
        total += math.prod(shape) * _MAT_ITEMSIZE[cls]
        if total > cap:
            raise DataError(
                f"{path}: {name} {tuple(shape)} brings the data to {limits.human_bytes(total)}, "
                f"more than the {limits.human_bytes(cap)} limit (set $DIGITLAB_MAX_BYTES to "
                "raise it)"
            )
        wanted.append(name)
    return wanted


def _check_mat_elements(path: Path) -> None:
    """Every compressed element of a MATLAB v5 file: declared and inflated size within the cap.

    Inside each compressed element, a matrix tag declares its size; that must be within
    :func:`digitlab.limits.max_bytes`, and the element is streamed through zlib (constant
    memory) to check it holds no more than declared. Files that are not v5 (v4, v7.3/HDF5)
    are left to scipy: their data is not compressed.
    """
    cap = limits.max_bytes()
    with open(path, "rb") as f:
        header = f.read(128)
        if len(header) < 128 or header[126:128] not in (b"IM", b"MI"):
            return
        order = "<" if header[126:128] == b"IM" else ">"
        while len(tag := f.read(8)) == 8:
            kind, nbytes = struct.unpack(order + "II", tag)
            if kind >> 16:  # small data element: 4 bytes of data inside the tag
                continue
            if kind != 15:  # miCOMPRESSED; others are stored as they are, padded to 8 bytes
                f.seek(nbytes + (-nbytes % 8), os.SEEK_CUR)
                continue
            end = f.tell() + nbytes
            _check_inflated(path, f, nbytes, order, cap)
            f.seek(end)


def _check_inflated(path: Path, f, nbytes: int, order: str, cap: int) -> None:
    """Stream one compressed element; refuse a matrix declared or inflating beyond the cap."""
    inflater, left, size, head, limit = zlib.decompressobj(), nbytes, 0, b"", cap
    while left > 0 and (block := f.read(min(left, 1 << 16))):
        left -= len(block)
        data = block
        while data:
            chunk = inflater.decompress(data, 1 << 23)
            data = inflater.unconsumed_tail
            if len(head) < 8:
                head += chunk[: 8 - len(head)]
                if len(head) == 8:
                    kind, declared = struct.unpack(order + "II", head)
                    if kind != 14:  # not a matrix: scipy refuses it, no need to inflate more
                        return
                    if declared > cap:
                        raise DataError(
                            f"{path}: a compressed variable declares "
                            f"{limits.human_bytes(declared)}, more than the "
                            f"{limits.human_bytes(cap)} limit (set $DIGITLAB_MAX_BYTES to "
                            "raise it)"
                        )
                    limit = 8 + declared
            size += len(chunk)
            if size > limit:
                raise DataError(
                    f"{path}: a compressed variable expands to more than the "
                    f"{limits.human_bytes(limit)} it declares"
                )
            if not chunk:
                break


def _mat_images(arr: np.ndarray, path: Path, key: str, transpose: bool) -> np.ndarray:
    if arr.ndim == 2:
        side = _side(arr.shape[1], path)
        arr = arr.reshape(arr.shape[0], side, side)
    elif arr.ndim != 3:
        raise DataError(f"{path}: {key} must be (n, 784) or (n, 28, 28), got {arr.shape}")
    images = _to_uint8_pixels(arr, path, key)
    if transpose:
        images = np.ascontiguousarray(images.transpose(0, 2, 1))
    return images


def _mat_labels(arr: np.ndarray, path: Path, key: str, n: int) -> np.ndarray:
    if arr.size != n or (arr.ndim == 2 and 1 not in arr.shape) or arr.ndim > 2:
        raise DataError(f"{path}: {key} has shape {arr.shape}, expected ({n}, 1) for {n} images")
    labels = arr.reshape(-1)
    if (
        not np.issubdtype(labels.dtype, np.number)
        or np.iscomplexobj(labels)
        or (labels.size and not np.array_equal(labels, np.round(labels)))
    ):
        raise DataError(f"{path}: {key} must hold whole-number labels")
    labels = labels.astype(np.int64)
    if labels.size:
        lo, hi = int(labels.min()), int(labels.max())
        if lo >= 1 and hi <= 26:
            labels -= 1
        elif lo < 0 or hi > 25:
            raise DataError(f"{path}: {key} labels must lie in 1..26 (or 0..25), found {lo}..{hi}")
    return labels


def read_image_folder(path: str | os.PathLike[str]) -> tuple[np.ndarray, list[str]]:
    """Read every ``.png`` file of a folder (or one PNG file) as a grayscale uint8 image.

    Colour images are converted with the ITU-R 601 luma weights; an alpha channel is
    composited over black (MNIST's background). Values are rounded to 0..255. No inversion
    or resizing is done: all files must have the same size.

    Parameters
    ----------
    path
        A folder (its ``*.png`` files, case-insensitive, not recursive) or a single PNG file.

    Returns
    -------
    images : numpy.ndarray
        uint8 array of shape (n, h, w), in file-name order.
    names : list of str
        The n file names (without folder), sorted.

    Raises
    ------
    DatasetNotFoundError
        ``path`` does not exist.
    DataError
        No PNG files, a file that cannot be decoded, or images of different sizes.
    """
    import matplotlib.image

    path = Path(path)
    if not path.exists():
        raise DatasetNotFoundError(f"{path}: no such file or folder")
    if path.is_dir():
        files = sorted(
            (p for p in path.iterdir() if p.suffix.lower() == ".png" and p.is_file()),
            key=lambda p: p.name,
        )
        if not files:
            raise DataError(f"{path}: no .png files in this folder")
    else:
        files = [path]
    _check_image_headers(files)
    images: list[np.ndarray] = []
    for f in files:
        try:
            arr = np.asarray(matplotlib.image.imread(f))
        except Exception as e:  # Pillow raises many types (OSError, SyntaxError, ValueError)
            raise DataError(f"{f}: cannot read as an image ({type(e).__name__}: {e})") from None
        gray = _gray_uint8(arr, f)
        if images and gray.shape != images[0].shape:
            raise DataError(
                f"{f}: image is {gray.shape[0]}x{gray.shape[1]}, but {files[0].name} is "
                f"{images[0].shape[0]}x{images[0].shape[1]}; all images must have one size"
            )
        images.append(gray)
    return np.stack(images), [f.name for f in files]


def _check_image_headers(files: list[Path]) -> None:
    """Image sizes from their headers (nothing decoded): each within the pixel cap, all
    together within the byte cap."""
    from PIL import Image

    cap_pixels, cap_bytes = limits.max_pixels(), limits.max_bytes()
    total = 0
    for f in files:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(f) as im:
                    width, height = im.size
        except Image.DecompressionBombError:
            raise DataError(
                f"{f}: image has more pixels than Pillow decodes, more than the {cap_pixels} "
                "pixel limit"
            ) from None
        except Exception as e:  # Pillow raises many types (OSError, SyntaxError, ValueError)
            raise DataError(f"{f}: cannot read as an image ({type(e).__name__}: {e})") from None
        if width * height > cap_pixels:
            raise DataError(
                f"{f}: image is {width}x{height} ({width * height} pixels), more than the "
                f"{cap_pixels} pixel limit (set $DIGITLAB_MAX_PIXELS to raise it)"
            )
        total += width * height
        if total > cap_bytes:
            raise DataError(
                f"{f}: the images so far hold {total} pixels, more than the "
                f"{limits.human_bytes(cap_bytes)} limit (set $DIGITLAB_MAX_BYTES to raise it)"
            )


def _gray_uint8(arr: np.ndarray, path: Path) -> np.ndarray:
    """Convert an (h, w), (h, w, 1..4) image array to uint8 (h, w)."""
    if np.issubdtype(arr.dtype, np.integer):
        arr = arr.astype(np.float32) / np.float32(np.iinfo(arr.dtype).max)
    else:
        arr = arr.astype(np.float32, copy=False)
    if arr.ndim == 3 and arr.shape[2] in (1, 2):
        gray = arr[..., 0] * (arr[..., 1] if arr.shape[2] == 2 else np.float32(1))
    elif arr.ndim == 3 and arr.shape[2] in (3, 4):
        gray = arr[..., :3] @ _LUMA
        if arr.shape[2] == 4:
            gray = gray * arr[..., 3]
    elif arr.ndim == 2:
        gray = arr
    else:
        raise DataError(f"{path}: unsupported image array shape {arr.shape}")
    return np.clip(np.rint(gray * np.float32(255)), 0, 255).astype(np.uint8)
