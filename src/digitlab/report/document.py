"""The report: one self-contained HTML page and its Markdown twin, from saved run data only.

``write_report(runs_root)`` reads every ``runs_root/*/experiment.json``, (re)draws figures
that are missing or older than their data, and writes ``runs_root/report.html`` (figures
embedded as base64 PNG, CSS inline, no network) and ``runs_root/report.md`` (figures linked
by relative path). The report is built once as a :class:`~digitlab.report.render.Document`
(the sections, tables and figures below) and rendered twice by :mod:`digitlab.report.render`.
"""

from __future__ import annotations

import math
import os
import platform
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from digitlab.errors import ReportError
from digitlab.fileio import atomic_write_text
from digitlab.kernels import cpu_model
from digitlab.report.figures import figure_paths
from digitlab.report.kinds import caption, draw_figure, is_stale
from digitlab.report.render import (
    Banner,
    Block,
    Code,
    Document,
    Figure,
    Heading,
    Link,
    Mark,
    Meta,
    Paragraph,
    Section,
    Span,
    Table,
    to_html,
    to_markdown,
)
from digitlab.report.rundata import (
    ExperimentRecord,
    MemberRecord,
    find_experiments,
    load_experiment,
)

#: Default tolerance of an accuracy, in percentage points below the published value.
ACC_TOLERANCE_PP = 1.0
#: Default relative tolerance of any other metric.
REL_TOLERANCE = 0.10
SAMPLE_BANNER = (
    "Run on the embedded 5,000-digit sample with scaled-down splits; "
    "numbers are not comparable to the published ones."
)

# ---------------------------------------------------------------------------------- numbers
#: Columns of the summary table at the top of the report (HTML and Markdown alike): one row
#: per task of an experiment. "headline" is the first published row of the primary reading
#: whose member is the task's chosen member (:func:`headline`); "✓ or ≈" counts the primary
#: reading's rows of the task (:func:`marks`); "alternative readings" counts the rows of
#: other readings, which are evidence in the experiment's section and never counted.
SUMMARY_COLUMNS = (
    "source",
    "section",
    "experiment",
    "settings",
    "reading",
    "chosen",
    "headline (published → reproduced)",
    "✓ or ≈",
    "alternative readings",
    "data",
    "time",
)


def is_accuracy(metric: str) -> bool:
    return metric.endswith("_acc") or metric == "acc"


def lower_is_better(metric: str) -> bool:
    return "loss" in metric or "objective" in metric or metric.endswith("_err")


def fmt_value(metric: str, value: Any) -> str:
    """A metric for display: accuracies in percent, counts as integers, else 4 digits."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "—" if value is None else str(value)
    if not math.isfinite(value):
        return str(value)
    if is_accuracy(metric):
        return f"{100 * value:.2f}%"
    if float(value).is_integer():
        return f"{int(value)}"
    return f"{value:.4g}"


@dataclass
class Comparison:
    """One row of "published vs reproduced".

    ``difference`` is reproduced - published, in percentage points for accuracies;
    ``status`` is ``"meets"`` (at or better than published), ``"within"`` (within
    ``tolerance``; for a member run over several seeds: inside the observed range or
    mean ± 2 sd), ``"outside"``, ``"missing"`` or ``"not comparable"`` (the run's data are
    not the published numbers' data). ``spread`` describes the seeds' values, if any.
    ``reading`` and ``task`` are the entry's; ``alternative`` says the reading is not the
    primary one; ``chosen`` that ``member`` is the chosen member of the task.
    """

    what: str
    member: str
    metric: str
    published: float
    reproduced: float | None
    difference: float | None
    tolerance: float
    status: str
    spread: str = ""
    reading: str = ""
    task: str = ""
    alternative: bool = False
    chosen: bool = False

    def difference_text(self) -> str:
        if self.difference is None:
            return "—"
        if is_accuracy(self.metric):
            return f"{self.difference:+.2f} pp"
        return f"{self.difference:+.4g}"

    def tolerance_text(self) -> str:
        return f"{self.tolerance:g} pp" if is_accuracy(self.metric) else f"{self.tolerance:.3g}"


MARKS = {
    "meets": ("✓", "ok"),
    "within": ("≈", "near"),
    "outside": ("✗", "bad"),
    "missing": ("?", "bad"),
    "not comparable": ("–", "na"),
}


def repeats_summary(exp: ExperimentRecord, label: str, metric: str) -> dict[str, float] | None:
    """Mean, sd, min, max and n of ``metric`` over the seeds of member ``label``, or None."""
    try:
        member = exp.member(label)
    except ReportError:
        return None
    summary = (member.repeats or {}).get("summary") or {}
    found = summary.get(metric)
    ok = isinstance(found, dict) and all(
        isinstance(found.get(k), int | float) for k in ("mean", "sd", "min", "max", "n")
    )
    return found if ok and found["n"] > 1 else None


def is_comparable(exp: ExperimentRecord) -> bool:
    """Whether the run's data are the data of the published numbers (not the sample, not a
    stand-in dataset)."""
    return bool(exp.data.get("comparable", not exp.is_sample)) and not exp.is_sample


def is_at_or_better(metric: str, reproduced: float, published: float) -> bool:
    """Whether ``reproduced`` is at or better than ``published`` (a metric with no better
    direction, such as the best epoch or a weight norm: only when equal)."""
    if is_accuracy(metric):
        return reproduced >= published
    if lower_is_better(metric):
        return reproduced <= published
    return reproduced == published


def compare(exp: ExperimentRecord, entry: dict[str, Any]) -> Comparison:
    """Compare one ``published`` entry with the reproduced metric.

    An entry may carry ``tolerance`` (percentage points for accuracies, else absolute);
    the defaults are :data:`ACC_TOLERANCE_PP` and :data:`REL_TOLERANCE` of the published value.
    """
    try:
        metric, published = str(entry["metric"]), float(entry["value"])
    except (KeyError, TypeError, ValueError):
        raise ReportError(
            f"{exp.folder}: published entry {entry!r} needs metric and value"
        ) from None
    label = str(entry.get("member", "chosen"))
    acc = is_accuracy(metric)
    tol = entry.get("tolerance")
    if tol is None:
        tol = ACC_TOLERANCE_PP if acc else REL_TOLERANCE * abs(published)
    tolerance = float(tol)
    what = str(entry.get("what") or metric)
    reading, task = exp.entry_reading(entry), exp.entry_task(entry)
    where = {"reading": reading, "task": task,
             "alternative": reading != exp.primary_reading}  # fmt: skip
    try:
        member = exp.entry_member(entry)
    except ReportError:
        return Comparison(what, label, metric, published, None, None, tolerance, "missing", **where)
    label = member.label
    where["chosen"] = not where["alternative"] and exp.chosen_of(task) == label
    value = member.metrics.get(metric)
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        return Comparison(what, label, metric, published, None, None, tolerance, "missing", **where)
    reproduced = float(value)
    seeds = repeats_summary(exp, label, metric)
    spread = ""
    if seeds is not None:  # several seeds: the mean is the reproduced value
        reproduced = float(seeds["mean"])
        lo, hi, sd = float(seeds["min"]), float(seeds["max"]), float(seeds["sd"])
        spread = (
            f"mean ± sd {fmt_value(metric, reproduced)} ± {fmt_value(metric, sd)}, "
            f"range {fmt_value(metric, lo)}–{fmt_value(metric, hi)} over {seeds['n']} seeds"
        )
    diff = (reproduced - published) * (100.0 if acc else 1.0)
    meets = is_at_or_better(metric, reproduced, published)
    if seeds is not None:
        near = lo <= published <= hi or abs(published - reproduced) <= 2 * sd + 1e-12
    else:
        near = abs(diff) <= tolerance + 1e-9
    if not is_comparable(exp):
        status = "not comparable"
    elif meets:
        status = "meets"
    elif near:
        status = "within"
    else:
        status = "outside"
    return Comparison(
        what, label, metric, published, reproduced, diff, tolerance, status, spread, **where
    )


def data_notes(data: dict[str, Any]) -> list[str]:
    """The data line (dataset and source) and the engine's other notes about the data."""
    out = [
        f"data: {data.get('dataset', '?')}" + (f" ({data['source']})" if data.get("source") else "")
    ]
    out += [str(n) for n in data.get("notes") or [] if not str(n).startswith("data: ")]
    return out


def fmt_seconds(seconds: float) -> str:
    seconds = round(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{h} h {m:02d} min"
    if m:
        return f"{m} min {s:02d} s"
    return f"{s} s"


def machine() -> str:
    """Platform, CPU model and count, Python version."""
    cpu = cpu_model()
    parts = [platform.platform(), f"{os.cpu_count()} CPUs" + (f" ({cpu})" if cpu else "")]
    parts.append(f"Python {sys.version.split()[0]}")
    return ", ".join(parts)


# ---------------------------------------------------------------------------------- content
def prepare_figures(exp: ExperimentRecord, index: int, redraw: bool) -> list[Figure]:
    """Draw missing or stale figures of ``exp``; one figure node per listed figure kind."""
    entries = []
    for j, kind in enumerate(exp.figure_kinds, start=1):
        png, _ = figure_paths(exp.folder, kind)
        error = None
        if redraw or is_stale(exp, kind):
            try:
                draw_figure(exp, kind)
            except ReportError as exc:
                error = str(exc)
        entries.append(
            Figure(
                number=f"{index}.{j}",
                kind=kind,
                caption=caption(exp, kind),
                png=None if error else png,
                error=error,
                alt=f"{exp.title}: {kind}",
                figure_id=f"{exp.folder.name}/{kind}",
            )
        )
    return entries


#: Fewest experiments with figures to draw for which the report draws them in worker
#: processes (spawning one costs about a second; an experiment's figures take 1-5 s).
PARALLEL_FIGURES_FROM = 3


def _figures_in_worker(folder: str, index: int, redraw: bool) -> tuple[int, list[Figure]]:
    """:func:`prepare_figures` of the experiment in ``folder``, in a worker process; with the
    worker's pid."""
    from digitlab import workers

    with workers.task():  # stopped as after Ctrl-C if the report's process is killed
        return os.getpid(), prepare_figures(load_experiment(folder), index, redraw)


def prepare_all_figures(
    exps: list[ExperimentRecord], redraw: bool, processes: int = 1
) -> tuple[dict[str, list[Figure]], set[int]]:
    """:func:`prepare_figures` of every experiment (numbered from 1), keyed by folder name,
    and the pids of the processes that drew them.

    Matplotlib draws on one core: a reproduction's report took 36 s with its 30 figures drawn
    in turn on the 2-core Zen 3. With ``processes`` of 2 or more and from
    :data:`PARALLEL_FIGURES_FROM` experiments with figures to draw on, the experiments are
    drawn side by side in up to ``processes`` spawned processes, most figures first: 20 s.
    The PNGs are the same bytes either way (tests/test_report.py). The workers leave Ctrl-C to
    this process and end with it (:func:`~digitlab.workers.quiet_worker`). Spawned processes
    import the caller's main script again: the command line asks for them (its script is
    guarded), a Python caller only when its script is (``if __name__ == "__main__":``).
    """
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from digitlab.workers import quiet_worker

    todo = [
        (i, e) for i, e in enumerate(exps, start=1)
        if e.figure_kinds and (redraw or any(is_stale(e, kind) for kind in e.figure_kinds))
    ]  # fmt: skip
    workers = min(processes, len(todo))
    parallel = len(todo) >= PARALLEL_FIGURES_FROM and workers >= 2
    drawn: dict[str, list[Figure]] = {}
    pids = {os.getpid()} if todo and not parallel else set()
    if parallel:
        todo.sort(key=lambda t: -len(t[1].figure_kinds))
        pool = ProcessPoolExecutor(
            workers, mp_context=get_context("spawn"),
            initializer=quiet_worker, initargs=(os.getpid(),),
        )  # fmt: skip
        try:
            futures = [
                (e, pool.submit(_figures_in_worker, str(e.folder), i, redraw)) for i, e in todo
            ]
            for e, future in futures:
                pid, drawn[e.folder.name] = future.result()
                pids.add(pid)
        finally:  # stopped (Ctrl-C, SIGTERM, an error): the experiments being drawn end, no more
            pool.shutdown(wait=True, cancel_futures=True)
    out = {}
    for i, e in enumerate(exps, start=1):  # the rest: nothing to draw, or drawn in turn
        name = e.folder.name
        out[name] = drawn[name] if name in drawn else prepare_figures(e, i, redraw)
    return out, pids


def member_label(exp: ExperimentRecord, m: MemberRecord) -> str:
    """A member's label, marked "(chosen)" when it is its task's chosen member and with its
    reading when that is an alternative one."""
    label = m.label + (" (chosen)" if exp.is_chosen(m) else "")
    if exp.is_alternative(m):  # the reading's name, unless the label says it already
        reading = exp.reading_of(m)
        label += " (alternative reading" + ("" if reading in m.label else f": {reading}") + ")"
    return label


def member_rows(exp: ExperimentRecord, first: str = "setting") -> tuple[list[str], list[list[str]]]:
    """Header and rows of the members table (accuracies, best epoch, epochs, stop reason);
    ``first`` heads the column of member labels."""
    has_val = any("val_acc" in m.metrics for m in exp.members)
    has_best = any("best_epoch" in m.metrics for m in exp.members)
    header = [first, "train acc"] + (["val acc"] if has_val else []) + ["test acc"]
    header += (["best epoch"] if has_best else []) + ["epochs", "weight norm", "stopped because"]
    rows = []
    for m in exp.members:
        g = m.metrics.get

        def cell(metric: str, label: str = m.label, get: Any = g) -> str:
            # a member run over several seeds: mean ± sd (min–max, n)
            seeds = repeats_summary(exp, label, metric)
            if seeds is None:
                return fmt_value(metric, get(metric))
            return (
                f"{fmt_value(metric, seeds['mean'])} ± {fmt_value(metric, seeds['sd'])} "
                f"({fmt_value(metric, seeds['min'])}–{fmt_value(metric, seeds['max'])}, "
                f"{seeds['n']} seeds)"
            )

        row = [member_label(exp, m)]
        row.append(cell("train_acc"))
        if has_val:
            row.append(cell("val_acc"))
        row.append(cell("test_acc"))
        if has_best:
            row.append(fmt_value("best_epoch", g("best_epoch")))
        row += [
            fmt_value("epochs", g("epochs")),
            fmt_value("weight_norm", g("weight_norm")),
            str(g("stop_reason") or "—"),
        ]
        rows.append(row)
    return header, rows


LBFGS_COLUMNS = {
    "GD objective": ("objective", "gd_objective"),
    "L-BFGS objective": ("objective", "objective"),
    "gradient norm": ("grad_norm", "grad_norm"),
    "L-BFGS train": ("train_acc", "train_acc"),
    "L-BFGS val": ("val_acc", "val_acc"),
    "L-BFGS test": ("test_acc", "test_acc"),
    "L-BFGS seconds": ("seconds", "seconds"),
}


def lbfgs_rows(exp: ExperimentRecord) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the L-BFGS table: one row per member with an ``lbfgs.json``."""
    rows = [
        [m.label] + [fmt_value(metric, m.lbfgs.get(key)) for metric, key in LBFGS_COLUMNS.values()]
        for m in exp.members
        if m.lbfgs
    ]
    return ["setting", *LBFGS_COLUMNS], rows


def paragraphs(text: str) -> list[list[str]]:
    """Paragraphs (split at blank lines) of wrapped prose, each a list of its lines."""
    out: list[list[str]] = [[]]
    for line in text.strip().splitlines():
        if line.strip():
            out[-1].append(line.strip())
        elif out[-1]:
            out.append([])
    return [p for p in out if p]


def prose(text: str) -> list[Paragraph]:
    """Paragraphs of prose: re-flowed, or line by line where they are a list."""
    out = []
    for p in paragraphs(text):
        listed = any(x.startswith(("- ", "* ")) or x[:2].rstrip(".").isdigit() for x in p)
        out.append(Paragraph([[x] for x in p] if listed else [[" ".join(p)]], "text"))
    return out


def anchor(exp: ExperimentRecord) -> str:
    """The HTML id of an experiment's section."""
    return "exp-" + "".join(c if c.isalnum() or c in "-_" else "-" for c in exp.folder.name)


def where_line(*parts: list[Span]) -> Paragraph:
    """Non-empty parts joined by " · "."""
    spans: list[Span] = []
    for part in (p for p in parts if p):
        spans += ([" · "] if spans else []) + part
    return Paragraph([spans], "where")


MARK_TITLES = {
    "meets": "at or better than published",
    "within": "within tolerance ({})",
    "outside": "outside tolerance ({})",
    "missing": "metric missing from the run",
    "not comparable": "the run's data differ from the published numbers' data",
}


def reading_text(c: Comparison) -> str:
    """The reading cell of a published row: the primary reading's name, or "alternative
    reading: <name>"."""
    return f"alternative reading: {c.reading}" if c.alternative else c.reading


def _published(exp: ExperimentRecord, comps: list[Comparison]) -> list[Block]:
    named = bool(exp.primary_reading) or any(c.alternative for c in comps)
    rows: list[list[Span]] = [
        [
            c.what,
            *([reading_text(c)] if named else []),
            c.member,
            fmt_value(c.metric, c.published),
            fmt_value(c.metric, c.reproduced) + (f" ({c.spread})" if c.spread else ""),
            c.difference_text(),
            Mark(*MARKS[c.status][:1], c.status, MARKS[c.status][1],
                 MARK_TITLES[c.status].format(c.tolerance_text())),
        ]
        for c in comps
    ]  # fmt: skip
    header = ["what", *(["reading"] if named else []), "member", "published", "reproduced",
              "difference", "mark"]  # fmt: skip
    classes = ["alternative" if c.alternative else "" for c in comps]
    note = (
        f"✓ reproduced at or better than published; ≈ within tolerance "
        f"({ACC_TOLERANCE_PP:g} pp for accuracies, {REL_TOLERANCE:.0%} otherwise, unless the "
        f"experiment sets one; for members run over several seeds: the published value inside "
        f"the seeds' range or mean ± 2 sd); ✗ outside it; – not comparable (other data than the "
        f"published numbers')."
    )
    if any(c.alternative for c in comps):
        note += (
            " Rows of an alternative reading are evidence for the choice of the primary "
            "reading; the summary does not count them."
        )
    blocks: list[Block] = [
        Heading(3, "Published vs reproduced"),
        Table(header, rows, classes),
        Paragraph.of(note, style="note"),
    ]
    if exp.is_sample:
        text = "Sample data: the rows are not comparable with the published numbers, not counted."
        blocks.append(Paragraph.of(text, style="note"))
    return blocks


def members_table(exp: ExperimentRecord) -> list[Block]:
    """The "Settings" heading and table, the chosen member highlighted."""
    header, rows = member_rows(exp)
    classes = ["chosen" if exp.is_chosen(m) else "" for m in exp.members]
    return [Heading(3, "Settings"), Table(header, list(rows), classes)]


def figure_tables(exp: ExperimentRecord, fig: Figure) -> list[Block]:
    """The tables shown under a drawn figure: the L-BFGS numbers under ``lbfgs``, the chosen
    member's per-class precision, recall and F1 under ``confusion``."""
    if fig.png is None:
        return []
    if fig.kind == "lbfgs":
        header, rows = lbfgs_rows(exp)
        return [Table(header, list(rows))] if rows else []
    if fig.kind == "confusion":
        from digitlab.report.inside import SCORE_NOTE, class_scores_table

        try:
            header, rows = class_scores_table(exp.member("chosen"))
        except ReportError as exc:
            return [Paragraph.of(f"Per-class scores not shown: {exc}", style="note")]
        return [Heading(3, "Per-class precision, recall and F1"), Table(header, list(rows)),
                Paragraph.of(SCORE_NOTE, style="note")]  # fmt: skip
    return []


def _figures_and_tables(exp: ExperimentRecord, figs: list[Figure]) -> list[Block]:
    """Figures and the members table in the listed order (the table last if not listed)."""
    by_kind = {f.kind: f for f in figs}
    blocks: list[Block] = []
    for kind in exp.figures:
        if kind == "table":
            blocks += members_table(exp)
        elif kind in by_kind:
            blocks += [by_kind[kind], *figure_tables(exp, by_kind[kind])]
    if "table" not in exp.figures:
        blocks += members_table(exp)
    return blocks


def experiment_section(
    exp: ExperimentRecord, figs: list[Figure], comps: list[Comparison]
) -> Section:
    """One experiment: where it comes from, protocol, choices, figures, tables, marks."""
    blocks: list[Block] = [
        Heading(2, exp.title),
        where_line(
            [f"source {exp.source}"] if exp.source else [],
            [f"section {exp.section}"] if exp.section else [],
            ["experiment ", Code(exp.name)],
            [f"run time {fmt_seconds(exp.seconds)}"] if exp.seconds else [],
        ),
    ]
    if exp.is_sample:
        blocks.append(Banner("Sample data.", SAMPLE_BANNER, "sample"))
    for title, text in (("Protocol", exp.protocol), ("Choices", exp.choices)):
        if text:
            blocks += [Heading(3, title), *prose(text)]
    blocks += readings_blocks(exp)
    if exp.data:
        blocks += [Paragraph.of(note, style="note") for note in data_notes(exp.data)]
    blocks += _figures_and_tables(exp, figs)
    if comps:
        blocks += _published(exp, comps)
    if (exp.folder / "kaggle.csv").is_file():
        href = f"{exp.folder.name}/kaggle.csv"
        blocks.append(Paragraph.of("Kaggle submission: ", Link(href, href)))
    return Section(blocks, css="experiment", anchor=anchor(exp))


def readings_blocks(exp: ExperimentRecord) -> list[Block]:
    """The "Readings" heading and its text: the primary reading and why, the alternatives."""
    if not exp.primary_reading:
        return []
    why = " ".join(str(exp.readings.get("why", "")).split())
    text = f"Primary reading: {exp.primary_reading}. {why}".strip()
    blocks: list[Block] = [Heading(3, "Readings"), Paragraph.of(text, style="text")]
    alternatives = [str(a) for a in exp.readings.get("alternatives") or []]
    if alternatives:
        blocks.append(Paragraph.of(
            f"Alternative reading{'s' if len(alternatives) > 1 else ''}, run as evidence and "
            f"not counted in the summary: {', '.join(alternatives)}.", style="text",
        ))  # fmt: skip
    return blocks


def headline(comps: list[Comparison]) -> str:
    """The headline of one task: its first published row of the primary reading whose member
    is the task's chosen member, as "published → reproduced" ("—" when there is none)."""
    for c in comps:
        if c.chosen and not c.alternative:
            return f"{fmt_value(c.metric, c.published)} → {fmt_value(c.metric, c.reproduced)}"
    return "—"


def marks(comps: list[Comparison]) -> str:
    """The marks of the primary reading's rows: "k/n" with k ✓ or ≈ of n comparable rows
    ("not comparable" when none is, "—" when there is no row)."""
    primary = [c for c in comps if not c.alternative]
    counted = [c for c in primary if c.status != "not comparable"]
    if not counted:
        return "not comparable" if primary else "—"
    good = sum(c.status in ("meets", "within") for c in counted)
    return f"{good}/{len(counted)}"


def summary_rows(exp: ExperimentRecord, comps: list[Comparison]) -> list[list[Span]]:
    """The summary rows of one experiment: one per task, side by side (tasks never compete),
    each with its chosen member, its headline and marks of the primary reading and the count
    of its alternative-reading rows."""
    rows: list[list[Span]] = []
    tasks = exp.tasks
    for i, task in enumerate(tasks):
        mine = [c for c in comps if c.task == task]
        title = exp.title + (f" · task {task}" if task and len(tasks) > 1 else "")
        rows.append([
            exp.source,
            exp.section,
            Link(title, f"#{anchor(exp)}", internal=True),
            str(sum(m.task == task for m in exp.members)),
            exp.primary_reading or "—",
            exp.chosen_of(task) or "—",
            headline(mine),
            marks(mine),
            str(sum(c.alternative for c in mine)),
            "sample ⚠" if exp.is_sample else str(exp.data.get("dataset", "—")),
            fmt_seconds(exp.seconds) if i == 0 else "(above)",
        ])  # fmt: skip
    return rows


def summary_section(exps: list[ExperimentRecord], comps: dict[str, list[Comparison]]) -> Section:
    """The summary table: one row per task of each experiment, linking to its section."""
    rows = [row for exp in exps for row in summary_rows(exp, comps[exp.folder.name])]
    note = (
        "Per source, the primary reading is the one its experiment file gives evidence for "
        "(the code that printed the numbers, where the source has code); the headline is its "
        "first published row of that reading whose member is the chosen one, the marks count "
        "that reading's rows only, and rows of alternative readings are counted apart. An "
        "experiment of several tasks (other classes, other data) has one row per task."
    )
    return Section(
        [Heading(2, "Summary"), Table(list(SUMMARY_COLUMNS), rows),
         Paragraph.of(note, style="note")],
        anchor="summary",
    )  # fmt: skip


def header_section(title: str, meta: dict[str, str]) -> Section:
    """The page title and its ``name: value`` lines."""
    return Section([Heading(1, title), Meta(list(meta.items()))], tag="header")


def experiments_document(
    exps: list[ExperimentRecord],
    figs: dict[str, list[Figure]],
    comps: dict[str, list[Comparison]],
    meta: dict[str, str],
) -> Document:
    """The report of experiments: header, summary, one section per experiment."""
    title = "digitlab: reproduced experiments"
    return Document(
        title,
        [
            header_section(title, meta),
            summary_section(exps, comps),
            *(experiment_section(e, figs[e.folder.name], comps[e.folder.name]) for e in exps),
        ],
    )


# ---------------------------------------------------------------------------------- entry
def write_report(
    runs_root: str | os.PathLike = "runs", *, redraw: bool = False, processes: int = 1
) -> tuple[Path, Path]:
    """Write ``runs_root/report.html`` and ``runs_root/report.md`` from the saved runs.

    Parameters
    ----------
    runs_root : path-like
        Folder holding ``<experiment>/experiment.json`` folders.
    redraw : bool
        Redraw every figure, not only those missing or older than their data.
    processes : int
        Processes that draw the experiments' figures side by side (1: in turn, here; more:
        spawned, see :func:`prepare_all_figures`, which needs the caller's script guarded by
        ``if __name__ == "__main__":``). ``digitlab report`` and ``reproduce`` use every
        usable core.

    Returns
    -------
    (Path, Path)
        The HTML and Markdown files.

    Raises
    ------
    ReportError
        When ``processes`` is not a whole number >= 1, ``runs_root`` does not exist, holds no
        experiment or an ``experiment.json`` is malformed (nothing is written then). A figure that
        cannot be drawn does not raise: the report says so in its place.
    """
    if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
        raise ReportError(f"processes must be a whole number >= 1, got {processes!r}")
    root = Path(runs_root)
    if not root.is_dir():
        raise ReportError(f"{root}: no such folder")
    exps = find_experiments(root)
    if not exps:
        raise ReportError(
            f"{root}: no experiment folders (*/experiment.json) in it; "
            "for run folders: digitlab report RUN_DIR..."
        )
    figs = prepare_all_figures(exps, redraw, processes)[0]
    comps = {e.folder.name: [compare(e, p) for p in e.published] for e in exps}
    n_runs = sum(_seeds(m.repeats) for e in exps for m in e.members)
    total = (
        f"{fmt_seconds(sum(e.seconds for e in exps))} ({_count(len(exps), 'experiment')}, "
        f"{_count(n_runs, 'run')}: every seed of a repeated member counted)"
    )
    doc = experiments_document(exps, figs, comps, report_meta(total))
    return write_document(doc, root / "report.html", root / "report.md")


def _seeds(repeats: dict[str, Any] | None) -> int:
    """The number of runs of a member: its repeats' seeds, or 1."""
    seeds = repeats.get("seeds") if repeats else None
    return len(seeds) if isinstance(seeds, list) and seeds else 1


def _count(n: int, noun: str) -> str:
    """``"1 run"``, ``"3 runs"``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def report_meta(total: str) -> dict[str, str]:
    """The header lines: digitlab version, time generated, machine, total run time."""
    from digitlab import __version__

    return {
        "digitlab": __version__,
        "generated": datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "machine": machine(),
        "total run time": total,
    }


def write_document(doc: Document, html_path: Path, md_path: Path) -> tuple[Path, Path]:
    """Render ``doc`` to both files (Markdown links relative to its own folder).

    Each is written atomically into its folder, never through a link planted there.
    """
    atomic_write_text(html_path, to_html(doc))
    atomic_write_text(md_path, to_markdown(doc, md_path.parent))
    return html_path, md_path
