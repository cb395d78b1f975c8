"""Preprocessing: formulas, train-only statistics, bias column, state round trips, memory."""

from __future__ import annotations

import io
import json
import tracemalloc

import numpy as np
import pytest

from digitlab.data.preprocess import Preprocessor
from digitlab.errors import ConfigError, DataError, ShapeError


@pytest.fixture
def images() -> np.ndarray:
    x = np.random.default_rng(0).integers(0, 256, (50, 6, 5), dtype=np.uint8)
    x[:, 0, 0] = 7  # a constant pixel
    x[0, 1, 1], x[1, 1, 1] = 0, 255
    return x


def test_scale01_is_x_over_255(images):
    out = Preprocessor("scale01").fit_transform(images)
    assert out.dtype == np.float32 and out.shape == (50, 30)
    np.testing.assert_array_equal(out, images.reshape(50, -1).astype(np.float32) / np.float32(255))
    assert out.min() == 0.0 and out.max() == 1.0


def test_symmetric_maps_to_minus_one_one(images):
    out = Preprocessor("symmetric").fit_transform(images)
    expected = images.reshape(50, -1).astype(np.float32) / np.float32(127.5) - np.float32(1)
    np.testing.assert_array_equal(out, expected)
    assert out.min() == -1.0 and out.max() == 1.0


def test_none_is_a_float32_copy(images):
    out = Preprocessor("none").transform(images)
    np.testing.assert_array_equal(out, images.reshape(50, -1))
    assert out.dtype == np.float32


def test_standardize_matches_scikit_learn_and_uses_train_stats_only(images):
    from sklearn.preprocessing import StandardScaler

    train, test = images[:40], images[40:]
    pre = Preprocessor("standardize").fit(train)
    ref = StandardScaler().fit(train.reshape(40, -1).astype(np.float64))
    np.testing.assert_allclose(
        pre.transform(train), ref.transform(train.reshape(40, -1)), atol=1e-5
    )
    np.testing.assert_allclose(pre.transform(test), ref.transform(test.reshape(10, -1)), atol=1e-5)
    assert pre.std_[0] == 1.0  # constant pixel: std 0 replaced by 1
    assert np.all(pre.transform(test)[:, 0] == 0.0)  # 7 - 7
    # statistics come from train only: a shifted test set stays shifted
    shifted = pre.transform(np.clip(test.astype(np.int64) + 10, 0, 255).astype(np.uint8))
    assert shifted[:, 1:].mean() > pre.transform(test)[:, 1:].mean()


def test_standardize_float_input_with_constant_float_column():
    x = np.random.default_rng(1).normal(size=(200, 4)).astype(np.float32)
    x[:, 2] = 0.1
    pre = Preprocessor("standardize").fit(x)
    assert pre.std_[2] == 1.0
    out = pre.transform(x)
    np.testing.assert_allclose(out[:, [0, 1, 3]].mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(out[:, [0, 1, 3]].std(0), 1, atol=1e-4)


def test_bias_column_last(images):
    pre = Preprocessor("scale01", bias_column=True)
    out = pre.fit_transform(images)
    assert out.shape == (50, 31) and pre.n_features_out(30) == 31
    assert np.all(out[:, -1] == 1.0)
    np.testing.assert_array_equal(out[:, :-1], Preprocessor("scale01").transform(images))
    assert Preprocessor().n_features_out(784) == 784


@pytest.mark.parametrize("method", ["scale01", "symmetric", "standardize", "none"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bias_column_equals_the_features_without_it_bit_for_bit(method, dtype, monkeypatch):
    """uint8 pixels take a contiguous path with the bias input beside them (2x faster for
    "symmetric"): every feature equals the transform without the bias column, across the
    blocks of rows that path works in, and the bias column is exactly 1."""
    import digitlab.data.preprocess as pp

    monkeypatch.setattr(pp, "_BIAS_BLOCK_ROWS", 16)  # 50 rows: blocks of 16, 16, 16, 2
    x = np.random.default_rng(2).integers(0, 256, (50, 30), dtype=np.uint8)
    x[0], x[1] = 0, 255
    plain = Preprocessor(method).fit(x)
    with_bias = Preprocessor(method, bias_column=True).fit(x)
    expected = plain.transform(x, dtype=dtype)
    out = np.full((50, 31), np.nan, dtype=dtype)
    got = with_bias.transform(x, out=out, dtype=dtype)
    assert got is out
    np.testing.assert_array_equal(got[:, :30], expected)
    assert np.all(got[:, 30] == 1.0)


def test_accepts_flat_features_and_checks_width(images):
    pre = Preprocessor("standardize").fit(images.reshape(50, -1))
    np.testing.assert_array_equal(pre.transform(images), pre.transform(images.reshape(50, -1)))
    with pytest.raises(ShapeError, match="expected 30 features"):
        pre.transform(images[:, :, :4])
    with pytest.raises(ShapeError):
        pre.transform(images[0, 0])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_rejects_nan_and_inf(images, bad):
    x = images.astype(np.float32)
    x[3, 2, 1] = bad
    for method in ("scale01", "standardize"):
        with pytest.raises(DataError, match="NaN or infinite"):
            Preprocessor(method).fit_transform(x)
    clean = Preprocessor("standardize").fit(images)
    with pytest.raises(DataError):
        clean.transform(x)


def test_huge_finite_values_are_not_mistaken_for_inf():
    x = np.full((3, 2), 1e308)
    with np.errstate(over="ignore"):
        out = Preprocessor("none").transform(x)
    assert np.isinf(out).all()  # float32 overflow of valid input, not a rejected input


def test_config_errors(images):
    with pytest.raises(ConfigError, match="unknown preprocessing"):
        Preprocessor("minmax")
    with pytest.raises(ConfigError, match="fit before transform"):
        Preprocessor("standardize").transform(images)
    with pytest.raises(DataError):
        Preprocessor("standardize").fit(images[:0])
    with pytest.raises(DataError, match="dtype"):
        Preprocessor().transform(np.zeros((2, 3), dtype=complex))


def test_state_dict_round_trip_through_npz_and_json(images):
    pre = Preprocessor("standardize", bias_column=True).fit(images[:40])
    state = pre.state_dict()
    arrays = {k: v for k, v in state.items() if isinstance(v, np.ndarray)}
    scalars = {k: v for k, v in state.items() if not isinstance(v, np.ndarray)}
    assert set(arrays) == {"mean", "std"} and arrays["mean"].dtype == np.float32
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as npz:
        restored = {**json.loads(json.dumps(scalars)), **{k: npz[k] for k in npz.files}}
    back = Preprocessor.from_state_dict(restored)
    assert back.method == "standardize" and back.bias_column and back.n_features_in_ == 30
    np.testing.assert_array_equal(back.transform(images), pre.transform(images))


def test_state_dict_everything_in_one_npz(images):
    pre = Preprocessor("symmetric").fit(images)
    buf = io.BytesIO()
    np.savez(buf, **pre.state_dict())
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as npz:
        back = Preprocessor.from_state_dict({k: npz[k] for k in npz.files})
    assert back.method == "symmetric" and back.n_features_in_ == 30 and not back.bias_column


def test_from_state_dict_rejects_broken_states(images):
    state = Preprocessor("standardize").fit(images).state_dict()
    with pytest.raises(ConfigError, match="lacks 'method'"):
        Preprocessor.from_state_dict({k: v for k, v in state.items() if k != "method"})
    with pytest.raises(ConfigError, match="mean/std"):
        Preprocessor.from_state_dict({k: v for k, v in state.items() if k != "std"})
    with pytest.raises(ConfigError, match="std > 0"):
        Preprocessor.from_state_dict({**state, "std": np.zeros(30, np.float32)})
    with pytest.raises(ConfigError, match="unknown preprocessing"):
        Preprocessor.from_state_dict({**state, "method": "zca"})


def test_no_float64_copy_of_the_data():
    x = np.random.default_rng(2).integers(0, 256, (20000, 784), dtype=np.uint8)  # 15.7 MB
    float64_copy = x.size * 8  # 125 MB
    out_size = x.size * 4  # 63 MB
    for method in ("scale01", "symmetric", "standardize"):
        pre = Preprocessor(method)
        tracemalloc.start()
        pre.fit(x)
        _, fit_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        pre.transform(x)
        _, transform_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert fit_peak < float64_copy / 4, method
        assert transform_peak < out_size + float64_copy / 8, method
