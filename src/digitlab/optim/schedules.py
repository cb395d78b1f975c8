"""Learning-rate schedules: functions of (step, epoch) described by JSON-able configs.

A schedule holds no state of its own, so a resumed run recomputes the same rate from the
step and epoch it restarts at, and a new schedule can be swapped in when a run resumes
(source 003 lowers the rate between stages).
"""

from __future__ import annotations

import math
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


@dataclass(frozen=True)
class WarmupCosine:
    """Linear warm-up, then cosine annealing to ``eta_min`` at the end of the run.

    ``t`` counts the optimiser steps taken before the current one (``unit="step"``) or the
    completed epochs (``unit="epoch"``), from 0. During the warm-up (``t < warmup``) the rate
    is ``eta0 * (t + 1) / warmup``: it rises by ``eta0 / warmup`` each step and the ``warmup``-th
    step takes the full ``eta0`` (no step is taken at rate 0). From ``t = warmup`` on it is
    ``eta_min + (eta0 - eta_min) * (1 + cos(pi * p)) / 2`` with
    ``p = (t - warmup) / (total - warmup)``: ``eta0`` at the first step after the warm-up and
    ``eta_min`` after the last step ``t = total - 1``. This is PyTorch's
    ``SequentialLR([LinearLR(start_factor=1/warmup, total_iters=warmup-1),
    CosineAnnealingLR(T_max=total-warmup, eta_min)], milestones=[warmup])``.

    Parameters
    ----------
    eta0 : float
        Peak rate.
    total : float
        The run's length in ``unit`` (steps or epochs); ``t`` beyond it keeps ``eta_min``.
    warmup : int
        Warm-up length in ``unit`` (0: none), less than ``total``.
    eta_min : float
        Final rate, ``0 <= eta_min < eta0``.
    unit : {"step", "epoch"}
    """

    eta0: float
    total: float
    warmup: int = 0
    eta_min: float = 0.0
    unit: str = "step"

    def __post_init__(self) -> None:
        _check_positive("learning rate", self.eta0)
        _check_positive("cosine schedule total", self.total)
        if not 0 <= int(self.warmup) < self.total:
            raise ConfigError(
                f"warm-up must be >= 0 and shorter than the run ({self.total:g} {self.unit}s), "
                f"got {self.warmup}"
            )
        if not 0 <= self.eta_min < self.eta0:
            raise ConfigError(
                f"eta_min must be >= 0 and below the learning rate {self.eta0:g}, "
                f"got {self.eta_min}"
            )
        _check_unit(self.unit)

    def __call__(self, step: int, epoch: int) -> float:
        t, warmup = (epoch if self.unit == "epoch" else step), int(self.warmup)
        if t < warmup:
            return self.eta0 * (t + 1) / warmup
        p = min(1.0, (t - warmup) / (self.total - warmup))
        return self.eta_min + (self.eta0 - self.eta_min) * (1.0 + math.cos(math.pi * p)) / 2.0

    def config(self) -> dict[str, Any]:
        return {"name": "cosine", **asdict(self)}


@dataclass(frozen=True)
class Exponential:
    """``lr(t) = start * (end / start) ** (t / (steps - 1))``, ``t`` the optimiser steps taken:
    ``start`` at the first step, ``end`` at step ``steps - 1`` (the learning-rate range test)."""

    start: float
    end: float
    steps: int

    def __post_init__(self) -> None:
        _check_positive("start rate", self.start)
        if not self.end > self.start:
            raise ConfigError(f"end rate must be above the start rate, got {self.end}")
        if int(self.steps) < 2:
            raise ConfigError(f"an exponential sweep needs >= 2 steps, got {self.steps}")

    def __call__(self, step: int, epoch: int) -> float:
        return self.start * (self.end / self.start) ** (step / (int(self.steps) - 1))

    def config(self) -> dict[str, Any]:
        return {"name": "exponential", **asdict(self)}


Schedule = Constant | InverseTime | StepDecay | WarmupCosine | Exponential
SCHEDULES: dict[str, type] = {
    "constant": Constant,
    "inverse_time": InverseTime,
    "step": StepDecay,
    "cosine": WarmupCosine,
    "exponential": Exponential,
}


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
