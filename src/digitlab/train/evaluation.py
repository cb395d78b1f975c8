"""Loss, objective and accuracy of a model on a split, and its predictions, chunk by chunk."""

from __future__ import annotations

import numpy as np

from digitlab.models.base import Model, logits_loss_sum_and_correct
from digitlab.train.batching import Rows, is_source, row_chunks


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


def evaluate_together(models: list[Model], X: Rows, y: np.ndarray) -> list[dict[str, float]]:
    """``[evaluate(m, X, y) for m in models]`` for linear models that
    :func:`~digitlab.models.linear.can_stack` allows, with each chunk's logits of all of them
    from one product (:func:`~digitlab.models.linear.stacked_logits`): the repeats of a
    lock-step group, evaluated at one step. Equal to :func:`evaluate` up to float rounding.
    """
    from digitlab.models.linear import stacked_logits

    n, first = X.shape[0], models[0]
    sums, correct = np.zeros(len(models)), np.zeros(len(models), dtype=np.int64)
    for start, rows in row_chunks(X):
        yc = first.check_y(y[start : start + rows.shape[0]], rows.shape[0])
        for r, z in enumerate(stacked_logits(models, rows)):
            s, c = logits_loss_sum_and_correct(z, yc)
            sums[r] += s
            correct[r] += c
    out = []
    for m, loss_sum, right in zip(models, sums.tolist(), correct.tolist(), strict=True):
        data = loss_sum if m.reduction == "sum" else loss_sum / n
        out.append({"loss": loss_sum / n, "objective": data + m.penalty(), "acc": right / n})
    return out
