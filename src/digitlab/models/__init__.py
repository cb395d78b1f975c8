"""Models: pure math on arrays (forward, loss, gradient). No I/O, no printing, no global state."""

from __future__ import annotations

from typing import Any

import numpy as np

from digitlab.errors import ConfigError
from digitlab.models.base import DTYPES, INITS, REDUCTIONS, Model, init_weight
from digitlab.models.functional import ACTIVATIONS
from digitlab.models.linear import LogisticModel, SoftmaxModel
from digitlab.models.mlp import MLPModel

MODELS: dict[str, type[Model]] = {
    "logistic": LogisticModel,
    "softmax": SoftmaxModel,
    "mlp": MLPModel,
}


def build_model(config: dict[str, Any], params: dict[str, np.ndarray] | None = None) -> Model:
    """Rebuild a model from :meth:`Model.config` and, optionally, its parameter arrays.

    Parameters
    ----------
    config : dict
        As returned by ``model.config()``.
    params : dict of ndarray, optional
        State arrays (parameters and buffers, :meth:`Model.state`); their keys and shapes
        must match the config.

    Returns
    -------
    Model
    """
    cfg = dict(config)
    kind = cfg.pop("kind", None)
    if kind not in MODELS:
        raise ConfigError(f"unknown model kind {kind!r}; choose one of {', '.join(MODELS)}")
    if kind == "logistic":
        cfg.pop("n_classes", None)
    try:
        model = MODELS[kind](**cfg)
    except TypeError as exc:
        raise ConfigError(f"bad {kind} model config: {exc}") from None
    if params is not None:
        model.load_state(params)
    return model


__all__ = [
    "ACTIVATIONS",
    "DTYPES",
    "INITS",
    "MODELS",
    "REDUCTIONS",
    "LogisticModel",
    "MLPModel",
    "Model",
    "SoftmaxModel",
    "build_model",
    "init_weight",
]
