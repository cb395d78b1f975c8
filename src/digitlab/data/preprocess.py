"""Turn images into float32 feature matrices, once, the same way for train, validation and test.

Methods (``x`` a pixel value, usually uint8 0..255):

- ``"scale01"``: ``x / 255`` (sources 000/001),
- ``"symmetric"``: ``x / 127.5 - 1`` (source 004's ``pre_process_images``),
- ``"standardize"``: ``(x - mean) / std`` per pixel, fit on the training data only (source 003);
  pixels constant in the training data (std 0) are divided by 1,
- ``"none"``: ``x`` as float32.

With ``bias_column=True`` a column of ones is appended *last* (source 004 appends it last; the
reports prepend it, which only permutes the weights).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from digitlab.errors import ConfigError, DataError, ShapeError

__all__ = ["METHODS", "Preprocessor"]

#: Preprocessing methods: name -> what it does to the pixels (see the module docstring).
METHODS: dict[str, str] = {
    "scale01": "x / 255, in [0, 1]",
    "symmetric": "x / 127.5 - 1, in [-1, 1]",
    "standardize": "z-score per pixel, fit on the training split",
    "none": "raw 0..255",
}

_CHUNK_ROWS = 2048  # rows per block when computing the variance (bounds float64 temporaries)
#: Rows per block of uint8 pixels copied beside their bias input (bounds that copy: 3 MB).
_BIAS_BLOCK_ROWS = 4096
_EPS32 = float(np.finfo(np.float32).eps)

StateValue = np.ndarray | str | bool | int


def _as_2d(images: np.ndarray) -> np.ndarray:
    """View images (n, h, w) or features (n, d) as (n, d); reject non-numeric and NaN/inf."""
    x = np.asarray(images)
    if x.ndim == 3:
        x = x.reshape(x.shape[0], x.shape[1] * x.shape[2])
    elif x.ndim != 2:
        raise ShapeError(f"expected images (n, h, w) or features (n, d), got shape {x.shape}")
    kind = x.dtype.kind  # read per training batch: np.issubdtype costs ~2 us a call
    if kind not in "iuf":  # signed, unsigned, float (not bool, complex, object, ...)
        raise DataError(f"expected integer or float pixel values, got dtype {x.dtype}")
    # A float64 sum is finite iff every value is (short of ~1e308 magnitudes, re-checked
    # exactly); this costs one pass and no temporary the size of the data.
    if kind == "f" and x.size:
        total = np.add.reduce(x, axis=None, dtype=np.float64)
        if not np.isfinite(total) and not np.isfinite(x).all():
            bad = int(x.size - np.count_nonzero(np.isfinite(x)))
            raise DataError(f"input holds {bad} NaN or infinite value(s)")
    return x


def _scalar(value: object) -> object:
    """Plain Python value of a scalar that may have come back from ``np.load`` as a 0-d array."""
    return value.item() if isinstance(value, np.ndarray) and value.ndim == 0 else value


class Preprocessor:
    """Flatten images and convert them to float32 features.

    Parameters
    ----------
    method
        ``"scale01"``, ``"symmetric"``, ``"standardize"`` or ``"none"`` (module docstring).
    bias_column
        Append a column of ones as the last feature.

    Attributes
    ----------
    n_features_in_ : int or None
        d seen by :meth:`fit` (None before fitting).
    mean_, std_ : numpy.ndarray or None
        float32 (d,) per-pixel statistics of ``"standardize"`` (None otherwise / before fit);
        ``std_`` has 1 where the training pixel was constant.
    """

    def __init__(self, method: str = "scale01", bias_column: bool = False) -> None:
        if method not in METHODS:
            raise ConfigError(f"unknown preprocessing {method!r}; choose from {', '.join(METHODS)}")
        self.method = method
        self.bias_column = bool(bias_column)
        self.n_features_in_: int | None = None
        self.mean_: np.ndarray | None = None
        self.std_: np.ndarray | None = None

    def __repr__(self) -> str:
        return f"Preprocessor(method={self.method!r}, bias_column={self.bias_column})"

    @property
    def is_fitted(self) -> bool:
        """Whether :meth:`fit` has run (or a fitted state was loaded)."""
        return self.n_features_in_ is not None

    def n_features_out(self, d: int) -> int:
        """Number of output features for d input pixels: ``d + 1`` with a bias column."""
        return int(d) + int(self.bias_column)

    def fit(self, images: np.ndarray) -> Preprocessor:
        """Learn the per-pixel statistics (``"standardize"``) and the input size.

        Parameters
        ----------
        images
            Training images (n, h, w) or features (n, d), integer or float.

        Returns
        -------
        Preprocessor
            ``self``.
        """
        x = _as_2d(images)
        n, d = x.shape
        if self.method == "standardize":
            if n == 0:
                raise DataError("cannot fit 'standardize' on zero examples")
            mean = np.add.reduce(x, axis=0, dtype=np.float64) / n
            sq = np.zeros(d, dtype=np.float64)
            for start in range(0, n, _CHUNK_ROWS):  # blocks of rows, not single samples
                block = x[start : start + _CHUNK_ROWS].astype(np.float64)
                block -= mean
                sq += np.einsum("ij,ij->j", block, block)
            std = np.sqrt(sq / n)
            std[std <= 4 * _EPS32 * np.abs(mean)] = 1.0  # constant pixel (to rounding)
            self.mean_ = mean.astype(np.float32)
            self.std_ = std.astype(np.float32)
        self.n_features_in_ = d
        return self

    def transform(
        self, images: np.ndarray, out: np.ndarray | None = None, dtype: Any = np.float32
    ) -> np.ndarray:
        """Flatten and convert, in float32 (or float64), without float64 copies of the data.

        Parameters
        ----------
        images
            Images (n, h, w) or features (n, d) with d equal to the fitted size.
        out
            Optional (n, d[+1]) buffer of ``dtype`` to write into (a batch buffer, say).
        dtype
            float32, or float64: the features computed in float64 from the pixels (as code
            that divides by ``255.0`` does), not float32 features widened ("standardize"
            works with its float32 statistics, so its float64 features are float32 ones).

        Returns
        -------
        numpy.ndarray
            ``dtype`` (n, d), or (n, d + 1) with the bias column of ones last.

        Raises
        ------
        ConfigError
            ``"standardize"`` before :meth:`fit`.
        ShapeError
            d differs from the fitted size, or ``out`` has the wrong shape or dtype.
        DataError
            NaN, infinite or non-numeric input.
        """
        if self.method == "standardize" and self.mean_ is None:
            raise ConfigError("Preprocessor(method='standardize') must be fit before transform")
        x = _as_2d(images)
        n, d = x.shape
        if self.n_features_in_ is not None and d != self.n_features_in_:
            raise ShapeError(f"expected {self.n_features_in_} features per example, got {d}")
        shape, dtype = (n, self.n_features_out(d)), np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise ConfigError(f"features are float32 or float64, not {dtype}")
        if out is None:
            out = np.empty(shape, dtype=dtype)
        elif out.shape != shape or out.dtype != dtype:
            raise ShapeError(f"out must be {dtype} {shape}, got {out.dtype} {out.shape}")
        if self.bias_column and x.dtype == np.uint8 and self.method != "none":
            self._with_bias_column(x, out)
            return out
        self._apply(x, out[:, :d], self.mean_, self.std_)
        if self.bias_column:
            out[:, d] = 1.0
        return out

    def _apply(
        self, x: np.ndarray, body: np.ndarray, mean: np.ndarray | None, std: np.ndarray | None
    ) -> None:
        """The method's arithmetic from ``x (n, k)`` into ``body (n, k)`` (float)."""
        f = body.dtype.type
        if self.method == "scale01":
            np.divide(x, f(255.0), out=body)
        elif self.method == "symmetric":
            np.divide(x, f(127.5), out=body)
            np.subtract(body, f(1.0), out=body)
        elif self.method == "standardize":
            np.subtract(x, mean, out=body)
            np.divide(body, std, out=body)
        else:
            body[...] = x

    def _with_bias_column(self, x: np.ndarray, out: np.ndarray) -> None:
        """uint8 pixels ``x (n, d)`` into ``out (n, d + 1)`` with the bias column of ones.

        Written through ``out[:, :d]`` the arithmetic runs on rows with a gap (2,048 rows of
        MNIST, "symmetric", float32: 1.23 ms); instead each block of rows is copied with one
        more pixel whose transform is exactly 1 (255 for "scale01" and "symmetric", 1 with mean
        0 and std 1 for "standardize") and transformed whole (0.60 ms): the same numbers, the
        bias column included. (A plain cast, "none", is faster strided: it does not come here.)
        """
        n, d = x.shape
        one = 255 if self.method in ("scale01", "symmetric") else 1
        mean = std = None
        if self.method == "standardize" and self.mean_ is not None and self.std_ is not None:
            # (d + 1,) in the statistics' own dtype: the same arithmetic as on d columns
            m, sd = np.broadcast_to(self.mean_, (d,)), np.broadcast_to(self.std_, (d,))
            mean = np.concatenate([m, np.zeros(1, m.dtype)])
            std = np.concatenate([sd, np.ones(1, sd.dtype)])
        ext = np.empty((min(n, _BIAS_BLOCK_ROWS), d + 1), dtype=np.uint8)
        ext[:, d] = one
        for start in range(0, n, _BIAS_BLOCK_ROWS):
            stop = min(start + _BIAS_BLOCK_ROWS, n)
            block = ext[: stop - start]
            block[:, :d] = x[start:stop]
            self._apply(block, out[start:stop], mean, std)

    def fit_transform(self, images: np.ndarray) -> np.ndarray:
        """``fit(images)`` then ``transform(images)``; float32 (n, d[+1])."""
        return self.fit(images).transform(images)

    def state_dict(self) -> dict[str, StateValue]:
        """Everything needed to rebuild this preprocessor: arrays and JSON-able scalars.

        Returns
        -------
        dict
            ``method`` (str), ``bias_column`` (bool), and once fitted ``n_features_in``
            (int), plus for ``"standardize"`` ``mean`` and ``std`` (float32 (d,)).
        """
        state: dict[str, StateValue] = {"method": self.method, "bias_column": self.bias_column}
        if self.n_features_in_ is not None:
            state["n_features_in"] = int(self.n_features_in_)
        if self.mean_ is not None and self.std_ is not None:
            state["mean"] = self.mean_.copy()
            state["std"] = self.std_.copy()
        return state

    @classmethod
    def from_state_dict(cls, state: dict[str, StateValue]) -> Preprocessor:
        """Rebuild a preprocessor from :meth:`state_dict` output (also after an npz round trip).

        Raises
        ------
        ConfigError
            Missing or inconsistent entries.
        """
        try:
            method = str(_scalar(state["method"]))
            bias = _scalar(state["bias_column"])
        except KeyError as e:
            raise ConfigError(f"preprocessor state lacks {e.args[0]!r}") from None
        if not isinstance(bias, (bool, np.bool_)):
            raise ConfigError(f"preprocessor state: bias_column must be a bool, got {bias!r}")
        pre = cls(method, bool(bias))
        if "n_features_in" in state:
            pre.n_features_in_ = int(_scalar(state["n_features_in"]))  # type: ignore[arg-type]
        if method == "standardize" and pre.n_features_in_ is not None:
            if "mean" not in state or "std" not in state:
                raise ConfigError("preprocessor state: fitted 'standardize' lacks mean/std")
            mean = np.asarray(state["mean"], dtype=np.float32)
            std = np.asarray(state["std"], dtype=np.float32)
            d = pre.n_features_in_
            if mean.shape != (d,) or std.shape != (d,) or not (std > 0).all():
                raise ConfigError(
                    f"preprocessor state: mean/std must be ({d},) with std > 0, "
                    f"got {mean.shape} and {std.shape}"
                )
            pre.mean_, pre.std_ = mean.copy(), std.copy()
        return pre
