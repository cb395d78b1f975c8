"""The record of an experiment's run: members, summaries over seeds, the chosen member of each
task.

:func:`build_record` turns the finished jobs of one experiment into the
:class:`~digitlab.report.rundata.ExperimentRecord` that ``experiment.json`` is written from
and read back into (one schema: :meth:`ExperimentRecord.to_json` / ``from_json``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from digitlab.errors import ReportError
from digitlab.experiments.extras import write_extras
from digitlab.experiments.plan import Job
from digitlab.experiments.spec import ENGINE_KEYS, METRICS, ExperimentSpec, MemberSpec
from digitlab.report.rundata import ExperimentRecord, MemberRecord, load_experiment

#: Scalar metrics summarised over repeats.
SUMMARY_METRICS = (*METRICS, "train_objective", "val_objective", "test_objective")


def choose(
    exp: ExperimentSpec, results: list[dict[str, Any]], among: list[int] | None = None
) -> int:
    """Index of the member the experiment's select rule picks among the members ``among``
    (all by default; first among ties); ``results`` holds every member's metrics."""
    among = list(range(len(results))) if among is None else among
    values = [results[i].get(exp.select["metric"], np.nan) for i in among]
    values = [
        (-np.inf if exp.select["mode"] == "max" else np.inf) if v is None or np.isnan(v) else v
        for v in values
    ]
    return among[int(np.argmax(values) if exp.select["mode"] == "max" else np.argmin(values))]


def choose_per_task(exp: ExperimentSpec, results: list[dict[str, Any]]) -> dict[str, int]:
    """The chosen member of each task (its index): the best of the task's members of the
    primary reading; members of other tasks and of alternative readings never compete. A task
    without a member of the primary reading gets the best of its members, for its figures only
    (the report names no chosen member of an alternative reading)."""
    return {
        task: choose(exp, results, exp.competitors(task) or exp.task_members(task))
        for task in exp.tasks
    }


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean, sample sd (0 for one run), min, max and n of every scalar metric over runs."""
    out: dict[str, dict[str, float]] = {}
    for name in SUMMARY_METRICS:
        values = [r.get(name) for r in runs]
        if not values or any(
            not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v)
            for v in values
        ):
            continue
        a = np.asarray(values, dtype=np.float64)
        out[name] = {
            "mean": float(a.mean()),
            "sd": float(a.std(ddof=1)) if len(a) > 1 else 0.0,
            "min": float(a.min()),
            "max": float(a.max()),
            "n": len(a),
        }
    return out


def comparability(exp: ExperimentSpec, metrics: dict[str, Any]) -> tuple[bool, str]:
    """Whether the run's data are the data of the published numbers, and why not."""
    wanted = exp.settings.get("dataset", "mnist")
    got = metrics.get("dataset")
    if metrics.get("is_sample"):
        return False, f"ran on the embedded sample ({got}), not on the full {wanted}"
    if got != wanted:
        return False, f"the published numbers are on {wanted}; this ran on {got}"
    return True, ""


def _common_notes(metrics: list[dict[str, Any]]) -> list[str]:
    """The data notes every member shares (a member's own, e.g. its bias input, stay in its
    metrics)."""
    lists = [list(m.get("notes") or []) for m in metrics]
    return [n for n in lists[0] if all(n in other for other in lists[1:])] if lists else []


def _member_record(
    m: MemberSpec, runs: list[Job], settings: dict[str, Any], folder: Path
) -> MemberRecord:
    """The record of member ``m`` from its jobs ``runs`` (in repeat order)."""
    engine = {
        "init_from": m.init_from,
        "bias_input": m.bias_input,
        "validation": m.validation,
        "eval_offset": m.eval_offset,
    }
    repeats = None
    if len(runs) > 1:
        repeats = {
            "n": len(runs),
            "seeds": [int(j.settings["seed"]) for j in runs],
            "folders": [str(Path(j.folder).relative_to(folder)) for j in runs],
            "runs": [{n: j.metrics[n] for n in SUMMARY_METRICS if n in j.metrics} for j in runs],
            "summary": summarize([j.metrics for j in runs]),
        }
    return MemberRecord(
        m.label, folder / m.folder, dict(m.overrides), settings, runs[0].metrics, repeats,
        {k: v for k, v in engine.items() if v != ENGINE_KEYS[k]}, m.reading, m.task,
    )  # fmt: skip


def previous_record(folder: Path) -> ExperimentRecord | None:
    """The record an earlier run left in ``folder``, or None (missing or unreadable)."""
    try:
        return load_experiment(folder)
    except (ReportError, OSError):
        return None


def _extras(
    exp: ExperimentSpec, folder: Path, best: int, settings: dict[str, Any],
    previous: ExperimentRecord | None,
) -> dict[str, Any]:  # fmt: skip
    """The extras of the chosen member ``best``: written now, or taken from ``previous``, the
    record of the same jobs, when it chose the same member."""
    if (
        previous is not None
        and previous.chosen == exp.members[best].label
        and previous.extras == list(exp.extras)
        and (folder / "class_means.npz").is_file()
    ):
        return {} if previous.lbfgs is None else {"lbfgs": previous.lbfgs}
    return write_extras(exp, folder, exp.members[best], settings)


def build_record(
    exp: ExperimentSpec,
    jobs: list[Job],
    settings: list[dict[str, Any]],
    notes: list[str],
    folder: Path,
    previous: ExperimentRecord | None = None,
) -> ExperimentRecord:
    """The record of experiment ``exp`` from its finished ``jobs`` (its members' full
    ``settings``, data ``notes``), extras written on the way or taken from ``previous``."""
    members = []
    headline = []
    for k, m in enumerate(exp.members):
        runs = sorted((j for j in jobs if j.member == k), key=lambda j: j.repeat)
        members.append(_member_record(m, runs, settings[k], folder))
        summary = summarize([j.metrics for j in runs])
        headline.append({n: v["mean"] for n, v in summary.items()})
    per_task = choose_per_task(exp, headline)
    best = per_task[exp.tasks[0]]  # the chosen member of the first task: figures and extras
    info = _extras(exp, folder, best, settings[best], previous)
    first = members[0].metrics
    comparable, why = comparability(exp, first)
    seconds = sum(
        float(j.metrics.get("seconds", 0.0)) / int(j.metrics.get("trained_together", 1))
        for j in jobs
    )  # runs trained in lock-step share one training time
    return ExperimentRecord(
        **exp.text(),
        folder=folder,
        figures=list(exp.figures),
        data={
            "dataset": first.get("dataset"),
            "source": first.get("source"),
            "is_sample": first.get("is_sample"),
            "comparable": comparable,
            "not_comparable_because": why,
            "notes": notes + _common_notes([m.metrics for m in members]),
        },
        members=members,
        chosen=exp.members[best].label,
        published=[dict(p) for p in exp.published],
        readings=dict(exp.readings),
        chosen_per_task={t: exp.members[i].label for t, i in per_task.items() if t},
        seconds=seconds if math.isfinite(seconds) else 0.0,
        lbfgs=info.get("lbfgs"),
        extras=list(exp.extras),
    )
