"""Augmentation: identities, exact shifts, rotations checked against scipy and np.rot90, and
elastic distortions (determinism, identity at alpha 0, field statistics, mass)."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
from scipy import ndimage

from digitlab.data.augment import Augmenter, _draw, augment, elastic, elastic_fields, warp
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


# ------------------------------------------------------------------------- elastic distortions
def test_elastic_is_deterministic_from_the_seed_with_float32_shapes():
    x = np.random.default_rng(0).integers(0, 256, (8, 28, 28), dtype=np.uint8)
    a = elastic(x, np.random.default_rng(5))
    b = elastic(x, np.random.default_rng(5))
    c = elastic(x, np.random.default_rng(6))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.dtype == np.float32 and a.shape == (8, 28, 28)
    f = elastic_fields(3, (10, 7), 34.0, 4.0, np.random.default_rng(0))
    assert f.dtype == np.float32 and f.shape == (3, 2, 10, 7)
    assert elastic(np.zeros((0, 28, 28), np.uint8), np.random.default_rng(0)).shape == (0, 28, 28)


def test_zero_alpha_is_the_identity_and_draws_nothing_more():
    x = np.random.default_rng(0).integers(0, 256, (6, 28, 28), dtype=np.uint8)
    assert not elastic_fields(6, (28, 28), 0.0, 4.0, np.random.default_rng(0)).any()
    np.testing.assert_array_equal(elastic(x, np.random.default_rng(1), alpha=0.0), x)
    np.testing.assert_array_equal(augment(x, np.random.default_rng(1), 0, 0.0, elastic_alpha=0), x)
    # shifts and rotations draw the same stream as before elastic distortions existed
    np.testing.assert_array_equal(
        augment(x, np.random.default_rng(2), 3, 10.0, elastic_alpha=0.0),
        augment(x, np.random.default_rng(2), 3, 10.0),
    )


def test_a_constant_displacement_is_a_shift():
    x = pattern()[None].repeat(2, axis=0)
    disp = np.zeros((2, 2, 28, 28), np.float32)
    disp[:, 0] = 2.0  # every output pixel reads two rows further down: content moves up 2
    moved = warp(x, np.zeros((2, 2)), np.zeros(2), displacement=disp)
    np.testing.assert_array_equal(moved, warp(x, np.array([[-2, 0], [-2, 0]]), np.zeros(2)))
    with pytest.raises(ShapeError, match="displacement"):
        warp(x, np.zeros((2, 2)), np.zeros(2), displacement=disp[:, :, :5])


def test_displacement_fields_are_centred_smooth_and_of_the_expected_size():
    alpha, sigma = 34.0, 4.0
    f = elastic_fields(400, (28, 28), alpha, sigma, np.random.default_rng(0)).astype(np.float64)
    inner = f[:, :, 10:18, 10:18]  # away from the zero padding of the filter
    # uniform noise has variance 1/3; a unit-sum 2-d Gaussian of width sigma keeps a fraction
    # 1 / (4 pi sigma^2) of it
    expected_std = alpha * np.sqrt(1 / 3 / (4 * np.pi * sigma**2))
    assert inner.std() == pytest.approx(expected_std, rel=0.15)
    assert abs(inner.mean()) < 0.05 * expected_std

    def corr(a, b):
        return np.corrcoef(a.ravel(), b.ravel())[0, 1]

    near = corr(f[:, :, 10:18, 10:18], f[:, :, 10:18, 11:19])  # horizontal neighbours
    far = corr(f[:, :, 4:12, 4:12], f[:, :, 16:24, 16:24])  # 12 pixels apart both ways
    assert near > 0.95 and abs(far) < 0.1
    assert abs(corr(f[:, 0], f[:, 1])) < 0.05  # row and column fields independent
    raw = np.random.default_rng(0).random((400, 28, 28))
    assert abs(corr(raw[:, :, :-1], raw[:, :, 1:])) < 0.05  # the noise before smoothing


@pytest.mark.parametrize(("shape", "sigma"), [((28, 28), 4.0), ((10, 7), 4.0), ((5, 40), 0.7)])
def test_displacement_fields_are_the_gaussian_filter_of_the_noise(shape, sigma):
    # the two matrix products compute scipy's zero-padded, 4-sigma Gaussian filter
    from scipy import ndimage

    f = elastic_fields(30, shape, 2.5, sigma, np.random.default_rng(3))
    noise = np.random.default_rng(3).random((30, 2, *shape), dtype=np.float32) * 2 - 1
    ref = 2.5 * ndimage.gaussian_filter(
        noise.astype(np.float64), sigma=(0, 0, sigma, sigma), mode="constant", cval=0.0
    )
    assert f.shape == (30, 2, *shape) and f.dtype == np.float32 and f.flags.c_contiguous
    np.testing.assert_allclose(f, ref, rtol=0, atol=1e-6 * np.abs(ref).max())


def test_elastic_keeps_the_ink_roughly_and_moves_it():
    x = np.zeros((64, 28, 28), np.uint8)
    rng = np.random.default_rng(0)
    for i in range(64):  # blobs of ink well inside the frame
        r, c = rng.integers(8, 16, size=2)
        x[i, r : r + 5, c : c + 4] = 255
    out = elastic(x, np.random.default_rng(1), alpha=34.0, sigma=4.0)
    ratio = out.sum(axis=(1, 2)) / x.sum(axis=(1, 2), dtype=np.float64)
    # a small blob is locally stretched or squeezed (ratios ~0.5-1.7), but not on the whole
    assert out.sum() / x.sum(dtype=np.float64) == pytest.approx(1.0, abs=0.1)
    assert 0.85 < np.median(ratio) < 1.15 and 0.3 < ratio.min() and ratio.max() < 2.0
    assert np.abs(out - x).mean() > 5  # it did move pixels


def test_elastic_composes_with_shift_and_rotation_in_one_resampling_call(monkeypatch):
    calls = []
    original = ndimage.map_coordinates

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return original(*args, **kwargs)

    module = importlib.import_module("digitlab.data.augment")
    monkeypatch.setattr(module.ndimage, "map_coordinates", counting)
    x = np.random.default_rng(0).integers(0, 256, (32, 28, 28), dtype=np.uint8)
    plain = augment(x, np.random.default_rng(3), 2, 10.0)
    distorted = Augmenter(2, 10.0, elastic_alpha=34.0)(x, np.random.default_rng(3))
    assert calls == [(32, 28, 28), (32, 28, 28)]
    assert not np.array_equal(plain, distorted)


def test_elastic_parameters_are_validated():
    x = np.zeros((2, 28, 28), np.uint8)
    for bad in ({"elastic_alpha": -1.0}, {"elastic_alpha": float("nan")},
                {"elastic_sigma": 0.0}, {"elastic_sigma": float("inf")},
                {"elastic_alpha": True}):  # fmt: skip
        with pytest.raises(ConfigError, match="elastic"):
            Augmenter(**bad)
    with pytest.raises(ConfigError, match="elastic_sigma"):
        elastic(x, np.random.default_rng(0), sigma=-2.0)
    with pytest.raises(ConfigError, match="Generator"):
        elastic(x, 0)


def test_elastic_keeps_the_ink_of_real_digits():
    from digitlab.data import load

    x = load("mnist-5k").x_train[:256]
    out = elastic(x, np.random.default_rng(0), alpha=34.0, sigma=4.0)
    ratio = out.sum(axis=(1, 2)) / x.sum(axis=(1, 2), dtype=np.float64)
    assert out.sum() / x.sum(dtype=np.float64) == pytest.approx(1.0, abs=0.05)
    assert 0.9 < np.median(ratio) < 1.1


def test_one_image_warps_bit_for_bit_as_it_does_inside_a_batch():
    """Single-sample SGD warps one image through a 2-D resampling (no batch axis): the same
    numbers as the batched 3-D path, to the bit."""
    from digitlab.data.augment import warp

    rng = np.random.default_rng(7)
    images = rng.integers(0, 256, (50, 28, 28)).astype(np.float32)
    shifts = rng.integers(-3, 4, (50, 2))
    angles = rng.uniform(-10, 10, 50)
    batch = warp(images, shifts, angles)
    for i in range(50):
        one = warp(images[i : i + 1], shifts[i : i + 1], angles[i : i + 1])
        assert one.shape == (1, 28, 28) and one.dtype == np.float32
        np.testing.assert_array_equal(one[0], batch[i])
    assert not np.array_equal(batch[0], images[0])  # something moved


@pytest.mark.parametrize("max_shift, max_rotation", [(3, 10.0), (0, 0.0), (7, 45.0), (1, 180.0)])
def test_one_image_draws_the_numbers_a_batch_of_one_would(max_shift, max_rotation):
    """``_draw`` for one image uses scalar draws (a quarter of the time): the same shift, angle
    and generator state after, step after step, as the size-1 array draws it replaces."""
    from digitlab.data.augment import _draw_arrays

    for seed in range(20):
        fast, slow = np.random.default_rng(seed), np.random.default_rng(seed)
        for _ in range(200):
            shifts, angles = _draw(1, fast, max_shift, max_rotation)
            want_shifts, want_angles = _draw_arrays(1, slow, max_shift, max_rotation)
            assert shifts.dtype == want_shifts.dtype and angles.dtype == want_angles.dtype
            np.testing.assert_array_equal(shifts, want_shifts)
            np.testing.assert_array_equal(angles, want_angles)
        assert fast.bit_generator.state == slow.bit_generator.state
    rng = np.random.default_rng(0)
    drawn = np.concatenate([_draw(1, rng, 3, 10.0)[0] for _ in range(2000)])
    assert set(np.abs(drawn).max(axis=1)) == {0, 1, 2, 3}  # every magnitude, both axes
    assert (drawn[:, 0] != 0).any() and (drawn[:, 1] != 0).any() and (drawn < 0).any()
