"""The report of one or several run folders, with the same engine as the experiment report.

One run: loss and accuracy curves, weight images, confusion matrix, metrics and every
setting. Several runs: their curves overlaid, a metrics table and a table of the settings that
differ. The runs are put together as an :class:`ExperimentRecord` whose folder is where the
report and its ``figures/`` go, so the figures, tables and renderers are the experiment
report's.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from digitlab.errors import ReportError
from digitlab.report.document import (
    data_notes,
    figure_tables,
    fmt_seconds,
    header_section,
    member_rows,
    prepare_figures,
    report_meta,
    where_line,
    write_document,
)
from digitlab.report.render import Block, Code, Document, Heading, Paragraph, Section, Table
from digitlab.report.rundata import ExperimentRecord, MemberRecord, load_run
from digitlab.runfiles import find_checkpoint


def _labels(folders: list[Path]) -> tuple[list[str], Path]:
    """Each folder relative to the folders' common parent, and that parent."""
    if len(folders) == 1:
        return [folders[0].name], folders[0].parent
    parent = Path(os.path.commonpath([str(f) for f in folders]))
    # a run folder that holds the others is called by its name
    return [f.relative_to(parent).as_posix() if f != parent else f.name for f in folders], parent


def inside_kinds(m: MemberRecord) -> list[str]:
    """The figures of what is inside run ``m`` that its files allow: per-layer curves where
    the history has per-layer statistics, activation heat maps where it has hidden layers,
    the test images ranked by loss where there is a checkpoint."""
    from digitlab.report.inside import hidden_layers, weight_layers

    kinds = ["layers"] if weight_layers(m.history) else []
    kinds += ["activations"] if hidden_layers(m.history) else []
    return kinds + (["loss_gallery"] if find_checkpoint(m.folder) is not None else [])


def runs_record(
    run_dirs: Sequence[str | os.PathLike], out: str | os.PathLike | None = None
) -> ExperimentRecord:
    """Read the run folders (every one checked before anything is drawn) into a record.

    Parameters
    ----------
    run_dirs : sequence of path-like
        Run folders; the same folder given twice counts once.
    out : path-like, optional
        Where the report goes: default the run folder (one run) or ``report/`` in the runs'
        common parent folder (several).

    Raises
    ------
    ReportError
        No run folders, or one that is missing, not a run or malformed.
    """
    given = {Path(d).resolve(): Path(d) for d in run_dirs}  # errors name the folder as given
    if not given:
        raise ReportError("no run folders given")
    folders = list(given)
    labels, parent = _labels(folders)
    members = [load_run(given[f], label) for f, label in zip(folders, labels, strict=True)]
    for m, f in zip(members, folders, strict=True):
        m.folder = f
    one = len(members) == 1
    folder = Path(out).resolve() if out is not None else folders[0] if one else parent / "report"
    if one:
        m = members[0]
        kinds = ["curves"]
        kinds += ["weights"] if find_checkpoint(m.folder) is not None else []
        kinds += ["confusion"] if "confusion_test" in m.metrics else []
        kinds += inside_kinds(m)
        title = "digitlab run"
    else:
        kinds, title = ["overlay"], f"digitlab: {len(members)} runs compared"
    metrics = members[0].metrics
    data = {k: metrics[k] for k in ("dataset", "source", "notes") if k in metrics} if one else {}
    seconds = sum(float(m.metrics.get("seconds") or 0.0) for m in members)
    return ExperimentRecord(
        folder=folder, name=folder.name, source="", section="", title=title, protocol="",
        choices="", figures=kinds, data=data, members=members, chosen=None, published=[],
        seconds=seconds,
    )  # fmt: skip


def _text(value: Any) -> str:
    """A setting for display: strings as they are, other values as JSON (lists, true/false)."""
    return value if isinstance(value, str) else json.dumps(value)


def used_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` without the hyperparameters of optimisers the run did not use (no Adam
    betas on an SGD run)."""
    from digitlab.optim import OPTIMIZERS

    chosen = OPTIMIZERS.get(settings.get("optimizer", "sgd"))
    if chosen is None:
        return dict(settings)
    others = {k for cls in OPTIMIZERS.values() for k in cls.hyperparameters}
    unused = others - set(chosen.hyperparameters)
    return {k: v for k, v in settings.items() if k not in unused}


def settings_table(members: list[MemberRecord]) -> list[Block]:
    """One run: every setting it used. Several: the settings that differ, one row per run."""
    if len(members) == 1:
        used = used_settings(members[0].settings)
        rows: list[list[Any]] = [[k, _text(v)] for k, v in used.items()]
        return [Heading(3, "Settings"), Table(["setting", "value"], rows)]
    names = list(dict.fromkeys(k for m in members for k in m.settings))
    differ = [k for k in names if len({_text(m.settings.get(k)) for m in members}) > 1]
    if not differ:
        return [
            Heading(3, "Settings that differ"),
            Paragraph.of("All runs have the same settings."),
        ]
    rows = [[m.label, *(_text(m.settings.get(k, "—")) for k in differ)] for m in members]
    return [Heading(3, "Settings that differ"), Table(["run", *differ], rows)]


def runs_document(record: ExperimentRecord) -> Document:
    """Draw the figures of ``record`` and build the report document.

    Figures are always redrawn: a folder shared by reports of different runs must not keep
    a figure of other runs.
    """
    figs = prepare_figures(record, 1, redraw=True)
    one = len(record.members) == 1
    where = record.members[0].folder if one else _labels([m.folder for m in record.members])[1]
    blocks: list[Block] = [
        Heading(2, record.members[0].label if one else "Runs compared"),
        where_line(
            ["run folder " if one else "runs in ", Code(str(where))],
            [f"run time {fmt_seconds(record.seconds)}"] if record.seconds else [],
        ),
    ]
    if record.data:
        blocks += [Paragraph.of(note, style="note") for note in data_notes(record.data)]
    for fig in figs:
        blocks += [fig, *figure_tables(record, fig)]
    header, rows = member_rows(record, first="run")
    blocks += [Heading(3, "Metrics"), Table(header, list(rows))]
    blocks += settings_table(record.members)
    n = len(record.members)
    meta = report_meta(f"{fmt_seconds(record.seconds)} ({n} run{'s' if n > 1 else ''})")
    title = f"{record.title} {record.members[0].label}" if one else record.title
    return Document(
        title, [header_section(title, meta), Section(blocks, css="experiment", anchor="runs")]
    )


def write_run_report(
    run_dirs: Sequence[str | os.PathLike], out: str | os.PathLike | None = None
) -> tuple[Path, Path]:
    """Write ``report.html`` and ``report.md`` of one or several run folders; return both paths.

    ``run_dirs`` are run folders (from ``digitlab train``, or members of an experiment);
    ``out`` the folder for the report and its ``figures/`` (see :func:`runs_record`). A run
    folder that is missing, not a run or malformed is a ReportError, and nothing is written.
    """
    record = runs_record(run_dirs, out)
    record.folder.mkdir(parents=True, exist_ok=True)
    doc = runs_document(record)
    return write_document(doc, record.folder / "report.html", record.folder / "report.md")
