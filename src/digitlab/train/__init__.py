"""The Trainer and its callbacks."""

from digitlab.train.callbacks import Callback, Checkpoint, EarlyStopping, History, Progress
from digitlab.train.trainer import (
    BatchSource,
    Trainer,
    evaluate,
    fit_together,
    graceful_interrupts,
    is_source,
    predict,
    resolve_batch_size,
    resolve_eval_every,
)

__all__ = [
    "BatchSource",
    "Callback",
    "Checkpoint",
    "EarlyStopping",
    "History",
    "Progress",
    "Trainer",
    "evaluate",
    "fit_together",
    "graceful_interrupts",
    "is_source",
    "predict",
    "resolve_batch_size",
    "resolve_eval_every",
]
