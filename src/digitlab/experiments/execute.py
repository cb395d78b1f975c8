"""Execution: run jobs in worker processes (joblib, or a Dask cluster) and resume.

A task (see :mod:`digitlab.experiments.plan`) runs in one worker: its groups in order, the
repeats of a group in lock-step when they can share their steps. A job that finished leaves
:data:`DONE` (its key and settings) next to its ``metrics.json``; a later run reuses it when
the key matches. A job that was stopped (killed, Ctrl-C, the machine gone) leaves
:data:`STARTED` (its key) and the checkpoint it last wrote, every :data:`CHECKPOINT_SECONDS`
of training: a later run with the same key continues from there, to the same result (to the
bit at the same BLAS thread count), unless the checkpoint does not fit the job (another model,
update rule or data: the job starts again). A running job holds :data:`LOCK`: another process
neither continues nor removes it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from digitlab import workers
from digitlab.errors import ConfigError
from digitlab.experiments.jobdata import job_data, same_data, worker_dataset
from digitlab.experiments.plan import Job, init_folder, longest_first, merge_chains, plan_tasks
from digitlab.runfiles import CHECKPOINT

#: File a finished job leaves in its folder.
DONE = "job.json"
#: File a job writes into its folder when it starts (its key): with a checkpoint, a stopped
#: job that a later run continues.
STARTED = "job-started.json"
#: Seconds of training between a job's checkpoints by default (at most this much is lost when
#: a job is killed).
CHECKPOINT_SECONDS = Job.checkpoint_seconds
#: File a running job holds locked (``flock``) in its folder.
LOCK = "job.lock"
RUNNING_ELSEWHERE = (
    "another digitlab process is running this job now; wait for it to end or stop it first"
)


def stop_epoch(metrics: dict[str, Any]) -> int | None:
    """The 0-based epoch in which training ended (what a notebook's ``epoch`` loop prints)."""
    steps, epochs = metrics.get("steps"), metrics.get("epochs")
    if not steps or not epochs:
        return None
    per_epoch = max(1, round(steps / epochs))
    return int((steps - 1) // per_epoch)


def _load_params(folder: str) -> dict[str, np.ndarray]:
    """The final model parameters of the finished job in ``folder``."""
    from digitlab.checkpoint import load_checkpoint

    arrays, _ = load_checkpoint(Path(folder) / "checkpoint.npz")
    return {k[len("model/") :]: v for k, v in arrays.items() if k.startswith("model/")}


def _record_job(metrics: dict[str, Any], seed: int, folder: Path, **extra: Any) -> None:
    """Add what the engine knows of a finished job (its stop epoch, seed, ``extra``) to its
    metrics and write them to ``folder/metrics.json``."""
    from digitlab.runfiles import write_json

    metrics |= {"stop_epoch": stop_epoch(metrics), "seed": seed, **extra}
    write_json(folder / "metrics.json", metrics)


def _run_stages(
    base: Any, stages: list[dict[str, Any]], out: Path, data: Any, init: Any, eval_offset: int
) -> dict[str, Any]:
    """Run ``stages`` one after the other into ``out/stage-<i>``, each resuming from the
    last checkpoint of the one before; copy the last stage's files to ``out``."""
    from digitlab.checkpoint import load_checkpoint
    from digitlab.runner import run

    resume = None
    total = 0
    stage_dir = out
    for i, stage in enumerate(stages, 1):
        total += int(stage["steps"])
        st = base.replace(
            **{k: v for k, v in stage.items() if k != "steps"}, steps=total, epochs=None
        )
        stage_dir = out / f"stage-{i}"
        stage_dir.mkdir()
        result = run(
            st, folder=stage_dir, data=data, resume_from=resume,
            init_params=init if i == 1 else None, eval_offset=eval_offset,
        )  # fmt: skip
        resume = load_checkpoint(stage_dir / "checkpoint.npz")
    for name in ("config.toml", "history.csv", "checkpoint.npz"):
        shutil.copy2(stage_dir / name, out / name)
    return result.metrics | {"stages": len(stages)}


def _open_job_folder(folder: Path, key: str | None, resume: bool) -> Any:
    """Create a job's folder (a stopped job's is kept) and mark it :data:`STARTED` with the
    job's key; return the checkpoint to continue from, or None."""
    from digitlab.checkpoint import load_checkpoint
    from digitlab.runfiles import HISTORY, write_json

    checkpoint = None
    if resume:
        checkpoint = load_checkpoint(folder / CHECKPOINT)
        # rewritten from the checkpoint's rows: rows evaluated after it are evaluated again
        (folder / HISTORY).unlink(missing_ok=True)
    else:
        folder.mkdir(parents=True)
    if key is not None:
        write_json(folder / STARTED, {"key": key})
    return checkpoint


def _close_failed(folder: Path, exc: BaseException) -> None:
    """After a job failed: keep the folder of a job that was stopped (Ctrl-C, a signal) or
    ran out of a resource (memory, disk) after a checkpoint, for a later run to continue;
    remove the folder otherwise (an error in the job would happen again)."""
    stopped = isinstance(exc, KeyboardInterrupt | SystemExit | MemoryError | OSError)
    ckpt = folder / CHECKPOINT
    if not (stopped and ckpt.is_file() and not ckpt.is_symlink()):
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def _job_lock(folders: list[Path]) -> Iterator[None]:
    """Hold :data:`LOCK` in each job folder while its job runs (Linux/macOS ``flock``), so that
    another digitlab process neither continues nor removes a job that is still running."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no lock
        yield
        return
    fds = []
    try:
        for folder in folders:
            flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | os.O_CLOEXEC
            fds.append(os.open(folder / LOCK, flags, 0o644))
            _flock_or_refuse(fds[-1], folder, fcntl.LOCK_EX)
        yield
    finally:
        for fd in fds:
            os.close(fd)


def check_not_running(folder: Path) -> None:
    """Refuse (ConfigError) a job folder whose job another process is running now."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover
        return
    lock = folder / LOCK
    if lock.is_symlink() or not lock.is_file():
        return
    try:
        fd = os.open(lock, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | os.O_CLOEXEC)
    except OSError:
        return
    try:
        _flock_or_refuse(fd, folder, fcntl.LOCK_SH)
    finally:
        os.close(fd)


def _flock_or_refuse(fd: int, folder: Path, mode: int) -> None:
    """``flock(fd, mode)`` without waiting; ConfigError when another process holds the lock."""
    import fcntl

    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        raise ConfigError(f"{folder}: {RUNNING_ELSEWHERE}") from None


def run_member(
    settings: dict[str, Any],
    stages: list[dict[str, Any]],
    folder: str,
    *,
    init_from: str | None = None,
    bias_input: float = 1.0,
    validation: str = "split",
    eval_offset: int = 0,
    expected_data: dict[str, Any] | None = None,
    key: str | None = None,
    resume: bool = False,
    checkpoint_seconds: float | None = CHECKPOINT_SECONDS,
) -> dict[str, Any]:
    """Run one job (all stages of one member, one seed) into ``folder``; return its metrics.

    ``expected_data`` is the client's dataset identity; other data here is refused.

    ``init_from`` is the folder of a finished job whose final weights this one starts from.
    ``resume``: continue the stopped job in ``folder`` from its checkpoint (single-stage jobs;
    see :func:`resumable`; a checkpoint that does not fit the job's model or update rule
    starts it again); ``key`` is written to its :data:`STARTED` file; a checkpoint is
    written every ``checkpoint_seconds`` of training (None: at the end only). A top-level
    function so that joblib and Dask can send it to worker processes. If it fails, the
    folder (which it creates) is removed, unless it was stopped after a checkpoint.
    """
    from digitlab.errors import CheckpointError, DataError
    from digitlab.runner import check_same_data, run
    from digitlab.settings import Settings

    base = Settings.from_dict(settings)
    data = job_data(base, bias_input, validation, expected=expected_data)
    out = Path(folder)

    def attempt(checkpoint: Any) -> dict[str, Any]:
        init = _load_params(init_from) if init_from is not None and checkpoint is None else None
        with _job_lock([out]):
            try:
                if checkpoint is not None:  # trained on other data (DataError): start again
                    check_same_data(checkpoint[1], data.dataset, out / CHECKPOINT)
                if not stages:
                    metrics = run(
                        base, folder=out, data=data, init_params=init, eval_offset=eval_offset,
                        resume_from=checkpoint, checkpoint_seconds=checkpoint_seconds,
                    ).metrics  # fmt: skip
                else:
                    metrics = _run_stages(base, stages, out, data, init, eval_offset)
                extra = {} if checkpoint is None else {"resumed_at_step": _step_of(checkpoint)}
                _record_job(metrics, base.seed, out, **extra)
            except BaseException as exc:
                _close_failed(out, exc)
                raise
        return metrics

    checkpoint = _open_job_folder(out, key, resume and not stages)
    if checkpoint is not None:
        try:
            return attempt(checkpoint)
        except (CheckpointError, DataError):  # it does not fit this job's model, rule or data
            _open_job_folder(out, key, resume=False)  # the failed attempt removed the folder
    return attempt(None)


def _step_of(checkpoint: Any) -> int:
    """The step a loaded checkpoint was written at."""
    from digitlab.runfiles import checkpoint_progress

    return int(checkpoint_progress(checkpoint[1], CHECKPOINT)["step"])


def resumable(job: Job) -> int | None:
    """The step of the checkpoint of a stopped run of ``job`` in its folder, to continue from:
    its :data:`STARTED` key is the job's, its checkpoint loads, and neither they nor its
    history is a link (single-stage jobs only); else None."""
    from digitlab.checkpoint import load_checkpoint
    from digitlab.errors import CheckpointError, FileReadError
    from digitlab.runfiles import HISTORY, read_json

    folder = Path(job.folder)
    if job.stages or folder.is_symlink() or not folder.is_dir():
        return None
    if any((folder / name).is_symlink() for name in (STARTED, CHECKPOINT, HISTORY, LOCK)):
        return None
    try:
        started = read_json(folder / STARTED)
        if not isinstance(started, dict) or started.get("key") != job.key:
            return None
        return _step_of(load_checkpoint(folder / CHECKPOINT))
    except (OSError, FileReadError, CheckpointError, KeyError, TypeError, ValueError):
        return None


def run_job(job: Job, init_from: str | None) -> dict[str, Any]:
    """:func:`run_member` for ``job``, starting from the job in ``init_from`` (or None)."""
    return run_member(
        job.settings, job.stages, job.folder, init_from=init_from,
        bias_input=job.bias_input, validation=job.validation, eval_offset=job.eval_offset,
        expected_data=job.data, key=job.key, resume=job.resume is not None,
        checkpoint_seconds=job.checkpoint_seconds,
    )  # fmt: skip


def run_jobs_together(jobs: list[Job], init_folders: list[str | None]) -> list[dict[str, Any]]:
    """Run one group of jobs and return their metrics: the repeats of one member (same
    settings but the seed), or those of one link of several chains merged into one task
    (:func:`~digitlab.experiments.plan.merge_chains`: also their penalties differ).

    When their data come out the same (the seed drew only the initial weights) and the
    trainer can share their steps (:func:`~digitlab.train.fit_together`: full-batch linear
    models), they train in lock-step, each into its own folder, the result of each equal to
    :func:`run_member`'s up to float rounding; otherwise one after another. Repeats stopped
    at one step continue in lock-step (to the numbers they would have had); stopped at
    different steps, or some not stopped, each continues alone.
    """
    from digitlab.errors import CheckpointError, DataError
    from digitlab.settings import Settings

    def one_by_one() -> list[dict[str, Any]]:
        return [run_job(j, f) for j, f in zip(jobs, init_folders, strict=True)]

    if len(jobs) == 1 or any(j.stages for j in jobs) or len({j.resume for j in jobs}) > 1:
        return one_by_one()
    bases = [Settings.from_dict(j.settings) for j in jobs]
    first = jobs[0]
    dataset = worker_dataset(bases[0].dataset, bases[0].data_root)
    data = job_data(bases[0], first.bias_input, first.validation, dataset, first.data)
    for b in bases[1:]:  # each compared and dropped: one extra copy of the features at a time
        if not same_data(data, job_data(b, first.bias_input, first.validation, dataset)):
            return one_by_one()
    if first.resume is not None:
        try:
            return _train_together(jobs, bases, data, None, resume=True)
        except (CheckpointError, DataError):  # they do not fit: the folders were removed
            for j in jobs:
                j.resume = None
    inits = [None if f is None else _load_params(f) for f in init_folders]
    return _train_together(jobs, bases, data, inits, resume=False)


def _train_together(
    jobs: list[Job], bases: list[Any], data: Any, inits: list[Any] | None, *, resume: bool
) -> list[dict[str, Any]]:
    """The lock-step run of :func:`run_jobs_together`, from the start or from the jobs'
    checkpoints (``resume``)."""
    from digitlab.runner import check_same_data, run_together

    folders = [Path(j.folder) for j in jobs]
    checkpoints = [_open_job_folder(f, j.key, resume) for j, f in zip(jobs, folders, strict=True)]
    with _job_lock(folders):
        try:
            for c, f in zip(checkpoints, folders, strict=True):
                if c is not None:
                    check_same_data(c[1], data.dataset, f / CHECKPOINT)
            results = run_together(
                bases, folders, data=data, init_params=inits, eval_offset=jobs[0].eval_offset,
                checkpoint_seconds=jobs[0].checkpoint_seconds,
                resume_from=checkpoints if resume else None,
            )  # fmt: skip
            out = []
            for base, folder, result, c in zip(bases, folders, results, checkpoints, strict=True):
                extra: dict[str, Any] = {}  # trained_together: in the metrics, where it was
                if c is not None:
                    extra["resumed_at_step"] = _step_of(c)
                _record_job(result.metrics, base.seed, folder, **extra)
                out.append(result.metrics)
        except BaseException as exc:
            for f in folders:
                _close_failed(f, exc)
            raise
    return out


def finished_metrics(job: Job) -> dict[str, Any] | None:
    """The metrics of a job that already finished with the same key, else None."""
    folder = Path(job.folder)
    from digitlab.errors import FileReadError
    from digitlab.runfiles import METRICS, read_json, read_metrics

    try:
        done = read_json(folder / DONE)
        metrics = read_metrics(folder / METRICS)
    except (OSError, FileReadError):
        return None
    if not isinstance(done, dict) or done.get("key") != job.key or not isinstance(metrics, dict):
        return None
    return metrics


@contextlib.contextmanager
def backend(scheduler: str | None) -> Iterator[None]:
    """joblib's default (loky processes) or a Dask distributed cluster at ``scheduler``.

    Loky workers may use every core this process may (joblib would give each of ``n`` workers
    ``cores // n`` BLAS threads): a chain that runs alone, as the last tasks of a reproduction
    do, then gets the whole machine, and workers running side by side give threads up to each
    other through :class:`~digitlab.threads.ThreadPolicy`, which follows the other processes'
    load.
    """
    import joblib

    if scheduler is None:
        from digitlab.threads import worker_threads

        with joblib.parallel_config(
            backend="loky", inner_max_num_threads=worker_threads(),
            initializer=workers.end_with_parent, initargs=(os.getpid(),),
        ):  # fmt: skip
            yield
        return
    try:
        from dask.distributed import Client
    except ImportError:
        raise ConfigError(
            "--scheduler needs dask[distributed]: pip install 'digitlab[dask]'"
        ) from None
    try:
        client = Client(scheduler, timeout=10)
    except OSError as exc:
        raise ConfigError(f"cannot reach the Dask scheduler at {scheduler} ({exc})") from None
    except (ValueError, TypeError) as exc:  # e.g. an unknown address scheme
        raise ConfigError(f"--scheduler {scheduler!r}: not a Dask address ({exc})") from None
    try:
        with joblib.parallel_config(backend="dask"):
            yield
    finally:
        client.close()


def _run_task(
    groups: list[list[tuple[int, Job, str | None]]],
) -> list[tuple[int, dict[str, Any]]]:
    """Run a task's groups in order (jobs that finished before are skipped); each job's
    ``job.json`` is written as soon as it finishes. In a loky worker whose parent is gone
    (:func:`digitlab.workers.end_with_parent`) the task stops and the worker ends."""
    from digitlab.runfiles import write_json

    out = []
    with workers.task():
        for group in groups:
            todo = [(i, job, init) for i, job, init in group if not job.metrics]
            if not todo:
                continue
            jobs, inits = [job for _, job, _ in todo], [init for _, _, init in todo]
            results = run_jobs_together(jobs, inits)
            for (i, job, _), metrics in zip(todo, results, strict=True):
                write_json(Path(job.folder) / DONE, {"key": job.key, "settings": job.settings})
                out.append((i, metrics))
    return out


def run_jobs(
    jobs: list[Job],
    n_jobs: int = -1,
    scheduler: str | None = None,
    on_done: Callable[[Job], None] | None = None,
) -> None:
    """Run the jobs without metrics in parallel tasks; a job runs after the job it starts from.

    A task is a chain (a member, the members that start from it, and so on) run in order in
    one worker, for one repeat or, when the repeats can share their steps (see
    :func:`run_jobs_together`), for all repeats at once; tasks start longest first. Each job's
    ``metrics`` is filled and ``on_done(job)`` called as its task finishes; a job that
    finished in an earlier run keeps its metrics and is not run again.
    """
    import joblib

    tasks = [t for t in plan_tasks(jobs) if any(not jobs[i].metrics for g in t for i in g)]
    if not tasks:
        return
    with backend(scheduler):
        # a cluster's workers are not known here: its chains stay apart
        pool_size = None if scheduler is not None else joblib.effective_n_jobs(n_jobs)
        tasks = merge_chains(jobs, tasks, pool_size)
        parallel = joblib.Parallel(n_jobs=n_jobs, return_as="generator_unordered")
        calls = (
            joblib.delayed(_run_task)([[(i, jobs[i], init_folder(jobs, i)) for i in g] for g in t])
            for t in longest_first(jobs, tasks)
        )
        for results in parallel(calls):
            for i, metrics in results:
                jobs[i].metrics, jobs[i].ran = metrics, True
                if on_done is not None:
                    on_done(jobs[i])
