"""The optimiser registry: the one list of update-rule names (CLI, settings, estimators)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from digitlab.errors import ConfigError
from digitlab.optim.adam import Adam
from digitlab.optim.adamw import AdamW
from digitlab.optim.base import Optimizer, check_hyperparameters
from digitlab.optim.nesterov import Nesterov
from digitlab.optim.rmsprop import RMSprop
from digitlab.optim.sgd import SGD

#: name -> optimiser class (each follows :class:`~digitlab.optim.base.Optimizer`).
OPTIMIZERS: dict[str, type[Any]] = {
    "sgd": SGD,
    "nesterov": Nesterov,
    "adam": Adam,
    "adamw": AdamW,
    "rmsprop": RMSprop,
}


def make_optimizer(config: Mapping[str, Any]) -> Optimizer:
    """Build an update rule from ``{"name": ..., **hyperparameters}`` (its ``config()``).

    A missing name means ``"sgd"``; missing hyperparameters take the class defaults.

    Raises
    ------
    ConfigError
        An unknown name or hyperparameter, or a value out of range.
    """
    if not isinstance(config, Mapping):
        raise ConfigError(f"an optimizer config must be a mapping, got {type(config).__name__}")
    cfg = dict(config)
    name = cfg.pop("name", "sgd")
    cls = OPTIMIZERS.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ConfigError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    check_hyperparameters(cls, cfg)  # unknown names as a ConfigError, not a TypeError
    return cls(**cfg)
