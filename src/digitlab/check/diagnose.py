"""The catalogue of known wrong variants of each assignment function.

Each :class:`Variant` computes, from a test case's inputs, what a particular mistake would
return; a learner's output that equals it (to float rounding) gets that variant's sentence.
The sentences cite the assignment's equations: (1) sigmoid, (3) binary cross-entropy,
(4) softmax, (5) multi-class cross-entropy, (6) and (13) the gradients, (26)-(28) the L2
penalty ``lambda ||w||^2`` and its gradient ``2 lambda w``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import expit

from digitlab.check import reference as ref
from digitlab.check.compare import matches


@dataclass(frozen=True)
class Variant:
    """A known mistake: its name, what it computes from a case's inputs, and the advice."""

    name: str
    compute: Callable[[dict[str, Any]], Any]
    message: str


def _pixels(
    c: dict[str, Any],
    scale: Callable[[np.ndarray], np.ndarray],
    bias: float = 1.0,
    column: bool = True,
) -> list[np.ndarray]:
    """An image batch scaled by ``scale``, with the bias column at either end (or none)."""
    x = scale(c["images"])
    if not column:
        return [x]
    col = np.full((x.shape[0], 1), bias)
    return [np.hstack([x, col]), np.hstack([col, x])]


def _wrapped_double(images: np.ndarray) -> np.ndarray:
    """``2 * X`` computed in uint8 (it wraps around above 127) then ``/ 255 - 1``."""
    return (2 * images.astype(np.uint8)).astype(np.float64) / 255 - 1  # noqa: NPY002


def _standardised(images: np.ndarray) -> np.ndarray:
    x = images.astype(np.float64)
    return (x - x.mean()) / x.std()


PRE_PROCESS = [
    (
        "range01",
        lambda c: _pixels(c, lambda x: x / 255.0),
        "pixels are scaled to [0, 1]; task 2a asks for [-1, 1]: use X / 127.5 - 1",
    ),
    (
        "missing_bias",
        lambda c: _pixels(c, lambda x: x / 127.5 - 1, column=False),
        "the bias trick's column of ones is missing: append a column of 1s so that each image "
        "has 785 values (task 2, 'Bias trick')",
    ),
    (
        "range01_missing_bias",
        lambda c: _pixels(c, lambda x: x / 255.0, column=False),
        "pixels are scaled to [0, 1] instead of [-1, 1] and the bias column of ones is missing",
    ),
    (
        "bias_zero",
        lambda c: _pixels(c, lambda x: x / 127.5 - 1, bias=0.0),
        "the bias column holds 0s; the bias trick appends a 1 to every image",
    ),
    (
        "not_scaled",
        lambda c: _pixels(c, lambda x: x.astype(np.float64)),
        "pixels are not normalised: map [0, 255] to [-1, 1] with X / 127.5 - 1 (task 2a)",
    ),
    (
        "divide_128",
        lambda c: _pixels(c, lambda x: x / 128.0 - 1),
        "divides by 128, so 255 becomes 0.992 instead of 1: use X / 127.5 - 1",
    ),
    (
        "uint8_wrap",
        lambda c: _pixels(c, _wrapped_double),
        "2 * X wraps around in uint8 (the images' dtype): convert to float first, "
        "e.g. X.astype(float) / 127.5 - 1",
    ),
    (
        "standardised",
        lambda c: _pixels(c, _standardised),
        "standardises with the batch mean and std; task 2a maps [0, 255] linearly to [-1, 1]",
    ),
    (
        "centred_half",
        lambda c: _pixels(c, lambda x: x / 255.0 - 0.5),
        "pixels land in [-0.5, 0.5]; task 2a asks for [-1, 1]: use X / 127.5 - 1",
    ),
]


def _bce_terms(c: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    t, y = c["targets"].astype(np.float64), c["outputs"]
    return t * np.log(y), (1 - t) * np.log(1 - y)


BINARY_LOSS = [
    (
        "summed",
        lambda c: c["expected"] * c["N"],
        "the loss is summed over the batch, not averaged: equation 3 divides the sum by N",
    ),
    (
        "missing_negative_term",
        lambda c: -np.mean(_bce_terms(c)[0]),
        "the (1 - y^n) ln(1 - ŷ^n) term of equation 3 is missing: images with target 0 add "
        "nothing to your loss",
    ),
    (
        "missing_positive_term",
        lambda c: -np.mean(_bce_terms(c)[1]),
        "the y^n ln(ŷ^n) term of equation 3 is missing: images with target 1 add nothing",
    ),
    (
        "sign",
        lambda c: -c["expected"],
        "the sign is flipped: equation 3 has a minus in front, so the loss is positive",
    ),
    (
        "log10",
        lambda c: c["expected"] / np.log(10),
        "uses log10; equation 3 uses the natural logarithm (np.log)",
    ),
    (
        "summed_sign",
        lambda c: -c["expected"] * c["N"],
        "the sign is flipped and the loss is summed, not averaged over the N images (equation 3)",
    ),
]

SOFTMAX_LOSS = [
    (
        "summed",
        lambda c: c["expected"] * c["N"],
        "the loss is summed over the batch, not averaged: equation 5 divides the sum by N",
    ),
    (
        "divided_by_NK",
        lambda c: c["expected"] / c["K"],
        "divides by N·K: equation 5 averages over the N images only; the sum over the K "
        "classes stays a sum",
    ),
    (
        "sign",
        lambda c: -c["expected"],
        "the sign is flipped: equation 5 has a minus in front, so the loss is positive",
    ),
    (
        "binary_terms",
        lambda c: (
            -np.sum(
                c["targets"] * np.log(c["outputs"]) + (1 - c["targets"]) * np.log(1 - c["outputs"])
            )
            / c["N"]
        ),
        "adds the binary (1 - y) ln(1 - ŷ) terms; equation 5 is -Σ_k y_k ln ŷ_k only",
    ),
    (
        "log10",
        lambda c: c["expected"] / np.log(10),
        "uses log10; equation 5 uses the natural logarithm (np.log)",
    ),
]

BINARY_FORWARD = [
    (
        "logits",
        lambda c: c["X"] @ c["w"],
        "returns the logits wᵀx: apply the sigmoid of equation 1, 1 / (1 + exp(-wᵀx))",
    ),
    (
        "sign",
        lambda c: expit(-(c["X"] @ c["w"])),
        "computes 1 / (1 + exp(+wᵀx)); equation 1 has exp(-wᵀx)",
    ),
    (
        "one_minus",
        lambda c: 1 - expit(c["X"] @ c["w"]),
        "returns 1 - ŷ, the probability of the other class: equation 1 is 1 / (1 + exp(-wᵀx))",
    ),
]


def _softmax_axis0(z: np.ndarray) -> list[np.ndarray]:
    """Exponentials divided by their column sums, for each usual shift of the logits."""
    out = []
    for shifted in (z - z.max(axis=0, keepdims=True), z - z.max(axis=1, keepdims=True), z):
        e = np.exp(shifted)
        out.append(e / e.sum(axis=0, keepdims=True))
    return out


SOFTMAX_FORWARD = [
    (
        "logits",
        lambda c: c["X"] @ c["w"],
        "returns the logits z = Xw: apply the softmax of equation 4",
    ),
    (
        "axis0",
        lambda c: _softmax_axis0(c["X"] @ c["w"]),
        "normalises over the batch (axis 0) instead of over the K classes of each image: "
        "sum with axis=1, keepdims=True (equation 4)",
    ),
    (
        "global_sum",
        lambda c: np.exp(c["X"] @ c["w"]) / np.exp(c["X"] @ c["w"]).sum(),
        "divides by the sum over the whole batch; equation 4 divides each row by its own sum",
    ),
    (
        "sigmoid",
        lambda c: expit(c["X"] @ c["w"]),
        "applies the sigmoid to each class; equation 4 is the softmax e^{z_k} / Σ_k' e^{z_k'}",
    ),
]


def _data_grad(c: dict[str, Any]) -> np.ndarray:
    return ref.gradient(c["X"], c["outputs"], c["targets"], c["w"], 0.0)


BACKWARD = [
    (
        "summed",
        lambda c: _data_grad(c) * c["N"] + 2 * c["lam"] * c["w"],
        "the gradient is summed over the batch, not averaged: divide Xᵀ(y - ŷ) by N, as the "
        "loss (equations 3 and 5) is a mean",
    ),
    (
        "summed_all",
        lambda c: (_data_grad(c) + 2 * c["lam"] * c["w"]) * c["N"],
        "the gradient is N times too large: divide -Xᵀ(y - ŷ) by the batch size N",
    ),
    (
        "divided_twice",
        lambda c: _data_grad(c) / c["N"] + 2 * c["lam"] * c["w"],
        "the gradient is divided by the batch size twice: -Xᵀ(y - ŷ) / N once is the mean",
    ),
    (
        "sign",
        lambda c: -_data_grad(c) + 2 * c["lam"] * c["w"],
        "the sign of the data term is flipped: equations 6 and 13 are -(y - ŷ) x, so the "
        "gradient is -Xᵀ(y - ŷ) / N",
    ),
    (
        "sign_all",
        lambda c: -(_data_grad(c) + 2 * c["lam"] * c["w"]),
        "the whole gradient has the wrong sign: equations 6 and 13 give -Xᵀ(y - ŷ) / N",
    ),
    (
        "lambda_w",
        lambda c: _data_grad(c) + c["lam"] * c["w"],
        "adds λw; the derivative of λ||w||² (equations 26-27) is 2λw (equation 28)",
    ),
    (
        "no_penalty",
        lambda c: _data_grad(c),
        "ignores l2_reg_lambda: equation 28 adds 2λw to the gradient",
    ),
    (
        "penalty_over_N",
        lambda c: _data_grad(c) + 2 * c["lam"] * c["w"] / c["N"],
        "divides the penalty's gradient by N as well; equation 28 adds 2λw to the averaged "
        "gradient",
    ),
]


def _one_hot_rolled(c: dict[str, Any], shift: int) -> np.ndarray:
    labels = (np.asarray(c["Y"]).reshape(-1) + shift) % c["K"]
    return ref.one_hot_encode(labels, c["K"])


ONE_HOT = [
    (
        "plus_one",
        lambda c: _one_hot_rolled(c, 1),
        "the 1 is one place too far right: label 3 must become [0,0,0,1,0,0,0,0,0,0] "
        "(index with Y itself, not Y + 1)",
    ),
    (
        "minus_one",
        lambda c: _one_hot_rolled(c, -1),
        "the 1 is one place too far left: label 3 must become [0,0,0,1,0,0,0,0,0,0] "
        "(index with Y itself, not Y - 1)",
    ),
    (
        "reversed",
        lambda c: ref.one_hot_encode(c["K"] - 1 - np.asarray(c["Y"]), c["K"]),
        "the classes are in reverse order: column k must hold the 1 for label k",
    ),
    (
        "max_label",
        lambda c: ref.one_hot_encode(c["Y"], int(np.max(c["Y"])) + 1),
        "uses max(Y) + 1 columns instead of num_classes: a batch without a 9 gets too few "
        "columns; use np.zeros((N, num_classes))",
    ),
]


def _binary_predictions(c: dict[str, Any], threshold: float) -> np.ndarray:
    return (ref.binary_forward(c["X"], c["w"]) >= threshold).astype(np.float64)


def _threshold(threshold: float) -> tuple[str, Callable, str]:
    return (
        f"threshold_{threshold:g}",
        lambda c: np.mean(_binary_predictions(c, threshold) == c["targets"]),
        f"predicts 1 when ŷ >= {threshold:g}; the assignment (footnote 4) predicts 1 "
        "when ŷ ≥ 0.5, else 0",
    )


#: Mistakes of either accuracy: a count instead of a fraction, the error rate.
COUNTING = [
    (
        "count",
        lambda c: c["expected"] * c["N"],
        "returns the number of correct predictions; accuracy is that number divided by N",
    ),
    (
        "error_rate",
        lambda c: 1 - c["expected"],
        "returns the error rate (wrong / N); accuracy is correct / N",
    ),
]

BINARY_ACCURACY = (
    COUNTING
    + [_threshold(t) for t in (0.0, 0.25, 0.4, 0.45, 0.55, 0.6, 0.75, 1.0)]
    + [
        (
            "broadcast",
            lambda c: np.mean(_binary_predictions(c, 0.5) == c["targets"].reshape(-1)),
            "compares an [N, 1] array with an [N] array, which broadcasts to [N, N]: give both the "
            "same shape",
        ),
    ]
)

SOFTMAX_ACCURACY = COUNTING + [
    (
        "argmax_axis0",
        lambda c: np.mean(
            ref.softmax_forward(c["X"], c["w"]).argmax(axis=0)[:, None]
            == c["targets"].argmax(axis=0)[:, None]
        ),
        "takes argmax over the batch (axis 0); the predicted class of an image is the argmax "
        "over its K outputs (axis=1)",
    ),
]

CATALOGUE: dict[str, list] = {
    "pre_process_images": PRE_PROCESS,
    "binary_loss": BINARY_LOSS,
    "softmax_loss": SOFTMAX_LOSS,
    "binary_forward": BINARY_FORWARD,
    "softmax_forward": SOFTMAX_FORWARD,
    "backward": BACKWARD,
    "one_hot_encode": ONE_HOT,
    "binary_accuracy": BINARY_ACCURACY,
    "softmax_accuracy": SOFTMAX_ACCURACY,
}


def diagnose(kind: str, context: dict[str, Any], value: Any) -> tuple[str, str] | None:
    """The first known mistake whose output equals ``value``: ``(name, sentence)``."""
    for name, compute, message in CATALOGUE.get(kind, []):
        try:
            with np.errstate(all="ignore"):
                candidates = compute(context)
        except (KeyError, ValueError, IndexError, FloatingPointError):
            continue
        if not isinstance(candidates, list):
            candidates = [candidates]
        if any(matches(c, value) for c in candidates):
            return name, message
    return None


#: Sentences for outputs that are NaN or inf where the reference is finite.
NONFINITE = {
    "binary_forward": "NaN or inf for large logits (|wᵀx| of several hundred): exp overflows. "
    "Compute the sigmoid as 1 / (1 + np.exp(-z)), which only ever divides by inf, or use "
    "scipy.special.expit",
    "softmax_forward": "NaN or inf for large logits: exp(z) overflows above z ≈ 709. "
    "Subtract each row's largest logit before exp (z - z.max(axis=1, keepdims=True)); "
    "equation 4's value is unchanged",
    "binary_loss": "NaN or inf for outputs strictly inside (0, 1): are the arguments in the "
    "starter code's order, cross_entropy_loss(targets, outputs)?",
    "softmax_loss": "NaN or inf for outputs strictly inside (0, 1): are the arguments in the "
    "starter code's order, cross_entropy_loss(targets, outputs)?",
}
