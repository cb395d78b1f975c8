"""Experiment files: :class:`ExperimentSpec` and :class:`MemberSpec`, parsed and validated.

An experiment file (``digitlab/experiments/*.toml``) names its source document and section,
describes the protocol, and lists its members: the runs that differ by a few settings
(a class pair, a lambda, shuffling on or off). What a run of it wrote is an
:class:`~digitlab.report.rundata.ExperimentRecord`.

File layout::

    name = "ucsd-softmax"          # defaults to the file name
    source = "000"                 # the source document (old files: ``seed``)
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
                                   # checkpoint and resume in between (source 003)
    [[published]]                  # what = "...", member = "chosen" | label, metric, value
"""

from __future__ import annotations

import itertools
import re
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

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
    "source",
    "seed",  # the old name of "source"
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
class MemberSpec:
    """One run of an experiment: a label and the settings it changes."""

    label: str
    overrides: dict[str, Any]

    @property
    def folder(self) -> str:
        return slug(self.label)


@dataclass(frozen=True)
class ExperimentSpec:
    """A validated experiment file."""

    name: str
    source: str
    section: str
    title: str
    protocol: str
    choices: str
    figures: tuple[str, ...]
    select: dict[str, str]
    extras: tuple[str, ...]
    settings: dict[str, Any]
    members: tuple[MemberSpec, ...]
    stages: tuple[dict[str, Any], ...] = ()
    published: tuple[dict[str, Any], ...] = ()
    path: str = ""
    fallback_dataset: str | None = None

    def member_settings(self, member: MemberSpec, **changes: Any) -> dict[str, Any]:
        """The full, validated settings of one member as a dict."""
        from digitlab.runner import Settings

        values = self.settings | member.overrides | changes
        return Settings.from_dict(values, where=f"{self.name}/{member.label}").to_dict()


def _grid_members(grid: dict[str, Any], where: str) -> list[MemberSpec]:
    keys = list(grid)
    lists = []
    for k in keys:
        v = grid[k]
        if not isinstance(v, list) or not v:
            raise ConfigError(f"{where}: grid entry {k} must be a non-empty list")
        lists.append(v)
    return [
        MemberSpec(
            " ".join(f"{k}={v}" for k, v in zip(keys, combo, strict=True)),
            dict(zip(keys, combo, strict=True)),
        )
        for combo in itertools.product(*lists)
    ]


def _names(data: dict[str, Any], key: str, known: tuple[str, ...], path: str) -> tuple[str, ...]:
    """The list ``data[key]``, every entry one of ``known``."""
    names = tuple(data.get(key, ()))
    bad = [n for n in names if n not in known]
    if bad:
        what = "figure(s)" if key == "figures" else "extra(s)"
        raise ConfigError(f"{path}: unknown {what} {bad}; known: {', '.join(known)}")
    return names


def _members(data: dict[str, Any], path: str) -> list[MemberSpec]:
    """Listed members, then grid products; one member "run" when there are none."""
    members: list[MemberSpec] = [
        MemberSpec(str(m["label"]), {k: v for k, v in m.items() if k != "label"})
        for m in data.get("members", [])
        if isinstance(m, dict) and "label" in m
    ]
    if len(members) != len(data.get("members", [])):
        raise ConfigError(f"{path}: every [[members]] entry needs a label")
    for grid in ([data["grid"]] if "grid" in data else []) + list(data.get("grids", [])):
        members += _grid_members(grid, path)
    if not members:
        members = [MemberSpec("run", {})]
    labels = [m.label for m in members]
    if len(set(labels)) != len(labels) or len({m.folder for m in members}) != len(members):
        raise ConfigError(f"{path}: member labels must be distinct: {labels}")
    return members


def _published(data: dict[str, Any], labels: list[str], path: str) -> tuple[dict[str, Any], ...]:
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
    return published


def _texts(data: dict[str, Any], path: str) -> dict[str, Any]:
    """``data`` with the old key ``seed`` renamed ``source``; the text fields checked."""
    unknown = sorted(set(data) - KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)}")
    if "seed" in data:  # the old name of "source"
        if "source" in data:
            raise ConfigError(f"{path}: 'seed' is the old name of 'source'; give only 'source'")
        data = {k: v for k, v in data.items() if k != "seed"} | {"source": data["seed"]}
    for key in ("source", "section", "title", "protocol"):
        if not isinstance(data.get(key), str) or not data[key].strip():
            raise ConfigError(f"{path}: '{key}' must be a non-empty string")
    return data


def parse_experiment(data: dict[str, Any], path: str = "<experiment>") -> ExperimentSpec:
    """Validate an experiment dict (from TOML) into an :class:`ExperimentSpec`."""
    data = _texts(data, path)
    name = data.get("name") or Path(path).stem
    figures = _names(data, "figures", FIGURES, path)
    extras = _names(data, "extras", EXTRAS, path)
    select = {"metric": "val_acc", "mode": "max"} | dict(data.get("select", {}))
    if select["metric"] not in METRICS or select["mode"] not in ("max", "min"):
        raise ConfigError(f"{path}: select must name a metric ({', '.join(METRICS)}) and max/min")
    members = _members(data, path)
    stages = tuple(dict(s) for s in data.get("stages", []))
    for i, st in enumerate(stages, 1):
        if not isinstance(st.get("steps"), int) or st["steps"] < 1:
            raise ConfigError(f"{path}: stage {i} needs steps >= 1")
    published = _published(data, [m.label for m in members], path)
    exp = ExperimentSpec(
        name=name,
        source=data["source"],
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


def load_experiment_file(path: str | Path) -> ExperimentSpec:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such experiment file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    return parse_experiment(data, str(path))


def builtin_experiments() -> dict[str, ExperimentSpec]:
    """The experiments shipped with digitlab, by name, in source order."""
    folder = resources.files("digitlab.experiments")
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".toml"):
            data = tomllib.loads(entry.read_text())
            found.append(parse_experiment(data, entry.name))
    found.sort(key=lambda e: (e.source, e.name))
    return {e.name: e for e in found}


def select_experiments(names: list[str] | None) -> list[ExperimentSpec]:
    """Shipped experiments by name (or file path); all when ``names`` is empty."""
    known = builtin_experiments()
    if not names:
        return list(known.values())
    chosen = []
    for n in names:
        if n in known:
            chosen.append(known[n])
        elif n.endswith(".toml"):
            chosen.append(load_experiment_file(n))
        else:
            raise ConfigError(f"unknown experiment {n!r}; 'digitlab experiments' lists them")
    return chosen
