"""Experiments in ``digitlab serve``: the folders ``digitlab reproduce`` wrote, as the report
sees them.

An experiment is a folder directly under the runs root holding an ``experiment.json``
(:func:`digitlab.report.rundata.find_experiments` looks at ``<root>/*/experiment.json``); it
is read with :func:`~digitlab.report.rundata.load_experiment`. Its published-vs-reproduced
rows, its summary rows (one per task: reading, chosen member, headline, marks) and the members
table are built by the very functions that write ``report.md``
(:func:`digitlab.report.document.compare`, ``_published``, ``summary_rows``, ``member_rows``),
so the page shows the report's marks cell for cell.

Figures are the PNG and SVG files of the kinds the record lists (``figures/<kind>.png``),
served only when they are regular files under the root; the server never draws one
(``digitlab report`` does).
"""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path
from typing import Any

from digitlab.errors import DigitlabError, ServeError
from digitlab.serve.runs import RunIndex

#: Largest figure file served, in bytes.
MAX_FIGURE_BYTES = 32 << 20
FIGURE_TYPES = {".png": "image/png", ".svg": "image/svg+xml"}


def _inside(path: Path, root: Path) -> Path | None:
    """The resolved ``path`` if it lies under ``root`` (links followed), else None."""
    real = Path(os.path.realpath(path))
    return real if real.is_relative_to(root) else None


def _regular(path: Path, root: Path) -> Path | None:
    """The resolved ``path`` if it is a regular file under ``root``, else None."""
    real = _inside(path, root)
    try:
        return real if real is not None and stat.S_ISREG(os.stat(real).st_mode) else None
    except OSError:
        return None


def experiment_names(root: Path) -> list[str]:
    """Folders directly under ``root`` with a regular ``experiment.json`` under the root."""
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError:
        return []
    return [
        e.name for e in entries
        if not e.name.startswith(".") and e.is_dir()
        and _regular(Path(e.path) / "experiment.json", root)
    ]  # fmt: skip


class ExperimentCache:
    """Experiment records (or their one-line errors), kept while ``experiment.json`` stays
    unchanged."""

    def __init__(self, index: RunIndex) -> None:
        self.index = index
        self._items: dict[str, tuple[tuple[int, int], Any]] = {}
        self._lock = threading.Lock()

    def folder(self, name: str | None) -> Path:
        """The resolved folder of experiment ``name`` (ServeError 403 or 404 otherwise)."""
        root = self.index.root
        if not name or len(name) > 255 or any(c in name for c in "/\\\x00"):
            raise ServeError(f"no experiment {str(name)[:100]!r}", 404)
        if name in (".", "..") or name.startswith("."):
            raise ServeError(f"experiment {name!r} is not a folder inside the runs root", 403)
        real = _inside(root / name, root)
        if real is None:
            raise ServeError(f"experiment {name!r} points outside the runs root", 403)
        if _regular(real / "experiment.json", root) is None:
            raise ServeError(f"no experiment {name!r} under {root}", 404)
        return real

    def record(self, name: str | None) -> Any:
        """The :class:`~digitlab.report.rundata.ExperimentRecord` of ``name``.

        Raises ServeError 422 with the report's one-line error when the record is malformed.
        """
        from digitlab.report.rundata import load_experiment

        folder = self.folder(name)
        st = os.stat(folder / "experiment.json")
        key = (st.st_mtime_ns, st.st_size)
        with self._lock:
            cached = self._items.get(str(name))
        if cached is None or cached[0] != key:
            try:
                found: Any = load_experiment(folder)
            except DigitlabError as exc:
                found = ServeError(str(exc).replace(str(folder), str(name)), 422)
            cached = (key, found)
            with self._lock:
                self._items[str(name)] = cached
        if isinstance(cached[1], ServeError):
            raise cached[1]
        return cached[1]


# ---------------------------------------------------------------------------------- marks
def _span(span: Any) -> Any:
    """A report table cell as JSON: text, or a mark ``{symbol, status, css, title}``."""
    from digitlab.report.render import Link, Mark

    if isinstance(span, Mark):
        return {"symbol": span.symbol, "status": span.status, "css": span.css, "title": span.title}
    if isinstance(span, Link):
        return span.text
    return span if isinstance(span, str) else str(getattr(span, "text", span))


def marks(exp: Any) -> dict[str, Any]:
    """The report's published-vs-reproduced table of ``exp`` and its summary rows.

    Returns ``{header, rows (cells: text or a mark), classes ("alternative" for a row of an
    alternative reading), statuses, symbols (each row's mark, as the report's ``MARKS``),
    alternative, summary: {header, rows}}``; ``rows`` is empty for an experiment without
    published numbers. The summary has the report's columns and one row per task.
    """
    from digitlab.report.document import (
        MARKS,
        SUMMARY_COLUMNS,
        _published,
        compare,
        summary_rows,
    )
    from digitlab.report.render import Table

    comps = [compare(exp, p) for p in exp.published]
    blocks = _published(exp, comps) if comps else []
    table = next((b for b in blocks if isinstance(b, Table)), None)
    return {
        "header": table.header if table else [],
        "rows": [[_span(c) for c in row] for row in table.rows] if table else [],
        "classes": list(table.row_classes or []) if table else [],
        "statuses": [c.status for c in comps],
        "symbols": [MARKS[c.status][0] for c in comps],
        "alternative": [c.alternative for c in comps],
        "summary": {
            "header": list(SUMMARY_COLUMNS),
            "rows": [[_span(c) for c in row] for row in summary_rows(exp, comps)],
        },
    }


def _member_runs(exp: Any, name: str, runs: list[str]) -> list[list[str]]:
    """Per member, the ids of its runs in the index (its folder, seed folders, stages)."""
    out = []
    for m in exp.members:
        folders = [m.folder.name, *((m.repeats or {}).get("folders") or [])]
        prefixes = {f"{name}/{f}" for f in folders if isinstance(f, str)}
        out.append([r for r in runs if r in prefixes or r.rsplit("/", 1)[0] in prefixes])
    return out


def summary(exp: Any, name: str) -> dict[str, Any]:
    """An experiment in the list: its text, the report's summary rows (``summary``) and the
    marks of its published rows (``statuses``, ``symbols``, ``alternative``)."""
    found = marks(exp)
    return {
        "id": name,
        "title": exp.title,
        "name": exp.name,
        "source": exp.source,
        "section": exp.section,
        "members": len(exp.members),
        "sample": exp.is_sample,
        "dataset": exp.data.get("dataset"),
        "seconds": exp.seconds,
        "summary": found["summary"],
        "statuses": found["statuses"],
        "symbols": found["symbols"],
        "alternative": found["alternative"],
        "error": None,
    }


def experiments(index: RunIndex, cache: ExperimentCache) -> dict[str, Any]:
    """Every experiment under the root (sorted by source, then name, as in the report); one
    that cannot be read is listed with its error."""
    rows = []
    for name in experiment_names(index.root):
        try:
            rows.append(summary(cache.record(name), name))
        except ServeError as exc:
            rows.append({"id": name, "title": name, "source": "", "name": name, "error": str(exc)})
    rows.sort(key=lambda r: (r["source"], r["name"]))
    from digitlab.report.document import SUMMARY_COLUMNS

    return {"root": str(index.root), "columns": list(SUMMARY_COLUMNS), "experiments": rows}


def figure_files(exp: Any, root: Path) -> list[dict[str, Any]]:
    """The listed figures of ``exp``: kind, caption and the names of its files that exist."""
    from digitlab.report.figures import figure_paths
    from digitlab.report.kinds import caption

    out = []
    for kind in exp.figure_kinds:
        files = [p.name for p in figure_paths(exp.folder, kind) if _regular(p, root)]
        out.append({"kind": kind, "caption": caption(exp, kind), "files": files})
    return out


def experiment(index: RunIndex, cache: ExperimentCache, name: str | None) -> dict[str, Any]:
    """One experiment: its summary, protocol and choices, data notes, figures, the report's
    members table with each member's runs, and its published-vs-reproduced table."""
    from digitlab.report.document import data_notes, member_rows

    exp = cache.record(name)
    name = str(name)
    header, rows = member_rows(exp)
    runs = [r["id"] for r in index.scan()]
    return summary(exp, name) | {
        "protocol": exp.protocol,
        "choices": exp.choices,
        "notes": data_notes(exp.data) if exp.data else [],
        "figures": figure_files(exp, index.root),
        "members_table": {
            "header": header,
            "rows": rows,
            "classes": ["chosen" if exp.is_chosen(m) else "" for m in exp.members],
        },
        "member_labels": [m.label for m in exp.members],
        "member_runs": _member_runs(exp, name, runs),
        "published": marks(exp),
    }


def figure(index: RunIndex, cache: ExperimentCache, name: str | None, file: str | None) -> Path:
    """The resolved path of figure file ``file`` (``<kind>.png`` or ``.svg``) of experiment
    ``name``: only a file of a kind the record lists, a regular file under the root.

    Raises ServeError 404 for any other name (``..``, absolute paths, other files) or a
    missing file, 403 for one that leads out of the root.
    """
    from digitlab.report.figures import figure_paths

    exp = cache.record(name)
    allowed = {p.name: p for kind in exp.figure_kinds for p in figure_paths(exp.folder, kind)}
    if not file or file not in allowed:
        raise ServeError(f"experiment {name!r} lists no figure file {str(file)[:100]!r}", 404)
    path = allowed[file]
    if _inside(path, index.root) is None:
        raise ServeError(f"{name}/figures/{file}: points outside the runs root", 403)
    real = _regular(path, index.root)
    if real is None:
        raise ServeError(f"{name}/figures/{file}: not drawn yet (digitlab report draws it)", 404)
    if os.stat(real).st_size > MAX_FIGURE_BYTES:
        raise ServeError(f"{name}/figures/{file}: larger than {MAX_FIGURE_BYTES} bytes", 422)
    return real
