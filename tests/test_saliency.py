"""input_saliency: the input gradient of a class's logit or log-probability, against finite
differences, for every model kind and activation."""

from __future__ import annotations

import numpy as np
import pytest

from digitlab.errors import ConfigError
from digitlab.models import LogisticModel, MLPModel, SoftmaxModel
from digitlab.models.functional import ACTIVATIONS
from digitlab.models.inspect import input_saliency


def _target(model, x: np.ndarray, cls: int, target: str) -> float:
    z = np.atleast_1d(model.logits(x[None])[0]).astype(np.float64)
    if model.kind == "logistic":
        z = np.array([0.0, z[0]])
    if target == "logit":
        return float(z[cls]) if model.kind != "logistic" else float(z[1] if cls else -z[1])
    return float(z[cls] - z.max() - np.log(np.exp(z - z.max()).sum()))


def _finite_differences(model, x: np.ndarray, cls: int, target: str, h: float = 1e-6):
    out = np.empty_like(x)
    for j in range(x.size):
        e = np.zeros_like(x)
        e[j] = h
        out[j] = (_target(model, x + e, cls, target) - _target(model, x - e, cls, target)) / (2 * h)
    return out


def _trained_looking(model, rng: np.random.Generator):
    for k, v in model.params.items():  # biases and BN parameters away from their init
        if not k.startswith("W"):
            v[...] = rng.normal(0.5 if k.startswith("gamma") else 0.0, 0.3, v.shape) + (
                0.5 if k.startswith("gamma") else 0.0
            )
    for k, v in model.buffers.items():
        v[...] = rng.uniform(0.5, 2.0, v.shape) if "var" in k else rng.normal(0, 0.3, v.shape)
    return model


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("batch_norm", [False, True])
def test_mlp_saliency_equals_finite_differences(activation: str, batch_norm: bool) -> None:
    rng = np.random.default_rng(1)
    model = MLPModel(12, 4, (7, 5), activation, batch_norm=batch_norm, dropout=0.3, leaky_slope=0.2,
                     dtype=np.float64, rng=0)  # fmt: skip
    _trained_looking(model, rng)
    x = rng.normal(size=12)
    for cls in (0, 3):
        for target in ("logit", "log_prob"):
            got = input_saliency(model, x, cls, target)
            want = _finite_differences(model, x, cls, target)
            assert got.shape == (12,)
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kind", ["softmax", "logistic"])
def test_linear_saliency_is_the_weight_column(kind: str) -> None:
    rng = np.random.default_rng(2)
    if kind == "softmax":
        model = SoftmaxModel(9, 3, dtype=np.float64, rng=0, init="normal")
    else:
        model = LogisticModel(9, dtype=np.float64, rng=0, init="normal")
    model.params["b"][:] = rng.normal(size=model.params["b"].shape)
    x = rng.normal(size=9)
    W = model.params["W"]
    for cls in range(model.n_classes):
        logit = input_saliency(model, x, cls)
        expected = W[:, cls] if kind == "softmax" else (W[:, 0] if cls else -W[:, 0])
        np.testing.assert_allclose(logit, expected, rtol=1e-12)
        got = input_saliency(model, x, cls, "log_prob")
        np.testing.assert_allclose(got, _finite_differences(model, x, cls, "log_prob"),
                                   rtol=1e-5, atol=1e-7)  # fmt: skip


def test_saliency_leaves_a_float32_model_alone_and_refuses_bad_arguments() -> None:
    model = MLPModel(6, 3, (4,), "relu", rng=0)
    before = {k: v.copy() for k, v in model.params.items()}
    x = np.linspace(-1, 1, 6).astype(np.float32)
    g = input_saliency(model, x, 2)
    assert g.dtype == np.float64 and np.isfinite(g).all()
    assert all(np.array_equal(before[k], v) and v.dtype == np.float32
               for k, v in model.params.items())  # fmt: skip
    with pytest.raises(ConfigError):
        input_saliency(model, x, 3)
    with pytest.raises(ConfigError):
        input_saliency(model, x, 0, "loss")
