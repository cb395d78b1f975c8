"""Images as people have them: bounded decoding and MNIST's own preprocessing recipe.

:func:`read_image` decodes a PNG, JPEG, BMP, TIFF, GIF or WebP file with Pillow, refusing
before decoding any image whose header announces more than :data:`MAX_PIXELS` pixels.
:func:`to_model_input` turns an image of any size, colour or grey, either polarity, into what
a model trained on MNIST-style data expects, the way MNIST itself was made (LeCun et al.):

1. grey from colour (ITU-R 601 luma; an alpha channel is composited over white paper);
2. polarity from the border: the border is paper, so when it is lighter than the middle of
   the image's range the image is inverted, making the ink bright on dark;
3. background and uneven lighting removed: a grey-scale morphological opening wider than any
   stroke estimates the paper (it follows gradients and vignettes) and is subtracted;
4. levels from Otsu's threshold of what remains: the paper goes to 0, the ink core to 1,
   antialiased edges stay in between; specks far smaller than the largest ink blob dropped;
5. cropped to the ink's bounding box, fitted into a box of 20/28 of the target size (20x20
   for 28x28, 6x6 for 8x8) keeping the aspect ratio, resampled with antialiasing;
6. placed in the target frame so that its centre of mass is at the frame's centre
   (``(h/2, w/2)``, where MNIST's test digits have theirs on average).

An image with no ink (uniform, or nothing standing out of the paper's noise) raises
:class:`~digitlab.errors.DataError` by default; ``empty="blank"`` returns zeros instead (for a
drawing canvas that is still empty). All steps are vectorised NumPy / SciPy / Pillow.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np
from scipy import ndimage

from digitlab.errors import DataError, DatasetNotFoundError, ShapeError

MAX_PIXELS = 50_000_000
"""Largest width x height :func:`read_image` decodes (a 50-megapixel photo)."""

WORK_SIDE = 512
"""Images are first reduced (area average) until their longer side is at most this."""

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")
"""File suffixes :func:`load_images` picks from a folder (case-insensitive)."""

_FORMATS = {"PNG", "JPEG", "MPO", "BMP", "DIB", "TIFF", "GIF", "WEBP"}
_FIT = 20 / 28  # MNIST: a 20x20 box in a 28x28 frame
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def read_image(
    path: str | os.PathLike[str] | BinaryIO, *, max_pixels: int = MAX_PIXELS
) -> np.ndarray:
    """Decode one image file, bounded in size.

    The header is read first; a width x height above ``max_pixels`` is refused before any
    pixel is decoded. The EXIF orientation of photographs is applied. Multi-frame files
    (GIF, TIFF) give their first frame.

    Parameters
    ----------
    path
        A PNG, JPEG, BMP, TIFF, GIF or WebP file, or a binary file object holding one (an
        upload kept in memory by ``digitlab serve``; named ``<upload>`` in messages).
    max_pixels
        Largest accepted width x height.

    Returns
    -------
    numpy.ndarray
        uint8, shape (h, w) for grey images, (h, w, 3) for colour, (h, w, 4) with alpha.
        16-bit and float images are scaled to 0..255.

    Raises
    ------
    DatasetNotFoundError
        ``path`` does not exist.
    DataError
        Not an image in a supported format, too many pixels, truncated or corrupt.
    """
    from PIL import Image, ImageOps

    source: Path | BinaryIO
    if hasattr(path, "read"):
        source, path = path, Path("<upload>")  # type: ignore[assignment]
    else:
        path = source = Path(path)  # type: ignore[arg-type]
        if not path.is_file():
            raise DatasetNotFoundError(f"{path}: no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as im:
                if im.format not in _FORMATS:
                    raise DataError(f"{path}: {im.format} images are not supported")
                w, h = im.size
                if w < 1 or h < 1:
                    raise DataError(f"{path}: image is {w}x{h}")
                if w * h > max_pixels:
                    raise DataError(
                        f"{path}: image is {w}x{h} = {w * h:,} pixels, more than the "
                        f"{max_pixels:,} accepted"
                    )
                im.load()
                im = ImageOps.exif_transpose(im) or im
                return _to_uint8(im, path)
    except DataError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise DataError(f"{path}: image has more pixels than the {max_pixels:,} accepted") from None
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, struct.error ...
        msg = " ".join(str(e).split()) or type(e).__name__
        raise DataError(f"{path}: cannot read as an image ({msg})") from None


def _to_uint8(im: object, path: Path) -> np.ndarray:
    """Pillow image in any mode -> uint8 (h, w), (h, w, 3) or (h, w, 4)."""
    mode = im.mode  # type: ignore[attr-defined]
    if mode in ("L", "RGB", "RGBA"):
        return np.asarray(im, dtype=np.uint8).copy()
    if mode == "1":
        return np.asarray(im.convert("L"), dtype=np.uint8).copy()  # type: ignore[attr-defined]
    if mode in ("LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in im.info):  # type: ignore[attr-defined]
        return np.asarray(im.convert("RGBA"), dtype=np.uint8).copy()  # type: ignore[attr-defined]
    if mode.startswith("I") or mode == "F":
        a = np.asarray(im, dtype=np.float64)
        if not np.all(np.isfinite(a)):
            raise DataError(f"{path}: image has non-finite pixel values")
        if mode == "F" and a.max(initial=0.0) <= 1.0:
            a = a * 255.0
        elif a.max(initial=0.0) > 255.0:
            a = a / 257.0  # 16-bit
        return np.rint(np.clip(a, 0, 255)).astype(np.uint8)
    return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()  # type: ignore[attr-defined]


def _grey(image: np.ndarray, paper: float = 1.0) -> np.ndarray:
    """uint8 or [0, 1] float image (h, w), (h, w, 3|4) -> float32 (h, w) in [0, 1].

    Alpha is composited over a background of grey level ``paper``.
    """
    a = np.asarray(image)
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (1, 3, 4)):
        raise ShapeError(f"expected an image (h, w) or (h, w, 3|4), got shape {a.shape}")
    if a.shape[0] < 1 or a.shape[1] < 1:
        raise ShapeError(f"image has no pixels (shape {a.shape})")
    if a.dtype == np.uint8:
        x = a.astype(np.float32) / 255.0
    elif a.dtype == np.bool_:
        x = a.astype(np.float32)
    elif np.issubdtype(a.dtype, np.floating):
        x = a.astype(np.float32)
        if not np.all(np.isfinite(x)) or x.min() < 0.0 or x.max() > 1.0:
            raise DataError("float images must hold finite values in [0, 1]")
    else:
        raise DataError(f"expected uint8 or float pixels, got {a.dtype}")
    if x.ndim == 2:
        return x
    if x.shape[2] == 1:
        return x[:, :, 0]
    rgb = x[:, :, :3] @ _LUMA
    if x.shape[2] == 4:
        alpha = x[:, :, 3]
        rgb = rgb * alpha + paper * (1.0 - alpha)
    return np.clip(rgb, 0.0, 1.0).astype(np.float32)


def _resize(x: np.ndarray, h: int, w: int, box: bool = False) -> np.ndarray:
    """float32 (H, W) -> float32 (h, w), antialiased (Pillow's filters widen when reducing)."""
    from PIL import Image

    resample = Image.Resampling.BOX if box else Image.Resampling.BILINEAR
    im = Image.fromarray(np.ascontiguousarray(x, dtype=np.float32), mode="F")
    return np.asarray(im.resize((w, h), resample=resample), dtype=np.float32)


def _otsu(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of a 1-D float array (maximises the between-class variance)."""
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return hi
    hist, edges = np.histogram(values, bins=bins, range=(lo, hi))
    p = hist.astype(np.float64) / hist.sum()
    mids = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(p)
    m0 = np.cumsum(p * mids)
    mt = m0[-1]
    w1 = 1.0 - w0
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mt * w0 - m0) ** 2 / (w0 * w1)
    between[~np.isfinite(between)] = -1.0
    return float(edges[int(np.argmax(between)) + 1])


def _odd(n: float) -> int:
    k = max(3, int(round(n)))
    return k if k % 2 else k + 1


def to_model_input(
    image: np.ndarray,
    shape: Sequence[int] = (28, 28),
    *,
    empty: Literal["error", "blank"] = "error",
) -> np.ndarray:
    """Turn an image of any size into an MNIST-style model input (see the module docstring).

    Parameters
    ----------
    image
        uint8 (or float in [0, 1]) array, shape (H, W), (H, W, 3) or (H, W, 4); any polarity.
    shape
        Target (h, w), the model's image shape. The ink is fitted into
        ``round(h * 20 / 28) x round(w * 20 / 28)``.
    empty
        What an image without ink gives: ``"error"`` raises DataError, ``"blank"`` returns zeros.

    Returns
    -------
    numpy.ndarray
        float32 (h, w) in [0, 1], ink bright on a black background, centred by mass.

    Raises
    ------
    ShapeError
        ``image`` is not an image array, or ``shape`` is not two positive sizes.
    DataError
        No ink found (with ``empty="error"``), or float pixels outside [0, 1].
    """
    if len(shape) != 2 or min(int(s) for s in shape) < 1:
        raise ShapeError(f"target shape must be two positive sizes, got {tuple(shape)}")
    th, tw = int(shape[0]), int(shape[1])
    g = _grey(image)
    H, W = g.shape
    if max(H, W) > WORK_SIDE:  # area-average down: enough detail for a 20x20 box, and fast
        f = WORK_SIDE / max(H, W)
        g = _resize(g, max(1, round(H * f)), max(1, round(W * f)), box=True)
        H, W = g.shape

    # polarity: the border is paper
    r = max(1, round(0.03 * min(H, W)))
    ring = np.ones((H, W), dtype=bool)
    ring[r : H - r, r : W - r] = False
    lo_p, hi_p = np.percentile(g, [1, 99])
    if np.median(g[ring]) > (lo_p + hi_p) / 2:
        g = 1.0 - g

    # background: an opening wider than strokes keeps the paper, gradients and vignettes
    k = _odd(0.3 * min(H, W))
    resid = g - ndimage.grey_opening(g, size=(k, k), mode="nearest")

    t = _otsu(resid.ravel())
    ink = resid > t
    bg = resid[~ink]
    mu_b = float(bg.mean()) if bg.size else 0.0
    sd_b = float(bg.std()) if bg.size else 0.0
    hi = float(np.median(resid[ink])) if ink.any() else 0.0
    if not ink.any() or hi - mu_b < max(0.08, 4.0 * sd_b):
        if empty == "blank":
            return np.zeros((th, tw), dtype=np.float32)
        raise DataError(
            "no ink found: the image is uniform or nothing stands out of the paper's noise"
        )
    lo = min(t, mu_b + 3.0 * sd_b)
    levels = np.clip((resid - lo) / max(hi - lo, 1e-6), 0.0, 1.0)

    # keep ink blobs, drop specks, and everything far from kept ink
    labels, n = ndimage.label(ink, structure=np.ones((3, 3), dtype=bool))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    sizes[0] = 0
    keep = (sizes >= max(2, 0.08 * sizes.max()))[labels]
    near = ndimage.binary_dilation(keep, structure=np.ones((3, 3), dtype=bool), iterations=2)
    levels = np.where(near, levels, 0.0).astype(np.float32)

    rows = np.flatnonzero(levels.any(axis=1))
    cols = np.flatnonzero(levels.any(axis=0))
    crop = levels[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]

    bh, bw = max(1, round(th * _FIT)), max(1, round(tw * _FIT))
    ch, cw = crop.shape
    s = min(bh / ch, bw / cw)
    nh, nw = min(bh, max(1, round(ch * s))), min(bw, max(1, round(cw * s)))
    small = np.clip(_resize(crop, nh, nw), 0.0, 1.0)
    if small.max() <= 0.0:
        small = np.clip(_resize(crop, nh, nw, box=True), 0.0, 1.0)

    cy, cx = ndimage.center_of_mass(small) if small.sum() > 0 else ((nh - 1) / 2, (nw - 1) / 2)
    oy = int(np.clip(round(th / 2 - cy), 0, th - nh))
    ox = int(np.clip(round(tw / 2 - cx), 0, tw - nw))
    out = np.zeros((th, tw), dtype=np.float32)
    out[oy : oy + nh, ox : ox + nw] = small
    return out


def list_image_files(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Files named directly, and the image files of folders (sorted by name, not recursive).

    Raises
    ------
    DatasetNotFoundError
        A path does not exist.
    DataError
        A folder holds no image file, or no path was given.
    """
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(
                (f for f in p.iterdir()
                 if f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith(".")
                 and f.is_file()),
                key=lambda f: f.name,
            )  # fmt: skip
            if not found:
                raise DataError(f"{p}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this folder")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise DatasetNotFoundError(f"{p}: no such file or folder")
    if not files:
        raise DataError("no image files given")
    return files


def load_images(
    paths: Iterable[str | os.PathLike[str]],
    shape: Sequence[int] = (28, 28),
    *,
    raw: bool = False,
    empty: Literal["error", "blank"] = "error",
    max_pixels: int = MAX_PIXELS,
) -> tuple[list[str], np.ndarray]:
    """Read image files and folders into model inputs.

    Parameters
    ----------
    paths
        Image files and folders (a folder's image files are taken sorted by name).
    shape
        Target (h, w).
    raw
        False: each image goes through :func:`to_model_input`. True: images must already be
        of exactly ``shape`` and are only converted to grey (alpha over black, as in
        the training format).
    empty
        Passed to :func:`to_model_input`.
    max_pixels
        Passed to :func:`read_image`.

    Returns
    -------
    names : list of str
        The n file paths, as given or joined to the folder given.
    images : numpy.ndarray
        float32 (n, h, w) in [0, 1], ink bright.

    Raises
    ------
    DatasetNotFoundError, DataError
        Missing path, unreadable image, no ink, or (``raw``) an image of another size.
        Messages name the file.
    """
    files = list_image_files(paths)
    th, tw = int(shape[0]), int(shape[1])
    out = np.empty((len(files), th, tw), dtype=np.float32)
    for i, f in enumerate(files):
        img = read_image(f, max_pixels=max_pixels)
        if raw:
            g = _grey(img, paper=0.0)  # training format: alpha over MNIST's black
            if g.shape != (th, tw):
                raise DataError(
                    f"{f}: image is {g.shape[0]}x{g.shape[1]}, the model was trained on "
                    f"{th}x{tw} (drop --raw to fit it the MNIST way)"
                )
            out[i] = g
            continue
        try:
            out[i] = to_model_input(img, (th, tw), empty=empty)
        except DataError as e:
            raise DataError(f"{f}: {e}") from None
    return [str(f) for f in files], out
