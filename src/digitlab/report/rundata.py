"""Read what the experiment engine saved: ``experiment.json``, run folders and extra files.

Nothing here trains or evaluates a model; a member's weights are read from its checkpoint.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from digitlab.errors import DigitlabError, FileReadError, ReportError
from digitlab.runfiles import (
    CHECKPOINT,
    CONFIG,
    HISTORY,
    METRICS,
    check_metrics,
    find_checkpoint,
    load_run_checkpoint,
    read_config,
    read_history,
    read_json,
    read_metrics,
    run_class_count,
)


def _read(reader: Callable[..., Any], path: Path, *args: Any) -> Any:
    """``reader(path, *args)`` (a :mod:`digitlab.runfiles` reader), its errors as ReportError."""
    try:
        return reader(path, *args)
    except FileNotFoundError:
        raise ReportError(f"{path}: no such file") from None
    except FileReadError as exc:
        raise ReportError(str(exc)) from None


def _string(raw: dict[str, Any], key: str, where: str) -> str:
    value = raw.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ReportError(f"{where}: {key!r} must be a string")
    return value


def _list(raw: dict[str, Any], key: str, where: str) -> list[Any]:
    value = raw.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise ReportError(f"{where}: {key!r} must be a list")
    return value


def _object(raw: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = raw.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ReportError(f"{where}: {key!r} must be an object")
    return value


def _stage_number(path: Path) -> int:
    match = re.fullmatch(r"stage-(\d+)", path.name)
    return int(match.group(1)) if match else -1


@dataclass
class WeightImages:
    """A model's weights as images.

    ``images`` is float (m, h, w); ``titles`` names each image; ``kind`` is the model kind;
    ``columns`` what the weight columns are (the model class's ``image_columns``: ``"pair"``,
    ``"class"`` or ``"unit"``).
    """

    kind: str
    images: np.ndarray
    titles: list[str]
    columns: str = "class"


@dataclass
class MemberRecord:
    """One run of an experiment: its label, folder, settings and final metrics."""

    label: str
    folder: Path
    overrides: dict[str, Any]
    settings: dict[str, Any]
    metrics: dict[str, Any]
    #: runs over several seeds: ``n``, ``seeds``, ``folders``, ``runs`` (each run's scalar
    #: metrics) and ``summary`` (metric -> mean, sd, min, max, n); None for one run
    repeats: dict[str, Any] | None = None
    #: the experiment engine's keys that differ from their defaults (``init_from``, ...)
    engine: dict[str, Any] = field(default_factory=dict)
    #: the reading of the source the member follows (``""``: the experiment's primary one)
    reading: str = ""
    #: the task whose members compete with it for "chosen" (``""``: the experiment's only one)
    task: str = ""

    def to_json(self) -> dict[str, Any]:
        """The member's entry in ``experiment.json`` (its folder relative to the experiment)."""
        entry = {
            "label": self.label,
            "folder": self.folder.name,
            "overrides": self.overrides,
            "settings": self.settings,
            "metrics": self.metrics,
        }
        if self.engine:
            entry["engine"] = self.engine
        for key in ("reading", "task"):  # absent in records of one reading and one task
            if getattr(self, key):
                entry[key] = getattr(self, key)
        if self.repeats is not None:
            entry["repeats"] = self.repeats
        return entry

    @classmethod
    def from_json(cls, entry: Any, experiment_folder: Path, where: str = "") -> MemberRecord:
        """A member entry of ``experiment.json``; :class:`ReportError` if it is malformed."""
        where = where or f"{experiment_folder / 'experiment.json'}: member"
        if not isinstance(entry, dict):
            raise ReportError(f"{where} must be an object")
        label, sub = entry.get("label"), entry.get("folder")
        if not isinstance(label, str) or not isinstance(sub, str):
            raise ReportError(f"{where} needs a label and a folder (strings)")
        if sub in ("", ".", "..") or Path(sub).name != sub or "\\" in sub:
            raise ReportError(f"{where}: folder {sub!r} must be a plain folder name")
        parts = {k: _object(entry, k, where) for k in ("overrides", "settings", "metrics")}
        try:
            check_metrics(parts["metrics"], where, run_class_count(parts["settings"]))
        except FileReadError as exc:
            raise ReportError(str(exc)) from None
        repeats = _object(entry, "repeats", where) if entry.get("repeats") is not None else None
        engine = _object(entry, "engine", where) if entry.get("engine") is not None else {}
        names = {k: _string(entry, k, where) for k in ("reading", "task")}
        return cls(label, experiment_folder / sub, **parts, repeats=repeats, engine=engine, **names)

    # ------------------------------------------------------------------ training record
    @cached_property
    def stages(self) -> list[Path]:
        """Stage folders ``stage-1``, ``stage-2``, ... in order (empty for one-stage runs)."""
        found = [p for p in self.folder.glob("stage-*") if p.is_dir() and _stage_number(p) > 0]
        return sorted(found, key=_stage_number)

    @cached_property
    def _stage_histories(self) -> list[dict[str, np.ndarray]]:
        return [_read(read_history, f / HISTORY) for f in self.stages or [self.folder]]

    @cached_property
    def history(self) -> dict[str, np.ndarray]:
        """Evaluation history, each column (n_evals,), stages concatenated by global step.

        A resumed stage's ``history.csv`` may repeat the records it restored; each step is
        kept once (from the latest stage).
        """
        parts = self._stage_histories
        keys: dict[str, None] = {}
        for p in parts:
            keys.update(dict.fromkeys(p))
        sizes = [len(next(iter(p.values()), ())) for p in parts]
        cols = {
            k: np.concatenate(
                [p.get(k, np.full(n, np.nan)) for p, n in zip(parts, sizes, strict=True)]
            )
            for k in keys
        }
        if len(parts) > 1 and "step" in cols:
            steps = cols["step"]
            _, last = np.unique(steps[::-1], return_index=True)  # last occurrence of each step
            keep = np.sort(len(steps) - 1 - last)
            keep = keep[np.argsort(steps[keep], kind="stable")]
            cols = {k: v[keep] for k, v in cols.items()}
        return cols

    @cached_property
    def stage_starts(self) -> list[float]:
        """x value (epoch, else step) at which each stage after the first begins."""
        key = self.x_axis()[1]
        ends = []
        for p in self._stage_histories[:-1]:
            if len(p.get(key, ())) and "step" in p:
                ends.append(float(p[key][int(np.nanargmax(p["step"]))]))
        return ends

    def x_axis(self) -> tuple[np.ndarray, str]:
        """``(values, label)`` of the x axis of curves: the epoch (or the step if absent)."""
        h = self.history
        if "epoch" in h and np.isfinite(h["epoch"]).all():
            return h["epoch"], "epoch"
        return h["step"], "step"

    # ------------------------------------------------------------------ penalty
    @property
    def penalty(self) -> tuple[str, float]:
        """``(type, lambda)``: type is ``"L1"``, ``"L2"``, ``"L1+L2"`` or ``"none"``."""
        l1 = float(self.settings.get("l1") or 0.0)
        l2 = float(self.settings.get("l2") or 0.0)
        if l1 > 0 and l2 > 0:
            return "L1+L2", l1
        if l1 > 0:
            return "L1", l1
        if l2 > 0:
            return "L2", l2
        return "none", 0.0

    # ------------------------------------------------------------------ files
    @cached_property
    def lbfgs(self) -> dict[str, Any] | None:
        """The member's ``lbfgs.json`` or None."""
        path = self.folder / "lbfgs.json"
        return _read(read_json, path) if path.is_file() else None

    @cached_property
    def checkpoint(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """``(params, meta)`` of the member's final checkpoint (read, never trained)."""
        path = find_checkpoint(self.folder)
        if path is None:
            raise ReportError(f"{self.folder / CHECKPOINT}: no such file")
        try:
            model, _prep, meta = load_run_checkpoint(path)
        except DigitlabError as exc:
            raise ReportError(str(exc)) from None
        meta = dict(meta)
        meta["kind"] = model.kind
        return dict(model.params), meta

    @property
    def classes(self) -> list[str]:
        """Class names (label order) from the checkpoint."""
        _, meta = self.checkpoint
        return [str(c) for c in meta.get("extra", {}).get("classes", [])]

    def weight_images(self, max_units: int = 25) -> WeightImages:
        """The model's first-layer weights as images.

        Logistic: one image titled ``"positive vs negative"``; softmax: one per class;
        MLP: the first ``max_units`` hidden units of ``W1``. A bias row (d = h*w + 1) is dropped.
        """
        from digitlab.models import MODELS

        params, meta = self.checkpoint
        kind = meta["kind"]
        model_class = MODELS.get(kind)
        if model_class is None or model_class.image_weights is None:
            raise ReportError(f"{self.folder}: a {kind!r} model has no weights to draw as images")
        columns = model_class.image_columns
        shape = tuple(meta.get("extra", {}).get("image_shape") or (28, 28))
        W = params[model_class.image_weights]
        d = shape[0] * shape[1]
        if W.shape[0] == d + 1:
            W = W[:d]
        if W.shape[0] != d:
            raise ReportError(
                f"{self.folder}: weights have {W.shape[0]} rows, images have {d} pixels"
            )
        W = np.asarray(W, dtype=np.float64)
        classes = self.classes
        if columns == "pair":
            neg, pos = (classes + ["0", "1"][len(classes) :])[:2]
            images, titles = W[:, :1].T.reshape(1, *shape), [f"{pos} vs {neg}"]
        elif columns == "unit":
            m = min(max_units, W.shape[1])
            images, titles = W[:, :m].T.reshape(m, *shape), [f"unit {i + 1}" for i in range(m)]
        else:
            names = classes if len(classes) == W.shape[1] else [str(i) for i in range(W.shape[1])]
            images, titles = W.T.reshape(W.shape[1], *shape), names
        return WeightImages(kind, images, titles, columns)


@dataclass(frozen=True, kw_only=True)
class ExperimentText:
    """What an experiment says about itself: its name, the source document it reproduces,
    the section, a title, the protocol and the choices made where the document leaves one.

    Given once by the experiment file (:class:`~digitlab.experiments.ExperimentSpec`) and
    copied into the record of its run (:class:`ExperimentRecord`).
    """

    name: str
    source: str
    section: str
    title: str
    protocol: str
    choices: str

    def text(self) -> dict[str, str]:
        """The text fields by name, in file order."""
        return {f.name: getattr(self, f.name) for f in fields(ExperimentText)}


@dataclass(frozen=True)
class ExperimentRecord(ExperimentText):
    """An experiment folder as the engine wrote it (``experiment.json`` and its members).

    ``chosen`` is the chosen member of the first task (the one figures show);
    ``chosen_per_task`` the chosen member of every named task. ``readings`` is the experiment's
    ``{"primary", "alternatives", "why"}`` (empty in records of older versions and of
    experiments with one reading: every member is then of the primary reading ``""``).
    A published entry's ``reading`` and ``task`` default to the primary reading and the task of
    its member (the first task for ``"chosen"``).
    """

    folder: Path
    figures: list[str]
    data: dict[str, Any]
    members: list[MemberRecord]
    chosen: str | None
    published: list[dict[str, Any]]
    seconds: float
    lbfgs: dict[str, Any] | None = None
    #: the extras the engine wrote (``lbfgs``, ``gallery``, ``kaggle``)
    extras: list[str] = field(default_factory=list)
    readings: dict[str, Any] = field(default_factory=dict)
    chosen_per_task: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """``experiment.json`` as a JSON-safe dict (NumPy scalars become floats)."""
        record = self.text() | {
            "figures": list(self.figures),
            "data": self.data,
            "members": [m.to_json() for m in self.members],
            "chosen": self.chosen,
            "published": self.published,
            "seconds": self.seconds,
        }
        if self.lbfgs is not None:
            record["lbfgs"] = self.lbfgs
        if self.extras:
            record["extras"] = list(self.extras)
        if self.readings:
            record["readings"] = self.readings
        if self.chosen_per_task:
            record["chosen_per_task"] = self.chosen_per_task
        return json.loads(json.dumps(record, default=float))

    @classmethod
    def from_json(cls, raw: Any, folder: str | Path) -> ExperimentRecord:
        """Validate a parsed ``experiment.json`` of the experiment in ``folder``.

        Raises
        ------
        ReportError
            One line naming the file and the field at fault.
        """
        folder = Path(folder)
        where = str(folder / "experiment.json")
        if not isinstance(raw, dict):
            raise ReportError(f"{where}: expected a JSON object")
        text = {f.name: _string(raw, f.name, where) for f in fields(ExperimentText)}
        from digitlab.report.kinds import listed_kinds

        figures = _list(raw, "figures", where)
        unknown = [k for k in figures if k not in listed_kinds()]
        if unknown:
            raise ReportError(f"{folder}: unknown figure kind(s) {', '.join(map(str, unknown))}")
        members = [
            MemberRecord.from_json(entry, folder, f"{where}: member {i}")
            for i, entry in enumerate(_list(raw, "members", where))
        ]
        published = _list(raw, "published", where)
        if not all(isinstance(p, dict) for p in published):
            raise ReportError(f"{where}: 'published' must be a list of objects")
        chosen = raw.get("chosen")
        if chosen is not None and not isinstance(chosen, str):
            raise ReportError(f"{where}: 'chosen' must be a member label")
        seconds = raw.get("seconds", 0.0)
        if not isinstance(seconds, int | float) or isinstance(seconds, bool):
            raise ReportError(f"{where}: 'seconds' must be a number")
        lbfgs = raw.get("lbfgs")
        per_task = _object(raw, "chosen_per_task", where)
        if not all(isinstance(v, str) for v in per_task.values()):
            raise ReportError(f"{where}: 'chosen_per_task' must map tasks to member labels")
        readings = _object(raw, "readings", where)
        if readings and not isinstance(readings.get("primary"), str):
            raise ReportError(f"{where}: 'readings' must name its primary reading")
        return cls(
            folder=folder,
            name=text["name"] or folder.name,
            source=text["source"],
            section=text["section"],
            title=text["title"] or text["name"] or folder.name,
            protocol=text["protocol"],
            choices=text["choices"],
            figures=figures,
            data=_object(raw, "data", where),
            members=members,
            chosen=chosen,
            published=published,
            seconds=float(seconds) if math.isfinite(seconds) else 0.0,
            lbfgs=_object(raw, "lbfgs", where) if lbfgs is not None else None,
            extras=[str(e) for e in _list(raw, "extras", where)] if "extras" in raw else [],
            readings=readings,
            chosen_per_task=per_task,
        )

    @property
    def is_sample(self) -> bool:
        return bool(self.data.get("is_sample"))

    def member(self, label: str | None) -> MemberRecord:
        """The member called ``label`` (``"chosen"`` or None: the chosen one)."""
        if label in (None, "chosen"):
            label = self.chosen
            if label is None:
                if len(self.members) == 1:
                    return self.members[0]
                raise ReportError(f"{self.folder}: no chosen member in experiment.json")
        for m in self.members:
            if m.label == label:
                return m
        raise ReportError(f"{self.folder}: no member labelled {label!r}")

    # ------------------------------------------------------------------ readings, tasks
    @property
    def primary_reading(self) -> str:
        """The name of the primary reading (``""``: the experiment declares none)."""
        return str(self.readings.get("primary", ""))

    def reading_of(self, member: MemberRecord) -> str:
        """The reading ``member`` follows (a record without readings: the primary one)."""
        return member.reading or self.primary_reading

    def is_alternative(self, member: MemberRecord) -> bool:
        """Whether ``member`` follows another reading than the primary one."""
        return self.reading_of(member) != self.primary_reading

    @property
    def tasks(self) -> list[str]:
        """The members' tasks in order of first appearance (``[""]``: one unnamed task)."""
        return list(dict.fromkeys(m.task for m in self.members)) or [""]

    def chosen_of(self, task: str) -> str | None:
        """The label of the chosen member of ``task`` (the first task: ``chosen``; an
        experiment of one member: that member), or None; None too when that member is of an
        alternative reading (a task without primary-reading members chooses none)."""
        label = self.chosen_per_task.get(task)
        if label is None and task == self.tasks[0]:
            label = self.chosen
        if label is None and len(self.members) == 1:
            label = self.members[0].label
        found = [m for m in self.members if m.label == label]
        return label if found and not self.is_alternative(found[0]) else None

    def is_chosen(self, member: MemberRecord) -> bool:
        """Whether ``member`` is the chosen member of its task."""
        return self.chosen_of(member.task) == member.label

    def entry_task(self, entry: dict[str, Any]) -> str:
        """The task of a published entry: its own, else its member's, else the first task."""
        label = entry.get("member", "chosen")
        named = [m.task for m in self.members if m.label == label != "chosen"]
        return str(entry.get("task", named[0] if named else self.tasks[0]))

    def entry_reading(self, entry: dict[str, Any]) -> str:
        """The reading of a published entry: its own, else its member's, else the primary."""
        label = entry.get("member", "chosen")
        named = [self.reading_of(m) for m in self.members if m.label == label != "chosen"]
        return str(entry.get("reading") or (named[0] if named else self.primary_reading))

    def entry_member(self, entry: dict[str, Any]) -> MemberRecord:
        """The member a published entry compares (``"chosen"``: of the entry's task)."""
        label = entry.get("member", "chosen")
        if label == "chosen":
            label = self.chosen_of(self.entry_task(entry))
        return self.member(label)

    @property
    def figure_kinds(self) -> list[str]:
        """Listed kinds that are figures, in display order."""
        from digitlab.report.kinds import FIGURE_KINDS

        return [k for k in self.figures if k in FIGURE_KINDS]

    def inputs(self) -> list[Path]:
        """Every saved file a figure may be drawn from (for staleness checks)."""
        paths = [self.folder / "experiment.json"]
        for name in ("class_means.npz", "gallery.npz"):
            paths.append(self.folder / name)
        for m in self.members:
            for folder in [m.folder, *m.stages]:
                for name in (HISTORY, METRICS, CHECKPOINT, "lbfgs.json"):
                    paths.append(folder / name)
        return [p for p in paths if p.is_file()]

    def class_means(self) -> tuple[np.ndarray, list[str]] | None:
        """``(means (k, h, w) 0..255, class names)`` from ``class_means.npz`` or None."""
        path = self.folder / "class_means.npz"
        if not path.is_file():
            return None
        with np.load(path, allow_pickle=False) as z:
            return np.asarray(z["means"], np.float64), [str(c) for c in z["classes"]]

    def gallery(self) -> dict[str, np.ndarray]:
        """Arrays of ``gallery.npz``: images (m, h, w), labels (m,), preds (m,), classes (k,)."""
        path = self.folder / "gallery.npz"
        if not path.is_file():
            raise ReportError(f"{path}: no such file")
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}


def load_experiment(folder: str | Path) -> ExperimentRecord:
    """Read ``folder/experiment.json`` (and a member's ``metrics.json`` where it lacks metrics).

    Parameters
    ----------
    folder : path-like
        ``runs/<experiment>``.

    Returns
    -------
    ExperimentRecord

    Raises
    ------
    ReportError
        The file is missing, not JSON, or not an experiment record.
    """
    folder = Path(folder)
    record = ExperimentRecord.from_json(_read(read_json, folder / "experiment.json"), folder)
    for m in record.members:
        if not m.metrics and (m.folder / METRICS).is_file():
            m.metrics = _read(read_metrics, m.folder / METRICS, run_class_count(m.settings))
    return record


def find_experiments(runs_root: str | Path) -> list[ExperimentRecord]:
    """Every ``runs_root/*/experiment.json``, sorted by source document, then name."""
    root = Path(runs_root)
    exps = [load_experiment(p.parent) for p in root.glob("*/experiment.json")]
    return sorted(exps, key=lambda e: (e.source, e.name))


def load_run(folder: str | Path, label: str | None = None) -> MemberRecord:
    """A run folder (from ``digitlab train`` or an experiment member) as a :class:`MemberRecord`.

    The run may still be training: ``history.csv`` is required, ``config.toml`` (settings),
    ``metrics.json`` and ``checkpoint.npz`` are read where present.

    Raises
    ------
    ReportError
        ``folder`` is not a folder, has no ``history.csv`` (nor stages with one), or a file
        in it is malformed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ReportError(f"{folder}: no such folder")
    member = MemberRecord(label or folder.name, folder, {}, {}, {})
    if not any((f / HISTORY).is_file() for f in [folder, *member.stages]):
        raise ReportError(f"{folder}: not a run folder (no {HISTORY})")
    if (folder / CONFIG).is_file():
        member.settings = _read(read_config, folder / CONFIG)
    if (folder / METRICS).is_file():
        member.metrics = _read(read_metrics, folder / METRICS, run_class_count(member.settings))
    return member
