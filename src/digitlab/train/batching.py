"""What the trainer reads rows from, how batch and evaluation specs resolve, and row checks.

Training and evaluation data are feature arrays ``(n, d)`` or a :class:`BatchSource` (such as
:class:`~digitlab.data.rows.ImageRows`: uint8 images turned into features batch by batch), so
that only a batch of float rows exists at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

import numpy as np

from digitlab.errors import ConfigError

BatchSpec = int | float | str
EvalSpec = int | float | str
#: Rows per chunk of an evaluation or a finiteness check.
EVAL_CHUNK = 16384
#: Rows per block of a large batch's gradient (:meth:`Model.loss_and_grad`'s ``chunk_rows``):
#: a block of features is still in cache when the gradient's product reads it again.
CHUNK_ROWS = 1024


@runtime_checkable
class BatchSource(Protocol):
    """Rows of features made on demand (e.g. :class:`~digitlab.data.rows.ImageRows`).

    ``shape`` is ``(n, d)`` and ``dtype`` the float dtype of the rows handed out.
    """

    shape: tuple[int, int]
    dtype: np.dtype

    def __len__(self) -> int: ...

    def take(self, index: slice | np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Rows ``index`` (a slice or int positions (b,)) as ``(b, d)``, into ``out[:b]``."""
        ...

    def chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        """``(start, rows (c, d))`` over all rows, in order, in bounded chunks."""
        ...

    def astype(self, dtype: Any) -> BatchSource:
        """The same rows handed out in ``dtype``."""
        ...


Rows = np.ndarray | BatchSource
ArrayPair = tuple[Rows, np.ndarray]


def is_source(X: object) -> bool:
    """Whether ``X`` is a :class:`BatchSource` rather than an array."""
    return not isinstance(X, np.ndarray) and isinstance(X, BatchSource)


def _check_number(spec: object, what: str) -> None:
    if isinstance(spec, bool) or not isinstance(spec, int | float | np.integer | np.floating):
        raise ConfigError(f"{what}, got {spec!r}")


def resolve_batch_size(spec: BatchSpec, n: int) -> int:
    """Rows per step for a batch spec (``"full"``, an int, or a float fraction) and ``n`` rows."""
    if spec in ("full", None):
        return n
    _check_number(spec, "batch size must be 'full', an int or a fraction")
    if isinstance(spec, float | np.floating):
        if not 0.0 < spec <= 1.0:
            raise ConfigError(f"batch fraction must be in (0, 1], got {spec}")
        return max(1, round(float(spec) * n))
    if spec < 1:
        raise ConfigError(f"batch size must be >= 1, got {spec}")
    return min(int(spec), n)


def resolve_eval_every(spec: EvalSpec, steps_per_epoch: int) -> int:
    """Steps between evaluations for ``"epoch"``, a float fraction of an epoch, or an int."""
    if spec == "epoch":
        return steps_per_epoch
    _check_number(spec, "eval_every must be 'epoch', a fraction or a step count")
    if isinstance(spec, float | np.floating):
        if not 0.0 < spec <= 1.0:
            raise ConfigError(f"eval_every as a fraction of an epoch must be in (0, 1], got {spec}")
        return max(1, int(steps_per_epoch * float(spec)))
    if spec < 1:
        raise ConfigError(f"eval_every must be >= 1 step, got {spec}")
    return int(spec)


def all_finite(X: np.ndarray) -> bool:
    """Whether ``X (n, d)`` holds no NaN or inf, without an ``(n, d)`` boolean temporary.

    NaN and inf survive a row sum, so ``X @ 1`` (one BLAS pass) settles the common case; a
    non-finite sum is confirmed block by block, as finite values can overflow when summed.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        row_sums = X @ np.ones(X.shape[1], dtype=X.dtype)
    if X.size == 0 or np.isfinite(row_sums).all():
        return True
    return all(
        np.isfinite(X[start : start + EVAL_CHUNK]).all()
        for start in range(0, X.shape[0], EVAL_CHUNK)
    )


def row_chunks(X: Rows) -> Iterator[tuple[int, np.ndarray]]:
    """``(start, rows)`` over ``X (n, d)`` in chunks (:data:`EVAL_CHUNK` rows for an array,
    the source's own chunks for a :class:`BatchSource`)."""
    if is_source(X):
        yield from X.chunks()
        return
    for start in range(0, X.shape[0], EVAL_CHUNK):
        yield start, X[start : start + EVAL_CHUNK]
