"""Compare a learner's output with the reference in float64, with the evidence for a report."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from digitlab.check.sandbox import ValueDescription

#: Default tolerances: float32 arithmetic in the learner's code still passes.
RTOL = 1e-5
ATOL = 1e-8


@dataclass
class Comparison:
    """Whether an output matches, why not (``reason``), and the figures.

    ``reason`` is ``""`` (a match), ``"type"`` (not a number or an array), ``"shape"``
    (right values, wrong shape), ``"transposed"``, ``"size"`` (other number of entries),
    ``"nonfinite"`` (NaN or inf where the reference is finite) or ``"values"``.
    """

    ok: bool
    reason: str = ""
    figures: dict[str, Any] = field(default_factory=dict)


def as_array(value: Any) -> np.ndarray | None:
    """A learner's numeric value as a float64 array (None for anything else)."""
    if value is None or isinstance(value, ValueDescription):
        return None
    arr = np.asarray(value)
    if arr.dtype.kind not in "biuf":
        return None
    return arr.astype(np.float64)


def describe_value(value: Any) -> str:
    """``None``, a type name or ``array [N, K] float32`` for messages."""
    if value is None:
        return "None"
    if isinstance(value, ValueDescription):
        return str(value)
    arr = np.asarray(value)
    if arr.ndim == 0:
        return f"{float(arr):.6g}"
    return f"array {list(arr.shape)} {arr.dtype}"


def close(expected: np.ndarray, got: np.ndarray, rtol: float = RTOL, atol: float = ATOL) -> bool:
    """Same shape and ``|got - expected| <= atol * scale + rtol * |expected|`` everywhere
    (NaN and inf only where the reference has them); ``scale`` is the reference's largest
    magnitude, so entries that underflow to 0 in one and 1e-300 in the other still agree."""
    if got.shape != expected.shape:
        return False
    scale = max(1.0, float(np.max(np.abs(expected[np.isfinite(expected)]), initial=0.0)))
    return bool(np.allclose(got, expected, rtol=rtol, atol=atol * scale, equal_nan=True))


def first_differences(expected: np.ndarray, got: np.ndarray, count: int = 3) -> list[list]:
    """``[index, expected, received]`` of the first entries that differ most visibly."""
    diff = ~np.isclose(got, expected, rtol=RTOL, atol=ATOL, equal_nan=True)
    rows = []
    for index in np.argwhere(diff)[:count]:
        idx = tuple(int(i) for i in index)
        rows.append([list(idx), float(expected[idx]), float(got[idx])])
    return rows


def errors(expected: np.ndarray, got: np.ndarray) -> dict[str, float]:
    """Relative error ``||got - expected|| / ||expected||`` and the largest absolute error."""
    delta = got - expected
    norm = float(np.linalg.norm(expected))
    rel = float(np.linalg.norm(delta)) / norm if norm > 0 else float(np.linalg.norm(delta))
    return {"relative_error": rel, "max_abs_error": float(np.max(np.abs(delta), initial=0.0))}


def compare(
    expected: Any, value: Any, *, scalar: bool = False, rtol: float = RTOL, atol: float = ATOL
) -> Comparison:
    """Judge ``value`` (the learner's) against ``expected`` (the reference's).

    With ``scalar``, any size-one array or number is accepted as the scalar it holds.
    """
    exp = np.asarray(expected, dtype=np.float64)
    got = as_array(value)
    figures: dict[str, Any] = {"expected_shape": list(exp.shape)}
    if got is None:
        figures["received"] = describe_value(value)
        return Comparison(False, "type", figures)
    figures["received_shape"] = list(got.shape)
    figures["received_dtype"] = str(np.asarray(value).dtype)
    if scalar and got.size == 1:
        got = got.reshape(())
    if got.shape != exp.shape:
        if got.size != exp.size:
            return Comparison(False, "size", figures)
        if exp.ndim == 2 and got.shape == exp.T.shape and close(exp.T, got, rtol, atol):
            return Comparison(False, "transposed", figures)
        ok = close(exp.reshape(-1), got.reshape(-1), rtol, atol)
        return Comparison(False, "shape" if ok else "size", figures)
    figures.update(errors(exp, got) if np.isfinite(got).all() else {})
    if not np.isfinite(got).all() and np.isfinite(exp).all():
        figures["nonfinite_entries"] = int(np.count_nonzero(~np.isfinite(got)))
        figures["first_differences"] = first_differences(exp, got)
        return Comparison(False, "nonfinite", figures)
    if close(exp, got, rtol, atol):
        return Comparison(True, "", figures)
    figures["first_differences"] = first_differences(exp, got)
    return Comparison(False, "values", figures)


def matches(candidate: Any, value: Any, rtol: float = 1e-6) -> bool:
    """Whether ``value`` equals a known wrong variant's output (shapes may differ if the
    number of entries agrees)."""
    got = as_array(value)
    cand = np.asarray(candidate, dtype=np.float64)
    if got is None or got.size != cand.size:
        return False
    return close(cand.reshape(-1), got.reshape(-1), rtol=rtol, atol=1e-9)
