"""Update rules (the :class:`Optimizer` protocol and its registry), schedules, exact L-BFGS."""

from digitlab.optim.adam import Adam
from digitlab.optim.adamw import AdamW
from digitlab.optim.base import Optimizer, SlotOptimizer
from digitlab.optim.lbfgs import LBFGSResult, lbfgs
from digitlab.optim.nesterov import Nesterov
from digitlab.optim.registry import OPTIMIZERS, make_optimizer
from digitlab.optim.rmsprop import RMSprop
from digitlab.optim.schedules import (
    SCHEDULES,
    Constant,
    Exponential,
    InverseTime,
    Schedule,
    StepDecay,
    WarmupCosine,
    make_schedule,
)
from digitlab.optim.sgd import SGD

__all__ = [
    "OPTIMIZERS",
    "SCHEDULES",
    "SGD",
    "Adam",
    "AdamW",
    "Constant",
    "Exponential",
    "InverseTime",
    "LBFGSResult",
    "Nesterov",
    "Optimizer",
    "RMSprop",
    "Schedule",
    "SlotOptimizer",
    "StepDecay",
    "WarmupCosine",
    "lbfgs",
    "make_optimizer",
    "make_schedule",
]
