"""Learning-rate schedules: functions of (step, epoch) described by JSON-able configs.

A schedule holds no state of its own, so a resumed run recomputes the same rate from the
step and epoch it restarts at, and a new schedule can be swapped in when a run resumes
(source 003 lowers the rate between stages).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from digitlab.errors import ConfigError

UNITS = ("epoch", "step")


def _check_unit(unit: str) -> None:
    if unit not in UNITS:
        raise ConfigError(f"schedule unit={unit!r} is not one of {', '.join(UNITS)}")


def _check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{name} must be > 0, got {value}")


@dataclass(frozen=True)
class Constant:
    """``lr(t) = eta0``."""

    eta0: float

    def __post_init__(self) -> None:
        _check_positive("learning rate", self.eta0)

    def __call__(self, step: int, epoch: int) -> float:
        return self.eta0

    def config(self) -> dict[str, Any]:
        return {"name": "constant", **asdict(self)}


@dataclass(frozen=True)
class InverseTime:
    """Annealing ``lr(t) = eta0 / (1 + t / T)`` (t in epochs or in steps).

    Parameters
    ----------
    eta0 : float
        Initial rate.
    T : float
        Time constant: the rate halves at ``t = T``.
    unit : {"epoch", "step"}
        What ``t`` counts (completed epochs or optimiser steps, both from 0).
    """

    eta0: float
    T: float
    unit: str = "epoch"

    def __post_init__(self) -> None:
        _check_positive("learning rate", self.eta0)
        _check_positive("T", self.T)
        _check_unit(self.unit)

    def __call__(self, step: int, epoch: int) -> float:
        t = epoch if self.unit == "epoch" else step
        return self.eta0 / (1.0 + t / self.T)

    def config(self) -> dict[str, Any]:
        return {"name": "inverse_time", **asdict(self)}


@dataclass(frozen=True)
class StepDecay:
    """``lr(t) = eta0 * gamma ** floor(t / every)``."""

    eta0: float
    gamma: float
    every: int
    unit: str = "epoch"

    def __post_init__(self) -> None:
        _check_positive("learning rate", self.eta0)
        _check_positive("gamma", self.gamma)
        if int(self.every) < 1:
            raise ConfigError(f"step decay 'every' must be >= 1, got {self.every}")
        _check_unit(self.unit)

    def __call__(self, step: int, epoch: int) -> float:
        t = epoch if self.unit == "epoch" else step
        return self.eta0 * self.gamma ** (t // int(self.every))

    def config(self) -> dict[str, Any]:
        return {"name": "step", **asdict(self)}


Schedule = Constant | InverseTime | StepDecay
SCHEDULES: dict[str, type] = {"constant": Constant, "inverse_time": InverseTime, "step": StepDecay}


def make_schedule(config: dict[str, Any]) -> Schedule:
    """Build a schedule from its ``config()`` dict (``{"name": ..., **fields}``)."""
    cfg = dict(config)
    name = cfg.pop("name", "constant")
    if name not in SCHEDULES:
        raise ConfigError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
    try:
        return SCHEDULES[name](**cfg)
    except TypeError as exc:
        raise ConfigError(f"bad {name} schedule settings: {exc}") from None
