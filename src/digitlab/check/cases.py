"""Test inputs and reference outputs for each function of the assignment.

Every case is fixed by one seed. Images are ``uint8`` ``[N, 784]`` as the starter code's
loader returns them; ``X`` is the reference pre-processing (``[-1, 1]``, bias column last);
binary targets are ``[N, 1]`` integers, multi-class targets one-hot ``[N, K]``. The hard
cases: a batch of one, logits of several hundred (exp overflows above 709), ``lambda > 0``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from digitlab.check import reference as ref

I_INPUTS = 785
K_CLASSES = 10
LAMBDA = 0.5


@dataclass
class Case:
    """One call of a learner's function and what it must give.

    ``accepted`` lists other outputs that also pass, each with a note (a bias column first
    instead of last...). ``required=False`` cases only add notes.
    """

    label: str
    args: list[Any]
    expected: Any
    context: dict[str, Any]
    ctor: list[Any] = field(default_factory=list)
    w: np.ndarray | None = None
    required: bool = True
    accepted: list[tuple[Any, str]] = field(default_factory=list)


def images(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` random uint8 images, each with a 0 and a 255 pixel."""
    x = rng.integers(0, 256, size=(n, 784)).astype(np.uint8)
    x[:, 100], x[:, 400] = 0, 255
    return x


def batch(rng: np.random.Generator, n: int, k: int, w_scale: float = 0.05) -> dict[str, Any]:
    """Images, ``X``, weights ``w [785, k]``, outputs of ``X w`` and targets."""
    imgs = images(rng, n)
    X = ref.pre_process_images(imgs)
    w = rng.normal(0.0, w_scale, size=(I_INPUTS, k))
    if k == 1:
        outputs = ref.binary_forward(X, w)
        targets = rng.integers(0, 2, size=(n, 1))
    else:
        outputs = ref.softmax_forward(X, w)
        targets = ref.one_hot_encode(rng.integers(0, k, size=(n, 1)), k)
    return {"images": imgs, "X": X, "w": w, "outputs": outputs, "targets": targets, "N": n, "K": k}


def pre_process_cases(year: str) -> list[Case]:
    rng = np.random.default_rng(1)
    cases = []
    for label, n in (("random batch of 16", 16), ("batch of one", 1)):
        imgs = images(rng, n)
        accepted = [(ref.pre_process_images(imgs, bias="first"), "")]
        if year == "2020":  # the 2020 starter code's docstring asks for (0, 1)
            note = "pixels in [0, 1], as the 2020 starter code asked (the assignment: [-1, 1])"
            accepted += [(ref.pre_process_images(imgs, 0.0, b), note) for b in ("last", "first")]
        cases.append(
            Case(label, [imgs], ref.pre_process_images(imgs), {"images": imgs}, accepted=accepted)
        )
    return cases


def loss_cases(k: int) -> list[Case]:
    rng = np.random.default_rng(2)
    cases = []
    for label, n in (("random batch of 20", 20), ("batch of one", 1)):
        if k == 1:
            targets = rng.integers(0, 2, size=(n, 1))
            targets[0] = 0  # a target-0 image in every case (its term is the (1 - y) ln one)
            outputs = rng.uniform(0.02, 0.98, size=(n, 1))
            expected = ref.binary_cross_entropy(targets, outputs)
        else:
            targets = ref.one_hot_encode(rng.integers(0, k, size=(n, 1)), k)
            outputs = ref.softmax_forward(rng.normal(size=(n, 3)), rng.normal(size=(3, k)))
            expected = ref.softmax_cross_entropy(targets, outputs)
        context = {"targets": targets, "outputs": outputs, "expected": expected, "N": n, "K": k}
        cases.append(Case(label, [targets, outputs], expected, context))
    if k == 1:  # the starter code's shape is [N, 1]; [N] only adds a note
        flat = {key: v.reshape(-1) if key in ("targets", "outputs") else v
                for key, v in cases[0].context.items()}  # fmt: skip
        cases.append(Case("targets and outputs of shape [N]", [flat["targets"], flat["outputs"]],
                          cases[0].expected, flat, required=False))  # fmt: skip
    return cases


def forward_cases(k: int, ctor: list[Any]) -> list[Case]:
    rng = np.random.default_rng(3)
    forward = ref.binary_forward if k == 1 else ref.softmax_forward
    cases = []
    for label, n, scale in (
        ("random batch of 20", 20, 0.05),
        ("batch of one", 1, 0.05),
        ("large logits (|z| up to ~2000)", 8, 60.0),
    ):
        b = batch(rng, n, k, scale)
        if scale > 1:  # rows alternate large positive and large negative first logits
            z = b["X"] @ b["w"][:, 0]
            flip = (z > 0) != (np.arange(n) % 2 == 0)
            b["X"][flip, :-1] *= -1
        cases.append(Case(label, [b["X"]], forward(b["X"], b["w"]), b, ctor=ctor, w=b["w"]))
    return cases


def backward_cases(k: int, ctor_for: Any, lam_in_ctor: bool) -> list[Case]:
    """``ctor_for(lam)`` builds the constructor arguments. For the binary model (which the
    assignment does not regularise) ``lambda > 0`` also accepts a gradient without penalty.
    A penalty that leaves out the bias trick's row of ``w`` (first or last, wherever the
    learner's column of ones goes) passes with a note: equation 27 sums over every weight, but
    not penalising the bias is the usual practice."""
    rng = np.random.default_rng(4)
    cases = []
    plan = [("random batch of 20, λ = 0", 20, 0.0), ("batch of one, λ = 0", 1, 0.0)]
    if lam_in_ctor:
        plan.append((f"random batch of 20, λ = {LAMBDA:g}", 20, LAMBDA))
    for label, n, lam in plan:
        b = batch(rng, n, k)
        b["lam"] = lam
        expected = ref.gradient(b["X"], b["outputs"], b["targets"], b["w"], lam)
        accepted = []
        if k == 1 and lam:
            accepted.append(
                (
                    ref.gradient(b["X"], b["outputs"], b["targets"], b["w"]),
                    "ignores l2_reg_lambda (the assignment regularises only the softmax model)",
                )
            )
        for row in (0, -1) if lam else ():
            unpenalised = b["w"].copy()
            unpenalised[row] = 0.0
            note = ("the penalty leaves out the bias row of w; equation 27 sums over every "
                    "weight, the bias trick's row included")  # fmt: skip
            accepted.append((expected - 2 * lam * (b["w"] - unpenalised), note))
        cases.append(
            Case(
                label,
                [b["X"], b["outputs"], b["targets"]],
                expected,
                b,
                ctor=ctor_for(lam),
                w=b["w"],
                accepted=accepted,
            )
        )
    return cases


def one_hot_cases() -> list[Case]:
    rng = np.random.default_rng(5)
    cases = []
    for label, Y, k in (
        ("12 labels, num_classes = 10", rng.integers(0, 10, size=(12, 1)), 10),
        ("the starter code's test: label 3", np.array([[3]]), 10),
        ("labels 0-6 only, num_classes = 10", rng.integers(0, 7, size=(9, 1)), 10),
    ):
        Y[0, 0] = min(Y[0, 0], k - 1)
        cases.append(Case(label, [Y, k], ref.one_hot_encode(Y, k), {"Y": Y, "K": k}))
    return cases


def accuracy_cases(k: int) -> list[Case]:
    """Random weights (outputs near 0.5 for the binary model, so a wrong threshold shows) and
    targets that agree with the reference prediction for about 70% of the images."""
    rng = np.random.default_rng(6)
    cases = []
    for label, n in (("random batch of 40", 40), ("batch of one", 1)):
        b = batch(rng, n, k)
        if k == 1:
            pred = (b["outputs"] >= 0.5).astype(np.int64)
            flip = rng.random((n, 1)) < 0.3
            b["targets"] = np.where(flip, 1 - pred, pred)
            expected = ref.binary_accuracy(b["X"], b["targets"], b["w"])
        else:
            labels = np.where(
                rng.random(n) < 0.7, b["outputs"].argmax(axis=1), rng.integers(0, k, size=n)
            )
            b["targets"] = ref.one_hot_encode(labels, k)
            expected = ref.softmax_accuracy(b["X"], b["targets"], b["w"])
        b["expected"] = expected
        model = {"model": "binary" if k == 1 else "softmax", "w": b["w"]}
        cases.append(Case(label, [b["X"], b["targets"], model], expected, b))
    if k == 1:  # targets of shape [N] (the starter code's are [N, 1]): only a note
        first = cases[0]
        flat = first.context | {"targets": first.context["targets"].reshape(-1)}
        args = [first.args[0], flat["targets"], first.args[2]]
        cases.append(Case("targets of shape [N]", args, first.expected, flat, required=False))
    if k == 1:  # zero weights: every output is exactly 0.5, which the footnote counts as 1
        b = batch(rng, 10, 1)
        b["w"] = np.zeros((I_INPUTS, 1))
        b["targets"] = np.array([[1]] * 7 + [[0]] * 3)  # 0.7 when 0.5 counts as 1, 0.3 if not
        model = {"model": "binary", "w": b["w"]}
        cases.append(
            Case(
                "all outputs exactly 0.5",
                [b["X"], b["targets"], model],
                0.7,
                b | {"expected": 0.7},
                required=False,
            )
        )
    return cases


def combined_data(k: int, n: int = 100) -> dict[str, Any]:
    """A batch of ``n`` images for the gradient check and the overfitting check."""
    return batch(np.random.default_rng(7), n, k)
