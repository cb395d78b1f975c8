"""Check a learner's file of the logistic / softmax regression assignment, function by function.

The task is recognised from the names the file defines: ``pre_process_images``,
``cross_entropy_loss`` and ``BinaryModel`` (binary task), ``one_hot_encode`` and
``SoftmaxModel`` (softmax task), ``calculate_accuracy`` (either, from the model it goes
with). Two starter-code layouts are known: ``BinaryModel()`` with images scaled to [-1, 1]
(2021 on), and ``BinaryModel(l2_reg_lambda)`` whose docstring asked for [0, 1] (2020).

Each function is judged on its own against the float64 reference: ``backward`` gets the
reference's inputs and outputs, so a wrong ``forward`` does not also fail ``backward``. The
combined checks (the assignment's gradient check, the initial loss, overfitting a batch) run
only when the functions they use passed.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from digitlab.check import cases as cs
from digitlab.check.compare import compare, describe_value
from digitlab.check.diagnose import NONFINITE, diagnose
from digitlab.check.report import CheckResult
from digitlab.check.sandbox import Outcome, Sandbox, ValueDescription

EPS = 1e-2  # the appendix's epsilon
OVERFIT_STEPS, OVERFIT_LR = 50, 0.05


@dataclass
class Layout:
    """What a file implements: task (``"binary"``/``"softmax"``), the starter-code year,
    its model class, whether that class takes ``l2_reg_lambda``, and the accuracy kind."""

    task: str | None
    year: str
    model: str | None
    lam_in_ctor: bool
    accuracy: str | None
    own: set[str] = field(default_factory=set)

    @property
    def k(self) -> int:
        return 1 if self.task == "binary" else cs.K_CLASSES

    def ctor(self, lam: float) -> list[Any]:
        return [lam] if self.lam_in_ctor else []


def detect(names: dict[str, Any]) -> Layout:
    """The layout of a file from the names it defines (``own``) and imports."""
    own = {n for n, e in names.items() if e["own"]}
    loss_doc = names.get("cross_entropy_loss", {}).get("doc", "")
    softmax = bool({"SoftmaxModel", "one_hot_encode"} & own) or (
        "BinaryModel" not in names and "num_classes" in loss_doc
    )
    binary = not softmax and bool({"BinaryModel", "pre_process_images", "cross_entropy_loss"} & own)
    task = "softmax" if softmax else "binary" if binary else None
    model = {"binary": "BinaryModel", "softmax": "SoftmaxModel"}.get(task or "")
    if model not in own:
        model = None
    init = names.get("BinaryModel", {}).get("init") or []
    doc = names.get("pre_process_images", {}).get("doc", "")
    year = "2020" if init or "(0, 1)" in doc else "2021"
    lam_in_ctor = bool(model and names[model].get("init"))
    accuracy = None
    if "calculate_accuracy" in own:
        hint = str(names["calculate_accuracy"].get("annotations", {}).get("model", ""))
        soft = "SoftmaxModel" in names or "one_hot_encode" in names or "Softmax" in hint
        accuracy = "softmax" if soft else "binary"
    return Layout(task, year, model, lam_in_ctor, accuracy, own)


@dataclass
class FunctionCheck:
    """How to judge one function: its name, the call target, the catalogue kind, the cases,
    and the attribute holding its result (``grad`` for ``backward``)."""

    function: str
    target: str
    kind: str
    cases: list[cs.Case]
    read: str | None = None
    scalar: bool = False


def plan(layout: Layout) -> list[FunctionCheck]:
    """The function checks for what the file defines."""
    checks = []
    own, k = layout.own, layout.k
    if "pre_process_images" in own:
        checks.append(
            FunctionCheck(
                "pre_process_images",
                "pre_process_images",
                "pre_process_images",
                cs.pre_process_cases(layout.year),
            )
        )
    if "one_hot_encode" in own:
        checks.append(
            FunctionCheck("one_hot_encode", "one_hot_encode", "one_hot_encode", cs.one_hot_cases())
        )
    if "cross_entropy_loss" in own and layout.task:
        checks.append(
            FunctionCheck(
                "cross_entropy_loss",
                "cross_entropy_loss",
                f"{layout.task}_loss",
                cs.loss_cases(k),
                scalar=True,
            )
        )
    if layout.model:
        m = layout.model
        checks.append(
            FunctionCheck(
                f"{m}.forward",
                f"{m}.forward",
                f"{layout.task}_forward",
                cs.forward_cases(k, layout.ctor(0.0)),
            )
        )
        checks.append(
            FunctionCheck(
                f"{m}.backward",
                f"{m}.backward",
                "backward",
                cs.backward_cases(k, layout.ctor, layout.lam_in_ctor or k > 1),
                read="grad",
            )
        )
    if layout.accuracy:
        kk = 1 if layout.accuracy == "binary" else cs.K_CLASSES
        checks.append(
            FunctionCheck(
                "calculate_accuracy",
                "calculate_accuracy",
                f"{layout.accuracy}_accuracy",
                cs.accuracy_cases(kk),
                scalar=True,
            )
        )
    return checks


# ------------------------------------------------------------------ judging one function
def error_message(out: Outcome, timeout: float) -> tuple[str, list[str], int | None]:
    """A failed call as a sentence, detail lines and the learner's line number."""
    if out.timed_out:
        err = out.error or {}
        where = f": stopped at line {err['line']}" if err.get("line") else ""
        details = [f"code: {err['text']}"] if err.get("text") else []
        message = f"did not return within {timeout:g} s (an infinite loop, or far too slow){where}"
        return message, details, err.get("line")
    err = out.error or {}
    where = ""
    if err.get("line"):
        where = f" at line {err['line']}"
        if err.get("other_file"):
            where += f" of {err['other_file']}"
    message = f"raised {err.get('type', 'an error')}{where}: {err.get('message', '')}".rstrip()
    if err.get("type") == "Crash":
        message = f"crashed: {err.get('message')}"
    details = [f"code: {err['text']}"] if err.get("text") else []
    if out.output_tail.strip():
        details.append("last output: " + out.output_tail.strip().splitlines()[-1][:200])
    return message, details, err.get("line")


def _value_of(check: FunctionCheck, out: Outcome) -> tuple[Any, str | None]:
    """The value to judge and, for ``backward``, a remark when the gradient was returned
    instead of stored in ``self.grad``."""
    if check.read is None:
        return out.result, None
    value = out.attrs.get(check.read)
    if (value is None or isinstance(value, ValueDescription)) and out.result is not None:
        return out.result, "returned"
    return value, None


def judge_case(check: FunctionCheck, case: cs.Case, value: Any) -> tuple[bool, str, dict, str]:
    """``(ok, message, figures, diagnosis name)`` of one value for one case."""
    verdict = compare(case.expected, value, scalar=check.scalar)
    if verdict.ok and check.kind == "one_hot_encode" and np.asarray(value).dtype == bool:
        message = ("the rows are booleans; one-hot targets are the numbers 0 and 1 (np.zeros "
                   "gives floats): True - True is an error in NumPy")  # fmt: skip
        return False, message, verdict.figures, "bool_dtype"
    if verdict.ok:
        return True, "", verdict.figures, ""
    for alternative, note in case.accepted:
        if compare(alternative, value, scalar=check.scalar).ok:
            return True, note, verdict.figures, ""
    if verdict.reason in ("shape", "transposed", "type"):  # the values' layout comes first
        return False, _plain_reason(verdict.reason, verdict.figures, check), verdict.figures, ""
    got = np.asarray(value, dtype=np.float64) if verdict.reason != "size" else None
    if got is not None and not np.any(got) and np.any(np.asarray(case.expected)):
        message = "gives only zeros: is it still the starter code's placeholder?"
        return False, message, verdict.figures, "zeros"
    context = dict(case.context, expected=case.expected)
    found = diagnose(check.kind, context, value)
    if verdict.reason == "nonfinite" and check.kind in NONFINITE and not found:
        return False, NONFINITE[check.kind], verdict.figures, "nonfinite"
    if found:
        return False, found[1], verdict.figures, found[0]
    return False, _plain_reason(verdict.reason, verdict.figures, check), verdict.figures, ""


def _plain_reason(reason: str, figures: dict, check: FunctionCheck) -> str:
    if reason == "type":
        return f"returned {figures.get('received')}, not a number or an array"
    if reason == "shape":
        return (
            f"the values are right but the shape is {figures['received_shape']}; "
            f"expected {figures['expected_shape']}"
        )
    if reason == "transposed":
        return (
            f"the result is transposed: shape {figures['received_shape']}, expected "
            f"{figures['expected_shape']} (the shape of w)"
        )
    if reason == "size":
        return (
            f"wrong shape: expected {figures['expected_shape']}, "
            f"received {figures['received_shape']}"
        )
    if reason == "nonfinite":
        return "NaN or inf where the reference is finite"
    return "differs from the reference"


def run_function(sb: Sandbox, check: FunctionCheck, file: str, timeout: float) -> CheckResult:
    """Call the learner's function on every case; the first required case that fails is
    the verdict, with its evidence."""
    notes: list[str] = []
    start = time.perf_counter()
    for case in check.cases:
        set_attrs = {"w": case.w} if case.w is not None else None
        out = sb.call(
            check.target,
            case.args,
            ctor=case.ctor,
            set_attrs=set_attrs,
            read=[check.read] if check.read else [],
        )
        if not out.ok:
            message, details, line = error_message(out, timeout)
            if out.phase == "constructor":
                name = check.function.split(".")[0] + ".__init__"
                return CheckResult(file, name, False, message, details=details, line=line)
            if case.required:
                return CheckResult(
                    file,
                    check.function,
                    False,
                    message,
                    details=[f"case: {case.label}", *details],
                    line=line,
                )
            notes.append(f"{case.label}: {message}")
            continue
        value, remark = _value_of(check, out)
        ok, message, figures, diag = judge_case(check, case, value)
        if remark == "returned":
            ok, message = (
                False,
                (
                    "returns the gradient instead of storing it: set self.grad "
                    "(the starter code reads model.grad)"
                ),
            )
            diag = "returned_not_stored"
        if ok and message:
            notes.append(message)
        if not ok and case.required:
            return CheckResult(
                file,
                check.function,
                False,
                message,
                figures,
                details=[f"case: {case.label}"],
                diagnosis=diag or None,
            )
        if not ok:
            notes.append(_note_for(check, case, value, message))
    labels = ", ".join(c.label for c in check.cases if c.required)
    message = f"matches the reference ({labels})"
    if notes:
        message += "; note: " + "; ".join(dict.fromkeys(notes))
    return CheckResult(
        file, check.function, True, message, {"seconds": round(time.perf_counter() - start, 3)}
    )


def _note_for(check: FunctionCheck, case: cs.Case, value: Any, message: str) -> str:
    if check.kind == "binary_accuracy" and case.label.startswith("all outputs"):
        return (
            "when ŷ is exactly 0.5 it counts the prediction as 0; footnote 4 predicts 1 "
            "for ŷ ≥ 0.5 (np.round rounds 0.5 to 0)"
        )
    if "shape [N]" in case.label:
        return (f"with {case.label} (the starter code's are [N, 1]) it gives "
                f"{describe_value(value)}, not {float(np.asarray(case.expected)):.6g}")  # fmt: skip
    return f"{case.label}: {message} (received {describe_value(value)})"


# ------------------------------------------------------------------ the class itself
def check_init(sb: Sandbox, layout: Layout, file: str, timeout: float) -> CheckResult:
    """The constructor builds ``w`` of shape ``[785, K]``, all zeros (tasks 2b and 3b)."""
    name = f"{layout.model}.__init__"
    out = sb.call(layout.model or "", [], ctor=layout.ctor(0.0), read=["w"])
    if not out.ok:
        message, details, line = error_message(out, timeout)
        return CheckResult(file, name, False, message, details=details, line=line)
    w = out.attrs.get("w")
    shape = [cs.I_INPUTS, layout.k]
    if w is None or isinstance(w, ValueDescription):
        return CheckResult(
            file,
            name,
            False,
            f"self.w is {describe_value(w)}; the starter "
            f"code creates self.w = np.zeros({tuple(shape)})",
        )
    w = np.asarray(w)
    if list(w.shape) != shape:
        return CheckResult(
            file,
            name,
            False,
            f"self.w has shape {list(w.shape)}; the "
            f"starter code's is {shape} (one column per output)",
            {"expected_shape": shape, "received_shape": list(w.shape)},
        )
    if np.any(w != 0):
        return CheckResult(
            file,
            name,
            False,
            "self.w does not start at zero: tasks 2b and 3b "
            "say to initialise the weights to all zeros",
        )
    return CheckResult(file, name, True, f"self.w starts as zeros of shape {shape}")


def check_zero_grad(sb: Sandbox, layout: Layout, file: str, timeout: float) -> CheckResult:
    """``zero_grad`` leaves ``self.grad`` None or all zeros."""
    name = f"{layout.model}.zero_grad"
    out = sb.call(
        f"{layout.model}.zero_grad",
        [],
        ctor=layout.ctor(0.0),
        set_attrs={"grad": np.ones((cs.I_INPUTS, layout.k))},
        read=["grad"],
    )
    if not out.ok:
        message, details, line = error_message(out, timeout)
        return CheckResult(file, name, False, message, details=details, line=line)
    grad = out.attrs.get("grad")
    if grad is None or (not isinstance(grad, ValueDescription) and not np.any(grad)):
        return CheckResult(file, name, True, "clears self.grad")
    return CheckResult(
        file,
        name,
        False,
        "self.grad still holds the old gradient after zero_grad(); set it to None (or zeros)",
    )


# ------------------------------------------------------------------ combined checks
def gradient_check(sb: Sandbox, layout: Layout, file: str, timeout: float) -> CheckResult:
    """The appendix's check: central differences with eps = 1e-2 of the learner's loss of the
    learner's forward, against the learner's backward, on 100 images; they must agree within
    eps^2 = 1e-4 (the O(eps^2) the appendix promises)."""
    data = cs.combined_data(layout.k)
    rng = np.random.default_rng(8)
    entries = [(int(rng.integers(cs.I_INPUTS)), int(rng.integers(layout.k))) for _ in range(40)]
    entries += [(cs.I_INPUTS - 1, j) for j in range(min(layout.k, 3))]  # the bias row
    out = sb.procedure(
        "gradient_check",
        layout.model or "",
        {"X": data["X"], "Y": data["targets"], "w": data["w"], "entries": np.array(entries)},
        ctor=layout.ctor(0.0),
        options={"eps": EPS},
        timeout=6 * timeout,
    )
    name = "gradient check"
    if not out.ok:
        message, details, line = error_message(out, 6 * timeout)
        return CheckResult(file, name, False, message, details=details, line=line)
    numerical = np.asarray(out.result["numerical"], dtype=np.float64)
    grad = out.result["analytic"]
    if isinstance(grad, ValueDescription) or grad is None:
        return CheckResult(file, name, False, f"self.grad is {describe_value(grad)}")
    analytic = np.asarray(grad, dtype=np.float64).reshape(cs.I_INPUTS, layout.k)
    picked = analytic[tuple(np.array(entries).T)]
    worst = float(np.max(np.abs(numerical - picked)))
    rel = float(np.linalg.norm(numerical - picked) / max(np.linalg.norm(numerical), 1e-300))
    figures = {
        "array": "w",
        "entries_checked": len(entries),
        "eps": EPS,
        "max_abs_difference": worst,
        "relative_error": rel,
        "bound": EPS**2,
    }
    ok = worst <= EPS**2
    message = (
        f"w: {len(entries)} entries agree within {worst:.1e} <= eps² = 1e-4 "
        f"(relative error {rel:.1e})"
        if ok
        else f"w: backward and the central difference of your loss differ by up to "
        f"{worst:.2e} > eps² = 1e-4"
    )
    return CheckResult(file, name, ok, message, figures)


def initial_loss(sb: Sandbox, layout: Layout, file: str, timeout: float) -> CheckResult:
    """At the initial (zero) weights every output is 1/K, so the loss is ln K (ln 2)."""
    data = cs.combined_data(layout.k)
    out = sb.procedure(
        "initial_loss",
        layout.model or "",
        {"X": data["X"], "Y": data["targets"]},
        ctor=layout.ctor(0.0),
    )
    name = "initial loss"
    if not out.ok:
        message, details, line = error_message(out, timeout)
        return CheckResult(file, name, False, message, details=details, line=line)
    target = math.log(2 if layout.k == 1 else layout.k)
    got = compare(target, out.result["loss"], scalar=True, rtol=1e-3)
    figures = {"expected": target, "received": describe_value(out.result["loss"])}
    message = (
        f"ln {2 if layout.k == 1 else layout.k} = {target:.4f} at the initial weights"
        if got.ok
        else f"the loss at the initial weights is {figures['received']}, not ln K = {target:.4f}"
    )
    return CheckResult(file, name, got.ok, message, figures)


def overfit(sb: Sandbox, layout: Layout, file: str, timeout: float) -> CheckResult:
    """Gradient descent with the learner's forward and backward fits 100 images exactly."""
    data = cs.combined_data(layout.k)
    out = sb.procedure(
        "overfit",
        layout.model or "",
        {"X": data["X"], "Y": data["targets"], "w": data["w"]},
        ctor=layout.ctor(0.0),
        options={"steps": OVERFIT_STEPS, "lr": OVERFIT_LR},
        timeout=10 * timeout,
    )
    name = "overfit 100 images"
    if not out.ok:
        message, details, line = error_message(out, 10 * timeout)
        return CheckResult(file, name, False, message, details=details, line=line)
    outputs = np.asarray(out.result["outputs"], dtype=np.float64).reshape(data["outputs"].shape)
    t = data["targets"]
    if layout.k == 1:
        acc = float(np.mean((outputs >= 0.5) == t))
    else:
        acc = float(np.mean(outputs.argmax(axis=1) == t.argmax(axis=1)))
    figures = {"steps": OVERFIT_STEPS, "learning_rate": OVERFIT_LR, "train_accuracy": acc}
    message = (
        f"100% training accuracy after {OVERFIT_STEPS} gradient steps "
        f"(learning rate {OVERFIT_LR:g})"
        if acc == 1.0
        else f"only {acc:.0%} training accuracy after {OVERFIT_STEPS} steps: training does "
        "not fit a small batch"
    )
    return CheckResult(file, name, acc == 1.0, message, figures)


COMBINED = {
    "gradient check": (gradient_check, ("forward", "backward", "cross_entropy_loss")),
    "initial loss": (initial_loss, ("forward", "cross_entropy_loss")),
    "overfit 100 images": (overfit, ("forward", "backward")),
}


def run_assignment(
    sb: Sandbox, names: dict[str, Any], file: str, timeout: float
) -> list[CheckResult]:
    """Every check that applies to a loaded file."""
    layout = detect(names)
    results: list[CheckResult] = []
    model_ok = True
    if layout.model:
        init = check_init(sb, layout, file, timeout)
        results.append(init)
        model_ok = init.ok or "does not start at zero" in init.message
    for check in plan(layout):
        if check.function.startswith(f"{layout.model}.") and not model_ok:
            continue
        results.append(run_function(sb, check, file, timeout))
    if layout.model and model_ok and "zero_grad" in names[layout.model].get("methods", {}):
        results.append(check_zero_grad(sb, layout, file, timeout))
    if layout.model and "cross_entropy_loss" in layout.own and model_ok:
        results += run_combined(sb, layout, file, timeout, results)
    return results


def run_combined(
    sb: Sandbox, layout: Layout, file: str, timeout: float, results: list[CheckResult]
) -> list[CheckResult]:
    """The combined checks whose functions all passed; the others are not run (one bug, one
    flag) and the failed function's details say which wait for it."""
    failed = {r.function.split(".")[-1]: r for r in results if not r.ok}
    combined, waiting = [], {}
    for name, (func, needs) in COMBINED.items():
        blockers = [failed[n] for n in (*needs, "__init__") if n in failed]
        if not blockers:
            combined.append(func(sb, layout, file, timeout))
        else:
            waiting.setdefault(id(blockers[0]), (blockers[0], []))[1].append(name)
    for result, names in waiting.values():
        result.details.append(f"not run until this passes: {', '.join(names)}")
    return combined


def expected_names() -> str:
    return (
        "pre_process_images, cross_entropy_loss, BinaryModel (task 2a), one_hot_encode, "
        "SoftmaxModel (task 3a) or calculate_accuracy (tasks 2c, 3c)"
    )


__all__ = [
    "COMBINED",
    "FunctionCheck",
    "Layout",
    "detect",
    "expected_names",
    "plan",
    "run_assignment",
]
