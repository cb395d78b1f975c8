"""Named experiments of the source documents, as TOML files, and the engine that runs them.

An experiment file (``digitlab/experiments/*.toml``) names its seed document and section,
describes the protocol, and lists its members: the runs that differ by a few settings
(a class pair, a lambda, shuffling on or off). Members run in parallel processes (joblib,
all local cores by default) or on a Dask cluster, each writing a run folder under
``runs/<experiment>/<member>/``; the engine then writes ``experiment.json`` (the contract
the report reads, see :mod:`digitlab.report`) and the data the figures need.

File layout::

    name = "ucsd-softmax"          # defaults to the file name
    seed = "000"
    section = "3.2-3.3"
    title = "..."
    protocol = "..."               # a few lines
    choices = "..."                # where the text leaves a choice, what we picked and why
    figures = ["curves", "table"]  # see FIGURES
    select = {metric = "val_acc", mode = "max"}   # which member is "chosen"
    extras = ["lbfgs", "gallery", "kaggle"]       # optional
    [settings]                     # digitlab.runner.Settings shared by all members
    [[members]]                    # label + overrides; or [grid] / [[grids]]: products of lists
    [[stages]]                     # optional: steps + overrides run one after the other,
                                   # checkpoint and resume in between (seed 003)
    [[published]]                  # what = "...", member = "chosen" | label, metric, value
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import shutil
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from digitlab.errors import ConfigError
from digitlab.report.rundata import FIGURE_KINDS, TABLE_KINDS

FIGURES = (*FIGURE_KINDS, *TABLE_KINDS)
EXTRAS = ("lbfgs", "gallery", "kaggle")
METRICS = (
    "train_acc",
    "val_acc",
    "test_acc",
    "train_loss",
    "val_loss",
    "test_loss",
    "best_epoch",
    "epochs",
    "weight_norm",
    "steps",
)
KEYS = {
    "name",
    "seed",
    "section",
    "title",
    "protocol",
    "choices",
    "figures",
    "select",
    "extras",
    "settings",
    "members",
    "grid",
    "grids",
    "stages",
    "published",
    "fallback_dataset",
}


def slug(text: str) -> str:
    """A folder name for a member label."""
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-") or "run"


@dataclass(frozen=True)
class Member:
    """One run of an experiment: a label and the settings it changes."""

    label: str
    overrides: dict[str, Any]

    @property
    def folder(self) -> str:
        return slug(self.label)


@dataclass(frozen=True)
class Experiment:
    """A validated experiment file."""

    name: str
    seed: str
    section: str
    title: str
    protocol: str
    choices: str
    figures: tuple[str, ...]
    select: dict[str, str]
    extras: tuple[str, ...]
    settings: dict[str, Any]
    members: tuple[Member, ...]
    stages: tuple[dict[str, Any], ...] = ()
    published: tuple[dict[str, Any], ...] = ()
    path: str = ""
    fallback_dataset: str | None = None

    def member_settings(self, member: Member, **changes: Any) -> dict[str, Any]:
        """The full, validated settings of one member as a dict."""
        from digitlab.runner import Settings

        values = self.settings | member.overrides | changes
        return Settings.from_dict(values, where=f"{self.name}/{member.label}").to_dict()


def _grid_members(grid: dict[str, Any], where: str) -> list[Member]:
    keys = list(grid)
    lists = []
    for k in keys:
        v = grid[k]
        if not isinstance(v, list) or not v:
            raise ConfigError(f"{where}: grid entry {k} must be a non-empty list")
        lists.append(v)
    return [
        Member(
            " ".join(f"{k}={v}" for k, v in zip(keys, combo, strict=True)),
            dict(zip(keys, combo, strict=True)),
        )
        for combo in itertools.product(*lists)
    ]


def parse_experiment(data: dict[str, Any], path: str = "<experiment>") -> Experiment:
    """Validate an experiment dict (from TOML) into an :class:`Experiment`."""
    unknown = sorted(set(data) - KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)}")
    name = data.get("name") or Path(path).stem
    for key in ("seed", "section", "title", "protocol"):
        if not isinstance(data.get(key), str) or not data[key].strip():
            raise ConfigError(f"{path}: '{key}' must be a non-empty string")
    figures = tuple(data.get("figures", ()))
    bad = [f for f in figures if f not in FIGURES]
    if bad:
        raise ConfigError(f"{path}: unknown figure(s) {bad}; known: {', '.join(FIGURES)}")
    extras = tuple(data.get("extras", ()))
    bad = [e for e in extras if e not in EXTRAS]
    if bad:
        raise ConfigError(f"{path}: unknown extra(s) {bad}; known: {', '.join(EXTRAS)}")
    select = {"metric": "val_acc", "mode": "max"} | dict(data.get("select", {}))
    if select["metric"] not in METRICS or select["mode"] not in ("max", "min"):
        raise ConfigError(f"{path}: select must name a metric ({', '.join(METRICS)}) and max/min")
    members: list[Member] = [
        Member(str(m["label"]), {k: v for k, v in m.items() if k != "label"})
        for m in data.get("members", [])
        if isinstance(m, dict) and "label" in m
    ]
    if len(members) != len(data.get("members", [])):
        raise ConfigError(f"{path}: every [[members]] entry needs a label")
    if "grid" in data:
        members += _grid_members(data["grid"], path)
    for grid in data.get("grids", []):
        members += _grid_members(grid, path)
    if not members:
        members = [Member("run", {})]
    labels = [m.label for m in members]
    if len(set(labels)) != len(labels) or len({m.folder for m in members}) != len(members):
        raise ConfigError(f"{path}: member labels must be distinct: {labels}")
    stages = tuple(dict(s) for s in data.get("stages", []))
    for i, st in enumerate(stages, 1):
        if not isinstance(st.get("steps"), int) or st["steps"] < 1:
            raise ConfigError(f"{path}: stage {i} needs steps >= 1")
    published = tuple(dict(p) for p in data.get("published", []))
    for p in published:
        if p.get("member", "chosen") not in ("chosen", *labels):
            raise ConfigError(f"{path}: published entry names unknown member {p.get('member')!r}")
        if p.get("metric") not in METRICS or not isinstance(p.get("value"), int | float):
            raise ConfigError(
                f"{path}: published entries need metric ({', '.join(METRICS)}) and value"
            )
        if not isinstance(p.get("what"), str):
            raise ConfigError(f"{path}: published entries need 'what'")
    exp = Experiment(
        name=name,
        seed=data["seed"],
        section=data["section"],
        title=data["title"],
        protocol=data["protocol"].strip(),
        choices=str(data.get("choices", "")).strip(),
        figures=figures,
        select=select,
        extras=extras,
        settings=dict(data.get("settings", {})),
        members=tuple(members),
        stages=stages,
        published=published,
        path=path,
        fallback_dataset=data.get("fallback_dataset"),
    )
    for m in exp.members:  # every member's settings must be valid
        exp.member_settings(m)
        for st in stages:
            exp.member_settings(m, **{k: v for k, v in st.items() if k != "steps"})
    return exp


def load_experiment(path: str | Path) -> Experiment:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such experiment file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    return parse_experiment(data, str(path))


def builtin_experiments() -> dict[str, Experiment]:
    """The experiments shipped with digitlab, by name, in seed order."""
    folder = resources.files("digitlab.experiments")
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".toml"):
            data = tomllib.loads(entry.read_text())
            found.append(parse_experiment(data, entry.name))
    found.sort(key=lambda e: (e.seed, e.name))
    return {e.name: e for e in found}


def select_experiments(names: list[str] | None) -> list[Experiment]:
    """Shipped experiments by name (or file path); all when ``names`` is empty."""
    known = builtin_experiments()
    if not names:
        return list(known.values())
    chosen = []
    for n in names:
        if n in known:
            chosen.append(known[n])
        elif n.endswith(".toml"):
            chosen.append(load_experiment(n))
        else:
            raise ConfigError(f"unknown experiment {n!r}; 'digitlab experiments' lists them")
    return chosen


# ------------------------------------------------------------------------------ running
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


def choose(exp: Experiment, results: list[dict[str, Any]]) -> int:
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
    exp: Experiment, folder: Path, chosen: Member, settings: dict[str, Any]
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
    exp: Experiment,
    out: str | Path = "runs",
    *,
    n_jobs: int = -1,
    scheduler: str | None = None,
    overrides: dict[str, Any] | None = None,
    on_done: Callable[[Member, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run every member of ``exp`` and write ``out/<name>/experiment.json``.

    Parameters
    ----------
    exp : Experiment
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
    dict
        The experiment record written to ``experiment.json``.
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
    record = {
        "name": exp.name,
        "seed": exp.seed,
        "section": exp.section,
        "title": exp.title,
        "protocol": exp.protocol,
        "choices": exp.choices,
        "figures": list(exp.figures),
        "data": {
            "dataset": first.get("dataset"),
            "source": first.get("source"),
            "is_sample": first.get("is_sample"),
            "notes": notes + first.get("notes", []),
        },
        "members": [
            {
                "label": m.label,
                "folder": m.folder,
                "overrides": m.overrides,
                "settings": s,
                "metrics": r,
            }
            for m, s, r in zip(exp.members, settings, results, strict=True)
        ],
        "chosen": exp.members[best].label,
        "published": [{"member": "chosen"} | p for p in exp.published],
        "seconds": time.perf_counter() - t0,
    } | info
    write_json(folder / "experiment.json", json.loads(json.dumps(record, default=float)))
    return record
