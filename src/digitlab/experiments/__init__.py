"""Named experiments of the source documents, as TOML files, and the engine that runs them.

- :mod:`digitlab.experiments.spec`: an experiment file parsed and validated into an
  :class:`ExperimentSpec` of :class:`MemberSpec` (see its docstring for the file layout).
- :mod:`digitlab.experiments.engine`: :func:`run_experiment` runs the members in parallel and
  writes ``experiment.json`` from an :class:`~digitlab.report.rundata.ExperimentRecord`, which
  the report reads back; its parts: :mod:`~digitlab.experiments.plan` (jobs and tasks),
  :mod:`~digitlab.experiments.execute` (running and resuming them),
  :mod:`~digitlab.experiments.jobdata`, :mod:`~digitlab.experiments.folders`,
  :mod:`~digitlab.experiments.record` and :mod:`~digitlab.experiments.extras`.
"""

from __future__ import annotations

from digitlab.experiments.engine import run_experiment, run_experiments
from digitlab.experiments.execute import run_jobs, run_member
from digitlab.experiments.plan import Job
from digitlab.experiments.record import choose, summarize
from digitlab.experiments.spec import (
    ENGINE_KEYS,
    EXTRAS,
    METRICS,
    ExperimentSpec,
    MemberSpec,
    builtin_experiments,
    load_experiment_file,
    parse_experiment,
    select_experiments,
    slug,
)

__all__ = [
    "ENGINE_KEYS",
    "EXTRAS",
    "Job",
    "METRICS",
    "ExperimentSpec",
    "MemberSpec",
    "builtin_experiments",
    "choose",
    "load_experiment_file",
    "parse_experiment",
    "run_experiment",
    "run_experiments",
    "run_jobs",
    "run_member",
    "select_experiments",
    "slug",
    "summarize",
]
