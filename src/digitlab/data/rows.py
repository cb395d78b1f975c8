"""Training rows that stay uint8 in memory and become float32 features one batch at a time.

:class:`ImageRows` holds the images of a split as they were read (uint8 ``(n, h, w)``, a view
when it can be) with a fitted :class:`~digitlab.data.Preprocessor`. A batch is gathered as
uint8 rows (a quarter of the bytes of float32 features) and put through the preprocessor's
own per-pixel arithmetic, so its features are exactly those that
``preprocessor.transform(images)[index]`` would give, without the float32 copy of the whole
split. :class:`~digitlab.train.Trainer` accepts it in place of a feature array (it is a
``BatchSource``); ``numpy.asarray(rows)`` still gives the whole float32 matrix for code that
wants one.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from digitlab.data.preprocess import Preprocessor
from digitlab.errors import ConfigError, ShapeError

__all__ = ["CHUNK_ROWS", "ImageRows"]

#: Rows per chunk of :meth:`ImageRows.chunks` (evaluation): 2048 x 785 float32 is 6.4 MB.
CHUNK_ROWS = 2048

Index = slice | np.ndarray


class ImageRows:
    """The feature rows of images, computed per batch from the images kept as they are.

    Parameters
    ----------
    images : ndarray (n, h, w) or (n, d)
        Pixels, usually uint8; kept by reference (a memory-mapped array stays mapped).
    preprocessor : Preprocessor
        Fitted on ``d = h * w`` pixels; its method and bias column make the features.
    dtype : numpy dtype
        Dtype of the rows handed out (float32, or float64 for float64 models: computed in
        float64 from the pixels).
    chunk_rows : int
        Rows per chunk of :meth:`chunks`.

    Attributes
    ----------
    shape : (n, d_out)
        ``d_out = d + 1`` with a bias column.
    """

    def __init__(
        self,
        images: np.ndarray,
        preprocessor: Preprocessor,
        *,
        dtype: Any = np.float32,
        chunk_rows: int = CHUNK_ROWS,
    ) -> None:
        x = np.asarray(images)
        if x.ndim == 3:
            x = x.reshape(x.shape[0], -1)
        if x.ndim != 2:
            raise ShapeError(f"images must have shape (n, h, w) or (n, d), got {x.shape}")
        if x.dtype.kind not in "iu":
            raise ShapeError(f"ImageRows keeps integer pixels, got dtype {x.dtype}")
        if not preprocessor.is_fitted:
            raise ConfigError("ImageRows needs a fitted Preprocessor")
        if preprocessor.n_features_in_ != x.shape[1]:
            raise ShapeError(
                f"preprocessor was fitted on {preprocessor.n_features_in_} pixels, "
                f"images have {x.shape[1]}"
            )
        self.dtype = np.dtype(dtype)
        if self.dtype.kind != "f":
            raise ConfigError(f"ImageRows hands out float rows, not {self.dtype}")
        if chunk_rows < 1:
            raise ConfigError(f"chunk_rows must be >= 1, got {chunk_rows}")
        self.pixels = x
        self.preprocessor = preprocessor
        self.chunk_rows = int(chunk_rows)
        self.shape = (x.shape[0], preprocessor.n_features_out(x.shape[1]))
        self.ndim = 2

    def __repr__(self) -> str:
        return (
            f"ImageRows(n={self.shape[0]}, d={self.shape[1]}, pixels={self.pixels.dtype}, "
            f"{self.preprocessor!r}, dtype={self.dtype})"
        )

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def nbytes(self) -> int:
        """Bytes of the pixels held (not of the features they stand for)."""
        return int(self.pixels.nbytes)

    def astype(self, dtype: Any) -> ImageRows:
        """The same rows handed out in ``dtype`` (shares the pixels; ``self`` if unchanged)."""
        if np.dtype(dtype) == self.dtype:
            return self
        return ImageRows(self.pixels, self.preprocessor, dtype=dtype, chunk_rows=self.chunk_rows)

    def take(self, index: Index, out: np.ndarray | None = None) -> np.ndarray:
        """Feature rows ``index`` (a slice or integer positions), float ``(b, d_out)``.

        Parameters
        ----------
        index : slice or ndarray of int (b,)
        out : ndarray (>= b, d_out), optional
            Buffer of :attr:`dtype`; the result is ``out[:b]``.

        Returns
        -------
        ndarray (b, d_out)
        """
        if isinstance(index, slice):
            pixels = self.pixels[index]  # a view: no copy of the uint8 rows
        else:
            pixels = self.pixels.take(np.asarray(index), axis=0)
        b = pixels.shape[0]
        target = None if out is None else out[:b]
        return self.preprocessor.transform(pixels, out=target, dtype=self.dtype)

    def chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        """``(start, rows (c, d_out))`` for consecutive chunks of :attr:`chunk_rows` rows.

        Every chunk is written into the same buffer (one chunk of floats exists at a time):
        copy a chunk to keep it past the next one.
        """
        n = self.shape[0]
        buf = np.empty((min(self.chunk_rows, n), self.shape[1]), dtype=self.dtype)
        for start in range(0, n, self.chunk_rows):
            yield start, self.take(slice(start, start + self.chunk_rows), out=buf)

    def __getitem__(self, index: Any) -> np.ndarray:
        """``rows[i]``, ``rows[a:b]`` or ``rows[positions]``: float feature rows."""
        if isinstance(index, slice):
            return self.take(index)
        idx = np.asarray(index)
        if idx.ndim == 0:
            return self.take(idx.reshape(1))[0]
        if idx.dtype == np.bool_:
            idx = np.flatnonzero(idx)
        return self.take(idx)

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        """The whole float feature matrix ``(n, d_out)`` (allocated: use :meth:`take` to batch)."""
        full = self.take(slice(None))
        return full if dtype is None else full.astype(dtype, copy=False)
