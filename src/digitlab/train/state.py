"""A trainer's checkpoint state: what it saves and how a resumed trainer takes it back.

The arrays are the model state (``model/``: parameters and buffers), the optimiser state
(``optim/``), the epoch's row order (``trainer/order``), each callback's arrays (``cb<i>/``)
and what the caller attached (``extra/``); the metadata holds the configs, the progress
counters, the generators' states and the callbacks' values.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from digitlab.checkpoint import prefixed, split_prefixed
from digitlab.errors import CheckpointError

#: The progress counters of ``meta["progress"]``: whole numbers, then the clock.
PROGRESS = ("step", "epoch", "pos", "last_eval_step")


def trainer_state(trainer: Any) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Everything needed to resume ``trainer`` (a :class:`~digitlab.train.Trainer`)
    bit-identically: arrays and JSON-able metadata."""
    from digitlab import __version__

    arrays = prefixed("model", trainer.model.state())
    arrays |= prefixed("optim", trainer.optimizer.state_dict())
    if trainer.order is not None:
        arrays["trainer/order"] = trainer.order
    cb_meta = []
    for i, cb in enumerate(trainer.callbacks):
        cb_arrays, values = cb.state_dict()
        arrays |= prefixed(f"cb{i}", cb_arrays)
        cb_meta.append({"class": type(cb).__name__, "state": values})
    arrays |= prefixed("extra", trainer.extra_arrays)
    progress: dict[str, Any] = {k: getattr(trainer, k) for k in PROGRESS}
    progress |= {"elapsed": trainer.elapsed, "has_order": trainer.order is not None}
    meta = {
        "digitlab_version": __version__,
        "model": trainer.model.config(),
        "optimizer": trainer.optimizer.config(),
        "schedule": trainer.schedule.config(),
        "trainer": {
            "batch_size": trainer.batch_spec,
            "shuffle": trainer.shuffle,
            "drop_last": trainer.drop_last,
            "replacement": trainer.replacement,
            "eval_every": trainer.eval_spec,
        },
        "progress": progress,
        "rng": trainer.rng.bit_generator.state,
        "callbacks": cb_meta,
        "extra": trainer.extra_meta,
    }
    if trainer.shuffle_rng is not None:
        _, keys, pos, has_gauss, gauss = trainer.shuffle_rng.get_state(legacy=True)
        meta["legacy_rng"] = {"keys": keys.tolist(), "pos": int(pos),
                              "has_gauss": int(has_gauss), "gauss": float(gauss)}  # fmt: skip
    return arrays, meta


def restore_trainer(
    trainer: Any, arrays: dict[str, np.ndarray], meta: dict[str, Any], restart_missing: bool = False
) -> None:
    """Restore progress, model state, optimiser, RNGs and callback state from a checkpoint.

    The model, optimizer, schedule and callbacks are the ones ``trainer`` was built with (the
    schedule may differ from the saved one: a run resumed with a new learning rate). A
    checkpoint of the same update rule that lacks part of its state (a velocity) is refused
    unless ``restart_missing``: that state then restarts from zero.

    Raises
    ------
    CheckpointError
        The arrays do not fit the model or the optimiser, or a generator state is missing.
    """
    trainer.model.load_state(split_prefixed(arrays, "model"))
    _restore_optimizer(trainer, split_prefixed(arrays, "optim"), meta, restart_missing)
    progress = meta["progress"]
    for key in PROGRESS:
        setattr(trainer, key, int(progress[key]))
    trainer.elapsed = float(progress["elapsed"])
    trainer.order = arrays["trainer/order"] if progress["has_order"] else None
    trainer.rng.bit_generator.state = meta["rng"]
    if trainer.shuffle_rng is not None:
        legacy = meta.get("legacy_rng")
        if not isinstance(legacy, dict):
            raise CheckpointError("checkpoint has no legacy shuffle state to resume from")
        keys = np.array(legacy["keys"], dtype=np.uint32)
        trainer.shuffle_rng.set_state(
            ("MT19937", keys, legacy["pos"], legacy["has_gauss"], legacy["gauss"])
        )
    saved = meta.get("callbacks", [])
    for i, cb in enumerate(trainer.callbacks):
        same = [j for j, s in enumerate(saved) if s["class"] == type(cb).__name__]
        if same:
            j = i if i in same else same[0]
            cb.load_state_dict(split_prefixed(arrays, f"cb{j}"), saved[j]["state"])
    trainer.extra_meta = dict(meta.get("extra", {}))
    trainer.extra_arrays = split_prefixed(arrays, "extra")


def _restore_optimizer(
    trainer: Any, state: dict[str, np.ndarray], meta: dict[str, Any], restart_missing: bool
) -> None:
    """The optimiser's state, checked for its name and for shapes that fit the parameters
    (a wrong shape would only fail mid-training)."""
    name = trainer.optimizer.config()["name"]
    saved_name = meta.get("optimizer", {}).get("name", "sgd")
    if saved_name != name:
        raise CheckpointError(
            f"checkpoint was trained with optimizer {saved_name!r}, this run uses {name!r}"
        )
    params = trainer.model.params
    for key, value in state.items():
        param = params.get(key.rsplit("/", 1)[-1])
        expected = () if param is None else param.shape
        if np.shape(value) != expected:
            raise CheckpointError(
                f"checkpoint optimizer state {key} has shape {np.shape(value)}, expected {expected}"
            )
    trainer.optimizer.load_state_dict(state)
    same_rule = meta.get("optimizer") == trainer.optimizer.config()
    missing = trainer.optimizer.missing_state(params) if same_rule else []
    if missing and int(meta["progress"]["step"]) > 0 and not restart_missing:
        raise CheckpointError(
            f"checkpoint lacks optimiser state {', '.join(missing[:4])}"
            f"{' ...' if len(missing) > 4 else ''}: resuming would restart the {name} "
            "rule's running averages (momentum) from zero (digitlab resume --restart-momentum "
            "accepts that)"
        )


def check_position(trainer: Any, n: int) -> None:
    """A resumed trainer's place in the epoch must fit a training set of ``n`` rows.

    Raises
    ------
    CheckpointError
        The position lies outside an epoch, or the saved row order has another length.
    """
    if not 0 <= trainer.pos <= trainer.steps_per_epoch:
        raise CheckpointError(
            f"checkpoint position {trainer.pos} is outside an epoch of "
            f"{trainer.steps_per_epoch} steps on this training set"
        )
    # at an epoch's start the order is drawn anew
    mid_epoch, order = trainer.pos > 0, trainer.order
    if mid_epoch and order is not None and not trainer.replacement and order.shape != (n,):
        raise CheckpointError(
            f"checkpoint shuffle order has {order.size} rows, the training set {n}"
        )
