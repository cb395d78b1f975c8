"""Gradient descent with optional heavy-ball momentum: the default update rule."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from digitlab import blas
from digitlab.errors import CheckpointError
from digitlab.kernels import NARROW_COLUMNS
from digitlab.models.base import own_methods
from digitlab.models.functional import LinearGrad, rank1_update_
from digitlab.optim.base import RULE_METHODS, SlotOptimizer


class SGD(SlotOptimizer):
    """Gradient descent, with optional heavy-ball momentum.

    ``v <- mu v + g``;  ``p <- p - lr v``  (with ``mu = 0`` this is plain ``p <- p - lr g``;
    the convention of PyTorch's SGD).

    Parameters
    ----------
    momentum : float
        ``mu`` in [0, 1).

    Its slots are the velocity arrays (none for plain descent). It applies a single-sample
    factored gradient as a rank-1 update (``supports_rank1``), and with momentum a batch's
    factored gradient of a wide layer as one GEMM into the velocity
    (:attr:`fuses_batch_gradients`).
    """

    name: ClassVar[str] = "sgd"
    hyperparameters: ClassVar[dict[str, float]] = {"momentum": 0.0}
    supports_rank1: ClassVar[bool] = True
    momentum: float

    def __init__(self, momentum: float = 0.0) -> None:
        super().__init__(momentum=momentum)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A subclass that replaces :meth:`step`, :meth:`apply_one` or :meth:`update` gets
        factored gradients only if it says so (``supports_rank1``)."""
        super().__init_subclass__(**kwargs)
        if any(m in vars(cls) for m in RULE_METHODS) and "supports_rank1" not in vars(cls):
            cls.supports_rank1 = False

    @property
    def fuses_batch_gradients(self) -> bool:
        """Whether a batch's factored gradients save work here: with momentum, ``v <- mu v +
        a^T delta`` is one BLAS call into the velocity (:func:`digitlab.blas.gemm_tn_`; no
        gradient array, two passes over the velocity fewer), when NumPy's BLAS is reachable
        and :meth:`apply_one`, :meth:`update` and :meth:`step` are this class's own (a subclass
        changing the rule gets arrays)."""
        own = own_methods(self, SGD, (*RULE_METHODS, "_batch_step"))
        return bool(self.momentum) and own and blas.available()

    @property
    def velocity(self) -> dict[str, np.ndarray]:
        """The velocity arrays by parameter name (empty for plain descent)."""
        return self.slots.get("velocity", {})

    def slot_names(self) -> tuple[str, ...]:
        return ("velocity",) if self.momentum else ()

    def apply_one(self, k: str, p: np.ndarray, g: np.ndarray | LinearGrad, lr: float) -> None:
        """A gradient may also be a :class:`~digitlab.models.functional.LinearGrad`
        ``(a, delta, decay)`` meaning ``g = a.T @ delta + decay * p``. From one sample (``a``
        has one row) it is applied without forming ``g``, as a rank-1 update of ``p`` (plain)
        or ``v`` (momentum):

        - plain: ``p <- p - lr g = (1 - lr decay) p - lr x d^T``, one BLAS ``ger`` pass;
        - momentum: ``v <- mu v + x d^T`` (``ger``), ``v += decay p``, ``p -= lr v``.

        These equal the array formulas to float rounding (tests/test_optim.py). From a batch,
        with momentum, no decay and more than :data:`~digitlab.kernels.NARROW_COLUMNS` columns,
        ``v <- mu v + a^T delta`` is one GEMM into ``v`` (:meth:`_batch_step`, up to
        :data:`digitlab.blas.ONE_BLOCK_ROWS` rows; bit for bit the array formula); otherwise
        ``g`` is formed (``LinearGrad.dense``) and applied as an array.
        """
        if isinstance(g, LinearGrad):
            if g.a.shape[0] == 1:
                self._rank1_step(k, p, g, lr)
                return
            if self.momentum and self._batch_step(k, p, g, lr):
                return
        super().apply_one(k, p, g, lr)

    def update(self, p: np.ndarray, g: np.ndarray, slots: list[np.ndarray], lr: float) -> None:
        if not slots:
            p -= lr * g  # scalar*array then in-place subtract: one temporary
            return
        (v,) = slots
        v *= self.momentum
        v += g
        p -= lr * v

    def _batch_step(self, k: str, p: np.ndarray, g: LinearGrad, lr: float) -> bool:
        """Momentum step from a batch's factored gradient with the velocity written by one
        GEMM; False (nothing changed) for a narrow layer (its product's layout is a
        calibrated choice, :func:`digitlab.kernels.transposed`), with weight decay (the array
        formula adds it to the gradient before the velocity: another rounding), for a batch
        of more than :data:`digitlab.blas.ONE_BLOCK_ROWS` rows (BLAS would add its blocks'
        sums to ``mu v`` one by one), for a layer of one input (NumPy's product is then a
        matrix-vector one) or where the GEMM cannot be called directly. So the step
        is bit for bit the array formula's whether or not NumPy's BLAS is reachable."""
        (n, inputs), outputs = g.a.shape, g.delta.shape[1]
        if g.decay or outputs <= NARROW_COLUMNS or not 2 <= n <= blas.ONE_BLOCK_ROWS:
            return False  # with decay, mu v + (a^T delta + decay p) keeps its own rounding
        if inputs < 2:  # NumPy multiplies a (1, n) @ (n, q) as a matrix-vector product
            return False
        v = self.slot("velocity", k, p)
        if not blas.gemm_tn_(v, g.a, g.delta, self.momentum):
            return False
        p -= lr * v
        return True

    def _rank1_step(self, k: str, p: np.ndarray, g: LinearGrad, lr: float) -> None:
        x, d = g.a[0], g.delta[0]  # the gradient is outer(x, d) + decay p
        if not self.momentum:
            if g.decay:
                p *= 1.0 - lr * g.decay
            rank1_update_(p, x, d, -lr)
            return
        v = self.slot("velocity", k, p)
        v *= self.momentum
        rank1_update_(v, x, d, 1.0)
        if g.decay:
            v += g.decay * p
        p -= lr * v

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore :meth:`state_dict`'s output; also reads the layout of checkpoint format 1
        (velocity arrays keyed by parameter name alone, no step count)."""
        if "step" not in state and all("/" not in k for k in state):
            state = {"step": np.array(0), **{f"velocity/{k}": v for k, v in state.items()}}
        if not self.momentum and any(k.startswith("velocity/") for k in state):
            raise CheckpointError("checkpoint holds momentum state (velocity) but momentum is 0")
        super().load_state_dict(state)
