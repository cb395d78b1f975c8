"""Figures and the HTML/Markdown report, drawn from saved run data only (never retraining).

- :func:`draw_experiment` draws the figures an ``experiment.json`` lists into ``figures/``.
- :func:`write_report` writes ``report.html`` (self-contained) and ``report.md`` for a runs root.
- :func:`write_run_report` writes the same pair for one or several run folders.
"""

from __future__ import annotations

from digitlab.errors import ReportError
from digitlab.report.document import compare, write_report
from digitlab.report.figures import figure_paths
from digitlab.report.kinds import (
    FIGURE_KINDS,
    FigureKind,
    draw_experiment,
    draw_figure,
    is_stale,
    register_figure,
)
from digitlab.report.rundata import (
    ExperimentRecord,
    MemberRecord,
    find_experiments,
    load_experiment,
    load_run,
)
from digitlab.report.runs import write_run_report

__all__ = [
    "FIGURE_KINDS",
    "ExperimentRecord",
    "FigureKind",
    "MemberRecord",
    "ReportError",
    "compare",
    "draw_experiment",
    "draw_figure",
    "figure_paths",
    "find_experiments",
    "is_stale",
    "load_experiment",
    "load_run",
    "register_figure",
    "write_report",
    "write_run_report",
]
