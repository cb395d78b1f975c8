"""digitlab check: correct assignment files pass, each planted bug is flagged on exactly its
function with its diagnosis, hangs and syntax errors are failed checks, the CLI's exit codes."""

from __future__ import annotations

import contextlib
import json
import textwrap
from pathlib import Path

import pytest

from digitlab.check import check_files, enclosing_function
from digitlab.cli import main
from process_helpers import gone_within, start_parent

# ---------------------------------------------------------------- correct files (templates)
TASK2A = '''
import numpy as np
import utils
np.random.seed(1)


def pre_process_images(X: np.ndarray):
    """
    Returns:
        X: images of shape [batch size, 785] in the range (-1, 1)
    """
    assert X.shape[1] == 784
    X = X / 127.5 - 1
    X = np.hstack([X, np.ones((X.shape[0], 1))])
    return X


def cross_entropy_loss(targets: np.ndarray, outputs: np.ndarray) -> float:
    assert targets.shape == outputs.shape
    return -np.mean(targets * np.log(outputs) + (1 - targets) * np.log(1 - outputs))


class BinaryModel:

    def __init__(self):
        self.I = 785
        self.w = np.zeros((self.I, 1))
        self.grad = None

    def forward(self, X: np.ndarray) -> np.ndarray:
        return 1 / (1 + np.exp(-X @ self.w))

    def backward(self, X: np.ndarray, outputs: np.ndarray, targets: np.ndarray) -> None:
        assert targets.shape == outputs.shape
        self.grad = -X.T @ (targets - outputs) / X.shape[0]
        assert self.grad.shape == self.w.shape

    def zero_grad(self) -> None:
        self.grad = None


if __name__ == "__main__":
    X_train, Y_train, *_ = utils.load_binary_dataset(2, 3)
'''

# the 2020 layout: BinaryModel(l2_reg_lambda), images to [0, 1], training at the top level
TASK2A_2020 = '''
import numpy as np
import utils


def pre_process_images(X: np.ndarray):
    """
    Returns:
        X: images of shape [batch size, 785] in the range (0, 1)
    """
    X = np.insert(X / 255, 0, 1, axis=1)
    return X


def cross_entropy_loss(targets, outputs):
    N = targets.shape[0]
    return -np.sum(targets * np.log(outputs) + (1 - targets) * np.log(1 - outputs)) / N


class BinaryModel:

    def __init__(self, l2_reg_lambda: float):
        self.I = 785
        self.w = np.zeros((self.I, 1))
        self.grad = None
        self.l2_reg_lambda = l2_reg_lambda

    def forward(self, X):
        y = np.zeros((X.shape[0], 1))
        for i in range(X.shape[0]):
            y[i] = 1 / (1 + np.exp(-X[i].dot(self.w)))
        return y

    def backward(self, X, outputs, targets):
        self.grad = -np.dot(X.T, targets - outputs) / targets.shape[0]
        self.grad += 2 * self.l2_reg_lambda * self.w

    def zero_grad(self):
        self.grad = None


X_train, Y_train, *_ = utils.load_binary_dataset(2, 3, 0.1)
for epoch in range(500):
    pass
'''

TASK3A = """
import numpy as np
import utils
from task2a import pre_process_images
np.random.seed(1)


def cross_entropy_loss(targets: np.ndarray, outputs: np.ndarray):
    assert targets.shape == outputs.shape
    return -np.sum(targets * np.log(outputs)) / targets.shape[0]


class SoftmaxModel:

    def __init__(self, l2_reg_lambda: float):
        self.I = 785
        self.num_outputs = 10
        self.w = np.zeros((self.I, self.num_outputs))
        self.grad = None
        self.l2_reg_lambda = l2_reg_lambda

    def forward(self, X: np.ndarray) -> np.ndarray:
        z = X @ self.w
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def backward(self, X: np.ndarray, outputs: np.ndarray, targets: np.ndarray) -> None:
        assert targets.shape == outputs.shape
        w = self.w
        self.grad = -X.T @ (targets - outputs) / X.shape[0] + 2 * self.l2_reg_lambda * w

    def zero_grad(self) -> None:
        self.grad = None


def one_hot_encode(Y: np.ndarray, num_classes: int):
    out = np.zeros((Y.shape[0], num_classes))
    out[np.arange(Y.shape[0]), Y[:, 0]] = 1
    return out
"""

TASK2 = """
import numpy as np
import utils
from task2a import cross_entropy_loss, BinaryModel, pre_process_images
from trainer import BaseTrainer


def calculate_accuracy(X: np.ndarray, targets: np.ndarray, model: BinaryModel) -> float:
    outputs = model.forward(X)
    return float(np.mean((outputs >= 0.5) == targets))


class LogisticTrainer(BaseTrainer):
    def train_step(self, X_batch, Y_batch):
        return 0.0
"""

TASK3 = """
import numpy as np
from task3a import cross_entropy_loss, SoftmaxModel, one_hot_encode


def calculate_accuracy(X: np.ndarray, targets: np.ndarray, model: SoftmaxModel) -> float:
    return float(np.mean(model.forward(X).argmax(axis=1) == targets.argmax(axis=1)))
"""

# digitlab's own reference written as an assignment file: it must pass its own checks
REFERENCE = """
from digitlab.check import reference as ref


def pre_process_images(X):
    return ref.pre_process_images(X)


def cross_entropy_loss(targets, outputs):
    return ref.softmax_cross_entropy(targets, outputs)


def one_hot_encode(Y, num_classes):
    return ref.one_hot_encode(Y, num_classes)


def calculate_accuracy(X, targets, model):
    return ref.softmax_accuracy(X, targets, model.w)


class SoftmaxModel:
    def __init__(self, l2_reg_lambda):
        self.w = ref.np.zeros((785, 10))
        self.grad = None
        self.l2_reg_lambda = l2_reg_lambda

    def forward(self, X):
        return ref.softmax_forward(X, self.w)

    def backward(self, X, outputs, targets):
        self.grad = ref.gradient(X, outputs, targets, self.w, self.l2_reg_lambda)

    def zero_grad(self):
        self.grad = None
"""

TEMPLATES = {"task2a.py": TASK2A, "task3a.py": TASK3A, "task2.py": TASK2, "task3.py": TASK3}


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def failed(results) -> dict[str, str]:
    return {r.function: r.message for r in results if not r.ok}


@pytest.fixture(scope="module")
def starter(tmp_path_factory) -> Path:
    """A folder with the four correct files side by side (task2.py imports task2a...)."""
    folder = tmp_path_factory.mktemp("starter")
    for name, text in TEMPLATES.items():
        write(folder, name, text)
    return folder


def test_correct_files_pass_every_check(starter):
    results = check_files([starter / n for n in TEMPLATES])
    assert failed(results) == {}
    names = {(r.file, r.function) for r in results}
    for fn in (
        "pre_process_images",
        "cross_entropy_loss",
        "BinaryModel.forward",
        "BinaryModel.backward",
        "gradient check",
        "initial loss",
        "overfit 100 images",
    ):
        assert ("task2a.py", fn) in names
    for fn in ("one_hot_encode", "SoftmaxModel.backward", "gradient check"):
        assert ("task3a.py", fn) in names
    assert ("task2.py", "calculate_accuracy") in names
    assert ("task3.py", "calculate_accuracy") in names


def test_2020_layout_passes_with_its_own_range(tmp_path):
    results = check_files([write(tmp_path, "task2a.py", TASK2A_2020)])
    assert failed(results) == {}
    pre = next(r for r in results if r.function == "pre_process_images")
    assert "2020 starter code" in pre.message
    back = next(r for r in results if r.function == "BinaryModel.backward")
    assert "λ = 0.5" in back.message


def test_a_penalty_without_the_bias_row_passes_with_a_note(tmp_path):
    for row in ("-1", "0"):
        text = TASK3A.replace(
            "        w = self.w\n", f"        w = self.w.copy()\n        w[{row}] = 0\n"
        )
        results = check_files([write(tmp_path, "task3a.py", text)])
        assert failed(results) == {}
        back = next(r for r in results if r.function == "SoftmaxModel.backward")
        assert "leaves out the bias row" in back.message


def test_digitlab_reference_passes_its_own_checks(tmp_path):
    results = check_files([write(tmp_path, "reference.py", REFERENCE)])
    assert failed(results) == {}
    assert len(results) >= 9


# ---------------------------------------------------------------- planted bugs
# (file, code replaced, replacement, function flagged, words of the diagnosis)
BUGS = [
    ("task2a.py", "X / 127.5 - 1", "X / 255", "pre_process_images", "[0, 1]"),
    (
        "task2a.py",
        "X = np.hstack([X, np.ones((X.shape[0], 1))])",
        "pass",
        "pre_process_images",
        "column of ones is missing",
    ),
    ("task2a.py", "X / 127.5 - 1", "X / 128 - 1", "pre_process_images", "divides by 128"),
    (
        "task2a.py",
        "X / 127.5 - 1",
        "2 * X / 255 - 1",
        "pre_process_images",
        "wraps around in uint8",
    ),
    (
        "task2a.py",
        "-np.mean(targets",
        "-np.sum(targets",
        "cross_entropy_loss",
        "summed over the batch",
    ),
    (
        "task2a.py",
        "targets * np.log(outputs) + (1 - targets) * np.log(1 - outputs)",
        "targets * np.log(outputs)",
        "cross_entropy_loss",
        "(1 - y^n) ln(1 - ŷ^n)",
    ),
    ("task2a.py", "np.exp(-X @ self.w)", "np.exp(X @ self.w)", "BinaryModel.forward", "exp(+wᵀx)"),
    (
        "task2a.py",
        "return 1 / (1 + np.exp(-X @ self.w))",
        "return X @ self.w",
        "BinaryModel.forward",
        "returns the logits",
    ),
    (
        "task2a.py",
        "return 1 / (1 + np.exp(-X @ self.w))",
        "return np.exp(X @ self.w) / (1 + np.exp(X @ self.w))",
        "BinaryModel.forward",
        "NaN or inf for large logits",
    ),
    (
        "task2a.py",
        "return 1 / (1 + np.exp(-X @ self.w))",
        "while True:\n            pass",
        "BinaryModel.forward",
        "did not return within",
    ),
    ("task2a.py", " / X.shape[0]\n", "\n", "BinaryModel.backward", "summed over the batch"),
    (
        "task2a.py",
        "-X.T @ (targets - outputs)",
        "X.T @ (targets - outputs)",
        "BinaryModel.backward",
        "sign",
    ),
    (
        "task2a.py",
        "        assert self.grad.shape == self.w.shape\n",
        "        self.grad = self.grad.T\n",
        "BinaryModel.backward",
        "transposed",
    ),
    (
        "task2a.py",
        "self.grad = -X.T @ (targets - outputs) / X.shape[0]",
        "return -X.T @ (targets - outputs) / X.shape[0]",
        "BinaryModel.backward",
        "instead of storing it",
    ),
    (
        "task2a.py",
        "-X.T @ (targets - outputs)",
        "-X.T @ (targets - self.outputs)",
        "BinaryModel.backward",
        "AttributeError",
    ),
    (
        "task2a.py",
        "np.zeros((self.I, 1))",
        "np.random.randn(self.I, 1)",
        "BinaryModel.__init__",
        "all zeros",
    ),
    (
        "task2a.py",
        "-X.T @ (targets - outputs) / X.shape[0]",
        "-X.T @ (targets - outputs",
        "BinaryModel.backward",
        "does not parse",
    ),
    (
        "task2a.py",
        "import utils",
        "import utils\nimport no_such_module_xyz",
        "<module>",
        "ModuleNotFoundError",
    ),
    (
        "task2a.py",
        "        self.grad = None\n\n\nif",
        "        self.grad = 1.0\n\n\nif",
        "BinaryModel.zero_grad",
        "old gradient",
    ),
    ("task2.py", ">= 0.5", ">= 0.6", "calculate_accuracy", "footnote 4"),
    ("task2.py", "float(np.mean(", "float(np.sum(", "calculate_accuracy", "number of correct"),
    (
        "task3a.py",
        "        z = z - z.max(axis=1, keepdims=True)\n",
        "",
        "SoftmaxModel.forward",
        "Subtract each row's largest logit",
    ),
    (
        "task3a.py",
        "e.sum(axis=1, keepdims=True)",
        "e.sum(axis=0, keepdims=True)",
        "SoftmaxModel.forward",
        "axis 0",
    ),
    ("task3a.py", "/ targets.shape[0]\n", "/ targets.size\n", "cross_entropy_loss", "N·K"),
    (
        "task3a.py",
        "-np.sum(targets * np.log(outputs)) / targets.shape[0]",
        "-np.sum(targets * np.log(outputs))",
        "cross_entropy_loss",
        "summed over the batch",
    ),
    (
        "task3a.py",
        "2 * self.l2_reg_lambda * w",
        "self.l2_reg_lambda * w",
        "SoftmaxModel.backward",
        "2λw",
    ),
    (
        "task3a.py",
        " + 2 * self.l2_reg_lambda * w",
        "",
        "SoftmaxModel.backward",
        "ignores l2_reg_lambda",
    ),
    (
        "task3a.py",
        "2 * self.l2_reg_lambda * w",
        "2 * self.l2_reg_lambda * w / X.shape[0]",
        "SoftmaxModel.backward",
        "divides the penalty's gradient by N",
    ),
    ("task3a.py", "Y[:, 0]] = 1", "Y[:, 0] - 1] = 1", "one_hot_encode", "one place too far left"),
    (
        "task3a.py",
        "    out = np.zeros((Y.shape[0], num_classes))\n"
        "    out[np.arange(Y.shape[0]), Y[:, 0]] = 1\n    return out",
        "    return np.eye(num_classes)[Y]",
        "one_hot_encode",
        "the shape is [12, 1, 10]",
    ),
    (
        "task3a.py",
        "    out = np.zeros((Y.shape[0], num_classes))\n",
        "    out = np.zeros((Y.shape[0], Y.max() + 1))\n",
        "one_hot_encode",
        "max(Y) + 1",
    ),
    (
        "task3a.py",
        "    out = np.zeros((Y.shape[0], num_classes))\n",
        "    out = np.zeros((Y.shape[0], num_classes), dtype=bool)\n",
        "one_hot_encode",
        "booleans",
    ),
    (
        "task2a.py",
        "self.grad = -X.T @ (targets - outputs) / X.shape[0]",
        "self.grad = np.zeros_like(self.w)",
        "BinaryModel.backward",
        "placeholder",
    ),
    (
        "task3.py",
        "argmax(axis=1) == targets.argmax(axis=1)",
        "argmax(axis=1) == targets.argmax()",
        "calculate_accuracy",
        "differs from the reference",
    ),
]


@pytest.mark.parametrize("bug", BUGS, ids=[f"{b[3]}:{b[4][:24]}" for b in BUGS])
def test_each_planted_bug_is_flagged_on_exactly_its_function(bug, tmp_path, starter):
    name, old, new, function, words = bug
    for other, text in TEMPLATES.items():  # the siblings it imports, correct
        write(tmp_path, other, text)
    text = textwrap.dedent(TEMPLATES[name]).lstrip()
    assert old in text, old
    path = tmp_path / name
    path.write_text(text.replace(old, new, 1))
    results = check_files([path], timeout=2.0)
    flagged = failed(results)
    assert list(flagged) == [function], flagged
    assert words in flagged[function], flagged[function]


def test_a_hang_does_not_stop_the_other_functions_being_judged(tmp_path):
    text = (
        textwrap.dedent(TASK2A)
        .lstrip()
        .replace("return 1 / (1 + np.exp(-X @ self.w))", "while True:\n            pass")
    )
    results = check_files([write(tmp_path, "task2a.py", text)], timeout=1.0)
    by_name = {r.function: r for r in results}
    forward = by_name["BinaryModel.forward"]
    assert not forward.ok and "stopped at line" in forward.message
    assert "while True" in forward.details[1] and forward.line in (30, 31)
    assert by_name["BinaryModel.backward"].ok and by_name["cross_entropy_loss"].ok
    assert "gradient check" not in by_name  # it needs forward: not run, not a second flag


def test_syntax_error_names_the_line_and_the_enclosing_method():
    source = "class A:\n    def f(self):\n        x = (1\n\n    def g(self):\n        pass\n"
    assert enclosing_function(source, 3) == "A.f"
    assert enclosing_function(source, 6) == "A.g"
    assert enclosing_function("x = 1\n", 1) is None


# ---------------------------------------------------------------- the command
def test_cli_exit_codes_and_json(starter, tmp_path, capsys):
    assert main(["check", str(starter / "task3a.py")]) == 0
    assert "✓ SoftmaxModel.backward" in capsys.readouterr().out
    bad = write(tmp_path, "task2a.py", TASK2A.replace("-np.mean(targets", "-np.sum(targets"))
    assert main(["check", "--json", str(bad)]) == 1
    records = json.loads(capsys.readouterr().out)
    assert all({"file", "function", "ok", "message", "figures"} <= set(r) for r in records)
    assert [r["function"] for r in records if not r["ok"]] == ["cross_entropy_loss"]
    loss = next(r for r in records if r["function"] == "cross_entropy_loss")
    assert loss["figures"]["relative_error"] > 1 and loss["file"] == "task2a.py"
    assert main(["check", str(tmp_path / "missing.py")]) == 2
    assert main(["check", str(write(tmp_path, "notes.txt", "hello"))]) == 2
    assert main(["check", "--timeout", "0", str(bad)]) == 2
    assert main(["check", "--bogus", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("digitlab: error:") == 4


# ---------------------------------------------------------------- generic mode
GENERIC = """
import numpy as np


def loss_and_grad(params, X, y, lam=0.1):
    W, b = params["W"], params["b"]
    z = X @ W + b
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    n = X.shape[0]
    loss = -np.log(p[np.arange(n), y]).mean() + lam * np.sum(W * W)
    g = p.copy()
    g[np.arange(n), y] -= 1
    g /= n
    return loss, {"W": X.T @ g + 2 * lam * W, "b": g.sum(axis=0)}


class Net:
    def __init__(self, n_features, n_classes):
        rng = np.random.default_rng(0)
        self.params = {"W": rng.normal(size=(n_features, n_classes)), "b": np.zeros(n_classes)}

    def loss_and_grad(self, X, y):
        return loss_and_grad(self.params, X, y)
"""


def test_generic_mode_compares_with_digitlab_and_diagnoses(tmp_path, capsys):
    good = write(tmp_path, "mine.py", GENERIC)
    assert (
        main(["check", f"{good}:loss_and_grad", f"{good}:Net", "--as", "softmax", "--l2", "0.1"])
        == 0
    )
    assert "✓ Net grad W: matches digitlab" in capsys.readouterr().out
    assert main(["check", f"{good}:Net"]) == 0  # numerical check alone, per array
    assert "✓ Net grad b: agrees with central differences" in capsys.readouterr().out
    bad = write(tmp_path, "bad.py", GENERIC.replace("2 * lam * W", "lam * W"))
    assert main(["check", "--json", f"{bad}:loss_and_grad", "--as", "softmax", "--l2", "0.1"]) == 1
    records = json.loads(capsys.readouterr().out)
    assert [r["function"] for r in records if not r["ok"]] == ["loss_and_grad grad W"]
    assert "2λW" in records[1]["message"] and records[1]["diagnosis"] == "lambda_w"
    assert main(["check", f"{bad}:Net"]) == 1
    assert "✗ Net grad W: differs from central differences" in capsys.readouterr().out
    assert main(["check", f"{good}:loss_and_grad"]) == 2  # a function needs --as
    assert main(["check", f"{good}:Nothing", "--as", "softmax"]) == 2
    assert main(["check", str(good), "--as", "softmax"]) == 2  # --as without module:Name


def test_gradcheck_prints_each_array_in_float64(capsys):
    assert (
        main(
            [
                "gradcheck",
                "--model",
                "mlp",
                "--hidden",
                "4",
                "--dataset",
                "mnist-5k",
                "--n",
                "4",
                "--checks",
                "3",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "(float64)" in text
    for key in ("W1", "b1", "W2", "b2"):
        assert f"  {key} " in text and "relative error" in text


def test_readme_worked_example_is_what_check_prints(tmp_path, capsys):
    import re

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Check your own implementation", 1)[1].split("\n## ", 1)[0]
    source = re.search(r"^```py\n(.*?)^```$", section, flags=re.M | re.S).group(1)
    shown = re.search(r"^```console\n(.*?)^```$", section, flags=re.M | re.S).group(1)
    (tmp_path / "task3a.py").write_text(source)
    status = main(["check", str(tmp_path / "task3a.py")])
    printed = capsys.readouterr().out + f"exit status {status}\n"
    assert printed == shown


def test_crashes_prints_and_memory_hogs_stay_in_their_function(tmp_path):
    text = textwrap.dedent(TASK2A).lstrip()
    text = text.replace("    return X\n", "    print('X is', X)\n    return X\n")  # prints: fine
    text = text.replace(
        "        self.grad = None\n\n\nif", "        import os\n        os._exit(3)\n\n\nif"
    )
    text = text.replace(
        "    assert targets.shape == outputs.shape\n    return -np.mean",
        "    big = np.ones((1 << 31,))  # 16 GiB: over the memory cap\n    return -np.mean",
    )
    results = check_files([write(tmp_path, "task2a.py", text)], timeout=2.0)
    flagged = failed(results)
    assert sorted(flagged) == ["BinaryModel.zero_grad", "cross_entropy_loss"], flagged
    assert "crashed" in flagged["BinaryModel.zero_grad"]
    assert "MemoryError" in flagged["cross_entropy_loss"]
    loss = next(r for r in results if r.function == "cross_entropy_loss")
    assert loss.line is not None and loss.to_json()["line"] == loss.line


def test_a_stopped_check_starts_no_more_files(monkeypatch):
    """Ctrl-C or SIGTERM (KeyboardInterrupt) while files are checked in parallel: the files
    being checked end, the queued ones never start (the pool used to check them all first)."""
    import threading
    import time

    from digitlab import check

    monkeypatch.setattr(check.os, "cpu_count", lambda: 2)
    started: list[int] = []
    lock = threading.Lock()

    def stop():
        raise KeyboardInterrupt

    def slow(i):
        def job():
            with lock:
                started.append(i)
            time.sleep(0.3)
            return []

        return job

    with pytest.raises(KeyboardInterrupt):
        check._in_parallel([stop, slow(1)] + [slow(i) for i in range(2, 12)])
    assert len(started) <= 3 and 1 in started  # the one beside it, at most two queued ones


def test_a_learners_endless_loop_ends_with_a_killed_checker(tmp_path):
    """The learner's code runs in a child process of its own session (so a timeout can kill
    its whole group); if the checker itself is killed (SIGKILL) during an endless call, the
    child notices its parent gone and ends instead of spinning on."""
    import os
    import signal
    import time

    learner = tmp_path / "mine.py"
    learner.write_text("def softmax(z):\n    while True:\n        pass\n")
    checker = (
        "import sys, threading, time\n"
        "from pathlib import Path\n"
        "from digitlab.check.sandbox import Sandbox\n"
        f"sb = Sandbox(Path({str(learner)!r}), timeout=600)\n"
        "threading.Thread(target=lambda: sb.call('softmax', [1.0]), daemon=True).start()\n"
        "while sb.proc is None or sb.count == 0:\n"
        "    time.sleep(0.05)\n"
        "print(sb.proc.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    proc, child = start_parent(checker)
    try:
        time.sleep(1.0)  # the child is in the endless call now
        assert Path(f"/proc/{child}").exists()
        proc.kill()
        proc.wait(timeout=30)
        assert gone_within([child], 5) == []
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
