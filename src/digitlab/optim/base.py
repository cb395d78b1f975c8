"""The optimiser contract every update rule follows, and the shared machinery of stateful rules.

An optimiser is one class in one file plus one entry in :data:`digitlab.optim.OPTIMIZERS`.
It declares its hyperparameters (names drawn from :data:`HYPERPARAMETER_RANGES`, with their
defaults) and its capabilities (``supports_rank1``: it applies a single-sample
:class:`~digitlab.models.functional.LinearGrad` as a rank-1 update, so the trainer may ask the
model for factored gradients). Its state is a flat dict of arrays (scalars such as the step
count as 0-d arrays) that a checkpoint stores and :meth:`Optimizer.load_state_dict` restores,
so a resumed run continues bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from digitlab.errors import CheckpointError, ConfigError
from digitlab.models.functional import LinearGrad

#: Every hyperparameter name an optimiser may declare -> (low, high, low inclusive, meaning).
HYPERPARAMETER_RANGES: dict[str, tuple[float, float, bool, str]] = {
    "momentum": (0.0, 1.0, True, "[0, 1)"),
    "beta1": (0.0, 1.0, True, "[0, 1)"),
    "beta2": (0.0, 1.0, True, "[0, 1)"),
    "alpha": (0.0, 1.0, True, "[0, 1)"),
    "eps": (0.0, math.inf, False, "(0, inf)"),
    "weight_decay": (0.0, math.inf, True, "[0, inf)"),
}

#: The methods of an update rule (:class:`SlotOptimizer`'s) whose arithmetic the factored
#: gradient paths (rank-1 updates, the velocity GEMM) replace: a rule changing one of them is
#: given arrays.
RULE_METHODS = ("step", "apply_one", "update")

Params = dict[str, np.ndarray]
Grads = Mapping[str, "np.ndarray | LinearGrad"]


@runtime_checkable
class Optimizer(Protocol):
    """What the trainer, the runner and the estimators need from an update rule."""

    name: ClassVar[str]
    hyperparameters: ClassVar[dict[str, float]]
    supports_rank1: ClassVar[bool]

    def step(self, params: Params, grads: Grads, lr: float) -> None:
        """Update ``params`` in place from ``grads`` (same keys and shapes) at rate ``lr``."""

    def state_dict(self) -> dict[str, np.ndarray]:
        """The state to checkpoint: arrays, scalars as 0-d arrays (copies)."""

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Restore what :meth:`state_dict` returned."""

    def missing_state(self, params: Params) -> list[str]:
        """State entries a rule that has taken steps on ``params`` should hold but does not."""

    def config(self) -> dict[str, Any]:
        """``{"name": ..., **hyperparameters}``; ``make_optimizer(config())`` rebuilds it."""


def check_hyperparameters(cls: type, values: Mapping[str, Any]) -> dict[str, float]:
    """``cls.hyperparameters`` updated from ``values``, each checked for name, type and range.

    Raises
    ------
    ConfigError
        A name ``cls`` does not declare, a value that is not a real number, or out of range.
    """
    declared: dict[str, float] = cls.hyperparameters
    unknown = sorted(set(values) - set(declared))
    if unknown:
        raise ConfigError(
            f"optimizer {cls.name!r} has no hyperparameter {', '.join(map(repr, unknown))}; "
            f"it takes {', '.join(declared) or 'none'}"
        )
    out = dict(declared)
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        low, high, low_ok, text = HYPERPARAMETER_RANGES[key]
        v = float(value)
        if not ((low <= v if low_ok else low < v) and v < high):
            raise ConfigError(f"{key} must be in {text}, got {value}")
        out[key] = v
    return out


class SlotOptimizer:
    """Base of update rules that keep per-parameter arrays ("slots") and a step count.

    A subclass declares ``name`` and ``hyperparameters`` (read as attributes after
    ``__init__``), lists its slots in :meth:`slot_names` and implements :meth:`update`.
    Slots are created as zeros the shape and dtype of their parameter on first use; their
    names in :meth:`state_dict` are ``"<slot>/<param>"``, the step count is ``"step"``.
    """

    name: ClassVar[str]
    hyperparameters: ClassVar[dict[str, float]]
    supports_rank1: ClassVar[bool] = False

    def __init__(self, **hyperparameters: float) -> None:
        for key, value in check_hyperparameters(type(self), hyperparameters).items():
            setattr(self, key, value)
        self.t = 0  # steps taken
        self.slots: dict[str, dict[str, np.ndarray]] = {s: {} for s in self.slot_names()}

    def slot_names(self) -> tuple[str, ...]:
        """The per-parameter arrays this rule keeps (may depend on the hyperparameters)."""
        return ()

    def update(self, p: np.ndarray, g: np.ndarray, slots: list[np.ndarray], lr: float) -> None:
        """Update one parameter ``p`` in place from its gradient ``g`` (not to be modified)
        and its slots (in :meth:`slot_names` order), at step ``self.t`` (counted from 1)."""
        raise NotImplementedError

    def step(self, params: Params, grads: Grads, lr: float) -> None:
        """Update ``params`` in place, one parameter at a time (:meth:`apply_one`)."""
        self.t += 1
        for k, p in params.items():
            self.apply_one(k, p, grads[k], lr)

    def apply_one(self, k: str, p: np.ndarray, g: np.ndarray | LinearGrad, lr: float) -> None:
        """Update parameter ``k``; a :class:`LinearGrad` is formed as an array first."""
        if isinstance(g, LinearGrad):
            g = g.dense(p)
        self.update(p, g, [self.slot(s, k, p) for s in self.slots], lr)

    def missing_state(self, params: Params) -> list[str]:
        """The ``"<slot>/<param>"`` entries a rule that has taken steps should hold but does
        not (a checkpoint without them would restart the rule's averages)."""
        return [f"{s}/{k}" for s in self.slot_names() for k in params if k not in self.slots[s]]

    def slot(self, slot: str, k: str, p: np.ndarray) -> np.ndarray:
        """Slot ``slot`` of parameter ``k`` (zeros the shape of ``p`` on first use)."""
        arrays = self.slots[slot]
        a = arrays.get(k)
        if a is None:
            a = arrays[k] = np.zeros_like(p)
        elif a.shape != p.shape:
            raise CheckpointError(
                f"optimizer state {slot}/{k} has shape {a.shape}, parameter has {p.shape}"
            )
        return a

    def config(self) -> dict[str, Any]:
        return {"name": self.name, **{k: getattr(self, k) for k in self.hyperparameters}}

    def state_dict(self) -> dict[str, np.ndarray]:
        """``{"step": 0-d int64, "<slot>/<param>": array}`` (copies)."""
        state = {"step": np.array(self.t, dtype=np.int64)}
        for slot, arrays in self.slots.items():
            state |= {f"{slot}/{k}": a.copy() for k, a in arrays.items()}
        return state

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore :meth:`state_dict`'s output; an unknown or malformed entry is refused.

        Raises
        ------
        CheckpointError
        """
        slots: dict[str, dict[str, np.ndarray]] = {s: {} for s in self.slot_names()}
        step = state.get("step")
        if step is None or np.shape(step) != () or np.asarray(step).dtype.kind not in "iu":
            raise CheckpointError(
                f"{self.name} optimizer state needs a step count (0-d integer array 'step')"
            )
        for key, value in state.items():
            slot, _, param = key.partition("/")
            if key == "step":
                continue
            if slot not in slots or not param:
                raise CheckpointError(
                    f"{self.name} optimizer state has an unexpected entry {key!r} "
                    f"(expected step and {', '.join(slots) or 'no arrays'})"
                )
            array = np.array(value)
            if array.dtype.kind != "f":
                raise CheckpointError(f"optimizer state {key!r} is not a float array")
            slots[slot][param] = array
        if int(step) < 0:
            raise CheckpointError(f"optimizer step count must be >= 0, got {int(step)}")
        self.t, self.slots = int(step), slots
