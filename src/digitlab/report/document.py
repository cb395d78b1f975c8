"""The report: one self-contained HTML page and its Markdown twin, from saved run data only.

``write_report(runs_root)`` reads every ``runs_root/*/experiment.json``, (re)draws figures
that are missing or older than their data, and writes ``runs_root/report.html`` (figures
embedded as base64 PNG, CSS inline, no network) and ``runs_root/report.md`` (figures linked
by relative path).
"""

from __future__ import annotations

import base64
import html
import math
import os
import platform
import re
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from digitlab.report.figures import DPI, draw_figure, figure_paths, is_stale
from digitlab.report.rundata import ExperimentRecord, ReportError, find_experiments

#: Default tolerance of an accuracy, in percentage points below the published value.
ACC_TOLERANCE_PP = 1.0
#: Display size of figures: CSS pixels per figure inch (a page has 96; text 9 pt reads well).
CSS_PX_PER_INCH = 110
#: Default relative tolerance of any other metric.
REL_TOLERANCE = 0.10
SAMPLE_BANNER = (
    "Run on the embedded 5,000-digit sample with scaled-down splits; "
    "numbers are not comparable to the published ones."
)

CAPTIONS = {
    "curves": "Loss (mean cross-entropy) and accuracy over training for the training, "
    "validation (hold-out) and test sets; {chosen}.",
    "weights": "Weights of {chosen} drawn as images (bright = positive, dark = negative), "
    "beside the average training image of each class where saved.",
    "weight_diff": "Weight images of each logistic classifier and the difference of the first "
    "two, which separates the two negative classes.",
    "sweep": "Regularisation sweep: validation accuracy and length of the weight vector over "
    "training per penalty type, final test accuracy and weight length against lambda, and "
    "the weights of every setting.",
    "shuffle": "Validation accuracy and loss over training of each setting; the legend gives "
    "where early stopping ended training and the best (restored) epoch.",
    "confusion": "Confusion matrix of {chosen} on the test set: rows are true classes, columns "
    "predicted classes, counts in the cells, shading the fraction of the true class.",
    "lbfgs": "Gradient descent against the exact optimum of the same convex objective found by "
    "L-BFGS: training objective and train/validation/test accuracy.",
    "gallery": "Right (green) and wrong (red) predictions, each titled true / predicted class.",
    "spread": "Published numbers (red line) among the results of the member's random seeds "
    "(dots: one per seed, e.g. per N(0, 1) draw of the initial weights; bar: mean ± 2 sd).",
}

CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
 margin:0 auto;max-width:1280px;padding:0 24px 48px;color:#1f2328;background:#fff}
h1{font-size:26px;margin:24px 0 4px}h2{font-size:21px;margin:36px 0 4px;
 border-bottom:1px solid #d0d7de;padding-bottom:4px}h3{font-size:16px;margin:18px 0 6px}
.meta,.where{color:#59636e;margin:2px 0}code{font-size:13px}
table{border-collapse:collapse;margin:8px 0 12px;font-size:13.5px}
th,td{border:1px solid #d0d7de;padding:3px 9px;text-align:left;vertical-align:top}
th{background:#f6f8fa;white-space:nowrap}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.chosen td{background:#fff8c5}
figure{margin:14px 0 22px}figure img{max-width:100%;height:auto;border:1px solid #eaeef2}
figcaption{color:#3d444d;font-size:13.5px;margin-top:4px;max-width:1000px}
.banner{background:#fff1c2;border:1px solid #d4a72c;padding:8px 12px;border-radius:6px;
 margin:10px 0}
.missing{background:#ffebe9;border:1px solid #cf222e;padding:8px 12px;border-radius:6px}
.ok{color:#1a7f37;font-weight:600}.near{color:#9a6700;font-weight:600}
.bad{color:#cf222e;font-weight:600}.note{color:#59636e;font-size:13px}
p.text{max-width:1000px;margin:4px 0 8px}
"""

#: Marks every image with data-ok and appends #render-check (read by scripts/check_report.py).
CHECK_SCRIPT = """
window.addEventListener("load", function () {
  var imgs = document.images, loaded = 0;
  for (var i = 0; i < imgs.length; i++) {
    var im = imgs[i], r = im.getBoundingClientRect();
    var ok = im.complete && im.naturalWidth > 0 && r.width > 0 && r.height > 0;
    im.setAttribute("data-ok", ok ? "1" : "0");
    if (ok) loaded++;
  }
  var s = document.createElement("div");
  s.id = "render-check"; s.hidden = true;
  s.setAttribute("data-images", imgs.length);
  s.setAttribute("data-loaded", loaded);
  s.setAttribute("data-height", document.documentElement.scrollHeight);
  document.body.appendChild(s);
});
"""


# ---------------------------------------------------------------------------------- numbers
#: Columns of the summary table at the top of the report (HTML and Markdown alike).
SUMMARY_COLUMNS = (
    "source",
    "section",
    "experiment",
    "settings",
    "chosen",
    "headline (published → reproduced)",
    "✓ or ≈",
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
    for entry in exp.raw.get("members") or []:
        if isinstance(entry, dict) and entry.get("label") == label:
            summary = (entry.get("repeats") or {}).get("summary") or {}
            found = summary.get(metric)
            ok = isinstance(found, dict) and all(
                isinstance(found.get(k), int | float) for k in ("mean", "sd", "min", "max", "n")
            )
            return found if ok and found["n"] > 1 else None
    return None


def is_comparable(exp: ExperimentRecord) -> bool:
    """Whether the run's data are the data of the published numbers (not the sample, not a
    stand-in dataset)."""
    return bool(exp.data.get("comparable", not exp.is_sample)) and not exp.is_sample


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
    try:
        member = exp.member(label)
    except ReportError:
        return Comparison(what, label, metric, published, None, None, tolerance, "missing")
    label = member.label
    value = member.metrics.get(metric)
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        return Comparison(what, label, metric, published, None, None, tolerance, "missing")
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
    if acc:
        meets = reproduced >= published
    elif lower_is_better(metric):
        meets = reproduced <= published
    else:  # no better direction (best epoch, weight norm): only equal meets
        meets = reproduced == published
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
    return Comparison(what, label, metric, published, reproduced, diff, tolerance, status, spread)


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


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def machine() -> str:
    """Platform, CPU model and count, Python version."""
    cpu = cpu_model()
    parts = [platform.platform(), f"{os.cpu_count()} CPUs" + (f" ({cpu})" if cpu else "")]
    parts.append(f"Python {sys.version.split()[0]}")
    return ", ".join(parts)


# ---------------------------------------------------------------------------------- content
@dataclass
class FigureEntry:
    kind: str
    number: str
    caption: str
    png: Path | None
    error: str | None


def _caption(exp: ExperimentRecord, kind: str) -> str:
    chosen = exp.chosen or (exp.members[0].label if exp.members else "")
    text = CAPTIONS[kind].format(chosen=f"the chosen setting ({chosen})" if chosen else "the run")
    if kind == "weight_diff" and len(exp.members) >= 2:
        text = text.replace("the first two", f"({exp.members[0].label}) − ({exp.members[1].label})")
    return text


def prepare_figures(exp: ExperimentRecord, index: int, redraw: bool) -> list[FigureEntry]:
    """Draw missing or stale figures of ``exp``; one entry per listed figure kind."""
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
            FigureEntry(kind, f"{index}.{j}", _caption(exp, kind), None if error else png, error)
        )
    return entries


def member_rows(exp: ExperimentRecord) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the members table (accuracies, best epoch, epochs, stop reason)."""
    has_val = any("val_acc" in m.metrics for m in exp.members)
    has_best = any("best_epoch" in m.metrics for m in exp.members)
    header = ["setting", "train acc"] + (["val acc"] if has_val else []) + ["test acc"]
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

        row = [m.label + (" (chosen)" if m.label == exp.chosen else "")]
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


def lbfgs_rows(exp: ExperimentRecord) -> tuple[list[str], list[list[str]]]:
    header = [
        "setting",
        "GD objective",
        "L-BFGS objective",
        "gradient norm",
        "L-BFGS train",
        "L-BFGS val",
        "L-BFGS test",
        "L-BFGS seconds",
    ]
    rows = []
    for m in exp.members:
        lb = m.lbfgs
        if not lb:
            continue
        rows.append(
            [
                m.label,
                fmt_value("objective", lb.get("gd_objective")),
                fmt_value("objective", lb.get("objective")),
                fmt_value("grad_norm", lb.get("grad_norm")),
                fmt_value("train_acc", lb.get("train_acc")),
                fmt_value("val_acc", lb.get("val_acc")),
                fmt_value("test_acc", lb.get("test_acc")),
                fmt_value("seconds", lb.get("seconds")),
            ]
        )
    return header, rows


# ---------------------------------------------------------------------------------- HTML
def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


class Raw(str):
    """A table cell that is already HTML (escaped where needed)."""


def paragraphs(text: str) -> list[list[str]]:
    """Paragraphs (split at blank lines) of wrapped prose, each a list of its lines."""
    out: list[list[str]] = [[]]
    for line in text.strip().splitlines():
        if line.strip():
            out[-1].append(line.strip())
        elif out[-1]:
            out.append([])
    return [p for p in out if p]


def _joined(lines: list[str], sep: str) -> str:
    """Lines of one paragraph: kept apart when they are a list, else re-flowed."""
    if any(line.startswith(("- ", "* ")) or line[:2].rstrip(".").isdigit() for line in lines):
        return sep.join(lines)
    return " ".join(lines)


def _paragraphs_html(text: str) -> str:
    return "".join(
        f'<p class="text">{_joined([_e(x) for x in p], "<br>")}</p>' for p in paragraphs(text)
    )


def _anchor(exp: ExperimentRecord) -> str:
    return "exp-" + "".join(c if c.isalnum() or c in "-_" else "-" for c in exp.folder.name)


NUMBER = re.compile(r"[+-]?\d[\d.]*(e[+-]?\d+)?(%| pp| s)?")


def _html_table(header: list[str], rows: list[list[str]], classes: list[str] | None = None) -> str:
    """A table; numbers (97.20%, +1.01 pp, 2.5e-06) are right-aligned."""
    out = ["<table><thead><tr>", *(f"<th>{_e(h)}</th>" for h in header), "</tr></thead><tbody>"]
    for i, row in enumerate(rows):
        cls = f' class="{classes[i]}"' if classes and classes[i] else ""
        out.append(f"<tr{cls}>")
        for cell in row:
            num = ' class="num"' if NUMBER.fullmatch(cell) else ""
            out.append(f"<td{num}>{cell if isinstance(cell, Raw) else _e(cell)}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def png_size(data: bytes) -> tuple[int, int]:
    """``(width, height)`` in pixels from a PNG's header."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or len(data) < 24:
        raise ReportError("not a PNG file")
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _img_tag(png: Path, alt: str, figure_id: str) -> str:
    """An ``<img>`` with the PNG inline, shown at :data:`CSS_PX_PER_INCH` per figure inch."""
    raw = png.read_bytes()
    width = round(png_size(raw)[0] * CSS_PX_PER_INCH / DPI)
    data = base64.b64encode(raw).decode("ascii")
    return (
        f'<img src="data:image/png;base64,{data}" width="{width}" alt="{_e(alt)}" '
        f'data-figure="{_e(figure_id)}">'
    )


def _mark_html(c: Comparison) -> str:
    mark, cls = MARKS[c.status]
    titles = {
        "meets": "at or better than published",
        "within": f"within tolerance ({c.tolerance_text()})",
        "outside": f"outside tolerance ({c.tolerance_text()})",
        "missing": "metric missing from the run",
        "not comparable": "the run's data differ from the published numbers' data",
    }
    if c.spread and c.status in ("within", "outside"):
        titles[c.status] = f"published value {'inside' if c.status == 'within' else 'outside'} "
        titles[c.status] += "the seeds' range or mean ± 2 sd"
    return Raw(f'<span class="{cls}" title="{_e(titles[c.status])}">{mark} {_e(c.status)}</span>')


def _published_html(exp: ExperimentRecord, comps: list[Comparison]) -> str:
    rows = [
        [
            c.what,
            c.member,
            fmt_value(c.metric, c.published),
            fmt_value(c.metric, c.reproduced) + (f" ({c.spread})" if c.spread else ""),
            c.difference_text(),
            _mark_html(c),
        ]
        for c in comps
    ]
    header = ["what", "member", "published", "reproduced", "difference", "mark"]
    note = (
        f'<p class="note">✓ reproduced at or better than published; ≈ within tolerance '
        f"({ACC_TOLERANCE_PP:g} pp for accuracies, {REL_TOLERANCE:.0%} otherwise, unless the "
        f"experiment sets one; for members run over several seeds: the published value inside "
        f"the seeds' range or mean ± 2 sd); ✗ outside it; – not comparable (other data than the "
        f"published numbers').</p>"
    )
    return _html_table(header, rows) + note


def _experiment_html(
    exp: ExperimentRecord, figs: list[FigureEntry], comps: list[Comparison]
) -> str:
    parts = [f'<section class="experiment" id="{_anchor(exp)}">', f"<h2>{_e(exp.title)}</h2>"]
    where = [
        _e(f"source {exp.source}") if exp.source else "",
        _e(f"section {exp.section}") if exp.section else "",
        f"experiment <code>{_e(exp.name)}</code>",
        _e(f"run time {fmt_seconds(exp.seconds)}") if exp.seconds else "",
    ]
    parts.append(f'<p class="where">{" · ".join(w for w in where if w)}</p>')
    if exp.is_sample:
        parts.append(
            f'<div class="banner" data-sample="1"><strong>Sample data.</strong> '
            f"{_e(SAMPLE_BANNER)}</div>"
        )
    if exp.protocol:
        parts.append(f"<h3>Protocol</h3>{_paragraphs_html(exp.protocol)}")
    if exp.choices:
        parts.append(f"<h3>Choices</h3>{_paragraphs_html(exp.choices)}")
    data = exp.data
    if data:
        parts += [f'<p class="note">{_e(note)}</p>' for note in data_notes(data)]
    fig_iter = {f.kind: f for f in figs}
    table_done = False
    for kind in exp.figures:
        if kind == "table":
            parts.append(_members_html(exp))
            table_done = True
            continue
        f = fig_iter.get(kind)
        if f is None:
            continue
        if f.png is None:
            parts.append(
                f'<p class="missing" data-missing-figure="{_e(exp.folder.name)}/{_e(kind)}">'
                f"Figure {f.number} ({_e(kind)}) could not be drawn: {_e(f.error)}</p>"
            )
            continue
        parts.append(
            f"<figure>{_img_tag(f.png, f'{exp.title}: {kind}', f'{exp.folder.name}/{kind}')}"
            f"<figcaption><strong>Figure {f.number}.</strong> {_e(f.caption)}</figcaption>"
            "</figure>"
        )
        if kind == "lbfgs":
            header, rows = lbfgs_rows(exp)
            if rows:
                parts.append(_html_table(header, rows))
    if not table_done:
        parts.append(_members_html(exp))
    if comps:
        parts.append("<h3>Published vs reproduced</h3>" + _published_html(exp, comps))
        if exp.is_sample:
            parts.append(
                '<p class="note">Sample data: the rows are not comparable with the published '
                "numbers and are not counted.</p>"
            )
    kaggle = exp.folder / "kaggle.csv"
    if kaggle.is_file():
        href = f"{exp.folder.name}/kaggle.csv"
        parts.append(f'<p>Kaggle submission: <a href="{_e(href)}">{_e(href)}</a></p>')
    parts.append("</section>")
    return "\n".join(parts)


def _members_html(exp: ExperimentRecord) -> str:
    header, rows = member_rows(exp)
    classes = ["chosen" if m.label == exp.chosen else "" for m in exp.members]
    return "<h3>Settings</h3>" + _html_table(header, rows, classes=classes)


def _headline(comps: list[Comparison]) -> tuple[str, str]:
    """Summary cells: the first comparison and the count of marks."""
    if not comps:
        return "—", "—"
    c = comps[0]
    first = f"{fmt_value(c.metric, c.published)} → {fmt_value(c.metric, c.reproduced)}"
    counted = [x for x in comps if x.status != "not comparable"]
    good = sum(x.status in ("meets", "within") for x in counted)
    if not counted:
        return first, "not comparable"
    return first, f"{good}/{len(counted)}"


def _summary_html(exps: list[ExperimentRecord], comps: dict[str, list[Comparison]]) -> str:
    header = list(SUMMARY_COLUMNS)
    rows = []
    for exp in exps:
        first, count = _headline(comps[exp.folder.name])
        link = Raw(f'<a href="#{_anchor(exp)}">{_e(exp.title)}</a>')
        data = "sample ⚠" if exp.is_sample else str(exp.data.get("dataset", "—"))
        rows.append(
            [
                exp.source,
                exp.section,
                link,
                str(len(exp.members)),
                exp.chosen or "—",
                first,
                count,
                data,
                fmt_seconds(exp.seconds),
            ]
        )
    return _html_table(header, rows)


def render_html(
    exps: list[ExperimentRecord],
    figs: dict[str, list[FigureEntry]],
    comps: dict[str, list[Comparison]],
    header: dict[str, str],
) -> str:
    n_figs = sum(1 for f in (x for v in figs.values() for x in v) if f.png is not None)
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(header['title'])}</title><style>{CSS}</style></head>",
        f'<body data-figures="{n_figs}">',
        f"<header><h1>{_e(header['title'])}</h1>",
        *(
            f'<p class="meta">{_e(k)}: {_e(header[k])}</p>'
            for k in ("digitlab", "generated", "machine", "total run time")
        ),
        "</header>",
        '<section id="summary"><h2>Summary</h2>',
        _summary_html(exps, comps) if exps else "<p>No experiments found.</p>",
        "</section>",
        *(_experiment_html(e, figs[e.folder.name], comps[e.folder.name]) for e in exps),
        f"<script>{CHECK_SCRIPT}</script>",
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------------------------- Markdown
def _md_text(text: Any) -> str:
    """Text with HTML escaped (Markdown renderers pass raw HTML through)."""
    return html.escape(str(text), quote=False)


def _md(text: Any) -> str:
    """Text safe inside a Markdown table cell."""
    return _md_text(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _paragraphs_md(text: str) -> list[str]:
    out = []
    for p in paragraphs(text):
        out += [_joined([_md_text(x) for x in p], "  \n"), ""]
    return out


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = [
        "| " + " | ".join(_md(h) for h in header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    out += ["| " + " | ".join(_md(c) for c in row) + " |" for row in rows]
    return out + [""]


def render_markdown(
    exps: list[ExperimentRecord],
    figs: dict[str, list[FigureEntry]],
    comps: dict[str, list[Comparison]],
    header: dict[str, str],
    root: Path,
) -> str:
    lines = [f"# {header['title']}", ""]
    lines += [
        f"- {k}: {_md_text(header[k])}"
        for k in ("digitlab", "generated", "machine", "total run time")
    ]
    lines += ["", "## Summary", ""]
    rows = []
    for exp in exps:
        first, count = _headline(comps[exp.folder.name])
        rows.append(
            [
                exp.source,
                exp.section,
                exp.title,
                str(len(exp.members)),
                exp.chosen or "—",
                first,
                count,
                "sample" if exp.is_sample else str(exp.data.get("dataset", "—")),
                fmt_seconds(exp.seconds),
            ]
        )
    lines += _md_table(
        list(SUMMARY_COLUMNS),
        rows,
    )
    for exp in exps:
        lines += [f"## {_md_text(exp.title)}", ""]
        where = [
            _md_text(f"source {exp.source}") if exp.source else "",
            _md_text(f"section {exp.section}") if exp.section else "",
            f"experiment `{exp.name}`",
            f"run time {fmt_seconds(exp.seconds)}" if exp.seconds else "",
        ]
        lines += [" · ".join(w for w in where if w), ""]
        if exp.is_sample:
            lines += [f"> **Sample data.** {SAMPLE_BANNER}", ""]
        if exp.protocol:
            lines += ["### Protocol", ""] + _paragraphs_md(exp.protocol)
        if exp.choices:
            lines += ["### Choices", ""] + _paragraphs_md(exp.choices)
        for note in data_notes(exp.data):
            lines += [f"*{_md(note)}*", ""]
        entries = {f.kind: f for f in figs[exp.folder.name]}
        table_done = False
        for kind in exp.figures:
            if kind == "table":
                lines += ["### Settings", "", *_md_table(*member_rows(exp))]
                table_done = True
                continue
            f = entries.get(kind)
            if f is None:
                continue
            if f.png is None:
                lines += [f"**Figure {f.number} ({kind}) could not be drawn:** {_md(f.error)}", ""]
                continue
            rel = f.png.relative_to(root).as_posix()
            alt = _md_text(f"{exp.title}: {kind}").replace("[", "(").replace("]", ")")
            lines += [f"![{alt}]({rel})", "", f"*Figure {f.number}.* {_md_text(f.caption)}", ""]
            if kind == "lbfgs":
                header_l, rows_l = lbfgs_rows(exp)
                if rows_l:
                    lines += _md_table(header_l, rows_l)
        if not table_done:
            lines += ["### Settings", "", *_md_table(*member_rows(exp))]
        if comps[exp.folder.name]:
            lines += ["### Published vs reproduced", ""]
            lines += _md_table(
                ["what", "member", "published", "reproduced", "difference", "mark"],
                [
                    [
                        c.what,
                        c.member,
                        fmt_value(c.metric, c.published),
                        fmt_value(c.metric, c.reproduced) + (f" ({c.spread})" if c.spread else ""),
                        c.difference_text(),
                        f"{MARKS[c.status][0]} {c.status}",
                    ]
                    for c in comps[exp.folder.name]
                ],
            )
        if (exp.folder / "kaggle.csv").is_file():
            rel = (exp.folder / "kaggle.csv").relative_to(root).as_posix()
            lines += [f"Kaggle submission: [{rel}]({rel})", ""]
    return "\n".join(lines).rstrip() + "\n"


# ---------------------------------------------------------------------------------- entry
def write_report(
    runs_root: str | os.PathLike = "runs", *, redraw: bool = False
) -> tuple[Path, Path]:
    """Write ``runs_root/report.html`` and ``runs_root/report.md`` from the saved runs.

    Parameters
    ----------
    runs_root : path-like
        Folder holding ``<experiment>/experiment.json`` folders.
    redraw : bool
        Redraw every figure, not only those missing or older than their data.

    Returns
    -------
    (Path, Path)
        The HTML and Markdown files.

    Raises
    ------
    ReportError
        When ``runs_root`` does not exist or an ``experiment.json`` is malformed. A figure that
        cannot be drawn does not raise: the report says so in its place.
    """
    from digitlab import __version__

    root = Path(runs_root)
    if not root.is_dir():
        raise ReportError(f"{root}: no such folder")
    exps = find_experiments(root)
    figs = {e.folder.name: prepare_figures(e, i, redraw) for i, e in enumerate(exps, start=1)}
    comps = {e.folder.name: [compare(e, p) for p in e.published] for e in exps}
    header = {
        "title": "digitlab: reproduced experiments",
        "digitlab": __version__,
        "generated": datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "machine": machine(),
        "total run time": f"{fmt_seconds(sum(e.seconds for e in exps))} "
        f"({len(exps)} experiments, {sum(len(e.members) for e in exps)} runs)",
    }
    html_path, md_path = root / "report.html", root / "report.md"
    _write_text(html_path, render_html(exps, figs, comps, header))
    _write_text(md_path, render_markdown(exps, figs, comps, header, root))
    return html_path, md_path


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
