"""``digitlab check``: which function of a learner's own implementation is wrong, and why.

>>> from digitlab.check import check_files
>>> results = check_files(["task2a.py"])          # doctest: +SKIP
>>> [r.function for r in results if not r.ok]     # doctest: +SKIP
['BinaryModel.backward']

Each file runs in a child process (:mod:`digitlab.check.sandbox`) with a time limit per call
and a memory cap; its functions are compared with the float64 reference
(:mod:`digitlab.check.reference`) and, where they differ, with a catalogue of known mistakes
(:mod:`digitlab.check.diagnose`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from digitlab.check.assignment import expected_names, run_assignment
from digitlab.check.report import CheckResult, format_results
from digitlab.check.sandbox import Sandbox, import_timeout_for
from digitlab.errors import ConfigError, DatasetNotFoundError

DEFAULT_TIMEOUT = 5.0


def validate_source(path: Path) -> Path:
    """Raise a :class:`digitlab.errors.DigitlabError` unless ``path`` is a readable Python
    source file (``.py``, UTF-8 text)."""
    if not path.exists():
        raise DatasetNotFoundError(f"{path}: no such file")
    if not path.is_file():
        raise ConfigError(f"{path}: not a file")
    if path.suffix != ".py":
        raise ConfigError(f"{path}: not a Python file (expected a .py file)")
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a Python source file (not UTF-8 text)") from None
    if b"\x00" in data:
        raise ConfigError(f"{path}: not a Python source file (binary data)")
    return path


_SCOPE = re.compile(r"(?:async\s+)?def\s+(\w+)|class\s+(\w+)")


def enclosing_function(source: str, line: int) -> str | None:
    """``Class.method`` or ``function`` whose body holds ``line`` (1-based), from the text
    alone (the file may not parse)."""
    lines = source.splitlines()
    if not 1 <= line <= len(lines):
        return None
    stack: list[tuple[int, str]] = []

    def indent_of(text: str) -> int:
        return len(text) - len(text.lstrip())

    for text in lines[: line - 1]:
        stripped = text.strip()
        if not stripped or stripped.startswith("#"):
            continue
        indent = indent_of(text)
        while stack and indent <= stack[-1][0]:
            stack.pop()
        m = _SCOPE.match(stripped)
        if m:
            stack.append((indent, m.group(1) or m.group(2)))
    target = lines[line - 1]
    if target.strip():
        while stack and indent_of(target) <= stack[-1][0]:
            stack.pop()
    return ".".join(name for _, name in stack) or None


def load_failure(path: Path, hello: object, timeout: float) -> CheckResult:
    """The one failed check of a file that could not be loaded (syntax error, import error,
    a hang or crash at import)."""
    from digitlab.check.assignment import error_message

    message, details, line = error_message(hello, timeout)  # type: ignore[arg-type]
    err = getattr(hello, "error", None) or {}
    function = "<module>"
    if getattr(hello, "timed_out", False):
        message = f"importing the file did not finish within {timeout:g} s"
    elif err.get("type") in ("SyntaxError", "IndentationError", "TabError") and line:
        source = path.read_text(encoding="utf-8")
        function = enclosing_function(source, line) or "<module>"
        message = f"does not parse: {err['type']} at line {line}: {err.get('message', '')}"
    elif err.get("function") and err["function"] != "<module>":
        function = err["function"]
    return CheckResult(path.name, function, False, message, details=details, line=line)


def check_file(path: str | Path, timeout: float = DEFAULT_TIMEOUT) -> list[CheckResult]:
    """Check one learner's file; see :func:`check_files`."""
    path = validate_source(Path(path))
    import_timeout = import_timeout_for(timeout)
    with Sandbox(path, timeout=timeout, import_timeout=import_timeout) as sb:
        hello = sb.start()
        if not hello.ok:
            return [load_failure(path, hello, import_timeout)]
        results = run_assignment(sb, hello.result, path.name, timeout)
    if not results:
        return [
            CheckResult(
                path.name,
                "<module>",
                False,
                f"defines none of the assignment's functions: {expected_names()}",
            )
        ]
    return results


def check_files(paths: Iterable[str | Path], timeout: float = DEFAULT_TIMEOUT) -> list[CheckResult]:
    """Check learners' files of the logistic / softmax regression assignment.

    Parameters
    ----------
    paths : iterable of str or Path
        ``.py`` files (``task2a.py``, ``task3a.py``, ``task2.py``, ``task3.py``...).
    timeout : float
        Seconds allowed for each call of the learner's code.

    Returns
    -------
    list of CheckResult
        One per function or combined check, file by file; ``ok`` False where it fails.

    Raises
    ------
    DatasetNotFoundError, ConfigError
        A path that does not exist or is not a Python source file (checked for all paths
        before any file is run).
    """
    if not 0 < timeout < 86400:
        raise ConfigError(f"timeout must be a number of seconds > 0, got {timeout}")
    paths = [validate_source(Path(p)) for p in paths]
    return _in_parallel([lambda p=p: check_file(p, timeout) for p in paths])


def check_targets(
    targets: Iterable[str],
    timeout: float = DEFAULT_TIMEOUT,
    *,
    kind: str | None = None,
    l1: float = 0.0,
    l2: float = 0.0,
    hidden: Iterable[int] = (16,),
    activation: str = "tanh",
) -> list[CheckResult]:
    """What ``digitlab check`` runs: assignment files, and ``module.py:Name`` targets (a model
    class or a ``loss_and_grad(params, X, y)`` function, see :mod:`digitlab.check.generic`).

    Every target is validated before any is run; ``kind`` (``--as``) applies to the
    ``module.py:Name`` targets only.
    """
    from digitlab.check.generic import GenericSpec, check_generic

    targets = list(targets)
    generic = [t for t in targets if not t.endswith(".py") and ":" in t]
    if kind is not None and not generic:
        raise ConfigError("--as applies to module.py:Name targets only")
    spec = GenericSpec(kind, l1, l2, tuple(hidden), activation)
    parsed = []
    for t in targets:
        if t in generic:
            file, _, name = t.rpartition(":")
            parsed.append((validate_source(Path(file)), name or None))
        else:
            parsed.append((validate_source(Path(t)), None))
    if not 0 < timeout < 86400:
        raise ConfigError(f"timeout must be a number of seconds > 0, got {timeout}")
    jobs = [
        (lambda p=p: check_file(p, timeout))
        if name is None
        else (lambda p=p, n=name: check_generic(p, n, spec, timeout))
        for p, name in parsed
    ]
    return _in_parallel(jobs)


def _in_parallel(jobs: list) -> list[CheckResult]:
    """Run the per-file jobs on up to ``min(cores, 4)`` threads (each file has its own child
    process) and concatenate their results in the order given."""
    workers = max(1, min(len(jobs), os.cpu_count() or 1, 4))
    if workers == 1:
        return [r for job in jobs for r in job()]
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        futures = [pool.submit(job) for job in jobs]
        return [r for f in futures for r in f.result()]
    finally:  # stopped (Ctrl-C, SIGTERM): the files being checked end, the queued ones never start
        pool.shutdown(wait=True, cancel_futures=True)


__all__ = [
    "DEFAULT_TIMEOUT",
    "CheckResult",
    "check_file",
    "check_files",
    "check_targets",
    "format_results",
]
