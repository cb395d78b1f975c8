"""Named experiments of the source documents, as TOML files, and the engine that runs them.

- :mod:`digitlab.experiments.spec`: an experiment file parsed and validated into an
  :class:`ExperimentSpec` of :class:`MemberSpec` (see its docstring for the file layout).
- :mod:`digitlab.experiments.engine`: :func:`run_experiment` runs the members in parallel and
  writes ``experiment.json``, read back by the report as an
  :class:`~digitlab.report.rundata.ExperimentRecord`.
"""

from __future__ import annotations

from digitlab.experiments.engine import (
    Job,
    choose,
    run_experiment,
    run_experiments,
    run_jobs,
    run_member,
    summarize,
)
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
