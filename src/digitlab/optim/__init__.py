"""Update rules (the :class:`Optimizer` protocol and its registry), schedules, exact L-BFGS."""

from digitlab.optim.base import Optimizer, SlotOptimizer
from digitlab.optim.lbfgs import LBFGSResult, lbfgs
from digitlab.optim.registry import OPTIMIZERS, make_optimizer
from digitlab.optim.schedules import (
    SCHEDULES,
    Constant,
    InverseTime,
    Schedule,
    StepDecay,
    make_schedule,
)
from digitlab.optim.sgd import SGD

__all__ = [
    "OPTIMIZERS",
    "SCHEDULES",
    "SGD",
    "Constant",
    "InverseTime",
    "LBFGSResult",
    "Optimizer",
    "Schedule",
    "SlotOptimizer",
    "StepDecay",
    "lbfgs",
    "make_optimizer",
    "make_schedule",
]
