"""Inside a model for one drawn digit: hidden-layer activations and input-gradient saliency.

Plain functions of a loaded checkpoint and one preprocessed image, used by the draw page's
``/api/predict``; maps are returned scaled to a largest magnitude of 1 (with the scale) and
rounded, to keep the JSON of a prediction small while the user draws.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from digitlab.models.inspect import RECTIFIERS, hidden_activations, input_saliency

#: Hidden units per layer shown with their activation (and, in layer 1, input weights).
TOP_UNITS = 12
#: Activations per hidden layer returned as the layer's strip (the first units).
MAX_LAYER_VALUES = 1024


def scaled(values: np.ndarray, digits: int = 3) -> tuple[float, list[float]]:
    """``(scale, values / scale rounded)`` with ``scale`` the largest ``|value|`` (1 if 0)."""
    v = np.asarray(values, dtype=np.float64)
    scale = float(np.abs(v).max()) if v.size else 0.0
    scale = scale if scale > 0 and np.isfinite(scale) else 1.0
    return scale, np.round(v / scale, digits).tolist()


def pixel_slope(prep: Any, d: int) -> np.ndarray:
    """d feature / d pixel intensity ``(d,)`` (intensity in [0, 1]) of a fitted preprocessor;
    every preprocessing is affine per pixel, so two transforms give it exactly."""
    ends = prep.transform(np.array([[0] * d, [255] * d], dtype=np.uint8))[:, :d]
    return ends[1].astype(np.float64) - ends[0]


def hidden_layers(model: Any, X: np.ndarray, image_weights: np.ndarray | None) -> list[dict]:
    """Each hidden layer's activations for the one row ``X (1, d)``.

    Returns ``[{"layer", "units", "activation", "mean", "active" (the fraction of units above
    0; rectifiers only, else None), "scale", "values" (the first MAX_LAYER_VALUES activations /
    scale), "top": [{"unit", "value", "weights"}]}]``, ``top`` the TOP_UNITS most active units,
    most active first; ``weights`` (layer 1 only, with
    ``image_weights (h*w, n_1)``) the unit's input weights scaled to a largest |w| of 1.
    """
    out = []
    activation = str(getattr(model, "activation", ""))
    for i, a in enumerate(hidden_activations(model, X), start=1):
        a = a[0].astype(np.float64)
        order = np.argsort(-a, kind="stable")[:TOP_UNITS]
        top = []
        for j in order.tolist():
            w = None
            if i == 1 and image_weights is not None:
                w = scaled(image_weights[:, j])[1]
            top.append({"unit": j, "value": round(float(a[j]), 5), "weights": w})
        scale, values = scaled(a[:MAX_LAYER_VALUES])
        out.append({
            "layer": i, "units": int(a.size), "activation": activation,
            "mean": round(float(a.mean()), 5),
            "active": round(float((a > 0).mean()), 5) if activation in RECTIFIERS else None,
            "scale": scale, "values": values, "top": top,
        })  # fmt: skip
    return out


def saliency_maps(
    model: Any, prep: Any, X: np.ndarray, intensity: np.ndarray, classes: list[int]
) -> list[dict[str, Any]]:
    """Input-gradient saliency of each class in ``classes`` for the one row ``X (1, d[+1])``.

    ``intensity (h*w,)`` is the image in [0, 1] (ink bright). Returns ``[{"class", "gradient",
    "gradient_scale", "times_input", "times_input_scale"}]``: ``gradient`` is d logit / d
    pixel intensity (through the preprocessing), ``times_input`` that times the intensity
    (each pixel's first-order share against a blank image: zero off the strokes).
    """
    d = intensity.size
    slope = pixel_slope(prep, d)
    out = []
    for c in classes:
        g = input_saliency(model, X[0], c, "logit")[:d] * slope
        gs, gv = scaled(g)
        ts, tv = scaled(g * intensity)
        out.append({"class": c, "gradient": gv, "gradient_scale": gs,
                    "times_input": tv, "times_input_scale": ts})  # fmt: skip
    return out
