"""Experiment files: :class:`ExperimentSpec` and :class:`MemberSpec`, parsed and validated.

An experiment file (``digitlab/experiments/*.toml``) names its source document and section,
describes the protocol, and lists its members: the runs that differ by a few settings
(a class pair, a lambda, shuffling on or off). What a run of it wrote is an
:class:`~digitlab.report.rundata.ExperimentRecord`.

File layout::

    name = "my-experiment"         # defaults to the file name
    source = "000"                 # the source document
    section = "3.2-3.3"
    title = "..."
    protocol = "..."               # a few lines
    choices = "..."                # where the text leaves a choice, what we picked and why
    figures = ["curves", "table"]  # see digitlab.report.kinds
    select = {metric = "val_acc", mode = "max"}   # which member of a task is "chosen"
    readings = {primary = "as coded", alternatives = ["as written"], why = "..."}
    extras = ["lbfgs", "gallery", "kaggle"]       # optional
    repeats = 1                    # default number of seeds per member (see below)
    on_request = false             # true: only run when named (``digitlab reproduce NAME``)
    [settings]                     # digitlab.settings.Settings shared by all members
    [[members]]                    # label + overrides; or [grid] / [[grids]]: products of lists
    [[stages]]                     # optional: steps + overrides run one after the other,
                                   # checkpoint and resume in between
    [[published]]                  # what = "...", member = "chosen" | label, metric, value
                                   # (task = "..." with member = "chosen" when there are tasks)

Besides settings, a member (or a grid, for all its members) may give engine keys:

- ``repeats = N``: run the member with seeds ``seed, seed + 1, ..., seed + N - 1``; the record
  keeps every run's metrics and their mean, sd, min and max;
- ``init_from = "<label>"``: start from the final weights of another member (of the same
  repeat), with a fresh schedule: a *chain*, as when a notebook keeps updating one weight
  array over a loop of settings. A grid with ``chain = true`` chains its members in order;
  ``prefix = "..."`` puts a word before a grid's member labels (two grids over the same values);
- ``bias_input = x``: the value of the bias input (1 by default; code that scales its bias
  input with the pixels, dividing by 255, gives 1/255);
- ``validation = "test"``: validate on the test split (the training split is not cut);
- ``eval_offset = k``: evaluate after steps ``k, k + e, k + 2e, ...`` instead of
  ``e, 2e, ...`` (``e`` the evaluation interval; ``k = 1``: evaluate after the first step,
  as code that evaluates at the top of its step loop does).

Readings and tasks (what the report compares and counts):

- ``readings``: where the source can be read in more than one way (its text against the code
  that printed its numbers), the experiment names one ``primary`` reading, chosen by evidence
  (the code that printed the numbers, where the source has code) and says ``why`` in one
  sentence; ``alternatives`` lists the other readings it also runs. A member (or a grid) says
  ``reading = "..."``; a member without one is of the primary reading. A published entry is of
  its member's reading (``member = "chosen"``: the primary one). The report's summary counts
  only the primary reading's rows; the others are evidence, marked as alternative readings.
- ``task = "..."`` on a member (or grid): members of different tasks (other classes, other
  data) never compete. The *chosen* member of a task is the best, by ``select``, of the task's
  primary-reading members; every task has its own. When one member names a task, all must.
  A task of alternative-reading members only (an experiment that runs evidence for another
  reading) has no chosen member; its figures show the best of its members.

``on_request = true`` leaves a long experiment out of the default ``digitlab reproduce``
(every experiment): it runs only when named, and ``digitlab experiments`` marks it so.

``name`` must be a plain folder name (letters, digits, ``.``, ``_``, ``-``); member folders
are slugs of the labels. A run never writes outside ``<out>/<name>/``.
"""

from __future__ import annotations

import itertools
import re
import tomllib
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from digitlab.errors import ConfigError
from digitlab.report.rundata import ExperimentText

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
    "stop_epoch",
)
#: Member keys the engine handles (not training settings): name -> default.
ENGINE_KEYS: dict[str, Any] = {
    "init_from": None,
    "repeats": 1,
    "bias_input": 1.0,
    "validation": "split",
    "eval_offset": 0,
}
#: Grid-only keys: chain its members in order, label prefix.
GRID_KEYS = ("chain", "prefix")
#: Member (and grid) keys that say what a member stands for, not how it runs.
READING_KEYS = ("reading", "task")
#: Largest ``repeats`` accepted.
MAX_REPEATS = 100
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
KEYS = {
    "name",
    "source",
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
    "repeats",
    "on_request",
    "readings",
}


def slug(text: str) -> str:
    """A folder name for a member label: ``[a-z0-9.-]``, never starting with a dot."""
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-.") or "run"


def check_name(name: Any, where: str) -> str:
    """An experiment name usable as one folder under ``--out``, or ConfigError.

    Absolute paths, separators, ``..`` and names starting with a dot are refused.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        raise ConfigError(
            f"{where}: name={name!r} must be a plain folder name "
            "(letters, digits, '.', '_', '-'; no path separators or '..')"
        )
    return name


@dataclass(frozen=True)
class MemberSpec:
    """One run of an experiment: a label, the settings it changes and its engine keys.

    ``init_from`` names the member whose final weights this one starts from (None: its own
    initialisation); ``repeats`` is the number of seeds; ``bias_input`` the bias input value;
    ``validation`` is ``"split"`` (the settings' hold-out) or ``"test"``; ``eval_offset`` shifts
    the evaluation steps; ``reading`` is the reading of the source the member follows (the
    experiment's primary one unless it says otherwise; ``""``: the experiment declares none) and
    ``task`` the group of members it competes with for "chosen" (``""``: one task).
    """

    label: str
    overrides: dict[str, Any]
    init_from: str | None = None
    repeats: int = 1
    bias_input: float = 1.0
    validation: str = "split"
    eval_offset: int = 0
    reading: str = ""
    task: str = ""

    @property
    def folder(self) -> str:
        return slug(self.label)


@dataclass(frozen=True)
class ExperimentSpec(ExperimentText):
    """A validated experiment file: its text (:class:`ExperimentText`) and what to run."""

    figures: tuple[str, ...]
    select: dict[str, str]
    extras: tuple[str, ...]
    settings: dict[str, Any]
    members: tuple[MemberSpec, ...]
    stages: tuple[dict[str, Any], ...] = ()
    published: tuple[dict[str, Any], ...] = ()
    path: str = ""
    fallback_dataset: str | None = None
    on_request: bool = False
    #: ``{"primary": name, "alternatives": [names], "why": text}``; empty: one unnamed reading
    readings: dict[str, Any] = field(default_factory=dict)

    @property
    def tasks(self) -> list[str]:
        """The members' tasks in order of first appearance (``[""]``: one unnamed task)."""
        return list(dict.fromkeys(m.task for m in self.members))

    def task_members(self, task: str) -> list[int]:
        """Indices of the members of ``task``."""
        return [i for i, m in enumerate(self.members) if m.task == task]

    def competitors(self, task: str) -> list[int]:
        """Indices of the members that compete for "chosen" in ``task``: its members of the
        primary reading."""
        primary = self.readings.get("primary", "")
        return [i for i in self.task_members(task) if self.members[i].reading == primary]

    def member_settings(self, member: MemberSpec, **changes: Any) -> dict[str, Any]:
        """The full, validated settings of one member as a dict."""
        from digitlab.settings import Settings

        values = self.settings | member.overrides | changes
        return Settings.from_dict(values, where=f"{self.name}/{member.label}").to_dict()


def _engine_keys(entry: dict[str, Any], where: str) -> dict[str, Any]:
    """The engine keys of a member or grid entry, checked."""
    out = {k: entry[k] for k in ENGINE_KEYS if k in entry}
    if "init_from" in out and not isinstance(out["init_from"], str):
        raise ConfigError(f"{where}: init_from must name a member label")
    rep = out.get("repeats")
    if rep is not None and (
        isinstance(rep, bool) or not isinstance(rep, int) or not 1 <= rep <= MAX_REPEATS
    ):
        raise ConfigError(f"{where}: repeats must be a whole number in 1..{MAX_REPEATS}")
    if "bias_input" in out:
        b = out["bias_input"]
        if isinstance(b, bool) or not isinstance(b, int | float) or not 0 < b <= 1:
            raise ConfigError(f"{where}: bias_input must be a number in (0, 1]")
        out["bias_input"] = float(b)
    if out.get("validation", "split") not in ("split", "test"):
        raise ConfigError(f"{where}: validation must be 'split' or 'test'")
    off = out.get("eval_offset", 0)
    if isinstance(off, bool) or not isinstance(off, int) or off < 0:
        raise ConfigError(f"{where}: eval_offset must be a whole number >= 0")
    return out


def _reading_keys(entry: dict[str, Any], where: str) -> dict[str, str]:
    """The ``reading`` and ``task`` of a member or grid entry, checked (non-empty strings)."""
    out = {k: entry[k] for k in READING_KEYS if k in entry}
    for k, v in out.items():
        if not isinstance(v, str) or not v.strip():
            raise ConfigError(f"{where}: {k} must be a non-empty string")
    return out


def _grid_members(grid: dict[str, Any], where: str, default: dict[str, Any]) -> list[MemberSpec]:
    engine = default | _engine_keys(grid, where) | _reading_keys(grid, where)
    if "init_from" in engine:
        raise ConfigError(f"{where}: a grid chains with chain = true, not init_from")
    chain = grid.get("chain", False)
    prefix = grid.get("prefix", "")
    if not isinstance(chain, bool) or not isinstance(prefix, str):
        raise ConfigError(f"{where}: grid chain must be true/false and prefix a string")
    keys = [k for k in grid if k not in (*ENGINE_KEYS, *GRID_KEYS, *READING_KEYS)]
    lists = []
    for k in keys:
        v = grid[k]
        if not isinstance(v, list) or not v:
            raise ConfigError(f"{where}: grid entry {k} must be a non-empty list")
        lists.append(v)
    members: list[MemberSpec] = []
    for combo in itertools.product(*lists):
        label = " ".join(f"{k}={v}" for k, v in zip(keys, combo, strict=True))
        label = f"{prefix} {label}".strip()
        init = members[-1].label if chain and members else None
        members.append(
            MemberSpec(label, dict(zip(keys, combo, strict=True)), **(engine | {"init_from": init}))
        )
    return members


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
    default = {"repeats": data.get("repeats", 1)}
    _engine_keys(default, path)
    members: list[MemberSpec] = [
        MemberSpec(
            str(m["label"]),
            {k: v for k, v in m.items() if k not in ("label", *ENGINE_KEYS, *READING_KEYS)},
            **(default | _engine_keys(m, f"{path}: member {m['label']!r}")),
            **_reading_keys(m, f"{path}: member {m['label']!r}"),
        )
        for m in data.get("members", [])
        if isinstance(m, dict) and "label" in m
    ]
    if len(members) != len(data.get("members", [])):
        raise ConfigError(f"{path}: every [[members]] entry needs a label")
    for grid in ([data["grid"]] if "grid" in data else []) + list(data.get("grids", [])):
        members += _grid_members(grid, path, default)
    if not members:
        members = [MemberSpec("run", {}, **default)]
    labels = [m.label for m in members]
    if len(set(labels)) != len(labels) or len({m.folder for m in members}) != len(members):
        raise ConfigError(f"{path}: member labels must be distinct: {labels}")
    _check_chains(members, path)
    return members


def _check_chains(members: list[MemberSpec], path: str) -> None:
    """Every ``init_from`` names an earlier member with the same number of repeats."""
    labels = [m.label for m in members]
    for i, m in enumerate(members):
        if m.init_from is None:
            continue
        if m.init_from not in labels[:i]:
            raise ConfigError(
                f"{path}: member {m.label!r} starts from {m.init_from!r}, which is not an "
                "earlier member"
            )
        if members[labels.index(m.init_from)].repeats != m.repeats:
            raise ConfigError(
                f"{path}: member {m.label!r} and {m.init_from!r} it starts from need the same "
                "repeats"
            )


def _readings(data: dict[str, Any], path: str) -> dict[str, Any]:
    """The ``readings`` table checked: a primary reading, its reason, distinct alternatives."""
    if "readings" not in data:
        return {}
    r = data["readings"]
    alternatives = r.get("alternatives", []) if isinstance(r, dict) else None
    ok = (
        isinstance(r, dict)
        and set(r) <= {"primary", "alternatives", "why"}
        and all(isinstance(r.get(k), str) and r[k].strip() for k in ("primary", "why"))
        and isinstance(alternatives, list)
        and all(isinstance(a, str) and a.strip() for a in alternatives)
        and len({r["primary"], *alternatives}) == 1 + len(alternatives)
    )
    if not ok:
        raise ConfigError(
            f"{path}: readings must give one primary reading and why (strings) and optional "
            "distinct alternatives (a list of other names)"
        )
    return {"primary": r["primary"], "alternatives": list(alternatives), "why": r["why"].strip()}


def _with_readings(
    members: list[MemberSpec], readings: dict[str, Any], path: str
) -> list[MemberSpec]:
    """``members`` with their reading (the primary one unless given) and tasks checked."""
    primary = readings.get("primary", "")
    known = [primary, *readings.get("alternatives", [])]
    out = [m if m.reading else replace(m, reading=primary) for m in members]
    for m in out:
        if m.reading not in known:
            raise ConfigError(
                f"{path}: member {m.label!r} has reading {m.reading!r}, which [readings] does not "
                "declare" + (f" ({', '.join(known)})" if primary else "")
            )
    tasks = {m.task for m in out}
    if "" in tasks and len(tasks) > 1:
        raise ConfigError(f"{path}: when one member names a task, every member must")
    return out


def _resolve_entry(p: dict[str, Any], exp: ExperimentSpec, path: str) -> dict[str, Any]:
    """A published entry with its ``member``, ``reading`` and ``task`` resolved: a named
    member's own, or for ``member = "chosen"`` the primary reading and the entry's task."""
    label = p.get("member", "chosen")
    tasks = exp.tasks
    if label == "chosen":
        task = p.get("task", tasks[0] if len(tasks) == 1 else None)
        if task not in tasks:
            raise ConfigError(
                f"{path}: a published entry of the chosen member needs task = one of {tasks}"
            )
        if not exp.competitors(task):
            raise ConfigError(
                f"{path}: task {task or '(the only one)'!r} has no member of the primary reading "
                f"{exp.readings.get('primary')!r}, so none is chosen"
            )
        reading = exp.readings.get("primary", "")
    else:
        by_label = {m.label: m for m in exp.members}
        if label not in by_label:
            raise ConfigError(f"{path}: published entry names unknown member {label!r}")
        task, reading = by_label[label].task, by_label[label].reading
    for key, value in (("task", task), ("reading", reading)):
        if p.get(key, value) != value:
            raise ConfigError(
                f"{path}: published entry {p.get('what')!r} says {key} {p[key]!r}, but its member "
                f"{label!r} is of {key} {value!r}"
            )
    return p | {"member": label, "reading": reading, "task": task}


def _published(data: dict[str, Any], path: str) -> tuple[dict[str, Any], ...]:
    published = tuple(dict(p) for p in data.get("published", []))
    for p in published:
        if p.get("metric") not in METRICS or not isinstance(p.get("value"), int | float):
            raise ConfigError(
                f"{path}: published entries need metric ({', '.join(METRICS)}) and value"
            )
        if not isinstance(p.get("what"), str):
            raise ConfigError(f"{path}: published entries need 'what'")
    return published


def _texts(data: dict[str, Any], path: str) -> dict[str, Any]:
    """``data`` with its keys and text fields checked."""
    unknown = sorted(set(data) - KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)}")
    for key in ("source", "section", "title", "protocol"):
        if not isinstance(data.get(key), str) or not data[key].strip():
            raise ConfigError(f"{path}: '{key}' must be a non-empty string")
    return data


def parse_experiment(data: dict[str, Any], path: str = "<experiment>") -> ExperimentSpec:
    """Validate an experiment dict (from TOML) into an :class:`ExperimentSpec`."""
    data = _texts(data, path)
    name = check_name(data.get("name") or Path(path).stem, path)
    from digitlab.report.kinds import listed_kinds  # the registry of figure kinds

    figures = _names(data, "figures", listed_kinds(), path)
    extras = _names(data, "extras", EXTRAS, path)
    select = {"metric": "val_acc", "mode": "max"} | dict(data.get("select", {}))
    if select["metric"] not in METRICS or select["mode"] not in ("max", "min"):
        raise ConfigError(f"{path}: select must name a metric ({', '.join(METRICS)}) and max/min")
    readings = _readings(data, path)
    members = _with_readings(_members(data, path), readings, path)
    stages = tuple(dict(s) for s in data.get("stages", []))
    for i, st in enumerate(stages, 1):
        if not isinstance(st.get("steps"), int) or st["steps"] < 1:
            raise ConfigError(f"{path}: stage {i} needs steps >= 1")
    published = _published(data, path)
    on_request = data.get("on_request", False)
    if not isinstance(on_request, bool):
        raise ConfigError(f"{path}: on_request must be true or false, got {on_request!r}")
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
        on_request=on_request,
        readings=readings,
    )
    exp = replace(exp, published=tuple(_resolve_entry(p, exp, path) for p in published))
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
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply") from None
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
    """Shipped experiments by name (or file path); when ``names`` is empty, all but those
    marked ``on_request`` (which run only when named)."""
    known = builtin_experiments()
    if not names:
        return [e for e in known.values() if not e.on_request]
    chosen = []
    for n in names:
        if n in known:
            chosen.append(known[n])
        elif n.endswith(".toml"):
            chosen.append(load_experiment_file(n))
        else:
            raise ConfigError(f"unknown experiment {n!r}; 'digitlab experiments' lists them")
    return chosen
