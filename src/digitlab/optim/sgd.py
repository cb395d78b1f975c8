"""Gradient descent with optional heavy-ball momentum: the default update rule."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from digitlab.errors import CheckpointError
from digitlab.models.functional import LinearGrad, rank1_update_
from digitlab.optim.base import check_hyperparameters


class SGD:
    """Gradient descent, with optional heavy-ball momentum.

    ``v <- mu v + g``;  ``p <- p - lr v``  (with ``mu = 0`` this is plain ``p <- p - lr g``;
    the same convention as TDT4265 assignment 2 and PyTorch's SGD).

    Parameters
    ----------
    momentum : float
        ``mu`` in [0, 1).

    Its state is the velocity arrays keyed by parameter name (none for plain descent). It
    applies a single-sample factored gradient as a rank-1 update (``supports_rank1``).
    """

    name: ClassVar[str] = "sgd"
    hyperparameters: ClassVar[dict[str, float]] = {"momentum": 0.0}
    supports_rank1: ClassVar[bool] = True

    def __init__(self, momentum: float = 0.0) -> None:
        self.momentum = check_hyperparameters(SGD, {"momentum": momentum})["momentum"]
        self.velocity: dict[str, np.ndarray] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A subclass that replaces :meth:`step` gets factored gradients only if it says so."""
        super().__init_subclass__(**kwargs)
        if "step" in vars(cls) and "supports_rank1" not in vars(cls):
            cls.supports_rank1 = False

    def step(
        self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray | LinearGrad], lr: float
    ) -> None:
        """Update ``params`` in place from ``grads`` (same keys and shapes).

        A gradient may also be a :class:`~digitlab.models.functional.LinearGrad`
        ``(a, delta, decay)`` from ``Model.loss_and_grad_factored``, meaning
        ``g = a.T @ delta + decay * p``. From one sample (``a`` has one row) it is applied
        without forming ``g``, as a rank-1 update of ``p`` (plain) or ``v`` (momentum):

        - plain: ``p <- p - lr g = (1 - lr decay) p - lr x d^T``, one BLAS ``ger`` pass;
        - momentum: ``v <- mu v + x d^T`` (``ger``), ``v += decay p``, ``p -= lr v``.

        These equal the array formulas to float rounding (tests/test_optim.py). From a batch,
        ``g`` is formed (``LinearGrad.dense``, the numbers ``loss_and_grad`` gives) and
        applied as an array.
        """
        for k, p in params.items():
            g = grads[k]
            if isinstance(g, LinearGrad):
                if g.a.shape[0] == 1:
                    self._rank1_step(k, p, g, lr)
                    continue
                g = g.dense(p)
            if not self.momentum:
                p -= lr * g  # scalar*array then in-place subtract: one temporary
                continue
            v = self._velocity(k, p)
            v *= self.momentum
            v += g
            p -= lr * v

    def _velocity(self, k: str, p: np.ndarray) -> np.ndarray:
        v = self.velocity.get(k)
        if v is None:
            v = self.velocity[k] = np.zeros_like(p)
        return v

    def _rank1_step(self, k: str, p: np.ndarray, g: LinearGrad, lr: float) -> None:
        x, d = g.a[0], g.delta[0]  # the gradient is outer(x, d) + decay p
        if not self.momentum:
            if g.decay:
                p *= 1.0 - lr * g.decay
            rank1_update_(p, x, d, -lr)
            return
        v = self._velocity(k, p)
        v *= self.momentum
        rank1_update_(v, x, d, 1.0)
        if g.decay:
            v += g.decay * p
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
