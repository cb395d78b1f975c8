"""Several trainers on the same data in lock-step, sharing each step's matrix products."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from digitlab.models.linear import RowBlocks, can_stack, row_blocks, stacked_loss_and_grad
from digitlab.train.batching import ArrayPair, is_source
from digitlab.train.callbacks import History
from digitlab.train.evaluation import evaluate_splits_once, evaluate_together
from digitlab.train.trainer import Trainer


def fit_together(
    trainers: Sequence[Trainer],
    train: ArrayPair,
    val: ArrayPair | None = None,
    test: ArrayPair | None = None,
    *,
    epochs: int | None = None,
    steps: int | None = None,
) -> list[History]:
    """:meth:`Trainer.fit` of several trainers on the same data, in lock-step.

    For full-batch descent of linear models of one shape (the repeats of an experiment that
    differ only in their random start, say) each step's matrix products are shared
    (:func:`~digitlab.models.linear.stacked_loss_and_grad`), and so are the evaluations the
    trainers make at one step (:func:`~digitlab.train.evaluation.evaluate_together`): ``R``
    fits cost little more than one. Every trainer keeps its own optimiser, schedule, evaluation
    record, callbacks and stopping rule; one that stops leaves the others going. Trainers this
    does not apply to (mini-batches, shuffling, augmentation, other models, different
    positions) are fitted one after another.

    Parameters
    ----------
    trainers : sequence of Trainer
    train, val, test, epochs, steps
        As for :meth:`Trainer.fit` (no sample weights).

    Returns
    -------
    list of History
        One per trainer, in order.
    """
    if len(trainers) < 2 or not can_stack([t.model for t in trainers]):
        return [t.fit(train, val, test, epochs=epochs, steps=steps) for t in trainers]
    lead = trainers[0]
    splits = lead.prepare(train, val, test)  # a source becomes one feature array, once
    X, y = splits["train"]
    for t in trainers[1:]:
        t.prepare(splits["train"], splits.get("val"), splits.get("test"))
    state = {(t.batch_size, t.steps_per_epoch, t.step, t.pos) for t in trainers}
    full = lead.batch_size >= X.shape[0] and not lead.replacement and not is_source(X)
    if len(state) > 1 or not full or any(t.batch_transform is not None for t in trainers):
        return [t.fit(train, val, test, epochs=epochs, steps=steps) for t in trainers]
    total = lead.end_step(epochs, steps)
    # the products skip the zero entries, block by block of rows (exactly: see row_blocks);
    # evaluations and callbacks see X as it is
    blocks = row_blocks(X)
    Xp = X if blocks is None else blocks
    with contextlib.ExitStack() as stack:
        for t in trainers:
            stack.enter_context(t.running(total))
            t.trained_with = len(trainers)  # each one's elapsed is the group's
            t.order = None  # the full batch in its stored order
        while running := [t for t in trainers if t.active]:
            results = stacked_loss_and_grad([t.model for t in running], Xp, y)
            steps = [t.update(lo, g, X, y) for t, (lo, g) in zip(running, results, strict=True)]
            evaluating = [t for t, s in zip(running, steps, strict=True) if s is not None]
            evaluated = _evaluate_together(evaluating, X, blocks)
            for t, (loss, _), step in zip(running, results, steps, strict=True):
                t.finish_step(loss, step, evaluated.get(id(t)))
    return [t.history for t in trainers]


def _evaluate_together(
    trainers: list[Trainer], X: Any, blocks: RowBlocks | None
) -> dict[int, dict[str, dict[str, float]]]:
    """The evaluations of trainers that evaluate at one step on the same split arrays, each
    split's logits of all of them from one product
    (:func:`~digitlab.train.evaluation.evaluate_together`; the training rows ``X`` from their
    ``blocks`` when laid out), by ``id`` of the trainer; empty when they do not share them
    (each then evaluates itself)."""
    if len(trainers) < 2:
        return {}
    splits = trainers[0].evaluated_splits()
    for t in trainers:
        mine = t.evaluated_splits()
        if mine.keys() != splits.keys() or t._weight is not None:
            return {}
        if any(mine[k][0] is not splits[k][0] or mine[k][1] is not splits[k][1] for k in mine):
            return {}
    models = [t.model for t in trainers]

    def measure(name: str, Xs: Any, ys: np.ndarray) -> list[dict[str, float]]:
        rows = blocks if Xs is X and blocks is not None else Xs
        return evaluate_together(models, rows, ys)

    results = evaluate_splits_once(splits, measure)  # validation on test: measured once
    return {
        id(t): {name: per_model[i] for name, per_model in results.items()}
        for i, t in enumerate(trainers)
    }
