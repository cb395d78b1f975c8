"""The experiment engine: run the members of :class:`ExperimentSpec` files and record them.

Every member runs once per repeat (seed) as a *job* in a parallel worker process (joblib, all
local cores by default, or a Dask cluster), writing a run folder under
``<out>/<experiment>/<member>/`` (repeat 0) or ``<out>/<experiment>/repeats/<member>/seed-<s>/``.
Jobs of chained members (``init_from``) wait for the job they start from. The engine then writes
``experiment.json`` (the contract the report reads, see :mod:`digitlab.report`) and the data
the figures need.

The parts, each with one reason to change:

- :mod:`~digitlab.experiments.plan`: jobs, the tasks that run them, their rough cost;
- :mod:`~digitlab.experiments.execute`: running tasks (joblib or Dask), lock-step repeats,
  ``job.json`` and resuming finished jobs;
- :mod:`~digitlab.experiments.jobdata`: a job's data (validation on test, bias input);
- :mod:`~digitlab.experiments.folders`: the experiment folder and the job folders in it;
- :mod:`~digitlab.experiments.record`: the :class:`ExperimentRecord` of the finished jobs;
- :mod:`~digitlab.experiments.extras`: class means, L-BFGS optimum, gallery, Kaggle CSV.

Resuming: a job that finished leaves ``job.json`` (its settings, stages, engine keys and the
key of the job it started from); a later run skips it when that file matches, and removes and
reruns a member folder without it (a failed or interrupted job). The experiment folder is
marked by ``.digitlab-experiment``; a folder that exists without the mark (and without an
``experiment.json`` of an older digitlab) is refused, never deleted. Nothing outside
``<out>/<experiment>/`` is touched.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from digitlab.errors import ConfigError
from digitlab.experiments.execute import (
    CHECKPOINT_SECONDS,
    backend,
    check_not_running,
    finished_metrics,
    resumable,
    run_jobs,
)
from digitlab.experiments.folders import (
    check_inside,
    clear_job_folder,
    prepare_experiment_folder,
)
from digitlab.experiments.plan import Job, add_jobs
from digitlab.experiments.record import build_record, previous_record
from digitlab.experiments.spec import ExperimentSpec, MemberSpec
from digitlab.report.rundata import ExperimentRecord


def resolve_settings(
    exp: ExperimentSpec, overrides: dict[str, Any]
) -> tuple[list[dict[str, Any]], list[str]]:
    """The full settings of each member of ``exp`` with ``overrides``, and the data notes.

    When the experiment names a fallback dataset and its own is not found (and ``overrides``
    sets none), the members run on the fallback, and a note says so.
    """
    from digitlab.data import locate
    from digitlab.errors import DatasetNotFoundError

    extra = dict(overrides)
    notes = []
    dataset = extra.get("dataset", exp.settings.get("dataset", "mnist"))
    if exp.fallback_dataset and "dataset" not in extra:
        try:
            locate(dataset, root=extra.get("data_root"))
        except DatasetNotFoundError:
            extra["dataset"] = exp.fallback_dataset
            notes.append(
                f"{dataset} not found: the same protocol ran on {exp.fallback_dataset} instead"
            )
    return [exp.member_settings(m, **extra) for m in exp.members], notes


def plan_jobs(
    exps: list[ExperimentSpec], out: Path, overrides: dict[str, Any]
) -> tuple[list[Job], list[list[dict[str, Any]]], list[list[str]]]:
    """Every job of ``exps`` (folders prepared, finished jobs' metrics loaded, stopped jobs
    marked to continue, stale job folders removed), each experiment's member settings, and
    its notes."""
    jobs: list[Job] = []
    all_settings: list[list[dict[str, Any]]] = []
    all_notes: list[list[str]] = []
    names = [e.name for e in exps]
    if len(set(names)) != len(names):
        raise ConfigError(f"experiments given twice: {names}")
    for e, exp in enumerate(exps):
        folder = out / exp.name
        settings, notes = resolve_settings(exp, overrides)
        prepare_experiment_folder(folder, out)
        for job in add_jobs(jobs, e, exp, folder, settings):
            sub = Path(job.folder)
            check_inside(sub, folder)
            done = None if sub.is_symlink() else finished_metrics(job)
            if done is not None:
                job.metrics = done
                continue
            check_not_running(sub)
            job.resume = resumable(job)
            if job.resume is None:
                clear_job_folder(sub, folder)
        all_settings.append(settings)
        all_notes.append(notes)
    return jobs, all_settings, all_notes


@dataclass
class JobProgress:
    """Where one job stands, as its folder shows it (``epoch`` of its last evaluation)."""

    experiment: str
    member: str
    seed: int
    #: "done", "running" (its folder has evaluations) or "waiting"
    state: str
    epoch: float | None
    epochs: int | None


def job_progress(exps: list[ExperimentSpec], jobs: list[Job]) -> list[JobProgress]:
    """Each job's :class:`JobProgress`, read from its folder (``history.csv``, ``job.json``)."""
    from digitlab.errors import FileReadError
    from digitlab.experiments.execute import DONE
    from digitlab.runfiles import HISTORY, read_history_tail

    out = []
    for job in jobs:
        exp = exps[job.exp]
        folder = Path(job.folder)
        epoch, state = None, "waiting"
        if job.metrics or (folder / DONE).is_file():
            state = "done"
        elif (folder / HISTORY).is_file():
            try:
                last = read_history_tail(folder / HISTORY, ()).last
            except (OSError, FileReadError):
                last = {}
            if "epoch" in last:
                epoch, state = last["epoch"], "running"
        epochs = job.settings.get("epochs")
        out.append(JobProgress(
            exp.name, exp.members[job.member].label, int(job.settings.get("seed", 0)), state,
            epoch, epochs if isinstance(epochs, int) else None,
        ))  # fmt: skip
    return out


@contextlib.contextmanager
def _watching(
    exps: list[ExperimentSpec],
    jobs: list[Job],
    on_progress: Callable[[list[JobProgress]], None] | None,
    seconds: float,
) -> Iterator[None]:
    """Call ``on_progress(job_progress(...))`` every ``seconds`` from a thread while inside."""
    if on_progress is None:
        yield
        return
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(seconds):
            try:
                on_progress(job_progress(exps, jobs))
            except (OSError, ValueError):  # a closed output, a folder changing under it: skip
                continue

    thread = threading.Thread(target=watch, name="digitlab-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def run_experiments(
    exps: list[ExperimentSpec],
    out: str | Path = "runs",
    *,
    n_jobs: int = -1,
    scheduler: str | None = None,
    overrides: dict[str, Any] | None = None,
    on_done: Callable[[ExperimentSpec, MemberSpec, dict[str, Any]], None] | None = None,
    checkpoint_seconds: float = CHECKPOINT_SECONDS,
    on_progress: Callable[[list[JobProgress]], None] | None = None,
    progress_seconds: float = 60.0,
) -> list[ExperimentRecord]:
    """Run every member of ``exps`` (all their jobs in one pool) and write each
    ``out/<name>/experiment.json``; jobs that finished in an earlier run are reused.

    Parameters
    ----------
    exps : list of ExperimentSpec
    out : path-like
        Runs root; each experiment writes only inside ``out/<name>/``.
    n_jobs : int
        Parallel worker processes (-1: all cores).
    scheduler : str, optional
        Address of a Dask distributed scheduler to run the jobs on.
    overrides : dict, optional
        Settings applied to every member (e.g. ``data_root``, ``dataset``).
    on_done : callable, optional
        ``on_done(experiment, member, metrics)`` as each job finishes (repeats included).
    checkpoint_seconds : float
        Seconds of training between a job's checkpoints: a job that is stopped (Ctrl-C, a
        killed worker) continues from its last one when the experiments run again.
    on_progress : callable, optional
        ``on_progress(progress)`` every ``progress_seconds`` while jobs run (from another
        thread): one :class:`JobProgress` per job, read from the job folders.

    Returns
    -------
    list of ExperimentRecord
        The records written to ``experiment.json``, in the order of ``exps``.
    """
    from digitlab.runfiles import write_json
    from digitlab.train.callbacks import SaveClock

    root = Path(out)
    SaveClock(checkpoint_seconds)  # a bad interval is refused before any folder is touched

    def done(job: Job) -> None:
        if on_done is not None:
            exp = exps[job.exp]
            on_done(exp, exp.members[job.member], job.metrics)

    with backend(scheduler):  # a scheduler that cannot be reached fails before any folder
        root.mkdir(parents=True, exist_ok=True)
        jobs, all_settings, all_notes = plan_jobs(exps, root, dict(overrides or {}))
        for job in jobs:
            job.checkpoint_seconds = checkpoint_seconds
        with _watching(exps, jobs, on_progress, progress_seconds):
            run_jobs(jobs, n_jobs=n_jobs, on_done=done)
    records = []
    for e, exp in enumerate(exps):
        folder = root / exp.name
        mine = [j for j in jobs if j.exp == e]
        # new results: extras are computed again
        previous = None if any(j.ran for j in mine) else previous_record(folder)
        record = build_record(exp, mine, all_settings[e], all_notes[e], folder, previous)
        write_json(folder / "experiment.json", record.to_json())
        records.append(record)
    return records


def run_experiment(
    exp: ExperimentSpec,
    out: str | Path = "runs",
    *,
    n_jobs: int = -1,
    scheduler: str | None = None,
    overrides: dict[str, Any] | None = None,
    on_done: Callable[[MemberSpec, dict[str, Any]], None] | None = None,
    checkpoint_seconds: float = CHECKPOINT_SECONDS,
) -> ExperimentRecord:
    """Run every member of ``exp`` and write ``out/<name>/experiment.json`` (see
    :func:`run_experiments`); ``on_done(member, metrics)`` as each job finishes."""
    cb = None if on_done is None else (lambda e, m, metrics: on_done(m, metrics))
    return run_experiments(
        [exp], out, n_jobs=n_jobs, scheduler=scheduler, overrides=overrides, on_done=cb,
        checkpoint_seconds=checkpoint_seconds,
    )[0]  # fmt: skip
