"""The Trainer and its callbacks."""

from digitlab.train.callbacks import Callback, Checkpoint, EarlyStopping, History, Progress
from digitlab.train.trainer import (
    Trainer,
    evaluate,
    graceful_interrupts,
    resolve_batch_size,
    resolve_eval_every,
)

__all__ = [
    "Callback",
    "Checkpoint",
    "EarlyStopping",
    "History",
    "Progress",
    "Trainer",
    "evaluate",
    "graceful_interrupts",
    "resolve_batch_size",
    "resolve_eval_every",
]
