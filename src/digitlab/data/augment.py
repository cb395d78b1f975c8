"""Random shift, rotation and elastic distortion of whole batches of images, vectorised.

Each image is shifted by a whole number of pixels along one randomly chosen axis and then
rotated about its centre by a uniform random angle (source 003's augmentation). Optionally it is
also elastically distorted (Simard, Steinkraus & Platt 2003, "Best practices for
convolutional neural networks applied to visual document analysis"): a displacement field of
uniform random values in [-1, 1] per pixel and direction, smoothed by a Gaussian of width
``sigma`` and scaled by ``alpha`` pixels, moves every output pixel's sampling point. All
sample coordinates of the batch (distortion, rotation and shift composed) are built at once
and resampled by a single :func:`scipy.ndimage.map_coordinates` call (bilinear, pixels outside
the image read as ``cval``). Unlike source 003's ``np.roll``, pixels shifted out of the image are
dropped rather than wrapped around.
"""

from __future__ import annotations

import functools
import math
import operator
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from digitlab.errors import ConfigError, ShapeError

__all__ = ["Augmenter", "augment", "elastic", "elastic_fields", "warp"]


def _check_images(images: np.ndarray) -> np.ndarray:
    x = np.asarray(images)
    if x.ndim != 3:
        raise ShapeError(f"images must have shape (n, h, w), got {x.shape}")
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise ShapeError(f"images must be integer or float, got dtype {x.dtype}")
    return x


def _check_params(max_shift: int, max_rotation: float, cval: float) -> int:
    try:
        shift = operator.index(max_shift)
    except TypeError:
        raise ConfigError(
            f"max_shift must be a whole number of pixels, got {max_shift!r}"
        ) from None
    if shift < 0:
        raise ConfigError(f"max_shift must be >= 0, got {shift}")
    if not math.isfinite(max_rotation) or max_rotation < 0:
        raise ConfigError(f"max_rotation must be a finite angle >= 0 degrees, got {max_rotation!r}")
    if not math.isfinite(cval):
        raise ConfigError(f"cval must be finite, got {cval!r}")
    return shift


def _check_elastic(alpha: float, sigma: float) -> None:
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 <= alpha < math.inf:
        raise ConfigError(f"elastic_alpha must be a finite number >= 0 pixels, got {alpha!r}")
    if isinstance(sigma, bool) or not isinstance(sigma, int | float) or not 0 < sigma < math.inf:
        raise ConfigError(f"elastic_sigma must be a finite number > 0 pixels, got {sigma!r}")


def elastic_fields(
    n: int, shape: tuple[int, int], alpha: float, sigma: float, rng: np.random.Generator
) -> np.ndarray:
    """Random smooth displacement fields (Simard et al. 2003), one per image.

    Each of the ``2 * n`` fields is uniform noise in [-1, 1) per pixel, convolved with a
    Gaussian of standard deviation ``sigma`` pixels (zero outside the image, truncated at
    4 sigma) and multiplied by ``alpha``; the whole batch is smoothed by two matrix products.

    Parameters
    ----------
    n : int
        Number of images.
    shape : (h, w)
    alpha : float
        Scale in pixels (>= 0); 0 gives zero fields.
    sigma : float
        Gaussian width in pixels (> 0).
    rng : numpy.random.Generator

    Returns
    -------
    numpy.ndarray
        float32 (n, 2, h, w): row and column displacement of every output pixel.
    """
    _check_elastic(alpha, sigma)
    h, w = shape
    noise = rng.random((n, 2, h, w), dtype=np.float32)
    noise *= 2
    noise -= 1
    # separable smoothing as two matrix products (one GEMM per axis for the whole batch):
    # the same sums as ndimage.gaussian_filter(mode="constant", truncate=4), in float32
    rows = noise.reshape(-1, w) @ (_gaussian_matrix(w, sigma) * np.float32(alpha)).T
    rows = rows.reshape(2 * n, h, w).transpose(0, 2, 1).reshape(-1, h)
    fields = (rows @ _gaussian_matrix(h, sigma).T).reshape(n, 2, w, h)
    return np.ascontiguousarray(fields.transpose(0, 1, 3, 2))


def _gaussian_matrix(size: int, sigma: float) -> np.ndarray:
    """(size, size) float32 matrix of a 1-d Gaussian smoothing, zero outside, 4 sigma wide.

    Row ``i`` holds the normalised weights ``exp(-k^2 / (2 sigma^2))``, ``|k| <= r`` with
    ``r = int(4 sigma + 0.5)`` (scipy.ndimage's kernel), at columns ``i + k`` inside the image.
    """
    radius = int(4.0 * sigma + 0.5)
    k = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (k / sigma) ** 2)
    kernel /= kernel.sum()
    offset = np.arange(size)[None, :] - np.arange(size)[:, None]  # j - i
    inside = np.abs(offset) <= radius
    out = np.zeros((size, size), dtype=np.float64)
    out[inside] = kernel[offset[inside] + radius]
    return out.astype(np.float32)


def warp(
    images: np.ndarray,
    shifts: np.ndarray,
    angles: np.ndarray,
    cval: float = 0.0,
    displacement: np.ndarray | None = None,
) -> np.ndarray:
    """Shift, then rotate, then distort every image by its own amount, with one resampling call.

    Parameters
    ----------
    images
        (n, h, w) pixel values, integer or float.
    shifts
        (n, 2) displacement of the content in pixels, (rows down, columns right).
    angles
        (n,) rotation in degrees about the image centre ``((h-1)/2, (w-1)/2)``,
        counter-clockwise as displayed (row 0 at the top), like ``scipy.ndimage.rotate``.
    cval
        Value of pixels that come from outside the image.
    displacement
        Optional float (n, 2, h, w) elastic displacement (rows, columns) in pixels: output
        pixel ``p`` shows the shifted and rotated image at ``p + displacement[:, :, p]``.

    Returns
    -------
    numpy.ndarray
        float32 (n, h, w).
    """
    x = _check_images(images)
    n, h, w = x.shape
    shifts = np.asarray(shifts, dtype=np.float64)
    angles = np.asarray(angles, dtype=np.float64)
    if shifts.shape != (n, 2) or angles.shape != (n,):
        raise ShapeError(
            f"need shifts (n, 2) and angles (n,) for n={n}, got {shifts.shape}, {angles.shape}"
        )
    if n == 0:
        return np.zeros((0, h, w), dtype=np.float32)
    theta = np.deg2rad(angles)[:, None, None]  # (n, 1, 1), float64 so cos(90 deg) ~ 1e-17
    cos, sin = np.cos(theta).astype(np.float32), np.sin(theta).astype(np.float32)
    cr, cc, dr, dc = _grid(h, w)  # the centre; offsets from it (1, h, 1) and (1, 1, w)
    sh = shifts.astype(np.float32)
    if displacement is not None:
        if np.shape(displacement) != (n, 2, h, w):
            raise ShapeError(f"displacement must be (n, 2, h, w) = {(n, 2, h, w)}, "
                             f"got {np.shape(displacement)}")  # fmt: skip
        disp = np.asarray(displacement, dtype=np.float32)
        dr, dc = dr + disp[:, 0], dc + disp[:, 1]  # (n, h, w): the distorted output grid
    # Output pixel p samples the shifted image at R(-angle)(p - c) + c, i.e. the input at
    # that point minus the shift.
    coords = np.empty((3, n, h, w), dtype=np.float32)
    coords[0] = np.arange(n, dtype=np.float32)[:, None, None]
    coords[1] = cr + dr * cos + dc * sin - sh[:, 0, None, None]
    coords[2] = cc - dr * sin + dc * cos - sh[:, 1, None, None]
    out = np.empty((n, h, w), dtype=np.float32)
    if n == 1:  # single-sample SGD: one image, a 2-D resampling (the same numbers, bit for bit)
        ndimage.map_coordinates(
            x[0], coords[1:, 0], output=out[0], order=1, mode="constant", cval=cval
        )
    else:
        ndimage.map_coordinates(x, coords, output=out, order=1, mode="constant", cval=cval)
    return out


@functools.lru_cache(maxsize=8)
def _grid(h: int, w: int) -> tuple[np.float32, np.float32, np.ndarray, np.ndarray]:
    """The centre ``(row, column)`` of an ``h x w`` image and the read-only float32 row and
    column offsets from it, ``(1, h, 1)`` and ``(1, 1, w)``: made once per image size."""
    cr, cc = np.float32((h - 1) / 2), np.float32((w - 1) / 2)
    dr = (np.arange(h, dtype=np.float32) - cr)[None, :, None]
    dc = (np.arange(w, dtype=np.float32) - cc)[None, None, :]
    dr.flags.writeable = dc.flags.writeable = False
    return cr, cc, dr, dc


def _draw(
    n: int, rng: np.random.Generator, max_shift: int, max_rotation: float
) -> tuple[np.ndarray, np.ndarray]:
    """Random (n, 2) integer shifts along one axis each and (n,) angles in degrees.

    For one image (single-sample SGD) the four values are drawn as scalars: the same numbers
    from the same stream as :func:`_draw_arrays` (a generator's scalar and size-1 draws agree:
    tests/test_data_augment.py) at a quarter of the time (8 against 31 us).
    """
    if n != 1:
        return _draw_arrays(n, rng, max_shift, max_rotation)
    magnitude = rng.integers(0, max_shift + 1)  # in the order of _draw_arrays's draws
    sign = rng.integers(0, 2) * 2 - 1
    axis = rng.integers(0, 2)
    angle = rng.uniform(-max_rotation, max_rotation)
    shifts = np.zeros((1, 2), dtype=np.int64)
    shifts[0, axis] = magnitude * sign
    return shifts, np.array([angle])


def _draw_arrays(
    n: int, rng: np.random.Generator, max_shift: int, max_rotation: float
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_draw` of ``n`` images by array draws."""
    magnitude = rng.integers(0, max_shift + 1, size=n)
    sign = rng.integers(0, 2, size=n) * 2 - 1
    axis = rng.integers(0, 2, size=n)
    angles = rng.uniform(-max_rotation, max_rotation, size=n)
    shifts = np.zeros((n, 2), dtype=np.int64)
    shifts[np.arange(n), axis] = magnitude * sign
    return shifts, angles


def augment(
    images: np.ndarray,
    rng: np.random.Generator,
    max_shift: int = 3,
    max_rotation: float = 10.0,
    cval: float = 0.0,
    elastic_alpha: float = 0.0,
    elastic_sigma: float = 4.0,
) -> np.ndarray:
    """Randomly shift, rotate and (optionally) elastically distort each image, in pixel space.

    Each image gets a shift of ``k`` pixels, ``k`` uniform in ``0..max_shift``, with a random
    sign, along one axis (rows or columns, equally likely), then a rotation by an angle
    uniform in ``[-max_rotation, max_rotation]`` degrees about its centre (source 003), then,
    when ``elastic_alpha > 0``, an elastic distortion (:func:`elastic_fields`). The shifts and
    angles are drawn first, so ``elastic_alpha=0`` draws exactly what it always did.

    Parameters
    ----------
    images
        (n, h, w) pixel values, uint8 or float (before preprocessing).
    rng
        Source of all randomness.
    max_shift
        Largest shift in pixels (>= 0).
    max_rotation
        Largest rotation in degrees (>= 0).
    cval
        Value of pixels that enter from outside the image (background).
    elastic_alpha
        Elastic distortion scale in pixels (0: none; Simard et al. use 34 on 28x28 digits).
    elastic_sigma
        Width in pixels of the Gaussian that smooths the displacement fields (> 0; 4).

    Returns
    -------
    numpy.ndarray
        float32 (n, h, w).
    """
    shift = _check_params(max_shift, max_rotation, cval)
    _check_elastic(elastic_alpha, elastic_sigma)
    x = _check_images(images)
    if not isinstance(rng, np.random.Generator):
        raise ConfigError(f"augment needs rng=numpy.random.Generator, got {type(rng).__name__}")
    shifts, angles = _draw(len(x), rng, shift, float(max_rotation))
    fields = None
    if elastic_alpha > 0:
        fields = elastic_fields(len(x), x.shape[1:], elastic_alpha, elastic_sigma, rng)
    return warp(x, shifts, angles, cval, fields)


def elastic(
    images: np.ndarray,
    rng: np.random.Generator,
    alpha: float = 34.0,
    sigma: float = 4.0,
    cval: float = 0.0,
) -> np.ndarray:
    """Elastically distort each image (Simard et al. 2003) and nothing else.

    Parameters
    ----------
    images
        (n, h, w) pixel values, uint8 or float.
    rng
        Source of the displacement fields.
    alpha, sigma
        See :func:`elastic_fields`.
    cval
        Background value.

    Returns
    -------
    numpy.ndarray
        float32 (n, h, w).
    """
    x = _check_images(images)
    if not isinstance(rng, np.random.Generator):
        raise ConfigError(f"elastic needs rng=numpy.random.Generator, got {type(rng).__name__}")
    if not math.isfinite(cval):
        raise ConfigError(f"cval must be finite, got {cval!r}")
    fields = elastic_fields(len(x), x.shape[1:], alpha, sigma, rng)
    n = len(x)
    return warp(x, np.zeros((n, 2)), np.zeros(n), cval, fields)


@dataclass(frozen=True)
class Augmenter:
    """:func:`augment` with its settings fixed, callable as ``augmenter(images, rng)``.

    Attributes
    ----------
    max_shift
        Largest shift in pixels.
    max_rotation
        Largest rotation in degrees.
    cval
        Background value.
    elastic_alpha
        Elastic distortion scale in pixels (0: none).
    elastic_sigma
        Gaussian width of the elastic displacement fields in pixels.
    """

    max_shift: int = 3
    max_rotation: float = 10.0
    cval: float = 0.0
    elastic_alpha: float = 0.0
    elastic_sigma: float = 4.0

    def __post_init__(self) -> None:
        _check_params(self.max_shift, self.max_rotation, self.cval)
        _check_elastic(self.elastic_alpha, self.elastic_sigma)

    def __call__(self, images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Augment a batch: (n, h, w) in, float32 (n, h, w) out."""
        return augment(
            images, rng, self.max_shift, self.max_rotation, self.cval,
            self.elastic_alpha, self.elastic_sigma,
        )  # fmt: skip
