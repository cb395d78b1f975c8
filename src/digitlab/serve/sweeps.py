"""Sweeps in ``digitlab serve``: what a set of runs differ in, their final metrics, seed groups.

A sweep is any set of runs: ids picked in the runs table, or every run under a folder of the
runs root (``prefix``). For it the server computes, in Python:

- the settings whose values differ among the runs (``differing``), with an axis for each
  (``ordinal`` for text, lists and booleans; ``log`` for numbers whose positive values span
  at least :data:`LOG_DECADES` decades; else ``linear``), and the same for every final metric;
- groups of runs that differ only by ``seed`` (every differing setting except those in
  :data:`UNGROUPED` is a group key), with the mean, sample sd (0 for one run), min, max and n
  of each final metric over the group's runs (as the experiment engine summarises seeds);
- the groups' history curves: a ``history.csv`` column, mean ± sd over the group's runs at
  each epoch (or step);
- the sweep table as CSV, text cells made safe for spreadsheets.

Runs are resolved by :class:`~digitlab.serve.runs.RunIndex` (nothing outside the root); a run
whose files cannot be read is listed with its error and left out of axes and groups.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import threading
from pathlib import Path
from typing import Any

import numpy as np

from digitlab.errors import ServeError
from digitlab.runfiles import CONFIG, HISTORY, METRICS, read_history
from digitlab.serve.runs import KEY_SETTINGS, RunFiles, RunIndex, metrics_of, run_error, settings_of

#: Most runs in one sweep (ids or a folder's runs).
MAX_SWEEP_RUNS = 5000
#: Most runs whose histories are read for the group curves.
MAX_CURVE_RUNS = 1000
#: Settings that never split a group: runs differing only in these are repeats.
UNGROUPED = ("seed",)
#: A numeric axis is logarithmic when its positive values span this many decades.
LOG_DECADES = 2.0
#: Final metrics listed first (others of ``metrics.json`` follow, sorted).
METRIC_ORDER = ("test_acc", "val_acc", "train_acc", "test_loss", "val_loss", "train_loss")
#: Characters that make a spreadsheet read a text cell as a formula (OWASP's list).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_COLUMN = re.compile(r"[A-Za-z0-9_]{1,64}")


def value_key(value: Any) -> str:
    """A setting's value as a canonical string (equal values, equal keys)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _hashable(value: Any) -> Any:
    """A key equal for equal values and different for different ones (1, 1.0 and True
    differ, as in :func:`value_key`), without JSON for the usual scalars."""
    if value is None or isinstance(value, str | int | float):
        return (type(value), value)
    return value_key(value)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def label_of(value: Any) -> str:
    """A value as shown on an ordinal axis and in the CSV: text as is, the rest as JSON."""
    if value is None:
        return "–"
    return value if isinstance(value, str) else value_key(value)


def scalar_metrics(metrics: dict[str, Any] | None) -> dict[str, float]:
    """The finite numbers of ``metrics.json`` (lists, text and booleans left out)."""
    return {
        k: float(v)
        for k, v in (metrics or {}).items()
        if _number(v) and math.isfinite(v)
    }


def differing_settings(settings: list[dict[str, Any]]) -> list[str]:
    """Names whose values differ among ``settings`` (a missing setting counts as None):
    the runs table's settings first, then the rest alphabetically, ``seed`` last."""
    keys = {k for s in settings for k in s}
    diff = [k for k in keys if len({_hashable(s.get(k)) for s in settings}) > 1]
    order = {k: i for i, k in enumerate(KEY_SETTINGS)}
    return sorted(diff, key=lambda k: (k in UNGROUPED, order.get(k, len(order)), k))


def axis_of(values: list[Any]) -> dict[str, Any]:
    """How one axis shows ``values`` (one per run, None where a run has none).

    Returns ``{"kind": "log", "min", "max", "nonpositive"}`` (min and max of the positive
    values; ``nonpositive``: some values are <= 0 and sit below the axis), ``{"kind":
    "linear", "min", "max"}`` or ``{"kind": "ordinal", "labels", "codes"}`` (the distinct
    labels in order, and each run's index into them; -1 for a run without a value on a
    numeric axis is never needed: a numeric axis has None there).
    """
    present = [v for v in values if v is not None]
    if present and all(_number(v) and math.isfinite(v) for v in present):
        lo, hi = float(min(present)), float(max(present))
        pos = [float(v) for v in present if v > 0]
        if len(pos) >= 2 and max(pos) >= min(pos) * 10**LOG_DECADES:
            nonpositive = len(pos) < len(present)
            return {"kind": "log", "min": min(pos), "max": max(pos), "nonpositive": nonpositive}
        return {"kind": "linear", "min": lo, "max": hi}
    by_key = {value_key(v): v for v in values}

    def order(key: str) -> tuple[int, float, str]:
        v = by_key[key]
        return (0, float(v), key) if _number(v) and math.isfinite(v) else (1, 0.0, label_of(v))

    keys = sorted(by_key, key=order)
    index = {k: i for i, k in enumerate(keys)}
    return {
        "kind": "ordinal",
        "labels": [label_of(by_key[k]) for k in keys],
        "codes": [index[value_key(v)] for v in values],
    }


def spread(values: list[float]) -> dict[str, float] | None:
    """Mean, sample sd (0 for one value), min, max and n of the finite ``values``."""
    a = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if not a.size:
        return None
    return {
        "mean": float(a.mean()),
        "sd": float(a.std(ddof=1)) if a.size > 1 else 0.0,
        "min": float(a.min()),
        "max": float(a.max()),
        "n": int(a.size),
    }


# ---------------------------------------------------------------------------------- reading
class SweepCache:
    """Each run's full settings and scalar metrics, kept while its two files are unchanged."""

    def __init__(self) -> None:
        self._items: dict[str, tuple[Any, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def row(self, run: RunFiles) -> dict[str, Any]:
        """``{id, settings, metrics, error}`` of one resolved run."""
        found = [run.lookup(name) for name in (CONFIG, METRICS)]
        key = tuple(None if f is None else (f[1].st_mtime_ns, f[1].st_size) for f in found)
        with self._lock:
            cached = self._items.get(run.id)
        if cached is not None and cached[0] == key:
            return cached[1]
        row: dict[str, Any] = {"id": run.id, "settings": {}, "metrics": {}, "error": None}
        try:
            row["settings"] = settings_of(run)
            row["metrics"] = scalar_metrics(metrics_of(run, row["settings"]))
        except Exception as exc:  # noqa: BLE001 - one run's bad files are that run's error
            row["error"] = run_error(run.id, exc)
        with self._lock:
            if len(self._items) > 4 * MAX_SWEEP_RUNS:
                self._items.clear()
            self._items[run.id] = (key, row)
        return row


def _check_prefix(prefix: str) -> str:
    """A folder path inside the root ("" for the whole root), else ServeError 403."""
    prefix = prefix.strip("/")
    parts = prefix.split("/")
    bad = len(prefix) > 1024 or "\x00" in prefix or "\\" in prefix
    if bad or (prefix and any(p in ("", ".", "..") for p in parts)):
        raise ServeError(f"prefix {prefix[:100]!r} is not a folder inside the runs root", 403)
    return prefix


def select_runs(
    index: RunIndex, ids: list[str] | None, prefix: str | None, scan: list[dict[str, Any]]
) -> list[RunFiles]:
    """The runs of a sweep: ``ids`` (in order, repeats dropped), else every run under
    ``prefix`` ("" for the whole root) among ``scan`` (the index's :meth:`RunIndex.scan`).

    Raises
    ------
    ServeError
        400 without ids and prefix or over :data:`MAX_SWEEP_RUNS` runs; 403/404 for an id
        outside the root or not a run (:meth:`RunIndex.resolve`); 404 for an empty folder.
    """
    if ids:
        ids = list(dict.fromkeys(ids))
        if len(ids) > MAX_SWEEP_RUNS:
            raise ServeError(f"a sweep has at most {MAX_SWEEP_RUNS} runs ({len(ids)} given)", 400)
        return [index.resolve(i) for i in ids]
    if prefix is None:
        raise ServeError("give the runs of the sweep: ?ids=a,b,... or ?prefix=folder", 400)
    prefix = _check_prefix(prefix)
    ids = [
        r["id"] for r in scan
        if not prefix or r["id"] == prefix or r["id"].startswith(prefix + "/")
    ]  # fmt: skip
    if not ids:
        raise ServeError(f"no runs under {prefix or 'the runs root'!r}", 404)
    if len(ids) > MAX_SWEEP_RUNS:
        raise ServeError(f"{prefix or 'the root'!r} holds over {MAX_SWEEP_RUNS} runs", 400)
    # the scan lists real folders under the resolved root (it follows no link): no resolving
    return [RunFiles(i, Path(f"{index.root}/{i}"), index.root) for i in ids]


# ---------------------------------------------------------------------------------- the sweep
def metric_names(rows: list[dict[str, Any]]) -> list[str]:
    """Final metrics any run has: :data:`METRIC_ORDER` first, then the others sorted."""
    names = {k for r in rows for k in r["metrics"]}
    first = [m for m in METRIC_ORDER if m in names]
    return first + sorted(names - set(first))


def group_runs(rows: list[dict[str, Any]], keys: list[str]) -> list[dict[str, Any]]:
    """Runs with equal values of ``keys``: ``[{key: {name: value}, label, ids}]``, ordered
    by their values (numbers numerically)."""
    groups: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in rows:
        values = {k: r["settings"].get(k) for k in keys}
        g = groups.setdefault(
            tuple(_hashable(v) for v in values.values()),
            {"key": values, "label": ", ".join(f"{k}={label_of(v)}" for k, v in values.items()),
             "ids": []},
        )  # fmt: skip
        g["ids"].append(r["id"])

    def order(g: dict[str, Any]) -> list[tuple[int, float, str]]:
        return [
            (0, float(v), "") if _number(v) else (1, 0.0, label_of(v)) for v in g["key"].values()
        ]

    return sorted(groups.values(), key=order)


def sweep(
    index: RunIndex, cache: SweepCache, ids: list[str] | None, prefix: str | None = None
) -> dict[str, Any]:
    """The sweep of the runs ``ids`` (or of every run under ``prefix``).

    Returns
    -------
    dict
        ``runs``: ``[{id, status, settings (the differing ones), metrics, group, error}]``;
        ``differing``: setting names; ``common``: the settings all runs share;
        ``group_keys``: ``differing`` less :data:`UNGROUPED`; ``groups``: ``[{key, label,
        ids, stats: {metric: {mean, sd, min, max, n}}}]``; ``metrics``: final metric names;
        ``axes``: ``{setting: axis}`` and ``metric_axes``: ``{metric: axis}`` (see
        :func:`axis_of`; over the readable runs, in their order); ``errors``: runs left out.
    """
    scan = index.scan()
    rows = [cache.row(r) for r in select_runs(index, ids, prefix, scan)]
    status = {r["id"]: r["status"] for r in scan}
    ok = [r for r in rows if r["error"] is None or r["settings"]]
    differing = differing_settings([r["settings"] for r in ok])
    group_keys = [k for k in differing if k not in UNGROUPED]
    groups = group_runs(ok, group_keys)
    metrics = metric_names(ok)
    by_id = {r["id"]: r for r in ok}
    member = {i: n for n, g in enumerate(groups) for i in g["ids"]}
    for g in groups:
        g["stats"] = {
            m: s for m in metrics
            if (s := spread([by_id[i]["metrics"].get(m) for i in g["ids"]])) is not None
        }  # fmt: skip
    first = ok[0]["settings"] if ok else {}
    return {
        "runs": [
            {"id": r["id"], "status": status.get(r["id"], "failed"),
             "settings": {k: r["settings"].get(k) for k in differing},
             "metrics": r["metrics"], "group": member.get(r["id"]), "error": r["error"]}
            for r in ok
        ],  # fmt: skip
        "differing": differing,
        "common": {k: v for k, v in first.items() if k not in differing},
        "group_keys": group_keys,
        "groups": groups,
        "metrics": metrics,
        "axes": {k: axis_of([r["settings"].get(k) for r in ok]) for k in differing},
        "metric_axes": {m: axis_of([r["metrics"].get(m) for r in ok]) for m in metrics},
        "errors": [{"id": r["id"], "error": r["error"]} for r in rows if r["id"] not in by_id],
    }


# ---------------------------------------------------------------------------------- CSV
def safe_cell(value: Any) -> str | float | int:
    """A CSV cell: numbers as numbers; text (and lists, as JSON) with a leading ``'`` where
    it starts like a formula (= + - @ tab CR), so a spreadsheet shows it as text."""
    if _number(value):
        return value
    text = label_of(value) if value is not None else ""
    return "'" + text if text.startswith(FORMULA_START) else text


def sweep_csv(data: dict[str, Any]) -> str:
    """The sweep table (:func:`sweep`) as CSV: id, differing settings, status, group, metrics."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    header = ["id", *data["differing"], "status", "group", *data["metrics"]]
    writer.writerow([safe_cell(h) for h in header])
    labels = [g["label"] for g in data["groups"]]
    for r in data["runs"]:
        group = labels[r["group"]] if r["group"] is not None else None
        cells = [r["id"], *(r["settings"].get(k) for k in data["differing"]), r["status"], group]
        cells += [r["metrics"].get(m) for m in data["metrics"]]
        writer.writerow([safe_cell(c) for c in cells])
    return out.getvalue()


# ---------------------------------------------------------------------------------- curves
def _group_curve(
    histories: list[dict[str, np.ndarray]], x_name: str, column: str
) -> dict[str, list[Any]]:
    """Mean, sample sd and n of ``column`` over ``histories`` at each distinct x value."""
    xs, ys = [], []
    for h in histories:
        if column in h and x_name in h:
            keep = np.isfinite(h[x_name]) & np.isfinite(h[column])
            xs.append(h[x_name][keep])
            ys.append(h[column][keep])
    if not xs:
        return {"x": [], "mean": [], "sd": [], "n": []}
    x, y = np.concatenate(xs), np.concatenate(ys)
    grid, inverse = np.unique(x, return_inverse=True)
    n = np.bincount(inverse, minlength=grid.size)
    mean = np.bincount(inverse, weights=y, minlength=grid.size) / n
    sq = np.bincount(inverse, weights=(y - mean[inverse]) ** 2, minlength=grid.size)
    sd = np.sqrt(np.where(n > 1, sq / np.maximum(n - 1, 1), 0.0))
    return {"x": grid.tolist(), "mean": mean.tolist(), "sd": sd.tolist(), "n": n.tolist()}


def curves(
    index: RunIndex,
    cache: SweepCache,
    ids: list[str] | None,
    prefix: str | None,
    column: str | None,
) -> dict[str, Any]:
    """The groups of :func:`sweep` as history curves: ``column`` (default ``val_acc``),
    mean ± sd over each group's runs at every epoch (step where a run has no epochs).

    Returns ``{column, x, columns (every numeric history column), groups: [{label, ids,
    x, mean, sd, n}], errors: [{id, error}] (runs whose history cannot be read)}``;
    ServeError 400 for a malformed column name or over :data:`MAX_CURVE_RUNS` runs.
    """
    column = column or "val_acc"
    if not _COLUMN.fullmatch(column):
        raise ServeError("query parameter column must be a history.csv column name", 400)
    data = sweep(index, cache, ids, prefix)
    if len(data["runs"]) > MAX_CURVE_RUNS:
        raise ServeError(f"curves are drawn for at most {MAX_CURVE_RUNS} runs", 400)
    histories: dict[str, dict[str, np.ndarray]] = {}
    errors = []
    for r in data["runs"]:
        try:
            histories[r["id"]] = index.resolve(r["id"]).read(HISTORY, read_history) or {}
        except ServeError as exc:  # this run has no curve; the others keep theirs
            histories[r["id"]] = {}
            errors.append({"id": r["id"], "error": str(exc)})
    with_epoch = [h for h in histories.values() if "epoch" in h and h["epoch"].size]
    epochs = with_epoch and all(np.isfinite(h["epoch"]).all() for h in with_epoch)
    x_name = "epoch" if epochs else "step"
    columns = sorted({k for h in histories.values() for k in h if not re.search(r"_hist\d", k)})
    groups = [
        {"label": g["label"], "ids": g["ids"],
         **_group_curve([histories[i] for i in g["ids"]], x_name, column)}
        for g in data["groups"]
    ]  # fmt: skip
    return {"column": column, "x": x_name, "columns": columns, "groups": groups, "errors": errors}
