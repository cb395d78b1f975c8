"""What is inside a model: per-layer statistics of its weights, its activations and a step.

Pure functions of a model, a probe batch and a step's gradients; the names of the values they
return are the column names of the run's history (``W1_norm``, ``a1_saturated``, ...).

- weights, per weight layer ``i``: ``W{i}_norm``, ``b{i}_norm``; with a step, ``W{i}_grad_norm``
  and ``W{i}_update_ratio`` = ``||W_after - W_before|| / ||W_before||``;
- activations of hidden layer ``i`` on the probe batch (evaluation mode): ``a{i}_mean``,
  ``a{i}_std``; for a saturating activation (tanh, sigmoid, scaled tanh) ``a{i}_saturated``, the
  fraction of units saturated: within 1% of the activation's range from one of its limits on
  more than half of the probe rows;
  for a rectifier (relu, leaky_relu) ``a{i}_dead``, the fraction of units never above 0 on the
  probe batch; ``a{i}_hist00`` ... the counts of a fixed-bin histogram (:data:`HIST_BINS` bins
  over :func:`histogram_range`, values outside counted in the end bins);
- batch normalisation: ``bn{i}_running_mean`` and ``bn{i}_running_var``, the means over units of
  the running statistics.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from digitlab.errors import ConfigError
from digitlab.models.base import Model
from digitlab.models.functional import (
    NEEDS_INPUT,
    SCALED_TANH,
    LinearGrad,
    activation_backward_,
)

#: History columns that are these statistics.
LAYER_COLUMN = re.compile(r"(W|b)\d*_(norm|grad_norm|update_ratio)|a\d+_\w+|bn\d+_\w+")
#: The usual range of a healthy step's update/weight ratio (outside it: the rate is likely too
#: high or too low; the app's badges and the report's shaded band use it).
RATIO_BAND = (1e-4, 1e-1)
#: Bins of each layer's activation histogram.
HIST_BINS = 16
#: Output range of the activations that saturate.
SATURATING: dict[str, tuple[float, float]] = {
    "tanh": (-1.0, 1.0),
    "sigmoid": (0.0, 1.0),
    "scaled_tanh": (-SCALED_TANH[0], SCALED_TANH[0]),
}
#: Activations whose units can die (never above 0).
RECTIFIERS = frozenset({"relu", "leaky_relu"})


def histogram_range(activation: str) -> tuple[float, float]:
    """The fixed range of an activation's histogram: its output range where it is bounded,
    else ``[-4, 4]`` (``[0, 4]`` for relu)."""
    if activation in SATURATING:
        return SATURATING[activation]
    return (0.0, 4.0) if activation == "relu" else (-4.0, 4.0)


def hidden_activations(model: Model, X: np.ndarray) -> list[np.ndarray]:
    """The evaluation-mode output ``(n, h_i)`` of every hidden layer (none for linear models)."""
    forward = getattr(model, "hidden_activations", None)
    return [] if forward is None else forward(X)


def weight_statistics(model: Model) -> dict[str, float]:
    """``<param>_norm`` of every weight matrix and bias vector."""
    return {
        f"{k}_norm": float(np.linalg.norm(v))
        for k, v in model.params.items()
        if k[0] in "Wb"
    }


def step_statistics(
    model: Model, grads: Mapping[str, Any], before: Mapping[str, np.ndarray]
) -> dict[str, float]:
    """``W{i}_grad_norm`` and ``W{i}_update_ratio`` of every weight matrix for one step."""
    out: dict[str, float] = {}
    for k in model.weights:
        g = grads[k]
        if isinstance(g, LinearGrad):
            g = g.dense(before[k])
        out[f"{k}_grad_norm"] = float(np.linalg.norm(g))
        norm = float(np.linalg.norm(before[k]))
        change = float(np.linalg.norm(model.params[k] - before[k]))
        out[f"{k}_update_ratio"] = change / norm if norm > 0 else float("nan")
    return out


def activation_statistics(model: Model, X: np.ndarray) -> dict[str, float]:
    """Mean, spread, saturation or death and histogram of every hidden layer on ``X (n, d)``."""
    activation = getattr(model, "activation", "")
    lo, hi = histogram_range(activation)
    out: dict[str, float] = {}
    for i, a in enumerate(hidden_activations(model, X), start=1):
        out[f"a{i}_mean"], out[f"a{i}_std"] = float(a.mean()), float(a.std())
        if activation in SATURATING:
            s_lo, s_hi = SATURATING[activation]
            margin = 0.01 * (s_hi - s_lo)
            near = (a <= s_lo + margin) | (a >= s_hi - margin)
            out[f"a{i}_saturated"] = float((near.mean(axis=0) > 0.5).mean())
        if activation in RECTIFIERS:
            out[f"a{i}_dead"] = float((a.max(axis=0) <= 0).mean())
        counts, _ = np.histogram(np.clip(a, lo, hi), bins=HIST_BINS, range=(lo, hi))
        out |= {f"a{i}_hist{j:02d}": float(c) for j, c in enumerate(counts)}
    buffers = model.buffers
    for name in [k for k in buffers if k.startswith("running_mean")]:
        i = name.removeprefix("running_mean")
        out[f"bn{i}_running_mean"] = float(buffers[name].mean())
        out[f"bn{i}_running_var"] = float(buffers[f"running_var{i}"].mean())
    return out


def layer_histograms(record: Mapping[str, float], layer: int) -> np.ndarray:
    """The histogram counts ``(HIST_BINS,)`` of hidden layer ``layer`` in a history record."""
    return np.array([record[f"a{layer}_hist{j:02d}"] for j in range(HIST_BINS)])



#: What :func:`input_saliency` differentiates: the class's logit or its log-probability.
SALIENCY_TARGETS = ("logit", "log_prob")


def _hidden_backward(model: Model, X: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """``delta (n, n_last)`` = dF/d(output of the last hidden layer) carried back to the
    input ``(n, d)`` through every hidden layer in evaluation mode (running statistics)."""
    params, act = model.params, getattr(model, "activation", "")
    slope = float(getattr(model, "leaky_slope", 0.01))
    bn = bool(getattr(model, "batch_norm", False))
    acts = [model.check_X(X), *hidden_activations(model, X)]
    for i in range(len(acts) - 1, 0, -1):
        W = params[f"W{i}"].astype(np.float64)
        pre, scale = None, None
        if act in NEEDS_INPUT or bn:
            pre = acts[i - 1].astype(np.float64) @ W + params[f"b{i}"]
        if bn:
            eps = float(getattr(model, "bn_eps", 1e-5))
            scale = params[f"gamma{i}"] / np.sqrt(model.buffers[f"running_var{i}"] + eps)
            pre = (pre - model.buffers[f"running_mean{i}"]) * scale + params[f"beta{i}"]
        a = acts[i].astype(np.float64)
        delta = activation_backward_(delta, a, act, pre, slope)
        if scale is not None:
            delta = delta * scale
        delta = delta @ W.T
    return delta


def input_saliency(model: Model, x: np.ndarray, cls: int, target: str = "logit") -> np.ndarray:
    """The gradient of class ``cls``'s logit (or log-probability) with respect to the input.

    Evaluation mode (batch normalisation's running statistics, no dropout); the model is only
    read. The logit of a logistic model's class 1 is ``z = x W + b``, of class 0 ``-z``.

    Parameters
    ----------
    model : Model
        A logistic, softmax or MLP model (weights ``W``, or ``W1`` ... ``WL``).
    x : ndarray (d,)
        One input row in the model's feature space.
    cls : int
        The class, ``0 <= cls < model.n_classes``.
    target : {"logit", "log_prob"}

    Returns
    -------
    ndarray (d,)
        ``dF/dx`` in float64, ``F`` the class's logit or log-probability.

    Raises
    ------
    ConfigError
        An unknown target or class.
    """
    if target not in SALIENCY_TARGETS:
        raise ConfigError(f"target={target!r} is not one of {', '.join(SALIENCY_TARGETS)}")
    if not 0 <= int(cls) < model.n_classes:
        raise ConfigError(f"class {cls} is not one of 0..{model.n_classes - 1}")
    X = model.check_X(np.asarray(x).reshape(1, -1))
    z = np.atleast_1d(model.logits(X)[0]).astype(np.float64)  # (k,), or (1,) for logistic
    if model.kind == "logistic":  # logits (0, z): d log p_c / dz = [c == 1] - sigmoid(z)
        p1 = 1.0 / (1.0 + np.exp(-z[0]))
        dz = np.array([(1.0 if cls == 1 else -1.0) if target == "logit" else cls - p1])
    else:
        dz = np.zeros_like(z)
        dz[int(cls)] = 1.0
        if target == "log_prob":
            e = np.exp(z - z.max())
            dz -= e / e.sum()
    last = "W" if "W" in model.params else f"W{len(model.weights)}"
    delta = dz[None] @ model.params[last].astype(np.float64).T
    if last != "W":
        delta = _hidden_backward(model, X, delta)
    return delta[0]
