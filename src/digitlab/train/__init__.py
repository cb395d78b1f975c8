"""The Trainer, its callbacks, lock-step training and evaluation."""

from digitlab.train.batching import (
    BatchSource,
    is_source,
    resolve_batch_size,
    resolve_eval_every,
)
from digitlab.train.callbacks import Callback, Checkpoint, EarlyStopping, History, Step
from digitlab.train.evaluation import evaluate, predict
from digitlab.train.interrupts import graceful_interrupts
from digitlab.train.lockstep import fit_together
from digitlab.train.plateau import ReduceLROnPlateau
from digitlab.train.trainer import Trainer

__all__ = [
    "BatchSource",
    "Callback",
    "Checkpoint",
    "EarlyStopping",
    "History",
    "ReduceLROnPlateau",
    "Step",
    "Trainer",
    "evaluate",
    "fit_together",
    "graceful_interrupts",
    "is_source",
    "predict",
    "resolve_batch_size",
    "resolve_eval_every",
]
