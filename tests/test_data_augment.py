"""Augmentation: identities, exact shifts, rotations checked against scipy and np.rot90."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
from scipy import ndimage

from digitlab.data.augment import Augmenter, _draw, augment, warp
from digitlab.errors import ConfigError, ShapeError


def lit_pixel(n: int, r: int = 14, c: int = 14, size: int = 28) -> np.ndarray:
    x = np.zeros((n, size, size), dtype=np.uint8)
    x[:, r, c] = 200
    return x


def pattern() -> np.ndarray:
    """An asymmetric 28x28 stroke pattern (an 'L' plus a dot)."""
    x = np.zeros((28, 28), dtype=np.uint8)
    x[5:20, 8] = 255
    x[19, 8:18] = 180
    x[4, 22] = 90
    return x


def test_zero_shift_and_rotation_is_identity():
    x = np.random.default_rng(0).integers(0, 256, (10, 28, 28), dtype=np.uint8)
    out = augment(x, np.random.default_rng(1), max_shift=0, max_rotation=0.0)
    assert out.dtype == np.float32 and out.shape == x.shape
    np.testing.assert_array_equal(out, x)
    xf = x.astype(np.float64) / 7
    np.testing.assert_allclose(augment(xf, np.random.default_rng(1), 0, 0.0), xf, rtol=1e-6)


def test_pure_shift_moves_the_lit_pixel_by_the_drawn_amount():
    n = 200
    out = augment(lit_pixel(n), np.random.default_rng(3), max_shift=3, max_rotation=0.0)
    shifts, _ = _draw(n, np.random.default_rng(3), 3, 0.0)
    assert np.all(np.count_nonzero(out, axis=(1, 2)) == 1)  # integer shifts stay crisp
    flat = out.reshape(n, -1).argmax(axis=1)
    rows, cols = np.divmod(flat, 28)
    np.testing.assert_array_equal(rows - 14, shifts[:, 0])
    np.testing.assert_array_equal(cols - 14, shifts[:, 1])
    assert np.all(out.reshape(n, -1).max(axis=1) == 200)
    moved = (rows != 14).astype(int) + (cols != 14).astype(int)
    assert moved.max() == 1  # along one axis only
    assert set(np.abs(shifts).max(axis=1).tolist()) == {0, 1, 2, 3}
    assert (shifts < 0).any() and (shifts > 0).any()
    assert (shifts[:, 0] != 0).any() and (shifts[:, 1] != 0).any()


def test_shift_direction_and_fill():
    x = lit_pixel(1, r=27, c=0)
    down = warp(x, np.array([[2, 0]]), np.zeros(1))
    assert down.max() == 0  # moved off the bottom edge: dropped, not wrapped
    right = warp(x, np.array([[0, 3]]), np.zeros(1), cval=5.0)
    assert right[0, 27, 3] == 200 and right[0, 27, 0] == 5.0  # background enters as cval
    assert right[0, 0, 10] == 0.0  # old background is kept


def test_rotation_by_90_degrees_is_rot90():
    x = np.stack([pattern(), pattern().T])
    out = warp(x, np.zeros((2, 2)), np.array([90.0, -90.0]))
    np.testing.assert_allclose(out[0], np.rot90(x[0]), atol=1e-5)  # counter-clockwise
    np.testing.assert_allclose(out[1], np.rot90(x[1], k=-1), atol=1e-5)


def test_rotation_matches_scipy_rotate():
    x = np.stack([pattern()] * 3).astype(np.float32)
    angles = np.array([7.0, -10.0, 33.0])
    out = warp(x, np.zeros((3, 2)), angles)
    for img, a, got in zip(x, angles, out, strict=True):
        ref = ndimage.rotate(img, a, reshape=False, order=1, mode="constant")
        np.testing.assert_allclose(got, ref, atol=1e-3)


def test_random_rotation_uses_the_drawn_angles():
    x = np.stack([pattern()] * 20)
    out = augment(x, np.random.default_rng(9), max_shift=0, max_rotation=90.0)
    _, angles = _draw(20, np.random.default_rng(9), 0, 90.0)
    assert np.abs(angles).max() <= 90 and np.abs(angles).max() > 45
    for img, a, got in zip(x.astype(np.float32), angles, out, strict=True):
        ref = ndimage.rotate(img, a, reshape=False, order=1, mode="constant")
        np.testing.assert_allclose(got, ref, atol=1e-3)


def test_shift_then_rotate_order():
    x = lit_pixel(1, r=14, c=20)  # 6.5 px right of the centre column 13.5
    out = warp(x, np.array([[0, 2]]), np.array([90.0]))  # moved to col 22, then rotated up
    r, c = np.unravel_index(out[0].argmax(), out[0].shape)
    assert (r, c) == (5, 14)


def test_same_seed_same_output_and_input_untouched():
    x = np.random.default_rng(0).integers(0, 256, (16, 28, 28), dtype=np.uint8)
    before = x.copy()
    a = augment(x, np.random.default_rng(42))
    b = augment(x, np.random.default_rng(42))
    c = augment(x, np.random.default_rng(43))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(x, before)
    assert a.dtype == np.float32 and a.shape == (16, 28, 28)


def test_one_resampling_call_per_batch(monkeypatch):
    calls = []
    original = ndimage.map_coordinates

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return original(*args, **kwargs)

    module = importlib.import_module("digitlab.data.augment")  # the package exports a function
    monkeypatch.setattr(module.ndimage, "map_coordinates", counting)
    augment(np.zeros((64, 28, 28), np.uint8), np.random.default_rng(0))
    assert calls == [(64, 28, 28)]


def test_empty_batch_and_non_square_images():
    assert augment(np.zeros((0, 28, 28), np.uint8), np.random.default_rng(0)).shape == (0, 28, 28)
    x = np.zeros((2, 10, 6), np.uint8)
    x[:, 4, 2] = 9
    out = augment(x, np.random.default_rng(0), max_shift=1, max_rotation=0.0)
    assert out.shape == (2, 10, 6) and np.all(out.sum(axis=(1, 2)) == 9)


def test_augmenter_validates_and_delegates():
    aug = Augmenter(max_shift=2, max_rotation=5.0)
    x = np.random.default_rng(0).integers(0, 256, (4, 28, 28), dtype=np.uint8)
    np.testing.assert_array_equal(
        aug(x, np.random.default_rng(7)), augment(x, np.random.default_rng(7), 2, 5.0)
    )
    for bad in ({"max_shift": -1}, {"max_shift": 1.5}, {"max_rotation": -3.0}):
        with pytest.raises(ConfigError):
            Augmenter(**bad)
    with pytest.raises(ConfigError):
        Augmenter(max_rotation=float("nan"))
    with pytest.raises(ConfigError):
        augment(x, np.random.default_rng(0), max_shift=-2)
    with pytest.raises(ConfigError, match="Generator"):
        augment(x, 0)
    with pytest.raises(ShapeError):
        augment(x[0], np.random.default_rng(0))
    with pytest.raises(AttributeError):
        aug.max_shift = 4  # type: ignore[misc]
