"""Splits: first/last/random subsets, hold-out, binary filters, one-hot, make_splits."""

from __future__ import annotations

import numpy as np
import pytest

from digitlab.data.registry import Dataset
from digitlab.data.splits import (
    SEED_SPLIT,
    Splits,
    filter_classes,
    first,
    holdout,
    last,
    make_splits,
    one_hot,
    random_subset,
)
from digitlab.errors import ConfigError, DataError, ShapeError


def xy(n: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """x[i] is a 2x2 image filled with i (mod 256), y[i] = i % 10: pairs stay checkable."""
    x = np.broadcast_to((np.arange(n) % 256).astype(np.uint8)[:, None, None], (n, 2, 2)).copy()
    return x, np.arange(n, dtype=np.int64) % 10


def paired(x: np.ndarray, y: np.ndarray) -> bool:
    return bool(np.all(x[:, 0, 0].astype(np.int64) % 10 == y))


def dataset(n_train: int, n_test: int) -> Dataset:
    xt, yt = xy(n_train)
    xs, ys = xy(n_test)
    return Dataset("toy", xt, yt, xs, ys, tuple("0123456789"), "test", False)


def test_first_and_last_are_views_of_the_ends():
    x, y = xy()
    fx, fy = first(x, y, 3)
    lx, ly = last(x, y, 4)
    assert fy.tolist() == [0, 1, 2] and ly.tolist() == [6, 7, 8, 9]
    assert lx[:, 0, 0].tolist() == [16, 17, 18, 19]
    assert np.shares_memory(fx, x) and np.shares_memory(ly, y)
    assert len(last(x, y, 0)[0]) == 0 and len(first(x, y, 20)[0]) == 20


@pytest.mark.parametrize("n", [-1, 21, 2.5])
def test_first_last_reject_bad_n(n):
    x, y = xy()
    with pytest.raises(ConfigError):
        first(x, y, n)
    with pytest.raises(ConfigError):
        last(x, y, n)


def test_mismatched_lengths():
    x, y = xy()
    with pytest.raises(ShapeError):
        first(x, y[:-1], 2)


def test_random_subset_distinct_paired_reproducible():
    x, y = xy(100)
    a = random_subset(x, y, 30, np.random.default_rng(5))
    b = random_subset(x, y, 30, np.random.default_rng(5))
    c = random_subset(x, y, 30, np.random.default_rng(6))
    assert len(np.unique(a[0][:, 0, 0])) == 30 and paired(*a)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], c[0])
    with pytest.raises(ConfigError):
        random_subset(x, y, 101, np.random.default_rng(0))
    with pytest.raises(ConfigError, match="Generator"):
        random_subset(x, y, 3, 42)


def test_holdout_front_takes_the_first_examples():
    x, y = xy(20)
    (xt, yt), (xv, yv) = holdout(x, y, 0.1)
    assert xv[:, 0, 0].tolist() == [0, 1] and xt[:, 0, 0].tolist() == list(range(2, 20))
    (xt, _), (xv, _) = holdout(x, y, 0.0)
    assert len(xv) == 0 and len(xt) == 20


def test_holdout_random_partitions_the_data():
    x, y = xy(50)
    (xt, yt), (xv, yv) = holdout(x, y, 0.2, mode="random", rng=np.random.default_rng(0))
    assert len(xv) == 10 and len(xt) == 40
    ids = np.concatenate([xt[:, 0, 0], xv[:, 0, 0]])
    assert sorted(ids.tolist()) == list(range(50))
    assert xv[:, 0, 0].tolist() != list(range(10))
    assert paired(xt, yt) and paired(xv, yv)


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5, float("nan"), "0.1"])
def test_holdout_rejects_bad_fraction(fraction):
    x, y = xy()
    with pytest.raises(ConfigError):
        holdout(x, y, fraction)


def test_holdout_rejects_bad_mode_and_missing_rng():
    x, y = xy()
    with pytest.raises(ConfigError, match="mode"):
        holdout(x, y, 0.1, mode="back")
    with pytest.raises(ConfigError, match="Generator"):
        holdout(x, y, 0.1, mode="random")
    with pytest.raises(ConfigError, match="leaves none"):
        holdout(x[:2], y[:2], 0.9)


def test_filter_classes_keeps_order_positive_is_one():
    x, y = xy(30)
    x2, y01 = filter_classes(x, y, positive=3, negative=8)
    assert x2[:, 0, 0].tolist() == [3, 8, 13, 18, 23, 28]
    assert y01.tolist() == [1, 0, 1, 0, 1, 0] and y01.dtype == np.int64
    with pytest.raises(ConfigError, match="differ"):
        filter_classes(x, y, 2, 2)
    with pytest.raises(ConfigError, match="no examples"):
        filter_classes(x, y, 2, 11)


def test_one_hot():
    out = one_hot(np.array([2, 0, 1]), 4)
    assert out.dtype == np.float32 and out.shape == (3, 4)
    np.testing.assert_array_equal(out, [[0, 0, 1, 0], [1, 0, 0, 0], [0, 1, 0, 0]])
    assert one_hot(np.array([1]), 2, dtype=np.float64).dtype == np.float64
    assert one_hot(np.array([], dtype=np.int64), 3).shape == (0, 3)
    with pytest.raises(DataError):
        one_hot(np.array([0, 3]), 3)
    with pytest.raises(ShapeError):
        one_hot(np.array([[0]]), 3)


def test_seed_split_constant():
    assert dict(SEED_SPLIT) == {
        "n_train": 20000,
        "n_test": 2000,
        "train_from": "first",
        "test_from": "last",
        "holdout": 0.1,
        "holdout_mode": "front",
    }
    with pytest.raises(TypeError):
        SEED_SPLIT["n_train"] = 5  # type: ignore[index]


def test_seed_split_on_a_dataset_of_mnist_size():
    ds = dataset(25000, 3000)
    s = make_splits(ds, **SEED_SPLIT)
    assert isinstance(s, Splits) and s.n_classes == 10
    assert (len(s.train[1]), len(s.val[1]), len(s.test[1])) == (18000, 2000, 2000)
    np.testing.assert_array_equal(s.val[0], ds.x_train[:2000])
    np.testing.assert_array_equal(s.train[0], ds.x_train[2000:20000])
    np.testing.assert_array_equal(s.test[0], ds.x_test[1000:])
    assert "train=18000" in repr(s)


def test_binary_filter_applies_after_first_and_last():
    ds = dataset(100, 50)
    s = make_splits(ds, n_train=40, n_test=20, classes=(2, 3), holdout=0.25)
    # first 40 train images hold 4 twos and 4 threes; the first 25% of those 8 is held out
    assert s.val[0][:, 0, 0].tolist() == [2, 3]
    assert s.train[0][:, 0, 0].tolist() == [12, 13, 22, 23, 32, 33]
    assert s.train[1].tolist() == [1, 0, 1, 0, 1, 0]
    # last 20 test images (ids 30..49) filtered to 2s and 3s
    assert s.test[0][:, 0, 0].tolist() == [32, 33, 42, 43]
    assert s.classes == ("3", "2")  # label 0 = negative, 1 = positive


def test_make_splits_defaults_and_random_parts():
    ds = dataset(30, 10)
    s = make_splits(ds)
    assert s.val is None and len(s.train[0]) == 30 and len(s.test[0]) == 10
    r1 = make_splits(ds, n_train=10, train_from="random", rng=np.random.default_rng(1))
    r2 = make_splits(ds, n_train=10, train_from="random", rng=np.random.default_rng(1))
    np.testing.assert_array_equal(r1.train[0], r2.train[0])
    assert paired(*r1.train)
    last_train = make_splits(ds, n_train=5, train_from="last")
    assert last_train.train[0][:, 0, 0].tolist() == [25, 26, 27, 28, 29]


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"n_train": 31}, "n_train=31 but toy has only 30"),
        ({"n_test": 11}, "n_test=11 but toy has only 10"),
        ({"train_from": "middle", "n_train": 3}, "first', 'last' or 'random"),
        ({"n_train": 3, "train_from": "random"}, "Generator"),
        ({"holdout": 1.0}, r"\[0, 1\)"),
        ({"holdout": 0.1, "holdout_mode": "back"}, "mode"),
        ({"holdout_mode": "back"}, "mode"),
        ({"classes": (2, 10)}, "class 10"),
        ({"classes": (2,)}, "positive, negative"),
    ],
)
def test_make_splits_errors(kwargs, fragment):
    with pytest.raises(ConfigError, match=fragment):
        make_splits(dataset(30, 10), **kwargs)
