"""``digitlab check module.py:Name``: a learner's own model, whatever its layout.

``Name`` is either a function ``loss_and_grad(params, X, y) -> (loss, grads)`` (``params``
and ``grads`` dicts of arrays named as digitlab's models name them: ``W``, ``b`` for the
linear models, ``W1``, ``b1``, ``W2``... for the MLP; ``X (n, d)``, integer labels ``y (n,)``)
or a class with a ``params`` dict and a method ``loss_and_grad(X, y)``, built with no
arguments or with ``(n_features, n_classes)``.

With ``kind`` (``--as logistic|softmax|mlp``) its loss and each gradient array are compared
with digitlab's model of that kind at the same parameters (relative error per array, and a
diagnosis where a known mistake matches). Without it, the numerical gradient check alone:
central differences in float64 against its own gradients, a relative error per array.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from digitlab.check.compare import compare, matches
from digitlab.check.report import CheckResult
from digitlab.check.sandbox import Outcome, Sandbox, ValueDescription, import_timeout_for
from digitlab.errors import ConfigError
from digitlab.models import build_model

N_ROWS, N_FEATURES, N_CLASSES = 16, 12, 4
NUMERIC_EPS = 1e-5
#: Largest per-array relative error |a - n| / max(|a| + |n|) a numerical check accepts.
NUMERIC_TOL = 1e-6
ENTRIES_PER_ARRAY = 12


@dataclass(frozen=True)
class GenericSpec:
    """``--as`` and the penalty / architecture options of a generic check."""

    kind: str | None = None
    l1: float = 0.0
    l2: float = 0.0
    hidden: tuple[int, ...] = (16,)
    activation: str = "tanh"


def _reference_model(spec: GenericSpec, rng: np.random.Generator) -> Any:
    """digitlab's model of ``spec.kind`` in float64 with random parameters."""
    config: dict[str, Any] = {
        "kind": spec.kind,
        "n_features": N_FEATURES,
        "n_classes": 2 if spec.kind == "logistic" else N_CLASSES,
        "l1": spec.l1,
        "l2": spec.l2,
        "dtype": "float64",
    }
    if spec.kind == "mlp":
        config |= {"hidden": list(spec.hidden), "activation": spec.activation}
    model = build_model(config)
    for key, value in model.params.items():
        model.params[key] = rng.normal(0.0, 0.5, size=value.shape)
    return model


def _data(rng: np.random.Generator, k: int) -> tuple[np.ndarray, np.ndarray]:
    return rng.normal(size=(N_ROWS, N_FEATURES)), rng.integers(0, k, size=N_ROWS)


def _variants(model: Any, X: np.ndarray, y: np.ndarray) -> dict[str, tuple[dict, str]]:
    """Gradients of known mistakes, by name: (arrays, sentence)."""
    plain = model.copy()
    plain.l1 = plain.l2 = 0.0
    _, data = plain.loss_and_grad(X, y)
    n, l2 = X.shape[0], model.l2
    pen = {k: (2 * l2 * v if k in model.penalized else 0 * v) for k, v in model.params.items()}
    out = {
        "summed": (
            {k: data[k] * n + pen[k] for k in data},
            "the gradient is summed over the batch, not averaged (the loss is a mean)",
        ),
        "sign": (
            {k: -data[k] + pen[k] for k in data},
            "the data term's sign is flipped: the gradient of -log p is p - onehot(y)",
        ),
    }
    if l2:
        out["lambda_w"] = (
            {k: data[k] + pen[k] / 2 for k in data},
            "adds λw; the derivative of λ||W||² is 2λW",
        )
        out["no_penalty"] = ({k: data[k] for k in data}, "the L2 penalty's gradient 2λW is missing")
        out["bias_penalised"] = (
            {k: data[k] + 2 * l2 * model.params[k] for k in data},
            "the penalty also covers the biases; digitlab's models "
            "penalise the weight matrices only",
        )
    return out


def _result_arrays(out: Outcome, prefix: str) -> dict[str, Any]:
    return {k[len(prefix) :]: v for k, v in out.result.items() if k.startswith(prefix)}


def compare_with_kind(
    sb: Sandbox, name: str, spec: GenericSpec, file: str, entry: dict
) -> list[CheckResult]:
    """Loss and each gradient array against digitlab's model of ``spec.kind``."""
    rng = np.random.default_rng(0)
    model = _reference_model(spec, rng)
    X, y = _data(rng, model.n_classes)
    loss, grads = model.loss_and_grad(X, y)
    data = {"X": X, "y": y, **{f"p.{k}": v for k, v in model.params.items()}}
    options = {"n_features": N_FEATURES, "n_classes": model.n_classes}
    out = sb.procedure("generic_eval", name, data, options=options)
    if not out.ok:
        return [_failure(file, name, out, sb.timeout)]
    results = [_judge(file, f"{name} loss", loss, out.result.get("loss"), scalar=True)]
    theirs = _result_arrays(out, "g.")
    variants = _variants(model, X, y)
    for key, expected in grads.items():
        got = theirs.get(key, ValueDescription("missing from the returned gradients"))
        result = _judge(file, f"{name} grad {key}", expected, got)
        if not result.ok:
            for vname, (arrays, sentence) in variants.items():
                if matches(arrays[key], got) and not matches(expected, got):
                    result.message, result.diagnosis = sentence, vname
                    break
        results.append(result)
    return results


def _judge(file: str, function: str, expected: Any, got: Any, scalar: bool = False) -> CheckResult:
    verdict = compare(expected, got, scalar=scalar, rtol=1e-6)
    if verdict.ok:
        rel = verdict.figures.get("relative_error", 0.0)
        return CheckResult(
            file, function, True, f"matches digitlab (relative error {rel:.1e})", verdict.figures
        )
    reason = {
        "type": f"received {verdict.figures.get('received')}",
        "shape": "right values, wrong shape",
        "transposed": "transposed",
        "size": "wrong shape",
        "nonfinite": "NaN or inf",
    }.get(verdict.reason, "differs from digitlab")
    return CheckResult(file, function, False, reason, verdict.figures)


def numeric_only(sb: Sandbox, name: str, file: str, entry: dict) -> list[CheckResult]:
    """Central differences in float64 against the learner's own gradients, per array."""
    if entry["kind"] != "class":
        raise ConfigError(
            f"{name} is a function: say which model it is with --as "
            "logistic|softmax|mlp (its parameters are then digitlab's)"
        )
    options = {"n_features": N_FEATURES, "n_classes": N_CLASSES}
    start = sb.procedure("generic_params", name, {}, options=options)
    if not start.ok:
        return [_failure(file, name, start, sb.timeout)]
    rng = np.random.default_rng(0)
    params = {k: np.asarray(v, dtype=np.float64) for k, v in _result_arrays(start, "p.").items()}
    params = {k: v + rng.normal(0.0, 0.1, size=v.shape) for k, v in params.items()}
    mats = [v for v in params.values() if v.ndim == 2]
    if not mats:
        return [CheckResult(file, name, False, "self.params holds no weight matrix")]
    d, k = mats[0].shape[0], max(mats[-1].shape[1], 2)
    X, y = rng.normal(size=(N_ROWS, d)), rng.integers(0, k, size=N_ROWS)
    entries = {
        key: rng.choice(v.size, size=min(v.size, ENTRIES_PER_ARRAY), replace=False).tolist()
        for key, v in params.items()
    }
    data = {"X": X, "y": y, **{f"p.{key}": v for key, v in params.items()}}
    out = sb.procedure(
        "generic_numeric",
        name,
        data,
        timeout=10 * sb.timeout,
        options=options | {"eps": NUMERIC_EPS, "entries": entries},
    )
    if not out.ok:
        return [_failure(file, name, out, 10 * sb.timeout)]
    numerical, analytic = _result_arrays(out, "n."), _result_arrays(out, "g.")
    return [
        _numeric_result(
            file, name, key, params[key], entries[key], numerical[key], analytic.get(key)
        )
        for key in params
    ]


def _numeric_result(
    file: str,
    name: str,
    key: str,
    param: np.ndarray,
    entries: list[int],
    numerical: np.ndarray,
    analytic: Any,
) -> CheckResult:
    function = f"{name} grad {key}"
    if analytic is None or isinstance(analytic, ValueDescription):
        return CheckResult(file, function, False, f"no gradient returned for {key}")
    a = np.asarray(analytic, dtype=np.float64)
    if a.size != param.size:
        return CheckResult(
            file,
            function,
            False,
            f"gradient of shape {list(a.shape)} for a parameter of shape {list(param.shape)}",
        )
    picked = a.reshape(-1)[entries]
    rel = float(
        np.max(np.abs(picked - numerical) / np.maximum(np.abs(picked) + np.abs(numerical), 1e-12))
    )
    figures = {
        "relative_error": rel,
        "max_abs_error": float(np.max(np.abs(picked - numerical))),
        "entries_checked": len(entries),
        "eps": NUMERIC_EPS,
    }
    ok = rel <= NUMERIC_TOL
    verb = "agrees with" if ok else "differs from"
    message = (
        f"{verb} central differences: relative error {rel:.1e} "
        f"({'≤' if ok else '>'} {NUMERIC_TOL:g})"
    )
    if not ok and np.asarray(analytic).dtype == np.float32:
        message += "; your gradients are float32: the check needs float64 arithmetic"
    return CheckResult(file, function, ok, message, figures)


def _failure(file: str, name: str, out: Outcome, timeout: float) -> CheckResult:
    from digitlab.check.assignment import error_message

    message, details, line = error_message(out, timeout)
    return CheckResult(file, name, False, message, details=details, line=line)


def check_generic(path: Path, name: str, spec: GenericSpec, timeout: float) -> list[CheckResult]:
    """Check ``name`` of ``path`` (see the module docstring)."""
    from digitlab.check import load_failure

    with Sandbox(path, timeout=timeout, import_timeout=import_timeout_for(timeout)) as sb:
        hello = sb.start()
        if not hello.ok:
            return [load_failure(path, hello, sb.import_timeout)]
        entry = hello.result.get(name)
        if entry is None:
            raise ConfigError(f"{path}: defines no function or class named {name!r}")
        if spec.kind is None:
            return numeric_only(sb, name, path.name, entry)
        return compare_with_kind(sb, name, spec, path.name, entry)
