"""Update rules, learning-rate schedules and the exact L-BFGS solver."""

from digitlab.optim.lbfgs import LBFGSResult, lbfgs
from digitlab.optim.rules import SGD, make_optimizer
from digitlab.optim.schedules import (
    SCHEDULES,
    Constant,
    InverseTime,
    Schedule,
    StepDecay,
    make_schedule,
)

__all__ = [
    "SCHEDULES",
    "SGD",
    "Constant",
    "InverseTime",
    "LBFGSResult",
    "Schedule",
    "StepDecay",
    "lbfgs",
    "make_optimizer",
    "make_schedule",
]
