"""Images as people have them: bounded decoding and MNIST's own preprocessing recipe.

:func:`read_image` decodes a PNG, JPEG, BMP, TIFF, GIF or WebP file with Pillow, refusing
before decoding any image whose header announces more than
:func:`digitlab.limits.max_pixels` pixels (``$DIGITLAB_MAX_PIXELS``, 50 MP by default).
:func:`to_model_input` turns an image of any size, colour or grey, either polarity, into what
a model trained on MNIST-style data expects, the way MNIST itself was made (LeCun et al.):

1. grey from colour: an alpha channel is composited over white paper; of ITU-R 601 luma and
   the R, G and B channels, the one in which the ink stands out most from the paper's noise
   (coloured ink on tinted paper can have almost no luma contrast);
2. polarity from the border: the border is paper, and the ink lies on the side of the
   paper's level that the image's extremes reach further (judged on the image as it is and
   with the slow variation of the light subtracted); dark ink is inverted, so the ink is
   bright on dark;
3. background and uneven lighting removed: a grey-scale morphological opening wider than any
   stroke (30% of the short side) estimates the paper (it follows gradients and vignettes)
   and is subtracted;
4. levels from Otsu's threshold of what remains, never inside the paper's noise (4 robust
   standard deviations): the paper goes to 0, the ink to 1, antialiased edges stay in
   between; specks, paper texture and blobs far from the largest ink blob are dropped;
   strokes thinner than 5% of the ink's longer side are thickened to 10% of it (MNIST's
   median proportion; a ballpoint on a big digit would fade when fitted into 20x20);
5. cropped to the ink's bounding box, fitted into a box of ``fit`` of the target size keeping
   the aspect ratio, resampled with antialiasing: MNIST's 20/28 (20x20 in 28x28) by default,
   the whole frame for datasets whose digits fill it (scikit-learn's 8x8 digits);
6. placed in the target frame so that its centre of mass is at the frame's centre
   (``(h/2, w/2)``, where MNIST's test digits have theirs on average).

An image with no ink (uniform, or nothing standing out of the paper's noise) raises
:class:`~digitlab.errors.DataError` by default; ``empty="blank"`` returns zeros instead (for a
drawing canvas that is still empty). All steps are vectorised NumPy / SciPy / Pillow.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np
from scipy import ndimage

from digitlab.errors import DataError, DatasetNotFoundError, ShapeError

MAX_PIXELS = 50_000_000
"""The default of :func:`digitlab.limits.max_pixels` (a 50-megapixel photo)."""

WORK_SIDE = 512
"""Images are first reduced (area average) until their longer side is at most this."""

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")
"""File suffixes :func:`load_images` picks from a folder (case-insensitive)."""

_FORMATS = {"PNG", "JPEG", "MPO", "BMP", "DIB", "TIFF", "GIF", "WEBP"}
MNIST_FIT = 20 / 28
"""MNIST's framing: a digit's longer side is 20 of the frame's 28 pixels."""
THICK_FIT = 0.9
"""Digits framed at least this tightly (scikit-learn's 8x8) go through :func:`_fill_frame`:
their strokes are as wide as the background opening, and their grey levels are kept."""
SMALL_SIDE = 64
"""Images smaller than this (an 8x8 or 28x28 digit whose ink may touch the edge) are framed
with paper and enlarged to it first, so that the steps below see a paper border."""
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def read_image(
    path: str | os.PathLike[str] | bytes | BinaryIO,
    *,
    max_pixels: int | None = None,
    name: str | None = None,
    max_side: int | None = None,
) -> np.ndarray:
    """Decode one image file, bounded in size.

    The header is read first; a width x height above ``max_pixels`` is refused before any
    pixel is decoded. The EXIF orientation of photographs is applied. Multi-frame files
    (GIF, TIFF) give their first frame.

    Parameters
    ----------
    path
        A PNG, JPEG, BMP, TIFF, GIF or WebP file; or its bytes, or a binary file object
        (an upload, decoded without touching the disk).
    max_pixels
        Largest accepted width x height (default :func:`digitlab.limits.max_pixels`).
    name
        What error messages call the image (default: the path, or ``"image"``).
    max_side
        When given, an image whose longer side is at least twice this is reduced by an integer
        factor (box average, alpha premultiplied) while still 8-bit, to a longer side in
        ``[max_side, 2 * max_side)``: the float arrays made from it later stay small (a
        50 MP RGBA image as float32 channels is gigabytes).

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

    from digitlab import limits

    max_pixels = limits.max_pixels() if max_pixels is None else int(max_pixels)
    source: Path | BinaryIO
    if isinstance(path, bytes | bytearray | memoryview):
        source = io.BytesIO(bytes(path))
    elif isinstance(path, str | os.PathLike):
        source = Path(path)
        if not source.is_file():
            raise DatasetNotFoundError(f"{source}: no such file")
    else:
        source = path
    label = name if name is not None else str(source) if isinstance(source, Path) else "image"
    limit = min(max_pixels, Image.MAX_IMAGE_PIXELS or max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as im:
                if im.format not in _FORMATS:
                    raise DataError(f"{label}: {im.format} images are not supported")
                w, h = im.size
                if w < 1 or h < 1:
                    raise DataError(f"{label}: image is {w}x{h}")
                if w * h > max_pixels:
                    raise DataError(
                        f"{label}: image is {w}x{h} = {w * h:,} pixels, more than the "
                        f"{max_pixels:,} accepted"
                    )
                im.load()
                im = ImageOps.exif_transpose(im) or im
                return _to_uint8(_reduced(im, max_side), label)
    except DataError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise DataError(f"{label}: image has more pixels than the {limit:,} accepted") from None
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, struct.error ...
        msg = " ".join(str(e).split()) or type(e).__name__
        raise DataError(f"{label}: cannot read as an image ({msg})") from None


def _reduced(im: Any, max_side: int | None) -> Any:
    """The Pillow image ``im`` reduced by an integer factor to a longer side below
    ``2 * max_side`` (see :func:`read_image`); unchanged when small enough or no ``max_side``."""
    factor = 0 if max_side is None else max(im.size) // max(1, int(max_side))
    if factor < 2:
        return im
    if im.mode in ("LA", "PA", "RGBA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im if im.mode == "RGBA" else im.convert("RGBA")
        return rgba.convert("RGBa").reduce(factor).convert("RGBA")
    if im.mode not in ("L", "RGB"):
        im = im.convert("RGB") if im.mode not in ("1", "I", "I;16", "F") else im.convert("F")
    return im.reduce(factor)


def _to_uint8(im: object, label: str) -> np.ndarray:
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
            raise DataError(f"{label}: image has non-finite pixel values")
        if mode == "F" and a.max(initial=0.0) <= 1.0:
            a = a * 255.0
        elif a.max(initial=0.0) > 255.0:
            a = a / 257.0  # 16-bit
        return np.rint(np.clip(a, 0, 255)).astype(np.uint8)
    return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()  # type: ignore[attr-defined]


def _float_image(image: np.ndarray, paper: float = 1.0) -> np.ndarray:
    """uint8 or [0, 1] float image (h, w), (h, w, 1|3|4) -> float32 (h, w) or (h, w, 3).

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
    rgb = x[:, :, :3]
    if x.shape[2] == 4:
        alpha = x[:, :, 3:]
        rgb = rgb * alpha + paper * (1.0 - alpha)
    return np.clip(rgb, 0.0, 1.0, dtype=np.float32)


def _grey(image: np.ndarray, paper: float = 1.0) -> np.ndarray:
    """uint8 or [0, 1] float image -> float32 (h, w) luma in [0, 1], alpha over ``paper``."""
    x = _float_image(image, paper)
    return x if x.ndim == 2 else (x @ _LUMA).astype(np.float32)


def _ink_grey(x: np.ndarray) -> np.ndarray:
    """The grey rendering of a colour image (h, w, 3) in which the ink stands out most.

    Luma loses coloured ink on tinted paper (red on grey-green has little luma contrast), so
    luma and each of R, G, B are scored on a thumbnail, with the light's slow variation
    subtracted: the reach of the extremes beyond the border's level, over the border's noise
    (median absolute deviation). Returns float32 (h, w).
    """
    cands = [x @ _LUMA, x[:, :, 0], x[:, :, 1], x[:, :, 2]]
    r, g, b = cands[1:]
    spread = max(np.abs(r - g).max(), np.abs(g - b).max(), np.abs(r - b).max())
    if float(spread) < 0.08:  # grey in all but name
        return cands[0].astype(np.float32)
    H, W = x.shape[:2]
    f = min(1.0, 128 / max(H, W))
    h, w = max(1, round(H * f)), max(1, round(W * f))
    scores = []
    for c in cands:
        t = _resize(c, h, w, box=True) if f < 1 else c
        flat = t - ndimage.gaussian_filter(t, sigma=0.1 * max(h, w), mode="nearest")
        ring = _ring(h, w)
        level = float(np.median(flat[ring]))
        noise = 1.4826 * float(np.median(np.abs(flat[ring] - level))) + 2e-3
        lo, hi = np.percentile(flat, [0.2, 99.8])
        scores.append(max(level - lo, hi - level) / noise)
    return np.ascontiguousarray(cands[int(np.argmax(scores))], dtype=np.float32)


def _ring(h: int, w: int) -> np.ndarray:
    """bool (h, w): the border, 3% of the short side wide (at least one pixel)."""
    r = max(1, round(0.03 * min(h, w)))
    ring = np.ones((h, w), dtype=bool)
    ring[r : h - r, r : w - r] = False
    return ring


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
    step = (hi - lo) / bins
    idx = np.minimum(((values - lo) / step).astype(np.intp), bins - 1)
    hist = np.bincount(idx, minlength=bins)
    edges = lo + step * np.arange(bins + 1)
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


def _ink_is_dark(g: np.ndarray) -> bool:
    """Polarity from the border: is the ink darker than the paper?

    The border's median is the paper's level; the ink lies on the side of it that the image's
    extremes (0.2 and 99.8 percentiles) reach further. That is judged twice, on the image as
    it is and with the slow variation of the light (a blur of a 32-pixel thumbnail)
    subtracted, and the two margins (each in units of the extremes' range) are added: the
    first is decisive on clean images, the second under vignettes and gradients.

    Parameters
    ----------
    g
        float32 (H, W) grey image.
    """
    H, W = g.shape
    f = 32 / max(H, W)
    thumb = _resize(g, max(1, round(H * f)), max(1, round(W * f)), box=True) if f < 1 else g
    thumb = ndimage.gaussian_filter(thumb, sigma=0.1 * max(thumb.shape), mode="nearest")
    ring = _ring(H, W)
    margin = 0.0
    for a in (g, g - _resize(thumb, H, W)):
        paper = float(np.median(a[ring]))
        lo, hi = np.percentile(a, [0.2, 99.8])
        margin += ((paper - lo) - (hi - paper)) / max(hi - lo, 1e-6)
    return margin > 0


THIN, STROKE = 0.05, 0.1
"""Strokes thinner than ``THIN`` of the ink's longer side (a ballpoint on a big digit; 1% of
MNIST's digits) are thickened to ``STROKE`` of it (MNIST's median)."""


def _thicken(levels: np.ndarray, ink: np.ndarray) -> np.ndarray:
    """Thicken thin strokes to MNIST's proportions; others are returned unchanged.

    The stroke width is estimated as twice the ink's area over its outline length (exact for
    long strokes). Thin strokes get a soft-edged band of the missing width on each side, from
    the Euclidean distance to the ink.

    Parameters
    ----------
    levels
        float32 (H, W) in [0, 1], the ink's intensities.
    ink
        bool (H, W), the ink mask (non-empty).
    """
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    side = max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1
    outline = np.count_nonzero(ink[:, 1:] != ink[:, :-1]) + np.count_nonzero(ink[1:] != ink[:-1])
    width = 2.0 * np.count_nonzero(ink) / max(outline, 1)
    if width >= THIN * side:
        return levels
    grow = (STROKE * side - width) / 2
    m = int(np.ceil(grow)) + 2
    H, W = ink.shape
    y0, y1 = max(0, rows[0] - m), min(H, rows[-1] + m + 1)
    x0, x1 = max(0, cols[0] - m), min(W, cols[-1] + m + 1)
    dist = ndimage.distance_transform_edt(~ink[y0:y1, x0:x1])
    out = levels.copy()
    band = np.clip(grow + 0.5 - dist, 0.0, 1.0).astype(np.float32)
    out[y0:y1, x0:x1] = np.maximum(out[y0:y1, x0:x1], band)
    return out


def _framed(x: np.ndarray) -> np.ndarray:
    """A small float image (h, w[, 3]) with a paper border (the border ring's median level,
    a quarter of the longer side wide) added and enlarged to about :data:`SMALL_SIDE`;
    larger images are returned unchanged."""
    H, W = x.shape[:2]
    if max(H, W) >= SMALL_SIDE:
        return x
    pad = max(2, max(H, W) // 4)
    ring = _ring(H, W)
    chans = [x] if x.ndim == 2 else [x[:, :, i] for i in range(x.shape[2])]
    f = max(1, SMALL_SIDE // (max(H, W) + 2 * pad))
    out = []
    for c in chans:
        c = np.pad(c, pad, constant_values=float(np.median(c[ring])))
        out.append(np.clip(_resize(c, c.shape[0] * f, c.shape[1] * f, box=True), 0.0, 1.0))
    return out[0] if x.ndim == 2 else np.stack(out, axis=-1)


def _no_ink(th: int, tw: int, empty: Literal["error", "blank"]) -> np.ndarray:
    """What an image without ink gives: zeros (th, tw) with ``empty="blank"``, else DataError."""
    if empty == "blank":
        return np.zeros((th, tw), dtype=np.float32)
    raise DataError("no ink found: the image is uniform or nothing stands out of the paper's noise")


def _fill_frame(
    g: np.ndarray, th: int, tw: int, empty: Literal["error", "blank"]
) -> np.ndarray:
    """Ink-bright grey (H, W) -> float32 (th, tw): the digit scaled to fill the frame.

    For data whose digits fill their frame with wide strokes and graded levels (scikit-learn's
    8x8 digits): the paper is the border's level, levels are scaled so that the brightest ink
    is 1 (not thresholded), the ink's bounding box is fitted into the whole frame (box
    average) and centred.
    """
    H, W = g.shape
    resid = g - float(np.median(g[_ring(H, W)]))
    top = float(np.percentile(resid, 99.5))
    if top < 0.05:
        return _no_ink(th, tw, empty)
    levels = np.clip(resid / top, 0.0, 1.0).astype(np.float32)
    rows = np.flatnonzero((levels > 0.1).any(axis=1))
    cols = np.flatnonzero((levels > 0.1).any(axis=0))
    crop = levels[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    ch, cw = crop.shape
    s = min(th / ch, tw / cw)
    nh, nw = min(th, max(1, round(ch * s))), min(tw, max(1, round(cw * s)))
    out = np.zeros((th, tw), dtype=np.float32)
    oy, ox = (th - nh) // 2, (tw - nw) // 2
    out[oy : oy + nh, ox : ox + nw] = np.clip(_resize(crop, nh, nw, box=True), 0.0, 1.0)
    return out


def _odd(n: float) -> int:
    k = max(3, int(round(n)))
    return k if k % 2 else k + 1


def to_model_input(
    image: np.ndarray,
    shape: Sequence[int] = (28, 28),
    *,
    empty: Literal["error", "blank"] = "error",
    fit: float = MNIST_FIT,
) -> np.ndarray:
    """Turn an image of any size into an MNIST-style model input (see the module docstring).

    Parameters
    ----------
    image
        uint8 (or float in [0, 1]) array, shape (H, W), (H, W, 3) or (H, W, 4); any polarity.
    shape
        Target (h, w), the model's image shape. The ink is fitted into
        ``round(h * fit) x round(w * fit)``.
    empty
        What an image without ink gives: ``"error"`` raises DataError, ``"blank"`` returns zeros.
    fit
        Fraction of the frame the digit's longer side fills: the training data's convention
        (:data:`MNIST_FIT`; 1.0 for scikit-learn's 8x8 digits, see
        :attr:`digitlab.data.registry.DatasetSpec.fit`).

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
    if not 0.0 < fit <= 1.0:
        raise ShapeError(f"fit must lie in (0, 1], got {fit!r}")
    x = _framed(_float_image(image))
    H, W = x.shape[:2]
    if max(H, W) > WORK_SIDE:  # area-average down: enough detail for a 20x20 box, and fast
        f = WORK_SIDE / max(H, W)
        H, W = max(1, round(H * f)), max(1, round(W * f))
        if x.ndim == 2:
            x = _resize(x, H, W, box=True)
        else:
            x = np.stack([_resize(x[:, :, i], H, W, box=True) for i in range(3)], axis=-1)
    g = x if x.ndim == 2 else _ink_grey(x)

    if _ink_is_dark(g):
        g = 1.0 - g
    if fit >= THICK_FIT:
        return _fill_frame(g, th, tw, empty)

    # background: an opening wider than strokes keeps the paper, gradients and vignettes;
    # the image is extended by point reflection so that light rising towards an edge is
    # continued (a constant extension would leave a bright band along that edge)
    k = _odd(0.3 * min(H, W))
    p = k // 2 + 1
    padded = np.pad(g, p, mode="reflect", reflect_type="odd")
    resid = g - ndimage.grey_opening(padded, size=(k, k), mode="nearest")[p:-p, p:-p]

    # the paper's level and noise, robustly (ink is a minority); Otsu's threshold, but never
    # inside the noise (Otsu splits the noise when the ink is a tiny fraction of the image)
    mu_b = float(np.median(resid))
    sd_b = 1.4826 * float(np.median(np.abs(resid - mu_b)))
    t = max(_otsu(resid.ravel()), mu_b + 4.0 * sd_b)
    ink = resid > t
    labels, n = ndimage.label(ink, structure=np.ones((3, 3), dtype=bool))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    sizes[0] = 0
    hi = float(np.percentile(resid[ink], 30)) if n else 0.0
    # ink: a blob of some size (noise above 4 sigma comes in specks), clearly above the noise
    if sizes.max() < max(4.0, 2e-4 * H * W) or hi - mu_b < max(0.03, 3.0 * sd_b):
        return _no_ink(th, tw, empty)
    lo = min(t, mu_b + 3.0 * sd_b)
    levels = np.clip((resid - lo) / max(hi - lo, 1e-6), 0.0, 1.0)

    # keep the largest ink blob and the blobs of some size near it (a 5's detached bar), or
    # big anywhere; drop specks and paper texture, and everything far from kept ink
    main = int(np.argmax(sizes))
    ys, xs = np.nonzero(labels == main)
    reach = max(ys.max() - ys.min(), xs.max() - xs.min()) // 2 + 1
    window = labels[
        max(0, ys.min() - reach) : ys.max() + reach + 1,
        max(0, xs.min() - reach) : xs.max() + reach + 1,
    ]
    nearby = np.zeros(n + 1, dtype=bool)
    nearby[np.unique(window)] = True
    wanted = (sizes >= max(2.0, 0.08 * sizes[main])) & nearby | (sizes >= 0.4 * sizes[main])
    wanted[0] = False
    keep = wanted[labels]
    near = ndimage.maximum_filter(keep, size=5)  # within 2 pixels of kept ink
    levels = np.where(near, levels, 0.0).astype(np.float32)
    levels = _thicken(levels, keep)

    return _place(levels, th, tw, fit)


def _place(levels: np.ndarray, th: int, tw: int, fit: float) -> np.ndarray:
    """The ink of ``levels`` (H, W) cropped, fitted into ``fit`` of the (th, tw) frame
    (antialiased) and placed with its centre of mass at the frame's centre."""
    rows = np.flatnonzero(levels.any(axis=1))
    cols = np.flatnonzero(levels.any(axis=0))
    crop = levels[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]

    bh, bw = max(1, round(th * fit)), max(1, round(tw * fit))
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
    max_pixels: int | None = None,
    fit: float = MNIST_FIT,
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
    fit
        Passed to :func:`to_model_input`.

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
        img = read_image(f, max_pixels=max_pixels, max_side=None if raw else WORK_SIDE)
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
            out[i] = to_model_input(img, (th, tw), empty=empty, fit=fit)
        except DataError as e:
            raise DataError(f"{f}: {e}") from None
    return [str(f) for f in files], out
