"""The child process of ``digitlab check``: imports a learner's file and runs its functions.

Run as a script (``python child.py WORKDIR FILE FD MEMORY_MB``), not imported by the parent:
it uses the standard library and NumPy only, so that it starts fast and owes nothing to
digitlab's own state. Requests arrive as JSON lines on standard input; each answer is one JSON
line on the file descriptor ``FD``. Arrays travel as ``.npy`` files in ``WORKDIR`` (saved and
loaded with ``allow_pickle=False``), never pickled. The learner's own prints go to the
standard output and error the parent gave this process (a log file), not to the answers.

Only the file's imports, definitions and constant assignments are executed: top-level training
code (a call, a loop) is skipped, as if it stood under ``if __name__ == "__main__"``.
"""

from __future__ import annotations

import ast
import builtins
import importlib.abc
import importlib.machinery
import inspect
import json
import os
import resource
import signal
import sys
import time
import traceback
import types
from pathlib import Path
from typing import Any

import numpy as np

#: Modules of the starter code a file may import; stood in for when they are not beside it.
STARTER_SIBLINGS = frozenset(
    {"utils", "mnist", "trainer", "task2", "task2a", "task3", "task3a", "task4", "task4a"}
)
#: Names whose calls may appear in a top-level assignment that is kept.
SAFE_CALL_ROOTS = frozenset(
    {
        "np",
        "numpy",
        "math",
        "int",
        "float",
        "range",
        "list",
        "tuple",
        "dict",
        "set",
        "len",
        "str",
        "bool",
        "round",
        "abs",
        "min",
        "max",
    }
)
MISSING = object()


# ------------------------------------------------------------------ stand-ins for siblings
class _StandInFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Last-resort finder: a starter-code module missing beside the file becomes a stand-in
    whose every attribute is a class that raises when used (so imports and subclassing work)."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname in STARTER_SIBLINGS:
            return importlib.machinery.ModuleSpec(fullname, self)
        return None

    def create_module(self, spec: Any) -> types.ModuleType:
        module = types.ModuleType(spec.name)
        name = spec.name

        def __getattr__(attr: str) -> type:
            if attr.startswith("__"):
                raise AttributeError(attr)

            def unavailable(*args: Any, **kwargs: Any) -> None:
                raise RuntimeError(
                    f"{name}.{attr} is not available: {name}.py was not found beside your file"
                )

            return type(attr, (), {"__init__": unavailable})

        module.__getattr__ = __getattr__  # type: ignore[method-assign]
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        return None


# ------------------------------------------------------------------ loading the file
def _call_roots(node: ast.AST) -> set[str]:
    """Names at the root of every called expression inside ``node``."""
    roots = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Call):
            func = sub.func
            while isinstance(func, ast.Attribute):
                func = func.value
            roots.add(func.id if isinstance(func, ast.Name) else "?")
    return roots


def keep_statement(node: ast.stmt) -> bool:
    """Whether a top-level statement is run: imports, definitions, docstrings, constant
    assignments (calls only into NumPy, math and simple built-ins) and guarded imports."""
    if isinstance(
        node, ast.Import | ast.ImportFrom | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef
    ):
        return True
    if isinstance(node, ast.Expr):
        return isinstance(node.value, ast.Constant)
    if isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
        return node.value is not None and _call_roots(node.value) <= SAFE_CALL_ROOTS
    if isinstance(node, ast.Try):
        return all(isinstance(s, ast.Import | ast.ImportFrom | ast.Pass) for s in node.body)
    return False


def load_module(path: Path) -> types.ModuleType:
    """Execute the kept statements of ``path`` as a module named after the file."""
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source, filename=str(path))
    module = types.ModuleType(path.stem)
    module.__file__ = str(path)
    sys.modules[path.stem] = module
    for node in tree.body:
        if not keep_statement(node):
            continue
        code = compile(ast.Module(body=[node], type_ignores=[]), str(path), "exec")
        try:
            exec(code, module.__dict__)
        except Exception:
            # an assignment may use a name the skipped training code would have set
            if not isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
                raise
    return module


def _params(func: Any) -> list[str] | None:
    try:
        return [p for p in inspect.signature(func).parameters if p != "self"]
    except (TypeError, ValueError):
        return None


def describe(module: types.ModuleType) -> dict[str, Any]:
    """The names a loaded file defines or imports that the checker may use."""
    names: dict[str, Any] = {}
    for name, obj in vars(module).items():
        if name.startswith("_") or not (inspect.isfunction(obj) or inspect.isclass(obj)):
            continue
        own = getattr(obj, "__module__", None) == module.__name__
        entry: dict[str, Any] = {
            "kind": "class" if inspect.isclass(obj) else "function",
            "own": own,
            "doc": (inspect.getdoc(obj) or "")[:2000],
        }
        if inspect.isclass(obj):
            entry["init"] = _params(obj.__init__) if "__init__" in vars(obj) else []
            entry["methods"] = {m: _params(f) for m, f in vars(obj).items() if callable(f)}
        else:
            entry["params"] = _params(obj)
            entry["annotations"] = {
                k: getattr(v, "__name__", str(v))
                for k, v in getattr(obj, "__annotations__", {}).items()
            }
        names[name] = entry
    return names


# ------------------------------------------------------------------ values in and out
class Runner:
    """Answers requests about one loaded module."""

    def __init__(self, module: types.ModuleType, workdir: Path, user_file: Path) -> None:
        self.module, self.workdir, self.user_file = module, workdir, user_file
        self.count = 0

    def decode(self, ref: Any) -> Any:
        if isinstance(ref, dict) and "npy" in ref:
            return np.load(self.workdir / ref["npy"], allow_pickle=False)
        if isinstance(ref, dict) and "model" in ref:
            spec = ref["model"]
            return ReferenceModel(self.decode(spec["w"]), spec["kind"])
        if isinstance(ref, dict) and "value" in ref:
            return ref["value"]
        raise ValueError(f"bad reference {ref!r}")

    def encode(self, value: Any) -> dict[str, Any]:
        if value is MISSING:
            return {"type": "missing"}
        if value is None:
            return {"type": "none"}
        pytype = type(value).__name__
        try:
            arr = np.asarray(value)
        except Exception:  # noqa: BLE001 - anything the learner returned
            return {"type": "other", "pytype": pytype}
        if arr.dtype.kind not in "biuf":
            return {"type": "other", "pytype": pytype, "dtype": str(arr.dtype)}
        self.count += 1
        name = f"out_{os.getpid()}_{self.count}.npy"
        np.save(self.workdir / name, arr, allow_pickle=False)
        return {"type": "array", "npy": name, "pytype": pytype}

    def construct(self, cls_name: str, ctor: list[Any]) -> Any:
        cls = getattr(self.module, cls_name)
        try:
            return cls(*ctor)
        except BaseException as exc:  # noqa: BLE001 - reported as the constructor's fault
            raise ConstructorError() from exc

    def call(self, req: dict[str, Any]) -> dict[str, Any]:
        target = req["target"]
        args = [self.decode(r) for r in req.get("args", [])]
        cls_name, _, method = target.partition(".")
        attrs: dict[str, Any] = {}
        if not method and inspect.isclass(getattr(self.module, cls_name, None)):
            obj = self.construct(cls_name, [self.decode(r) for r in req.get("ctor", [])])
            result = None
        elif method:
            obj = self.construct(cls_name, [self.decode(r) for r in req.get("ctor", [])])
            for attr, ref in req.get("set", {}).items():
                setattr(obj, attr, self.decode(ref))
            result = getattr(obj, method)(*args)
        else:
            obj, result = None, getattr(self.module, target)(*args)
        for attr in req.get("read", []):
            attrs[attr] = self.encode(getattr(obj, attr, MISSING))
        return {"result": self.encode(result), "attrs": attrs}

    def procedure(self, req: dict[str, Any]) -> dict[str, Any]:
        """A combined check that runs many calls in this process (the gradient check)."""
        data = {k: self.decode(v) for k, v in req.get("data", {}).items()}
        ctor = [self.decode(r) for r in req.get("ctor", [])]
        cls = getattr(self.module, req["model"])
        loss = getattr(self.module, "cross_entropy_loss", None)
        out = PROCEDURES[req["name"]](cls, ctor, loss, data, req.get("options", {}))
        return {k: self.encode(v) for k, v in out.items()}


class ConstructorError(Exception):
    """The class could not be built: the fault is in its ``__init__``."""


class ReferenceModel:
    """The assignment's model with given weights, handed to a learner's ``calculate_accuracy``:
    ``forward`` is the sigmoid or softmax of ``X w`` (``w`` of shape ``[785, K]``)."""

    def __init__(self, w: np.ndarray, kind: str) -> None:
        self.w, self.kind = w, kind
        self.I, self.num_outputs = w.shape
        self.grad = None
        self.l2_reg_lambda = 0.0

    def forward(self, X: np.ndarray) -> np.ndarray:
        z = np.asarray(X, dtype=np.float64) @ self.w
        if self.kind == "binary":
            return 0.5 * (1.0 + np.tanh(0.5 * z))
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def zero_grad(self) -> None:
        self.grad = None


# ------------------------------------------------------------------ combined checks
def gradient_check(cls: Any, ctor: list, loss: Any, data: dict, options: dict) -> dict:
    """Central differences ``(C(w + eps) - C(w - eps)) / (2 eps)`` of the learner's loss of
    the learner's forward, at the given entries, beside the learner's backward."""
    X, Y, w0, entries = data["X"], data["Y"], data["w"], data["entries"]
    eps = float(options["eps"])
    model = cls(*ctor)
    numerical = np.zeros(len(entries))
    for n, (i, j) in enumerate(entries):
        w = w0.copy()
        w[i, j] += eps
        model.w = w
        plus = float(np.asarray(loss(Y, model.forward(X))).reshape(-1)[0])
        w = w0.copy()
        w[i, j] -= eps
        model.w = w
        minus = float(np.asarray(loss(Y, model.forward(X))).reshape(-1)[0])
        numerical[n] = (plus - minus) / (2 * eps)
    model.w = w0.copy()
    model.backward(X, model.forward(X), Y)
    return {"numerical": numerical, "analytic": model.grad}


def initial_loss(cls: Any, ctor: list, loss: Any, data: dict, options: dict) -> dict:
    """The learner's loss of the learner's forward at the learner's initial weights."""
    model = cls(*ctor)
    return {"loss": loss(data["Y"], model.forward(data["X"]))}


def overfit(cls: Any, ctor: list, loss: Any, data: dict, options: dict) -> dict:
    """Full-batch gradient descent with the learner's forward and backward from zero weights;
    returns the final outputs."""
    X, Y = data["X"], data["Y"]
    model = cls(*ctor)
    model.w = np.zeros_like(data["w"])
    for _ in range(int(options["steps"])):
        model.backward(X, model.forward(X), Y)
        model.w = model.w - float(options["lr"]) * np.asarray(model.grad)
    return {"outputs": model.forward(X)}


def _build(target: Any, options: dict) -> Any:
    """A learner's model class built with no arguments, else ``(n_features, n_classes)``,
    else ``(n_features)``; a function is returned as it is."""
    if not inspect.isclass(target):
        return target
    d, k = int(options["n_features"]), int(options["n_classes"])
    for args in ((), (d, k), (d,)):
        try:
            return target(*args)
        except TypeError:
            continue
    return target(d, k)


def _loss_and_grad(model: Any, params: dict, X: np.ndarray, y: np.ndarray) -> tuple:
    """``(loss, grads)`` of a ``loss_and_grad(params, X, y)`` function or of a class
    instance's ``loss_and_grad(X, y)`` with ``params`` set."""
    if inspect.isfunction(model):
        return model(params, X, y)
    model.params = {k: v.copy() for k, v in params.items()}
    return model.loss_and_grad(X, y)


def _split(data: dict) -> tuple[dict, np.ndarray, np.ndarray]:
    params = {k[2:]: np.asarray(v, dtype=np.float64) for k, v in data.items() if k[:2] == "p."}
    return params, data["X"], data["y"]


def generic_eval(cls: Any, ctor: list, loss: Any, data: dict, options: dict) -> dict:
    """Loss and gradients of a learner's generic model at given parameters."""
    params, X, y = _split(data)
    model = _build(cls, options)
    value, grads = _loss_and_grad(model, params, X, y)
    return {"loss": value, **{f"g.{k}": v for k, v in dict(grads).items()}}


def generic_params(cls: Any, ctor: list, loss: Any, data: dict, options: dict) -> dict:
    """The parameters a learner's model class starts with."""
    model = _build(cls, options)
    return {f"p.{k}": v for k, v in dict(model.params).items()}


def generic_numeric(cls: Any, ctor: list, loss: Any, data: dict, options: dict) -> dict:
    """Central differences of a learner's generic loss at the listed entries of each array,
    and its analytic gradients, in float64."""
    params, X, y = _split(data)
    model = _build(cls, options)
    eps = float(options["eps"])
    out = {}
    for key, flat in options["entries"].items():
        values = []
        for f in flat:
            index = np.unravel_index(int(f), params[key].shape)
            trial = {k: v.copy() for k, v in params.items()}
            trial[key][index] += eps
            plus = float(_loss_and_grad(model, trial, X, y)[0])
            trial[key][index] -= 2 * eps
            minus = float(_loss_and_grad(model, trial, X, y)[0])
            values.append((plus - minus) / (2 * eps))
        out[f"n.{key}"] = np.array(values)
    _, grads = _loss_and_grad(model, params, X, y)
    out.update({f"g.{k}": v for k, v in dict(grads).items()})
    return out


PROCEDURES = {
    "gradient_check": gradient_check,
    "initial_loss": initial_loss,
    "overfit": overfit,
    "generic_eval": generic_eval,
    "generic_params": generic_params,
    "generic_numeric": generic_numeric,
}


# ------------------------------------------------------------------ errors and the loop
def error_record(exc: BaseException, user_file: Path) -> dict[str, Any]:
    """Type, message and the innermost frame of the learner's file (line, function, text)."""
    message = exc.msg if isinstance(exc, SyntaxError) else str(exc)
    record: dict[str, Any] = {"type": type(exc).__name__, "message": message[:500]}
    if isinstance(exc, SyntaxError) and exc.filename == str(user_file):
        record.update(line=exc.lineno, text=(exc.text or "").strip())
        return record
    frames = traceback.extract_tb(exc.__traceback__)
    mine = [f for f in frames if Path(f.filename).resolve() == user_file.resolve()]
    if mine:
        f = mine[-1]
        record.update(line=f.lineno, function=f.name, text=(f.line or "").strip())
    else:
        near = [f for f in frames if Path(f.filename).parent == user_file.parent]
        if near:
            f = near[-1]
            record.update(other_file=Path(f.filename).name, line=f.lineno, function=f.name)
    return record


def answer(channel: Any, payload: dict[str, Any]) -> None:
    channel.write(json.dumps(payload, allow_nan=True) + "\n")
    channel.flush()


class CallTimeout(BaseException):
    """Raised in the learner's code when the parent's time limit is up (``SIGUSR1``): a
    ``BaseException``, so that an ``except Exception`` in the learner's code lets it through
    and the answer says where the code was."""


IN_CALL = [False]


def _stop_call(signum: int, frame: Any) -> None:
    if IN_CALL[0]:
        raise CallTimeout("the time limit is up")


def serve(runner: Runner, channel: Any) -> None:
    signal.signal(signal.SIGUSR1, _stop_call)
    for line in sys.stdin:
        req = json.loads(line)
        start = time.perf_counter()
        try:
            IN_CALL[0] = True
            try:
                body = (runner.procedure(req) if req.get("kind") == "procedure"
                        else runner.call(req))  # fmt: skip
            finally:
                IN_CALL[0] = False
            payload = {"id": req["id"], "ok": True, **body}
        except ConstructorError as exc:
            cause = exc.__cause__ or exc
            payload = {
                "id": req["id"],
                "ok": False,
                "phase": "constructor",
                "error": error_record(cause, runner.user_file),
            }
        except BaseException as exc:  # noqa: BLE001 - the learner's code may raise anything
            payload = {"id": req["id"], "ok": False, "error": error_record(exc, runner.user_file)}
        payload["seconds"] = time.perf_counter() - start
        answer(channel, payload)


def main(argv: list[str]) -> None:
    from digitlab.workers import end_with_parent

    # in its own session, a learner's endless loop would outlive a killed checker: end with it
    end_with_parent(os.getppid())
    workdir, user_file, fd, memory_mb = Path(argv[0]), Path(argv[1]), int(argv[2]), int(argv[3])
    limit = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    channel = os.fdopen(fd, "w", encoding="utf-8")
    here = Path(__file__).resolve().parent  # run as a script: our own folder is on the path
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    sys.path.insert(0, str(user_file.parent))
    sys.meta_path.append(_StandInFinder())
    np.seterr(all="ignore")
    builtins.input = lambda *a: ""  # a stray input() must not wait on the request pipe
    try:
        module = load_module(user_file)
    except BaseException as exc:  # noqa: BLE001 - syntax errors, import errors, anything
        answer(
            channel,
            {"id": 0, "ok": False, "phase": "import", "error": error_record(exc, user_file)},
        )
        return
    answer(channel, {"id": 0, "ok": True, "names": describe(module)})
    serve(Runner(module, workdir, user_file), channel)


if __name__ == "__main__":
    main(sys.argv[1:])
