"""Explicit, reproducible splits: first/last/random n, hold-out sets, binary class filters.

``x`` is any array whose first axis indexes examples (images (n, h, w) or features (n, d));
``y`` is the matching label array (n,). Slicing functions return views where they can.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np

from digitlab.errors import ConfigError, DataError, ShapeError

if TYPE_CHECKING:
    from digitlab.data.registry import Dataset

__all__ = [
    "HOLDOUT_MODES",
    "SEED_SPLIT",
    "Splits",
    "filter_classes",
    "first",
    "holdout",
    "last",
    "make_splits",
    "one_hot",
    "random_subset",
]

XY = tuple[np.ndarray, np.ndarray]

#: The split of the source reports (sources 000/001): the first 20,000 training images, the
#: last 2,000 test images, and the first 10% of the training part held out for validation.
#: How ``holdout`` picks the validation examples: name -> meaning.
HOLDOUT_MODES: dict[str, str] = {
    "front": "the first examples, the rest kept in order",
    "random": "a random subset (seeded), the rest in permuted order",
}

#: ``make_splits(load("mnist"), **SEED_SPLIT)`` gives 18,000 / 2,000 / 2,000.
SEED_SPLIT: Mapping[str, Any] = MappingProxyType(
    {
        "n_train": 20000,
        "n_test": 2000,
        "train_from": "first",
        "test_from": "last",
        "holdout": 0.1,
        "holdout_mode": "front",
    }
)


def _check_xy(x: np.ndarray, y: np.ndarray) -> int:
    if np.ndim(x) < 1 or np.ndim(y) != 1 or len(x) != len(y):
        raise ShapeError(
            f"x and y must have the same length, y 1-d; got {np.shape(x)} and {np.shape(y)}"
        )
    return len(y)


def _check_n(n: int, available: int, what: str = "n") -> int:
    try:
        n = operator.index(n)
    except TypeError:
        raise ConfigError(f"{what} must be an integer, got {n!r}") from None
    if n < 0 or n > available:
        raise ConfigError(f"{what}={n} is outside 0..{available} (examples available)")
    return n


def first(x: np.ndarray, y: np.ndarray, n: int) -> XY:
    """The first ``n`` examples: ``x[:n]`` (n, ...) and ``y[:n]`` (n,), as views."""
    n = _check_n(n, _check_xy(x, y))
    return x[:n], y[:n]


def last(x: np.ndarray, y: np.ndarray, n: int) -> XY:
    """The last ``n`` examples: ``x[-n:]`` (n, ...) and ``y[-n:]`` (n,), as views."""
    total = _check_xy(x, y)
    n = _check_n(n, total)
    return x[total - n :], y[total - n :]


def random_subset(x: np.ndarray, y: np.ndarray, n: int, rng: np.random.Generator) -> XY:
    """``n`` distinct examples drawn at random, in the random order drawn.

    Returns
    -------
    x_sub : numpy.ndarray
        (n, ...) copy.
    y_sub : numpy.ndarray
        (n,) copy.
    """
    total = _check_xy(x, y)
    n = _check_n(n, total)
    _check_rng(rng, "random_subset")
    idx = rng.permutation(total)[:n]
    return x[idx], y[idx]


def _check_rng(rng: object, what: str) -> None:
    if not isinstance(rng, np.random.Generator):
        raise ConfigError(f"{what} needs rng=numpy.random.Generator, got {type(rng).__name__}")


def holdout(
    x: np.ndarray,
    y: np.ndarray,
    fraction: float,
    mode: str = "front",
    rng: np.random.Generator | None = None,
) -> tuple[XY, XY]:
    """Split off ``round(fraction * n)`` examples as a validation set.

    ``mode="front"`` holds out the first examples (as the reports do), keeping the rest in
    order; ``mode="random"`` permutes with ``rng`` and holds out the first of the permuted
    examples, the rest staying in permuted order (source 003's protocol).

    Returns
    -------
    (x_train, y_train), (x_val, y_val)
        (n - m, ...), (n - m,), (m, ...), (m,) with ``m = round(fraction * n)``.

    Raises
    ------
    ConfigError
        ``fraction`` outside [0, 1), an unknown mode, ``mode="random"`` without ``rng``, or a
        fraction that leaves no training example.
    """
    total = _check_xy(x, y)
    if not isinstance(fraction, (int, float, np.floating)) or not 0.0 <= fraction < 1.0:
        raise ConfigError(f"hold-out fraction must lie in [0, 1), got {fraction!r}")
    m = int(round(float(fraction) * total))
    if total and m >= total:
        raise ConfigError(f"hold-out fraction {fraction} of {total} examples leaves none to train")
    if mode == "front":
        return (x[m:], y[m:]), (x[:m], y[:m])
    if mode == "random":
        _check_rng(rng, "holdout(mode='random')")
        assert rng is not None
        perm = rng.permutation(total)
        val, tr = perm[:m], perm[m:]
        return (x[tr], y[tr]), (x[val], y[val])
    raise ConfigError(f"hold-out mode must be one of {', '.join(HOLDOUT_MODES)}, got {mode!r}")


def filter_classes(x: np.ndarray, y: np.ndarray, positive: int, negative: int) -> XY:
    """Keep the examples of two classes, in their original order, relabelled 1 / 0.

    Returns
    -------
    x_two : numpy.ndarray
        (m, ...) examples whose label is ``positive`` or ``negative``.
    y01 : numpy.ndarray
        int64 (m,): 1 where the label was ``positive``, 0 where ``negative``.

    Raises
    ------
    ConfigError
        ``positive == negative``, or either class has no example.
    """
    _check_xy(x, y)
    if positive == negative:
        raise ConfigError(f"positive and negative class must differ, both are {positive!r}")
    is_pos, is_neg = y == positive, y == negative
    for cls, mask in ((positive, is_pos), (negative, is_neg)):
        if not mask.any():
            raise ConfigError(f"class {cls!r} has no examples among the {len(y)} given")
    keep = is_pos | is_neg
    return x[keep], is_pos[keep].astype(np.int64)


def one_hot(y: np.ndarray, n_classes: int, dtype: type | np.dtype = np.float32) -> np.ndarray:
    """One-hot encode integer labels.

    Parameters
    ----------
    y
        Integer labels (n,) in ``0..n_classes-1``.
    n_classes
        Number of classes k.
    dtype
        Output dtype.

    Returns
    -------
    numpy.ndarray
        (n, k) array with a single 1 per row.
    """
    y = np.asarray(y)
    if y.ndim != 1 or not (np.issubdtype(y.dtype, np.integer) or y.size == 0):
        raise ShapeError(f"labels must be a 1-d integer array, got {y.dtype} {y.shape}")
    k = _check_n(n_classes, np.iinfo(np.int64).max, "n_classes")
    if y.size and (y.min() < 0 or y.max() >= k):
        raise DataError(f"labels {y.min()}..{y.max()} outside 0..{k - 1}")
    out = np.zeros((len(y), k), dtype=dtype)
    out[np.arange(len(y)), y.astype(np.intp, copy=False)] = 1
    return out


@dataclass(frozen=True, repr=False)
class Splits:
    """Train / validation / test parts of a dataset.

    Attributes
    ----------
    train, test
        ``(x, y)`` with x uint8 (n, h, w) and y int64 (n,).
    val
        ``(x, y)`` like ``train``, or None without a hold-out.
    classes
        Class names for the labels in ``y``; for a binary split ``(negative, positive)``, so
        label 1 is ``classes[1]``.
    """

    train: XY
    val: XY | None
    test: XY
    classes: tuple[str, ...]

    @property
    def n_classes(self) -> int:
        """Number of classes, ``len(classes)``."""
        return len(self.classes)

    def __repr__(self) -> str:
        val = len(self.val[1]) if self.val is not None else None
        return (
            f"Splits(train={len(self.train[1])}, val={val}, test={len(self.test[1])}, "
            f"classes={self.classes})"
        )


    def check_trainable(self) -> None:
        """Refuse (ConfigError) splits no run can train and evaluate on: fewer than 2
        training images, or an empty validation or test split."""
        n_val = None if self.val is None else len(self.val[1])
        n_train, n_test = len(self.train[1]), len(self.test[1])
        if n_train < 2 or n_test < 1 or n_val == 0:
            val = "" if n_val is None else f"{n_val} validation, "
            raise ConfigError(
                f"the splits hold {n_train} training, {val}{n_test} test images: training "
                "needs at least 2 training images and at least 1 test (and validation, with "
                "a hold-out) image; raise n_train/n_test or lower holdout"
            )


def _take(x: np.ndarray, y: np.ndarray, n: int | None, how: str, what: str, rng) -> XY:
    if n is None:
        return x, y
    n = _check_n(n, len(y), what)
    if how == "first":
        return first(x, y, n)
    if how == "last":
        return last(x, y, n)
    if how == "random":
        _check_rng(rng, f"{what} drawn at random")
        return random_subset(x, y, n, rng)
    raise ConfigError(f"{what} must be taken from 'first', 'last' or 'random', got {how!r}")


def make_splits(
    dataset: Dataset,
    n_train: int | None = None,
    n_test: int | None = None,
    train_from: str = "first",
    test_from: str = "last",
    holdout: float = 0.0,
    holdout_mode: str = "front",
    classes: tuple[int, int] | None = None,
    rng: np.random.Generator | None = None,
) -> Splits:
    """Cut a dataset into train / validation / test, in the reports' order of operations.

    1. take ``n_train`` training examples from the ``train_from`` end ("first", "last" or
       "random") and ``n_test`` test examples likewise (None: all);
    2. if ``classes=(positive, negative)``, keep only those two classes (positive -> 1),
       as sources 000/001 do: they take the first 20,000 / last 2,000 images *then* select the
       two digits, so the binary sets are smaller than 20,000 / 2,000;
    3. hold out ``holdout`` of the remaining training examples (from the front, or at
       random with ``holdout_mode="random"``).

    Examples
    --------
    The sources' split, 18,000 / 2,000 / 2,000, validation = the first 2,000 training images:

    >>> make_splits(load("mnist"), **SEED_SPLIT)  # doctest: +SKIP

    Raises
    ------
    ConfigError
        ``n_train``/``n_test`` larger than available, bad ``*_from``/``holdout_mode``, a
        fraction outside [0, 1), unknown class indices, or a random choice without ``rng``.
    """
    name = getattr(dataset, "name", "dataset")
    if n_train is not None and n_train > len(dataset.y_train):
        raise ConfigError(
            f"n_train={n_train} but {name} has only {len(dataset.y_train)} training images"
        )
    if n_test is not None and n_test > len(dataset.y_test):
        raise ConfigError(f"n_test={n_test} but {name} has only {len(dataset.y_test)} test images")
    x_tr, y_tr = _take(dataset.x_train, dataset.y_train, n_train, train_from, "n_train", rng)
    x_te, y_te = _take(dataset.x_test, dataset.y_test, n_test, test_from, "n_test", rng)
    names = tuple(dataset.classes)
    if classes is not None:
        try:
            pos, neg = (operator.index(c) for c in classes)
        except (TypeError, ValueError):
            raise ConfigError(
                f"classes must be (positive, negative) indices, got {classes!r}"
            ) from None
        for c in (pos, neg):
            if not 0 <= c < len(names):
                raise ConfigError(f"class {c} is outside 0..{len(names) - 1} for {name}")
        x_tr, y_tr = filter_classes(x_tr, y_tr, pos, neg)
        x_te, y_te = filter_classes(x_te, y_te, pos, neg)
        names = (names[neg], names[pos])
    val = None
    if holdout:
        (x_tr, y_tr), val = _holdout(x_tr, y_tr, holdout, holdout_mode, rng)
    elif holdout_mode not in ("front", "random"):
        raise ConfigError(f"hold-out mode must be 'front' or 'random', got {holdout_mode!r}")
    return Splits(train=(x_tr, y_tr), val=val, test=(x_te, y_te), classes=names)


_holdout = holdout
