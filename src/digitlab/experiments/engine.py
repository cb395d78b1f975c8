"""The experiment engine: run the members of an :class:`ExperimentSpec` and record them.

Members run in parallel processes (joblib, all local cores by default) or on a Dask cluster,
each writing a run folder under ``runs/<experiment>/<member>/``; the engine then writes
``experiment.json`` (the contract the report reads, see :mod:`digitlab.report`) and the data
the figures need.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from digitlab.errors import ConfigError
from digitlab.experiments.spec import ExperimentSpec, MemberSpec
from digitlab.report.rundata import ExperimentRecord, MemberRecord


def run_member(
    settings: dict[str, Any], stages: list[dict[str, Any]], folder: str
) -> dict[str, Any]:
    """Run one member (all its stages) into ``folder``; return its final metrics.

    A top-level function so that joblib and Dask can send it to worker processes.
    """
    from digitlab.checkpoint import load_checkpoint
    from digitlab.runner import Settings, prepare_data, run, write_json

    base = Settings.from_dict(settings)
    data = prepare_data(base)
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    if not stages:
        return run(base, folder=out, data=data).metrics
    resume = None
    total = 0
    stage_dir = out
    for i, stage in enumerate(stages, 1):
        total += int(stage["steps"])
        st = base.replace(
            **{k: v for k, v in stage.items() if k != "steps"}, steps=total, epochs=None
        )
        stage_dir = out / f"stage-{i}"
        stage_dir.mkdir(exist_ok=True)
        result = run(st, folder=stage_dir, data=data, resume_from=resume)
        resume = load_checkpoint(stage_dir / "checkpoint.npz")
    for name in ("config.toml", "history.csv", "checkpoint.npz"):
        shutil.copy2(stage_dir / name, out / name)
    metrics = result.metrics | {"stages": len(stages)}
    write_json(out / "metrics.json", metrics)
    return metrics


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
    try:
        with joblib.parallel_config(backend="dask"):
            yield
    finally:
        client.close()


def run_members(
    jobs: list[tuple[dict[str, Any], list[dict[str, Any]], str]],
    n_jobs: int = -1,
    scheduler: str | None = None,
    on_done: Callable[[int, dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run member jobs in parallel; ``on_done(i, metrics)`` as each finishes (any order)."""
    import joblib

    results: list[dict[str, Any]] = [{}] * len(jobs)
    with _backend(scheduler):
        parallel = joblib.Parallel(n_jobs=n_jobs, return_as="generator_unordered")
        tagged = parallel(joblib.delayed(_tagged)(i, *job) for i, job in enumerate(jobs))
        for i, metrics in tagged:
            results[i] = metrics
            if on_done is not None:
                on_done(i, metrics)
    return results


def _tagged(
    i: int, settings: dict[str, Any], stages: list[dict[str, Any]], folder: str
) -> tuple[int, dict[str, Any]]:
    return i, run_member(settings, stages, folder)


def choose(exp: ExperimentSpec, results: list[dict[str, Any]]) -> int:
    """Index of the member the experiment's select rule picks (first among ties)."""
    values = [r.get(exp.select["metric"], np.nan) for r in results]
    values = [
        (-np.inf if exp.select["mode"] == "max" else np.inf) if v is None or np.isnan(v) else v
        for v in values
    ]
    return int(np.argmax(values) if exp.select["mode"] == "max" else np.argmin(values))


def _prepare_folder(folder: Path) -> None:
    if folder.exists():
        if not (folder / "experiment.json").exists() and any(folder.iterdir()):
            raise ConfigError(f"{folder} exists and is not an experiment folder; move it away")
        shutil.rmtree(folder)
    folder.mkdir(parents=True)


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
    if "lbfgs" in exp.extras and model.kind in ("logistic", "softmax") and not model.l1:
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


def run_experiment(
    exp: ExperimentSpec,
    out: str | Path = "runs",
    *,
    n_jobs: int = -1,
    scheduler: str | None = None,
    overrides: dict[str, Any] | None = None,
    on_done: Callable[[MemberSpec, dict[str, Any]], None] | None = None,
) -> ExperimentRecord:
    """Run every member of ``exp`` and write ``out/<name>/experiment.json``.

    Parameters
    ----------
    exp : ExperimentSpec
    out : path-like
        Runs root.
    n_jobs : int
        Parallel worker processes (-1: all cores).
    scheduler : str, optional
        Address of a Dask distributed scheduler to run the members on.
    overrides : dict, optional
        Settings applied to every member (e.g. ``data_root``, ``dataset``).
    on_done : callable, optional
        ``on_done(member, metrics)`` as each member finishes.

    Returns
    -------
    ExperimentRecord
        The record written to ``experiment.json``.
    """
    from digitlab.data import locate
    from digitlab.errors import DatasetNotFoundError
    from digitlab.runner import write_json

    t0 = time.perf_counter()
    folder = Path(out) / exp.name
    extra = dict(overrides or {})
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
    _prepare_folder(folder)
    jobs = [
        (s, [dict(st) for st in exp.stages], str(folder / m.folder))
        for s, m in zip(settings, exp.members, strict=True)
    ]
    done = None if on_done is None else (lambda i, metrics: on_done(exp.members[i], metrics))
    results = run_members(jobs, n_jobs=n_jobs, scheduler=scheduler, on_done=done)
    best = choose(exp, results)
    info = write_extras(exp, folder, exp.members[best], settings[best])
    first = results[0]
    record = ExperimentRecord(
        folder=folder,
        name=exp.name,
        source=exp.source,
        section=exp.section,
        title=exp.title,
        protocol=exp.protocol,
        choices=exp.choices,
        figures=list(exp.figures),
        data={
            "dataset": first.get("dataset"),
            "source": first.get("source"),
            "is_sample": first.get("is_sample"),
            "notes": notes + first.get("notes", []),
        },
        members=[
            MemberRecord(m.label, folder / m.folder, m.overrides, s, r)
            for m, s, r in zip(exp.members, settings, results, strict=True)
        ],
        chosen=exp.members[best].label,
        published=[{"member": "chosen"} | p for p in exp.published],
        seconds=time.perf_counter() - t0,
        lbfgs=info.get("lbfgs"),
    )
    write_json(folder / "experiment.json", record.to_json())
    return record
