"""Update rules: objects that own their state (velocity) and update parameters in place."""

from __future__ import annotations

from typing import Any

import numpy as np

from digitlab.errors import CheckpointError, ConfigError


class SGD:
    """Gradient descent, with optional heavy-ball momentum.

    ``v <- mu v + g``;  ``p <- p - lr v``  (with ``mu = 0`` this is plain ``p <- p - lr g``;
    the same convention as TDT4265 assignment 2 and PyTorch's SGD).

    Parameters
    ----------
    momentum : float
        ``mu`` in [0, 1).
    """

    def __init__(self, momentum: float = 0.0) -> None:
        if not 0.0 <= momentum < 1.0:
            raise ConfigError(f"momentum must be in [0, 1), got {momentum}")
        self.momentum = float(momentum)
        self.velocity: dict[str, np.ndarray] = {}

    def step(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray], lr: float) -> None:
        """Update ``params`` in place from ``grads`` (same keys and shapes)."""
        if not self.momentum:
            for k, p in params.items():
                p -= lr * grads[k]  # scalar*array then in-place subtract: one temporary
            return
        for k, p in params.items():
            v = self.velocity.get(k)
            if v is None:
                v = self.velocity[k] = np.zeros_like(p)
            v *= self.momentum
            v += grads[k]
            p -= lr * v

    def config(self) -> dict[str, Any]:
        return {"name": "sgd", "momentum": self.momentum}

    def state_dict(self) -> dict[str, np.ndarray]:
        """The velocity arrays (empty for plain gradient descent)."""
        return {k: v.copy() for k, v in self.velocity.items()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        if state and not self.momentum:
            raise CheckpointError("checkpoint holds momentum state but momentum is 0")
        self.velocity = {k: np.array(v) for k, v in state.items()}


def make_optimizer(config: dict[str, Any]) -> SGD:
    """Build an update rule from its ``config()`` dict."""
    cfg = dict(config)
    name = cfg.pop("name", "sgd")
    if name != "sgd":
        raise ConfigError(f"unknown optimizer {name!r}; choose sgd (momentum >= 0)")
    return SGD(**cfg)
