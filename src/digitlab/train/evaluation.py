"""Loss, objective and accuracy of a model on a split, and its predictions, chunk by chunk."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import numpy as np

from digitlab.models.base import Model
from digitlab.train.batching import Rows, is_source, row_chunks

T = TypeVar("T")


def evaluate_splits_once(
    splits: Mapping[str, tuple[Any, np.ndarray]], measure: Callable[[str, Any, np.ndarray], T]
) -> dict[str, T]:
    """``measure(name, X, y)`` of each split, once per pair of arrays: a validation or test
    split holding the very arrays of one measured before it (validation on the test split, as
    source 004 does) gets a copy of that result instead of a second pass over the same rows.
    The training split is always measured itself (it may be weighted). Assumes that
    ``measure`` treats the validation and test splits alike and that a split's rows read the
    same each time (a :class:`BatchSource` hands out fixed rows)."""
    out: dict[str, T] = {}
    for name, (X, y) in splits.items():
        twin = next(
            (
                seen
                for seen, (X2, y2) in splits.items()
                if seen in out and "train" not in (seen, name) and X2 is X and y2 is y
            ),
            None,
        )
        out[name] = copy.deepcopy(out[twin]) if twin is not None else measure(name, X, y)
    return out


def predict(model: Model, X: Rows) -> np.ndarray:
    """``model.predict`` over ``X (n, d)`` or a :class:`BatchSource`, chunk by chunk; int64 (n,)."""
    if not is_source(X):
        return model.predict(X)
    parts = [model.predict(rows) for _, rows in X.chunks()]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def evaluate(
    model: Model, X: Rows, y: np.ndarray, sample_weight: np.ndarray | None = None
) -> dict[str, float]:
    """Mean cross-entropy, objective and accuracy of ``model`` on ``(X (n, d), y (n,))``.

    ``X`` is a feature array or a :class:`BatchSource`. Runs in chunks of rows so memory stays
    bounded on large splits. ``objective`` is what the model optimises: the cross-entropy with
    the model's reduction (mean or sum) plus penalty. With ``sample_weight (n,)`` (total > 0)
    the means and the accuracy are weighted.

    Returns
    -------
    dict
        ``{"loss": mean cross-entropy, "objective": optimised objective, "acc": accuracy}``.
    """
    n = X.shape[0]
    loss_sum, correct = 0.0, 0
    for start, rows in row_chunks(X):
        chunk = slice(start, start + rows.shape[0])
        if sample_weight is None:
            s, c = model.loss_sum_and_correct(rows, y[chunk])
        else:
            s, c = model.loss_sum_and_correct(rows, y[chunk], sample_weight[chunk])
        loss_sum, correct = loss_sum + s, correct + c
    if sample_weight is not None:
        n = float(np.add.reduce(sample_weight, dtype=np.float64))
    data = loss_sum if model.reduction == "sum" else loss_sum / n
    return {"loss": loss_sum / n, "objective": data + model.penalty(), "acc": correct / n}


def evaluate_together(models: list[Model], X: Any, y: np.ndarray) -> list[dict[str, float]]:
    """``[evaluate(m, X, y) for m in models]`` for linear models that
    :func:`~digitlab.models.linear.can_stack` allows, with each chunk's logits of all of them
    from one product and their softmax computed together
    (:func:`~digitlab.models.linear.stacked_loss_sums_and_correct`): the repeats of a
    lock-step group, evaluated at one step. ``X (n, d)`` is an array, a :class:`BatchSource`,
    or the training rows as :class:`~digitlab.models.linear.RowBlocks` (whose products skip
    the zero entries). Equal to :func:`evaluate` up to float rounding.
    """
    from digitlab.models.linear import RowBlocks, block_chunks, stacked_loss_sums_and_correct

    n, first = X.shape[0], models[0]
    if isinstance(X, RowBlocks):
        chunks: Any = block_chunks(first, X, y)
    else:
        chunks = (
            (None, first.check_X(rows), first.check_y(y[start : start + len(rows)], len(rows)))
            for start, rows in row_chunks(X)
        )
    sums, correct = stacked_loss_sums_and_correct(models, chunks)
    out = []
    for m, loss_sum, right in zip(models, sums.tolist(), correct.tolist(), strict=True):
        data = loss_sum if m.reduction == "sum" else loss_sum / n
        out.append({"loss": loss_sum / n, "objective": data + m.penalty(), "acc": right / n})
    return out
