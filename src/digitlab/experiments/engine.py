"""The experiment engine: run the members of :class:`ExperimentSpec` files and record them.

Every member runs once per repeat (seed) as a *job* in a parallel worker process (joblib, all
local cores by default, or a Dask cluster), writing a run folder under
``<out>/<experiment>/<member>/`` (repeat 0) or ``<out>/<experiment>/repeats/<member>/seed-<s>/``.
Jobs of chained members (``init_from``) wait for the job they start from. The engine then writes
``experiment.json`` (the contract the report reads, see :mod:`digitlab.report`) and the data
the figures need.

Resuming: a job that finished leaves ``job.json`` (its settings, stages, engine keys and the
key of the job it started from); a later run skips it when that file matches, and removes and
reruns a member folder without it (a failed or interrupted job). The experiment folder is
marked by ``.digitlab-experiment``; a folder that exists without the mark (and without an
``experiment.json`` of an older digitlab) is refused, never deleted. Nothing outside
``<out>/<experiment>/`` is touched.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from digitlab.errors import ConfigError
from digitlab.experiments.spec import ENGINE_KEYS, METRICS, ExperimentSpec, MemberSpec
from digitlab.report.rundata import ExperimentRecord

#: File marking a folder as an experiment folder written by this engine.
MARK = ".digitlab-experiment"
#: File a finished job leaves in its folder.
DONE = "job.json"
#: Scalar metrics summarised over repeats.
SUMMARY_METRICS = (*METRICS, "train_objective", "val_objective", "test_objective")


def _load_params(folder: str) -> dict[str, np.ndarray]:
    from digitlab.checkpoint import load_checkpoint

    arrays, _ = load_checkpoint(Path(folder) / "checkpoint.npz")
    return {k[len("model/") :]: v for k, v in arrays.items() if k.startswith("model/")}


def _prepared(
    base: Any, bias_input: float, validation: str, dataset: Any = None, expected: Any = None
) -> Any:
    """The member's data: the settings' splits, validation on test, scaled bias input;
    refused when it is not the client's ``expected`` data (:func:`~digitlab.runner.job_data`)."""
    from digitlab.data import load
    from digitlab.runner import check_job_data, prepare_data

    if expected:
        dataset = dataset if dataset is not None else load(base.dataset, root=base.data_root)
        check_job_data(expected, dataset)
    if validation == "test":
        data = prepare_data(base.replace(holdout=0.0, early_stopping=0), dataset)
        note = "validation on the test split (no hold-out cut from the training images)"
        data = replace(data, val=data.test, notes=[*data.notes, note])
    else:
        data = prepare_data(base, dataset)
    if bias_input != 1.0:
        if not base.bias_column:
            raise ConfigError("bias_input needs bias_column = true")
        parts = [data.train, data.val, data.test]
        for i, pair in enumerate(parts):
            if pair is not None:
                x = np.array(pair[0])  # the features (n, d + 1) as a new array
                x[:, -1] = bias_input
                parts[i] = (x, pair[1])
        data = replace(data, train=parts[0], val=parts[1], test=parts[2])
        data.notes.append(f"bias input {bias_input:.6g} instead of 1")
    return data


def stop_epoch(metrics: dict[str, Any]) -> int | None:
    """The 0-based epoch in which training ended (what a notebook's ``epoch`` loop prints)."""
    steps, epochs = metrics.get("steps"), metrics.get("epochs")
    if not steps or not epochs:
        return None
    per_epoch = max(1, round(steps / epochs))
    return int((steps - 1) // per_epoch)


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
) -> dict[str, Any]:
    """Run one job (all stages of one member, one seed) into ``folder``; return its metrics.

    ``expected_data`` is the client's dataset identity; other data here is refused.

    ``init_from`` is the folder of a finished job whose final weights this one starts from.
    A top-level function so that joblib and Dask can send it to worker processes. If it fails,
    the folder (which it creates) is removed.
    """
    from digitlab.checkpoint import load_checkpoint
    from digitlab.runner import Settings, run

    base = Settings.from_dict(settings)
    data = _prepared(base, bias_input, validation, expected=expected_data)
    init = _load_params(init_from) if init_from is not None else None
    out = Path(folder)
    out.mkdir(parents=True)
    try:
        if not stages:
            metrics = run(
                base, folder=out, data=data, init_params=init, eval_offset=eval_offset
            ).metrics
        else:
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
            metrics = result.metrics | {"stages": len(stages)}
        _record_job(metrics, base.seed, out)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    return metrics


def _record_job(metrics: dict[str, Any], seed: int, folder: Path, **extra: Any) -> None:
    """Add what the engine knows of a finished job (its stop epoch, seed, ``extra``) to its
    metrics and write them to ``folder/metrics.json``."""
    from digitlab.runner import write_json

    metrics |= {"stop_epoch": stop_epoch(metrics), "seed": seed, **extra}
    write_json(folder / "metrics.json", metrics)


@dataclass
class Job:
    """One run of one member with one seed.

    ``key`` identifies what the job computes (settings, stages, engine keys, the key of the
    job it starts from); ``after`` is the index of that job in the job list, or None.
    """

    exp: int
    member: int
    repeat: int
    settings: dict[str, Any]
    stages: list[dict[str, Any]]
    folder: str
    bias_input: float = 1.0
    validation: str = "split"
    eval_offset: int = 0
    after: int | None = None
    key: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    ran: bool = False
    data: dict[str, Any] | None = None  # the client's dataset identity (runner.job_data)

    def call(self, init_folder: str | None) -> dict[str, Any]:
        return run_member(
            self.settings, self.stages, self.folder, init_from=init_folder,
            bias_input=self.bias_input, validation=self.validation, eval_offset=self.eval_offset,
            expected_data=self.data,
        )  # fmt: skip


def run_together(jobs: list[Job], init_folders: list[str | None]) -> list[dict[str, Any]]:
    """Run the repeats of one member (same settings but the seed) and return their metrics.

    When their data come out the same (the seed drew only the initial weights) and the
    trainer can share their steps (:func:`~digitlab.train.fit_together`: full-batch linear
    models), they train in lock-step, each into its own folder, the result of each equal to
    :func:`run_member`'s up to float rounding; otherwise one after another.
    """
    from digitlab.data import load
    from digitlab.runner import Settings
    from digitlab.runner import run_together as run_runs

    def one_by_one() -> list[dict[str, Any]]:
        return [j.call(f) for j, f in zip(jobs, init_folders, strict=True)]

    if len(jobs) == 1 or any(j.stages for j in jobs):
        return one_by_one()
    bases = [Settings.from_dict(j.settings) for j in jobs]
    first = jobs[0]
    dataset = load(bases[0].dataset, root=bases[0].data_root)
    data = _prepared(bases[0], first.bias_input, first.validation, dataset, first.data)
    for b in bases[1:]:  # each compared and dropped: one extra copy of the features at a time
        if not _same_data(data, _prepared(b, first.bias_input, first.validation, dataset)):
            return one_by_one()
    inits = [None if f is None else _load_params(f) for f in init_folders]
    folders = [Path(j.folder) for j in jobs]
    for f in folders:
        f.mkdir(parents=True)
    try:
        results = run_runs(
            bases, folders, data=data, init_params=inits, eval_offset=first.eval_offset
        )
        out = []
        for base, folder, result in zip(bases, folders, results, strict=True):
            # trained_together: the run's seconds are shared by that many runs
            _record_job(result.metrics, base.seed, folder, trained_together=len(jobs))
            out.append(result.metrics)
    except BaseException:
        for f in folders:
            shutil.rmtree(f, ignore_errors=True)
        raise
    return out


def _same_data(a: Any, b: Any) -> bool:
    """Whether two prepared datasets hold the same rows in every split."""
    for pa, pb in ((a.train, b.train), (a.val, b.val), (a.test, b.test)):
        if (pa is None) != (pb is None):
            return False
        if pa is None:
            continue
        xa, xb = (getattr(p[0], "pixels", p[0]) for p in (pa, pb))
        if not (np.array_equal(pa[1], pb[1]) and np.array_equal(xa, xb)):
            return False
    return True


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _finished(job: Job) -> dict[str, Any] | None:
    """The metrics of a job that already finished with the same key, else None."""
    folder = Path(job.folder)
    try:
        done = json.loads((folder / DONE).read_text())
        metrics = json.loads((folder / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(done, dict) or done.get("key") != job.key or not isinstance(metrics, dict):
        return None
    return metrics


def _check_inside(folder: Path, root: Path) -> None:
    """Refuse a job folder that is not (or, through a link, would not be) inside ``root``."""
    real_root = root.resolve()
    for part in (folder, *folder.parents):
        if part == root:
            return
        if part.is_symlink() and part != folder:
            raise ConfigError(f"{part} is a link; job folders must lie inside {root}")
        if part.exists() and real_root not in part.resolve().parents and part != folder:
            raise ConfigError(f"{part} lies outside {root}")
    raise ConfigError(f"{folder} is outside {root}")


def _clear(folder: Path, root: Path) -> None:
    """Remove a stale job folder inside the experiment folder ``root`` (a link: just the link)."""
    _check_inside(folder, root)
    if folder.is_symlink() or folder.is_file():
        folder.unlink()
    elif folder.exists():
        shutil.rmtree(folder)


@contextlib.contextmanager
def _backend(scheduler: str | None) -> Iterator[None]:
    """joblib's default (loky processes) or a Dask distributed cluster at ``scheduler``."""
    import joblib

    if scheduler is None:
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


def run_jobs(
    jobs: list[Job],
    n_jobs: int = -1,
    scheduler: str | None = None,
    on_done: Callable[[Job], None] | None = None,
) -> None:
    """Run the jobs without metrics in parallel tasks; a job runs after the job it starts from.

    A task is a chain (a member, the members that start from it, and so on) run in order in
    one worker, for one repeat or, when the repeats can share their steps (see
    :func:`run_together`), for all repeats at once; tasks start longest first. Each job's
    ``metrics`` is filled and ``on_done(job)`` called as its task finishes; a job that
    finished in an earlier run keeps its metrics and is not run again.
    """
    import joblib

    tasks = [t for t in plan_tasks(jobs) if any(not jobs[i].metrics for g in t for i in g)]
    if not tasks:
        return
    cost = [sum(_cost(jobs[g[0]]) * (1 + 0.45 * (len(g) - 1)) for g in t) for t in tasks]
    order = sorted(range(len(tasks)), key=lambda k: -cost[k])  # long tasks first: no idle tail
    with _backend(scheduler):
        parallel = joblib.Parallel(n_jobs=n_jobs, return_as="generator_unordered")
        calls = (
            joblib.delayed(_run_task)(
                [[(i, jobs[i], _init_folder(jobs, i)) for i in g] for g in tasks[k]]
            )
            for k in order
        )
        for results in parallel(calls):
            for i, metrics in results:
                jobs[i].metrics, jobs[i].ran = metrics, True
                if on_done is not None:
                    on_done(jobs[i])


def _init_folder(jobs: list[Job], i: int) -> str | None:
    after = jobs[i].after
    return None if after is None else jobs[after].folder


def plan_tasks(jobs: list[Job]) -> list[list[list[int]]]:
    """The jobs as tasks: each a list of groups (job indices run together), run in order.

    A group holds one member's repeats; a chain's members follow the member they start
    from. Repeats of a chain whose every member can share steps across repeats (no stages,
    full-batch descent, no augmentation, a linear model) form one task; other chains run one
    task per repeat.
    """
    from digitlab.models import MODELS
    from digitlab.models.linear import LinearModel

    def shareable(job: Job) -> bool:
        st = job.settings
        linear = issubclass(MODELS[st["model"]], LinearModel)
        return not job.stages and st.get("batch") == "full" and not st.get("augment") and linear

    members: dict[tuple[int, int], list[int]] = {}
    for i, j in enumerate(jobs):
        members.setdefault((j.exp, j.member), []).append(i)
    follows: dict[tuple[int, int], list[tuple[int, int]]] = {}
    roots = []
    for key, idx in members.items():
        after = jobs[idx[0]].after
        if after is None:
            roots.append(key)
        else:
            follows.setdefault((jobs[after].exp, jobs[after].member), []).append(key)
    tasks = []
    for root in roots:
        chain, todo = [], [root]
        while todo:  # breadth first: a member after the one it starts from
            key = todo.pop(0)
            chain.append(key)
            todo += follows.get(key, [])
        if all(shareable(jobs[i]) for key in chain for i in members[key]):
            tasks.append([members[key] for key in chain])
        else:
            n = len(members[root])
            tasks += [[[members[key][r]] for key in chain] for r in range(n)]
    return tasks


def _run_task(
    groups: list[list[tuple[int, Job, str | None]]],
) -> list[tuple[int, dict[str, Any]]]:
    """Run a task's groups in order (jobs that finished before are skipped); each job's
    ``job.json`` is written as soon as it finishes."""
    from digitlab.runner import write_json

    out = []
    for group in groups:
        todo = [(i, job, init) for i, job, init in group if not job.metrics]
        if not todo:
            continue
        results = run_together([job for _, job, _ in todo], [init for _, _, init in todo])
        for (i, job, _), metrics in zip(todo, results, strict=True):
            write_json(Path(job.folder) / DONE, {"key": job.key, "settings": job.settings})
            out.append((i, metrics))
    return out


#: Rough machine figures for ordering tasks (only their ratios matter): seconds per step of
#: Python and NumPy overhead (single-sample augmentation included) and flop/s of the products.
_STEP_S, _FLOPS = 2e-4, 3e10


def _cost(job: Job) -> float:
    """A rough time of a job in seconds, to start the longest tasks first.

    Steps (all stages' steps, or epochs times batches per epoch) times a per-step overhead
    plus the products' arithmetic: rows x features x (hidden units + outputs) x 6.
    """
    from digitlab.models import MODELS

    s = job.settings
    n = float(s.get("n_train") or 20000)
    batch = s.get("batch")
    rows = n if batch == "full" else 1.0 if batch == "sgd" else float(batch or n)
    if isinstance(batch, float):
        rows = max(1.0, batch * n)
    if job.stages:
        steps = float(sum(st["steps"] for st in job.stages))
    elif s.get("steps"):
        steps = float(s["steps"])
    else:
        steps = float(s.get("epochs") or 1) * math.ceil(n / rows)
    model = MODELS.get(s.get("model", ""))
    width = 10.0 + (0.0 if model is None or model.convex else float(sum(s.get("hidden") or [])))
    return steps * (_STEP_S + rows * 785 * width * 6 / _FLOPS)


def choose(exp: ExperimentSpec, results: list[dict[str, Any]]) -> int:
    """Index of the member the experiment's select rule picks (first among ties)."""
    values = [r.get(exp.select["metric"], np.nan) for r in results]
    values = [
        (-np.inf if exp.select["mode"] == "max" else np.inf) if v is None or np.isnan(v) else v
        for v in values
    ]
    return int(np.argmax(values) if exp.select["mode"] == "max" else np.argmin(values))


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


def _prepare_folder(folder: Path, out: Path) -> None:
    """Create or adopt the experiment folder ``folder`` (directly under ``out``)."""
    from digitlab.checkpoint import atomic_write_bytes

    if folder.parent.resolve() != out.resolve() or folder.is_symlink():
        raise ConfigError(f"{folder} is not a plain folder directly under {out}")
    if folder.exists():
        if not folder.is_dir():
            raise ConfigError(f"{folder} exists and is not a folder; move it away")
        ours = (folder / MARK).exists() or (folder / "experiment.json").exists()
        if not ours and any(folder.iterdir()):
            raise ConfigError(f"{folder} exists and is not an experiment folder; move it away")
    else:
        folder.mkdir(parents=True)
    if not (folder / MARK).exists():
        atomic_write_bytes(folder / MARK, lambda f: f.write(b"digitlab experiment folder\n"))


def _jobs(
    exps: list[ExperimentSpec], out: Path, overrides: dict[str, Any]
) -> tuple[list[Job], list[list[dict[str, Any]]], list[list[str]]]:
    """Every job of ``exps`` (folders prepared, finished jobs' metrics loaded), each
    experiment's member settings, and its notes."""
    from digitlab.data import locate
    from digitlab.errors import DatasetNotFoundError
    from digitlab.runner import job_data

    jobs: list[Job] = []
    all_settings: list[list[dict[str, Any]]] = []
    all_notes: list[list[str]] = []
    names = [e.name for e in exps]
    if len(set(names)) != len(names):
        raise ConfigError(f"experiments given twice: {names}")
    for e, exp in enumerate(exps):
        folder = out / exp.name
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
        settings = [exp.member_settings(m, **extra) for m in exp.members]
        identities: dict[str, dict[str, Any]] = {}  # the data each job must find: by source
        _prepare_folder(folder, out)
        index: dict[tuple[int, int], int] = {}
        labels = [m.label for m in exp.members]
        for k, (m, s) in enumerate(zip(exp.members, settings, strict=True)):
            for r in range(m.repeats):
                seed = int(s["seed"]) + r
                sub = (
                    folder / m.folder if r == 0 else folder / "repeats" / m.folder / f"seed-{seed}"
                )
                after = None if m.init_from is None else index[(labels.index(m.init_from), r)]
                job = Job(
                    e, k, r, s | {"seed": seed}, [dict(st) for st in exp.stages], str(sub),
                    m.bias_input, m.validation, m.eval_offset, after,
                )  # fmt: skip
                job.key = _digest(
                    [job.settings, job.stages, job.bias_input, job.validation, job.eval_offset,
                     None if after is None else jobs[after].key]
                )  # fmt: skip
                _check_inside(sub, folder)
                done = None if sub.is_symlink() else _finished(job)
                if done is not None:
                    job.metrics = done
                else:
                    _clear(sub, folder)
                where = json.dumps([s.get("dataset"), s.get("data_root")])
                if where not in identities:
                    identities[where] = job_data(s)
                job.data = identities[where]  # travels with the job to its worker
                index[(k, r)] = len(jobs)
                jobs.append(job)
        all_settings.append(settings)
        all_notes.append(notes)
    return jobs, all_settings, all_notes


def write_extras(
    exp: ExperimentSpec, folder: Path, chosen: MemberSpec, settings: dict[str, Any]
) -> dict[str, Any]:
    """Class means, L-BFGS optimum, gallery and Kaggle CSV, as the experiment asks."""
    from digitlab.optim import lbfgs
    from digitlab.runner import (
        Settings,
        load_run_checkpoint,
        prepare_data,
        split_metrics,
        write_json,
    )

    info: dict[str, Any] = {}
    data = prepare_data(Settings.from_dict(settings))
    x_tr, y_tr = data.splits.train
    k = len(data.classes)
    means = np.stack(
        [
            x_tr[y_tr == c].mean(axis=0) if np.any(y_tr == c) else np.zeros(x_tr.shape[1:])
            for c in range(k)
        ]
    )
    np.savez(
        folder / "class_means.npz", means=means.astype(np.float32), classes=np.array(data.classes)
    )
    model, _, _ = load_run_checkpoint(folder / chosen.folder / "checkpoint.npz")
    if "lbfgs" in exp.extras and model.convex and not model.l1:
        t0 = time.perf_counter()
        res = lbfgs(model, *data.train, max_iter=500)
        record = {
            "objective": res.objective,
            "gd_objective": float(model.astype(np.float64).loss(*data.train)),
            "grad_norm": res.grad_norm,
            "n_iter": res.n_iter,
            "converged": res.converged,
            "seconds": time.perf_counter() - t0,
        }
        accs = split_metrics(res.model, data)
        record |= {k: v for k, v in accs.items() if k.endswith("_acc")}
        write_json(folder / chosen.folder / "lbfgs.json", record)
        info["lbfgs"] = record
    if "gallery" in exp.extras:
        x_te, y_te = data.splits.test
        pred = model.predict(data.test[0])
        right, wrong = np.flatnonzero(pred == y_te)[:16], np.flatnonzero(pred != y_te)[:16]
        idx = np.concatenate([right, wrong])
        np.savez(
            folder / "gallery.npz",
            images=x_te[idx],
            labels=y_te[idx],
            preds=pred[idx],
            classes=np.array(data.classes),
        )
    if "kaggle" in exp.extras:
        from digitlab.checkpoint import atomic_write_bytes
        from digitlab.runner import LABEL_OFFSET

        offset = LABEL_OFFSET.get(data.dataset.name, 0)
        pred = model.predict(data.test[0]) + offset
        text = "Id,Category\n" + "".join(f"{i},{p}\n" for i, p in enumerate(pred.tolist(), 1))
        atomic_write_bytes(folder / "kaggle.csv", lambda f: f.write(text.encode()))
    return info


def run_experiments(
    exps: list[ExperimentSpec],
    out: str | Path = "runs",
    *,
    n_jobs: int = -1,
    scheduler: str | None = None,
    overrides: dict[str, Any] | None = None,
    on_done: Callable[[ExperimentSpec, MemberSpec, dict[str, Any]], None] | None = None,
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

    Returns
    -------
    list of ExperimentRecord
        The records written to ``experiment.json``, in the order of ``exps``.
    """
    from digitlab.runner import write_json

    root = Path(out)

    def done(job: Job) -> None:
        if on_done is not None:
            exp = exps[job.exp]
            on_done(exp, exp.members[job.member], job.metrics)

    with _backend(scheduler):  # a scheduler that cannot be reached fails before any folder
        root.mkdir(parents=True, exist_ok=True)
        jobs, all_settings, all_notes = _jobs(exps, root, dict(overrides or {}))
        run_jobs(jobs, n_jobs=n_jobs, on_done=done)
    records = []
    for e, exp in enumerate(exps):
        folder = root / exp.name
        mine = [j for j in jobs if j.exp == e]
        previous = _read_record(folder)
        if any(j.ran for j in mine):
            previous = None  # new results: extras are computed again
        raw = _record(exp, mine, all_settings[e], all_notes[e], folder, previous)
        raw["seconds"] = sum(
            float(j.metrics.get("seconds", 0.0)) / int(j.metrics.get("trained_together", 1))
            for j in mine
        )  # runs trained in lock-step share one training time
        record = ExperimentRecord.from_json(json.loads(json.dumps(raw, default=float)), folder)
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
) -> ExperimentRecord:
    """Run every member of ``exp`` and write ``out/<name>/experiment.json`` (see
    :func:`run_experiments`); ``on_done(member, metrics)`` as each job finishes."""
    cb = None if on_done is None else (lambda e, m, metrics: on_done(m, metrics))
    return run_experiments(
        [exp], out, n_jobs=n_jobs, scheduler=scheduler, overrides=overrides, on_done=cb
    )[0]


def _read_record(folder: Path) -> dict[str, Any] | None:
    try:
        record = json.loads((folder / "experiment.json").read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _common_notes(metrics: list[dict[str, Any]]) -> list[str]:
    """The data notes every member shares (a member's own, e.g. its bias input, stay in its
    metrics)."""
    lists = [list(m.get("notes") or []) for m in metrics]
    return [n for n in lists[0] if all(n in other for other in lists[1:])] if lists else []


def comparability(exp: ExperimentSpec, metrics: dict[str, Any]) -> tuple[bool, str]:
    """Whether the run's data are the data of the published numbers, and why not."""
    wanted = exp.settings.get("dataset", "mnist")
    got = metrics.get("dataset")
    if metrics.get("is_sample"):
        return False, f"ran on the embedded sample ({got}), not on the full {wanted}"
    if got != wanted:
        return False, f"the published numbers are on {wanted}; this ran on {got}"
    return True, ""


def _record(
    exp: ExperimentSpec,
    jobs: list[Job],
    settings: list[dict[str, Any]],
    notes: list[str],
    folder: Path,
    previous: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The experiment record of finished ``jobs`` (extras written on the way, or taken from
    ``previous``, the record of the same jobs, when it chose the same member)."""
    members = []
    headline = []
    for k, m in enumerate(exp.members):
        runs = sorted((j for j in jobs if j.member == k), key=lambda j: j.repeat)
        first = runs[0].metrics
        entry: dict[str, Any] = {
            "label": m.label,
            "folder": m.folder,
            "overrides": m.overrides,
            "settings": settings[k],
            "metrics": first,
        }
        engine = {
            "init_from": m.init_from,
            "bias_input": m.bias_input,
            "validation": m.validation,
            "eval_offset": m.eval_offset,
        }
        entry["engine"] = {k2: v for k2, v in engine.items() if v != ENGINE_KEYS[k2]}
        summary = summarize([j.metrics for j in runs])
        if len(runs) > 1:
            entry["repeats"] = {
                "n": len(runs),
                "seeds": [int(j.settings["seed"]) for j in runs],
                "folders": [str(Path(j.folder).relative_to(folder)) for j in runs],
                "runs": [
                    {n: j.metrics[n] for n in SUMMARY_METRICS if n in j.metrics} for j in runs
                ],
                "summary": summary,
            }
        members.append(entry)
        headline.append({n: v["mean"] for n, v in summary.items()})
    best = choose(exp, headline)
    if (
        previous is not None
        and previous.get("chosen") == exp.members[best].label
        and previous.get("extras", []) == list(exp.extras)
        and (folder / "class_means.npz").is_file()
    ):
        info = {k: previous[k] for k in ("lbfgs",) if k in previous}
    else:
        info = write_extras(exp, folder, exp.members[best], settings[best])
    first = members[0]["metrics"]
    comparable, why = comparability(exp, first)
    return {
        "name": exp.name,
        "source": exp.source,
        "section": exp.section,
        "title": exp.title,
        "protocol": exp.protocol,
        "choices": exp.choices,
        "figures": list(exp.figures),
        "extras": list(exp.extras),
        "data": {
            "dataset": first.get("dataset"),
            "source": first.get("source"),
            "is_sample": first.get("is_sample"),
            "comparable": comparable,
            "not_comparable_because": why,
            "notes": notes + _common_notes([m["metrics"] for m in members]),
        },
        "members": members,
        "chosen": exp.members[best].label,
        "published": [{"member": "chosen"} | p for p in exp.published],
    } | info
