"""The runs root as ``digitlab serve`` sees it: run folders, their status, safe file access.

A run folder is any folder under the root holding a ``config.toml`` (what
:func:`digitlab.runner.run` writes first); ``train`` puts them at ``<root>/<name>/<stamp>``
and ``reproduce`` at ``<root>/<experiment>/<member>`` (with ``stage-N`` sub-runs). A run's
id is its path relative to the root with ``/`` separators.

Every path handed out is resolved and checked to lie under the resolved root, so ids with
``..``, absolute paths and symlinks pointing out of the root are refused. The index is
rescanned on every request; directory listings are cached by the directory's mtime and run
summaries by the mtimes of their files, so a scan of 1,000 unchanged runs costs a few
thousand ``stat`` calls.
"""

from __future__ import annotations

import math
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from digitlab.errors import DigitlabError, FileReadError, ServeError
from digitlab.runfiles import (
    CHECKPOINT,
    CONFIG,
    HISTORY,
    METRICS,
    read_config,
    read_history,
    read_history_tail,
    read_json,
    read_metrics,
    run_class_count,
)

#: A run without ``metrics.json`` whose files changed within this many seconds is "running";
#: older ones are "failed" (the process died before writing its metrics).
RUNNING_WINDOW_S = 900.0
#: Histories kept parsed (float64 columns, each at most MAX_HISTORY_ROWS rows).
MAX_CACHED_HISTORIES = 64
#: How deep below the root run folders are looked for.
MAX_DEPTH = 4
RUN_FILES = (CONFIG, HISTORY, METRICS, CHECKPOINT)


def _finite(value: Any) -> float | int | None:
    """``value`` if it is a finite number, else None (JSON has no NaN; a run file's string
    where a number belongs is not shown)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def run_error(run_id: str, exc: BaseException) -> str:
    """One line saying why the run ``run_id`` cannot be read (any exception of its files)."""
    if isinstance(exc, ServeError):
        return str(exc)
    text = " ".join(str(exc).split())[:200] or type(exc).__name__
    return f"{run_id}: cannot read this run ({type(exc).__name__}: {text})"


@dataclass
class RunFiles:
    """A resolved run folder; its files are looked up once each (symlinks checked)."""

    id: str
    folder: Path
    root: Path
    _found: dict[str, tuple[str, os.stat_result] | None] = field(default_factory=dict, repr=False)

    def lookup(self, name: str) -> tuple[str, os.stat_result] | None:
        """``(path, stat)`` of the regular file ``name`` in the folder, None if absent.

        Raises ServeError (403) when the file is a symlink pointing out of the runs root.
        """
        if name in self._found:
            return self._found[name]
        path = os.path.join(self.folder, name)
        found = None
        try:
            st = os.lstat(path)
        except OSError:
            st = None
        if st is not None and stat.S_ISLNK(st.st_mode):  # the folder is resolved: links only
            real = Path(os.path.realpath(path))  # a link loop: not a file, never raises
            if not real.is_relative_to(self.root):
                raise ServeError(f"{self.id}/{name}: points outside the runs root", 403)
            if real.is_file():
                found = (str(real), real.stat())
        elif st is not None and stat.S_ISREG(st.st_mode):
            found = (path, st)
        self._found[name] = found
        return found

    def file(self, name: str) -> Path | None:
        """The resolved path of ``name`` in the run folder, None if absent (see lookup)."""
        found = self.lookup(name)
        return None if found is None else Path(found[0])

    def read(self, name: str, reader: Callable[..., Any], *args: Any) -> Any:
        """``reader(path, *args)`` of the file ``name`` (a :mod:`digitlab.runfiles` reader);
        None if there is no such regular file.

        Raises ServeError (422) naming the run's file when the reader refuses it (not a
        regular file, too large, malformed).
        """
        path = self.file(name)
        if path is None:
            return None
        try:
            return reader(path, *args)
        except FileNotFoundError:
            return None
        except FileReadError as exc:
            message = str(exc).replace(str(path), f"{self.id}/{name}")
            raise ServeError(message, 422) from None


class RunIndex:
    """Scanner of a runs root with mtime caches; thread-safe.

    Parameters
    ----------
    root : path-like
        The runs root (it may not exist yet: the index is then empty).
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).resolve()
        self._lock = threading.Lock()
        self._dirs: dict[str, tuple[int, list[str], bool]] = {}
        self._summaries: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {}
        self._experiments: dict[str, tuple[int, dict[str, str]]] = {}
        self._histories: dict[str, tuple[tuple[int, int], dict[str, np.ndarray]]] = {}
        self._generation = 0  # bumped whenever a cached listing, summary or label is rebuilt
        self._last: tuple[Any, list[dict[str, Any]]] = (None, [])

    # ------------------------------------------------------------------ ids and paths
    def resolve(self, run_id: str | None) -> RunFiles:
        """The run folder named by ``run_id``, refusing anything outside the root.

        Raises
        ------
        ServeError
            404 for a malformed id or a folder that is not a run, 403 for a path that
            leaves the root (``..``, absolute, symlink out).
        """
        if not run_id or len(run_id) > 1024 or "\x00" in run_id or "\\" in run_id:
            raise ServeError(f"no run {run_id!r}", 404)
        parts = run_id.split("/")
        if run_id.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise ServeError(f"run id {run_id!r} is not a path inside the runs root", 403)
        real = Path(os.path.realpath(self.root.joinpath(*parts)))
        if not real.is_relative_to(self.root):
            raise ServeError(f"run id {run_id!r} points outside the runs root", 403)
        if not (real / CONFIG).is_file():
            raise ServeError(f"no run {run_id!r} under {self.root}", 404)
        return RunFiles(run_id, real, self.root)

    # ------------------------------------------------------------------ scanning
    def _listing(self, folder: Path) -> tuple[list[str], bool, int]:
        """``(subfolder names, has config.toml, folder mtime_ns)``, cached by mtime."""
        st = os.stat(folder)
        key = str(folder)
        cached = self._dirs.get(key)
        if cached is not None and cached[0] == st.st_mtime_ns:
            return cached[1], cached[2], st.st_mtime_ns
        subdirs, is_run = [], False
        with os.scandir(folder) as it:
            for entry in it:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    subdirs.append(entry.name)
                elif entry.name == CONFIG:
                    is_run = True
        subdirs.sort()
        self._dirs[key] = (st.st_mtime_ns, subdirs, is_run)
        self._generation += 1
        return subdirs, is_run, st.st_mtime_ns

    def scan(self) -> list[dict[str, Any]]:
        """Summaries of every run under the root, sorted by id (see :meth:`summary`).

        When nothing changed since the last scan (no folder listing, run file or status), the
        very same list object is returned, so callers may reuse what they made of it.
        """
        with self._lock:
            if not self.root.is_dir():
                return []
            found: list[dict[str, Any]] = []
            stack: list[tuple[Path, str, int]] = [(self.root, "", 0)]
            while stack:
                folder, rel, depth = stack.pop()
                try:
                    subdirs, is_run, mtime = self._listing(folder)
                except OSError:
                    continue
                if is_run:
                    found.append(self._safe_summary(folder, rel, mtime))
                if depth < MAX_DEPTH:
                    for name in reversed(subdirs):
                        stack.append((folder / name, f"{rel}/{name}" if rel else name, depth + 1))
            found.sort(key=lambda r: r["id"])
            signature = (self._generation, [r["status"] for r in found])
            if signature == self._last[0]:
                return self._last[1]
            self._last = (signature, found)
            return found

    def summary(self, run: RunFiles) -> dict[str, Any]:
        """The summary of one resolved run (its error row when its files cannot be read)."""
        with self._lock:
            return self._safe_summary(run.folder, run.id, None)

    def _safe_summary(self, folder: Path, rel: str, mtime: int | None) -> dict[str, Any]:
        """:meth:`_summary`, or the run's error row: whatever one run's files hold (deep
        nesting, wrong types, NUL bytes, link loops), the list and other runs keep working."""
        try:
            if mtime is None:
                mtime = os.stat(folder).st_mtime_ns
            return self._summary(folder, rel, mtime)
        except Exception as exc:  # noqa: BLE001 - any failure of one run is that run's error
            return error_summary(rel, run_error(rel, exc))

    def _experiment_labels(self, top: str) -> dict[str, str]:
        """``{member folder: label}`` of ``<root>/<top>/experiment.json`` (empty if none)."""
        path = self.root / top / "experiment.json"
        try:
            st = path.stat()
        except OSError:
            return {}
        if not stat.S_ISREG(st.st_mode):  # a FIFO or device would block the scan: not read
            return {}
        cached = self._experiments.get(top)
        if cached is not None and cached[0] == st.st_mtime_ns:
            return cached[1]
        labels: dict[str, str] = {}
        try:
            if Path(os.path.realpath(path)).is_relative_to(self.root):
                record = read_json(path)
                members = record.get("members") if isinstance(record, dict) else None
                labels = {str(m["folder"]): str(m["label"]) for m in members or []}
        except (OSError, DigitlabError, KeyError, TypeError):
            labels = {}
        self._experiments[top] = (st.st_mtime_ns, labels)
        self._generation += 1
        return labels

    def _summary(self, folder: Path, rel: str, dir_mtime: int) -> dict[str, Any]:
        hist = folder / HISTORY
        try:
            hst = hist.stat()
            hkey: tuple[int, int] = (hst.st_mtime_ns, hst.st_size)
        except OSError:
            hkey = (0, -1)
        key = (dir_mtime, hkey)
        cached = self._summaries.get(rel)
        if cached is not None and cached[0] == key:
            out = dict(cached[1])
        else:
            out = build_summary(RunFiles(rel, folder, self.root))
            self._summaries[rel] = (key, out)
            self._generation += 1
            out = dict(out)
        out["status"] = status_of(out, time.time())
        parts = rel.split("/")
        if len(parts) >= 2:
            labels = self._experiment_labels(parts[0])
            if labels:
                out["experiment"] = parts[0]
                out["member"] = labels.get(parts[1], parts[1]) + (
                    f" / {'/'.join(parts[2:])}" if len(parts) > 2 else ""
                )
        return out

    def history(self, run: RunFiles) -> dict[str, list[float | None]]:
        """The columns of the run's ``history.csv`` (empty before the first evaluation), at
        most :data:`~digitlab.runfiles.MAX_HISTORY_ROWS` rows spread over the run; NaN and
        infinities as None."""
        path = run.file(HISTORY)
        if path is None:
            return {}
        st = path.stat()
        key = (st.st_mtime_ns, st.st_size)
        cached = self._histories.get(str(path))
        if cached is None or cached[0] != key:
            if len(self._histories) >= MAX_CACHED_HISTORIES:
                self._histories.clear()
            cached = (key, run.read(HISTORY, read_history) or {})
            self._histories[str(path)] = cached
        return {
            k: [float(x) if math.isfinite(x) else None for x in v.tolist()]
            for k, v in cached[1].items()
        }


# ---------------------------------------------------------------------------------- summaries
#: Settings shown in the runs table, in order.
KEY_SETTINGS = (
    "model", "dataset", "hidden", "activation", "optimizer", "lr", "momentum", "batch", "l1",
    "l2", "epochs", "steps", "preprocess", "augment", "early_stopping", "seed",
)  # fmt: skip


def settings_of(run: RunFiles) -> dict[str, Any]:
    """The run's ``config.toml`` as a dict (the ``[train]`` table if it has one)."""
    return run.read(CONFIG, read_config) or {}


def metrics_of(run: RunFiles, settings: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The run's ``metrics.json``, checked against the run's class count (None while it trains
    or when it failed)."""
    n_classes = run_class_count(settings_of(run) if settings is None else settings)
    return run.read(METRICS, read_metrics, n_classes)


def _read_or_error(run: RunFiles, read: Callable[[], Any], errors: list[str]) -> Any:
    """``read()``, or None with its error message added to ``errors``."""
    try:
        return read()
    except ServeError as exc:
        errors.append(str(exc))
        return None


def build_summary(run: RunFiles) -> dict[str, Any]:
    """One row of the runs table: key settings, accuracies, progress and file times.

    A file that cannot be read leaves its part empty and says why in ``error``.
    """
    errors: list[str] = []
    settings = _read_or_error(run, lambda: settings_of(run), errors) or {}
    metrics = _read_or_error(run, lambda: metrics_of(run, settings), errors)
    tail = _read_or_error(run, lambda: run.read(HISTORY, read_history_tail), errors)
    last, best, n_rows = (tail.last, tail.best, tail.rows) if tail else ({}, {}, 0)
    found = [run.lookup(name) for name in RUN_FILES]
    mtimes = [f[1].st_mtime for f in found if f is not None]
    m = metrics or {}
    shown = {k: settings.get(k) for k in KEY_SETTINGS if k in settings}
    if isinstance(m.get("dataset"), str):  # the data it trained on ("mnist" may be the sample)
        shown["dataset"] = m["dataset"]
    return {
        "id": run.id,
        "experiment": None,
        "member": None,
        "settings": shown,
        "best_val_acc": best.get("val_acc", _finite(m.get("val_acc"))),
        "val_acc": _finite(m.get("val_acc", last.get("val_acc"))),
        "test_acc": _finite(m.get("test_acc", last.get("test_acc"))),
        "train_acc": _finite(m.get("train_acc", last.get("train_acc"))),
        "epochs": _finite(m.get("epochs", last.get("epoch"))),
        "steps": _finite(m.get("steps", last.get("step"))),
        "seconds": _finite(m.get("seconds", last.get("time"))),
        "n_evals": n_rows,
        "stop_reason": m.get("stop_reason") if isinstance(m.get("stop_reason"), str) else None,
        "early_stopped": bool(m.get("early_stopped", False)),
        "interrupted": bool(m.get("interrupted", False)),
        "has_metrics": metrics is not None,
        "has_checkpoint": found[3] is not None,
        "updated": max(mtimes) if mtimes else None,
        "error": "; ".join(errors) or None,
    }


def error_summary(run_id: str, message: str) -> dict[str, Any]:
    """The table row of a run folder that cannot be read (status ``failed``)."""
    return {
        "id": run_id, "experiment": None, "member": None, "settings": {}, "best_val_acc": None,
        "val_acc": None, "test_acc": None, "train_acc": None, "epochs": None, "steps": None,
        "seconds": None, "n_evals": 0, "stop_reason": None, "early_stopped": False,
        "interrupted": False, "has_metrics": False, "has_checkpoint": False, "updated": None,
        "error": message, "status": "failed",
    }  # fmt: skip


def status_of(summary: dict[str, Any], now: float) -> str:
    """``finished``, ``stopped early``, ``interrupted``, ``running`` or ``failed``.

    A run with ``metrics.json`` ended: early stopping or an interrupt say how. Without it, a
    run whose files changed within :data:`RUNNING_WINDOW_S` is taken to be running, an
    older one to have failed (the process ended before writing its metrics).
    """
    if summary["has_metrics"]:
        if summary["interrupted"]:
            return "interrupted"
        return "stopped early" if summary["early_stopped"] else "finished"
    updated = summary.get("updated")
    if updated is not None and now - updated < RUNNING_WINDOW_S:
        return "running"
    return "failed"
