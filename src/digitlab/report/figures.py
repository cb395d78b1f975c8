"""Figures of an experiment, drawn from its saved run data into ``<experiment>/figures/``.

The drawers of the figure kinds that :mod:`digitlab.report.kinds` registers. Every drawer
takes an :class:`~digitlab.report.rundata.ExperimentRecord` and returns a
:class:`matplotlib.figure.Figure`; nothing touches pyplot, so no global figure state is kept.
Each kind is saved as ``<kind>.png`` (150 dpi) and ``<kind>.svg``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.ticker import PercentFormatter

from digitlab.errors import FileReadError, ReportError
from digitlab.fileio import atomic_write_bytes
from digitlab.runfiles import check_confusion

if TYPE_CHECKING:
    from digitlab.report.rundata import ExperimentRecord, MemberRecord

DPI = 150
#: Split keys in history/metrics, their names in figures, and their colours.
SPLITS = (("train", "train", "C0"), ("val", "validation", "C1"), ("test", "test", "C2"))
STYLE = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "svg.hashsalt": "digitlab",
    "image.interpolation": "nearest",
}
GOOD, BAD = "#1a7f37", "#cf222e"


# ---------------------------------------------------------------------------------- helpers
def _figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def _finite(values: np.ndarray | None) -> bool:
    return values is not None and bool(np.isfinite(values).any())


def _line_style(n: int) -> dict[str, object]:
    """Markers when there are few points, so single evaluations stay visible."""
    return {"marker": "o", "markersize": 3} if n <= 30 else {}


def _zoom(ax: Axes, series: Iterable[np.ndarray], higher_better: bool) -> None:
    """Keep a few off-scale early values (huge first losses) from flattening the curves."""
    values = np.concatenate([s[np.isfinite(s)] for s in series] or [np.zeros(0)])
    if values.size < 5:
        return
    lo, hi = float(values.min()), float(values.max())
    if higher_better:
        robust = float(np.percentile(values, 5))
        if robust - lo > 0.25 * (hi - lo) > 0:
            ax.set_ylim(bottom=robust - 0.1 * (hi - robust))
    else:
        robust = float(np.percentile(values, 95))
        if hi - robust > 0.75 * (hi - lo) > 0:
            ax.set_ylim(top=robust + 0.15 * (robust - lo), bottom=max(0.0, lo - 0.05 * robust))


def _percent(ax: Axes) -> None:
    """Accuracy axis in percent, never above 100%."""
    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=None))
    bottom, top = ax.get_ylim()
    if top > 1.0 >= bottom:
        ax.set_ylim(top=1.0 + 0.01 * (1.0 - bottom))


def _image(ax: Axes, img: np.ndarray, signed: bool) -> None:
    """Show one image: signed weights in grey around 0 (bright = positive), or pixels 0..255."""
    if signed:
        m = float(np.abs(img).max()) or 1.0
        ax.imshow(img, cmap="gray", vmin=-m, vmax=m)
    else:
        ax.imshow(img, cmap="gray", vmin=0, vmax=255)
    _bare(ax)


def _bare(ax: Axes) -> None:
    """No axis at all (ticks and frames cost time to lay out)."""
    ax.set_axis_off()


def _frame(ax: Axes, color: str, width: float) -> None:
    """A coloured frame around an axis-less image."""
    ax.add_patch(
        Rectangle(
            (0, 0), 1, 1, transform=ax.transAxes, fill=False, ec=color, lw=width, clip_on=False
        )
    )


def _note(ax: Axes, text: str) -> None:
    """A small note under an axis-less image."""
    ax.text(0.5, -0.03, text, transform=ax.transAxes, ha="center", va="top", fontsize=8)


Tile = tuple[np.ndarray, bool, str]  # image (h, w), signed?, title
TILE_PAD, TILE_TOP, TILE_PX_PER_INCH = 3, 11, 27.0


def _tiles_layout(rows: list[list[Tile | None]]) -> tuple[int, int, int, int, list[int]]:
    """``(H, W, h, w, tops)``: pixels of the grid picture, of one tile, and each row's top.

    Rows with titles leave room for them above the tiles; others only a small gap.
    """
    first = next(t for row in rows for t in row if t is not None)
    h, w = first[0].shape
    ncols = max(len(r) for r in rows)
    tops, y = [], 0
    for row in rows:
        y += TILE_TOP if any(t is not None and t[2] for t in row) else TILE_PAD
        tops.append(y)
        y += h
    return y + TILE_PAD, ncols * (w + TILE_PAD) + TILE_PAD, h, w, tops


def _draw_tiles(ax: Axes, rows: list[list[Tile | None]], labels: list[str] | None = None) -> None:
    """Draw a grid of images into ``ax`` as a single picture.

    Each tile is scaled on its own (signed weights: grey around 0, bright = positive; pixels:
    0..255) and titled above; ``labels`` name the rows. One image instead of one axes per
    tile keeps large grids fast to lay out and small as SVG.
    """
    H, W, h, w, tops = _tiles_layout(rows)
    canvas = np.ones((H, W))
    for r, row in enumerate(rows):
        y = tops[r]
        for c, tile in enumerate(row):
            if tile is None:
                continue
            img, signed, title = tile
            x = TILE_PAD + c * (w + TILE_PAD)
            if signed:
                m = float(np.abs(img).max()) or 1.0
                canvas[y : y + h, x : x + w] = 0.5 + 0.5 * img / m
            else:
                canvas[y : y + h, x : x + w] = np.clip(img / 255.0, 0, 1)
            if title:
                ax.text(x + w / 2, y - 1.5, title, ha="center", va="bottom", fontsize=7.5)
        if labels and labels[r]:
            ax.text(-1, y + h / 2, labels[r], ha="right", va="center", rotation=90, fontsize=7.5)
    ax.imshow(canvas, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()


def _tiles(rows: list[list[Tile | None]], labels: list[str] | None = None) -> tuple[Figure, Axes]:
    """A figure holding one grid picture (see :func:`_draw_tiles`), about 1 inch per tile."""
    H, W = _tiles_layout(rows)[:2]
    fig = _figure(W / TILE_PX_PER_INCH + 0.5, H / TILE_PX_PER_INCH + 0.5)
    ax = fig.subplots()
    _draw_tiles(ax, rows, labels)
    return fig, ax


def _fmt(value: float) -> str:
    """A number for labels: 0.0001, 10, 11.72 (at most 2 decimals unless tiny)."""
    return f"{value:g}" if abs(value) < 0.01 else f"{round(value, 2):g}"


def _stop_text(m: MemberRecord) -> str:
    """Early-stopping summary of a member for legends ("" when it did not early-stop)."""
    best = m.metrics.get("best_epoch")
    if m.metrics.get("early_stopped"):
        stop = m.metrics.get("epochs")
        where = f"stopped at epoch {_fmt(stop)}" if stop is not None else "stopped early"
        return f"{where}, best {_fmt(best)}" if best is not None else where
    if best is not None:
        return f"best epoch {_fmt(best)}"
    return ""


def _mark_epochs(ax: Axes, m: MemberRecord, label: bool) -> None:
    """Dashed line at the restored best epoch, dotted lines where later stages start."""
    best = m.metrics.get("best_epoch")
    if best is not None and m.x_axis()[1] == "epoch":
        ax.axvline(
            best, color="0.35", ls="--", lw=1, label=f"best epoch ({_fmt(best)})" if label else None
        )
    for i, start in enumerate(m.stage_starts):
        ax.axvline(
            start, color="0.6", ls=":", lw=1.2, label="stage start" if label and i == 0 else None
        )


def _series(m: MemberRecord, *keys: str) -> tuple[np.ndarray, str] | None:
    """The first of ``keys`` present with finite values in the member's history."""
    for key in keys:
        values = m.history.get(key)
        if _finite(values):
            return values, key
    return None


#: Helpers shared with the drawers of :mod:`digitlab.report.inside`.
new_figure, bare, frame, line_style, mark_epochs = (
    _figure, _bare, _frame, _line_style, _mark_epochs
)


# ---------------------------------------------------------------------------------- drawers
def draw_curves(exp: ExperimentRecord) -> Figure:
    """Loss and accuracy over training of the chosen member, train/validation/test."""
    m = exp.member("chosen")
    x, xlabel = m.x_axis()
    fig = _figure(10, 3.8)
    ax_loss, ax_acc = fig.subplots(1, 2)
    drawn = 0
    for ax, metric in ((ax_loss, "loss"), (ax_acc, "acc")):
        lines = []
        for key, name, color in SPLITS:
            y = m.history.get(f"{key}_{metric}")
            if _finite(y):
                ax.plot(x, y, color=color, label=name, **_line_style(len(x)))
                lines.append(y)
                drawn += 1
        _zoom(ax, lines, higher_better=metric == "acc")
        _mark_epochs(ax, m, label=metric == "acc")
        ax.set_xlabel(xlabel)
        ax.legend(loc="best")
    if not drawn:
        raise ReportError(f"{m.folder}: history.csv has no loss or accuracy columns")
    ax_loss.set(ylabel="loss (mean cross-entropy)", title="Loss over training")
    ax_acc.set(ylabel="accuracy (percent correct)", title="Accuracy over training")
    _percent(ax_acc)
    fig.suptitle(f"{exp.title}: {m.label}")
    return fig


def _means_for(exp: ExperimentRecord, names: list[str]) -> list[np.ndarray | None]:
    """Class-mean image for each class name (by name, else by position), None where absent."""
    found = exp.class_means()
    if found is None:
        return [None] * len(names)
    means, mnames = found
    by_name = dict(zip(mnames, means, strict=False))
    if all(n in by_name for n in names):
        return [by_name[n] for n in names]
    if len(means) == len(names):
        return list(means)
    return [None] * len(names)


def draw_weights(exp: ExperimentRecord) -> Figure:
    """Weight images of the chosen member, with the class means where they were saved."""
    m = exp.member("chosen")
    wi = m.weight_images()
    if wi.columns == "unit":
        ncols = min(5, len(wi.images))
        tiles = [(img, True, t) for img, t in zip(wi.images, wi.titles, strict=True)]
        fig, _ = _tiles([tiles[i : i + ncols] for i in range(0, len(tiles), ncols)])
        fig.suptitle(f"Input weights of the first {len(wi.images)} hidden units\n({m.label})")
        return fig
    if wi.columns == "pair":
        neg, pos = (m.classes + ["0", "1"])[:2]
        means = _means_for(exp, [pos, neg])
        panels = [(wi.images[0], f"weights: {wi.titles[0]}", True)]
        panels += [
            (mu, f"mean {c}", False)
            for mu, c in zip(means, (pos, neg), strict=True)
            if mu is not None
        ]
        fig = _figure(2.3 * len(panels) + 0.4, 2.7)
        axes = np.atleast_1d(fig.subplots(1, len(panels), squeeze=False)).ravel()
        for ax, (img, title, signed) in zip(axes, panels, strict=True):
            _image(ax, img, signed)
            ax.set_title(title)
        _note(axes[0], f"bright: {pos}, dark: {neg}")
        fig.suptitle(f"Logistic regression weights ({m.label})")
        return fig
    means = _means_for(exp, wi.titles)
    have_means = any(mu is not None for mu in means)
    k = len(wi.images)
    ncols = min(k, 13)
    rows: list[list[Tile | None]] = []
    labels = []
    for start in range(0, k, ncols):
        idx = range(start, min(start + ncols, k))
        rows.append([(wi.images[i], True, wi.titles[i]) for i in idx])
        labels.append("weights")
        if have_means:
            rows.append([None if means[i] is None else (means[i], False, "") for i in idx])
            labels.append("class mean")
    fig, _ = _tiles(rows, labels)
    what = "weights and average training image" if have_means else "weights"
    fig.suptitle(f"Softmax regression: {what} per class ({m.label})")
    return fig


def _diff_title(a: MemberRecord, b: MemberRecord) -> tuple[str, str]:
    """Title and bright/dark note of the image ``W_a - W_b`` of two logistic members."""
    (neg_a, pos_a), (neg_b, pos_b) = (a.classes + ["0", "1"])[:2], (b.classes + ["0", "1"])[:2]
    if pos_a == pos_b:  # (p - n_a) - (p - n_b) = n_b - n_a
        return f"difference ({neg_a} vs {neg_b})", f"bright: {neg_b}, dark: {neg_a}"
    if neg_a == neg_b:  # (p_a - n) - (p_b - n) = p_a - p_b
        return f"difference ({pos_a} vs {pos_b})", f"bright: {pos_a}, dark: {pos_b}"
    return f"difference ({a.label}) − ({b.label})", ""


def draw_weight_diff(exp: ExperimentRecord) -> Figure:
    """Each logistic member's weight image and the difference member[0] - member[1]."""
    if len(exp.members) < 2:
        raise ReportError(f"{exp.folder}: weight_diff needs two members")
    wis = [m.weight_images() for m in exp.members]
    if any(w.kind != "logistic" for w in wis):
        raise ReportError(f"{exp.folder}: weight_diff needs logistic members")
    a, b = exp.members[:2]
    title, note = _diff_title(a, b)
    panels = [(w.images[0], w.titles[0], m) for w, m in zip(wis, exp.members, strict=True)]
    fig = _figure(2.4 * (len(panels) + 1) + 0.3, 2.9)
    axes = fig.subplots(1, len(panels) + 1, squeeze=False)[0]
    for ax, (img, t, m) in zip(axes, panels, strict=False):
        _image(ax, img, signed=True)
        ax.set_title(t)
        neg, pos = (m.classes + ["0", "1"])[:2]
        name = f"{m.label}\n" if m.label != t else ""
        _note(ax, f"{name}bright: {pos}, dark: {neg}")
    _image(axes[-1], wis[0].images[0] - wis[1].images[0], signed=True)
    axes[-1].set_title(title)
    _note(axes[-1], f"({a.label}) − ({b.label})\n{note}".rstrip())
    fig.suptitle("Logistic regression weights and their difference")
    return fig


def _sweep_groups(
    exp: ExperimentRecord,
) -> tuple[dict[str, list[MemberRecord]], list[MemberRecord]]:
    """Members by penalty type (sorted by lambda), and the unpenalised members."""
    groups: dict[str, list[MemberRecord]] = {}
    zero: list[MemberRecord] = []
    for m in exp.members:
        kind, _ = m.penalty
        (zero if kind == "none" else groups.setdefault(kind, [])).append(m)
    for ms in groups.values():
        ms.sort(key=lambda m: m.penalty[1])
    return groups, zero


def _sweep_tiles(
    columns: dict[str, list[MemberRecord]], refs: list[MemberRecord], weights: list
) -> tuple[list[list[Tile | None]], list[str]]:
    """Weight tiles and row labels: a row per penalty type (one image per member), else a
    row of images per member."""
    tiles: list[list[Tile | None]] = []
    labels = []
    if all(len(w.images) == 1 for _, w in weights):
        lookup = {id(m): w for m, w in weights}
        for row in ([refs] if refs else []) + list(columns.values()):
            tiles.append([])
            for m in row:
                kind, lam = m.penalty
                title = f"λ = {_fmt(lam)}" if kind != "none" else m.label
                tiles[-1].append((lookup[id(m)].images[0], True, title))
            kind = row[0].penalty[0]
            labels.append(kind if kind != "none" else "no penalty")
    else:
        for r, (m, w) in enumerate(weights):
            titles = w.titles if r == 0 else [""] * len(w.titles)
            tiles.append([(img, True, t) for img, t in zip(w.images, titles, strict=True)])
            labels.append(m.label)
    return tiles, labels


def _sweep_curves(ax_acc: Axes, ax_norm: Axes, name: str, styled: list, by_lambda: bool) -> None:
    """Validation accuracy and weight norm over training of one penalty type's members."""
    accs, split, xlabel = [], "validation", "epoch"
    for m, style in styled:
        x, xlabel = m.x_axis()
        kind, lam = m.penalty
        label = f"λ = {_fmt(lam)}" if kind != "none" and by_lambda else m.label
        acc = _series(m, "val_acc", "test_acc")
        if acc is not None:
            ax_acc.plot(x, acc[0], label=label, **style)
            accs.append(acc[0])
            split = "validation" if acc[1] == "val_acc" else "test"
        norm = _series(m, "weight_norm")
        if norm is not None:
            ax_norm.plot(x, norm[0], label=label, **style)
    _zoom(ax_acc, accs, higher_better=True)
    ax_acc.set(title=f"{name}: {split} accuracy", xlabel=xlabel, ylabel=f"{split} accuracy")
    _percent(ax_acc)
    ax_norm.set(
        title=f"{name}: length of the weight vector", xlabel=xlabel, ylabel="weight norm ‖w‖₂"
    )
    for ax in (ax_acc, ax_norm):
        ax.legend(fontsize=7)


def _sweep_finals(
    ax: Axes, key: str, what: str, groups: dict[str, list[MemberRecord]], zero: list[MemberRecord]
) -> None:
    """A final metric against lambda (one line per penalty type), or per setting."""
    if groups:  # one line per penalty type over lambda; unpenalised runs as references
        for name, ms in groups.items():
            values = [m.metrics.get(key, np.nan) for m in ms]
            ax.plot([m.penalty[1] for m in ms], values, marker="o", label=name)
        for m in zero:
            if key in m.metrics:
                ax.axhline(m.metrics[key], color="0.2", ls="--", lw=1,
                           label=f"{m.label} (λ = 0)")  # fmt: skip
        ax.set_xscale("log")
        ax.set(xlabel="λ (log scale)", title=f"{what[0].upper()}{what[1:]} vs λ")
        ax.legend(fontsize=7)
    else:  # nothing penalised: one bar per setting
        ax.bar([m.label for m in zero], [m.metrics.get(key, np.nan) for m in zero])
        ax.set(title=f"{what[0].upper()}{what[1:]} per setting")
        ax.tick_params(axis="x", labelrotation=20 if len(zero) > 3 else 0)
    ax.set_ylabel(what)


def draw_sweep(exp: ExperimentRecord) -> Figure:
    """A penalty sweep: validation accuracy and weight norm over training per penalty type,
    final test accuracy and weight norm against lambda, and every member's weight images."""
    groups, zero = _sweep_groups(exp)
    columns = dict(groups) if groups else {"no penalty": zero}
    refs = zero if groups else []
    ncols = len(columns) + 1
    ordered = [*refs, *(m for ms in columns.values() for m in ms)]
    weights = [(m, m.weight_images(max_units=10)) for m in ordered]
    tiles, labels = _sweep_tiles(columns, refs, weights)
    H, W = _tiles_layout(tiles)[:2]
    top_h, bottom_h = 5.8, H / TILE_PX_PER_INCH + 0.5
    width = max(3.6 * ncols, W / TILE_PX_PER_INCH + 1.2)
    fig = _figure(width, top_h + bottom_h)
    top, bottom = fig.subfigures(2, 1, height_ratios=[top_h, bottom_h])
    axes = top.subplots(2, ncols, squeeze=False)
    for j, (name, ms) in enumerate(columns.items()):
        colors = matplotlib.colormaps["viridis"](np.linspace(0.0, 0.85, max(len(ms), 1)))
        styled = [(m, {"color": c}) for m, c in zip(ms, colors, strict=True)]
        styled += [(m, {"color": "0.2", "ls": "--"}) for m in refs]
        _sweep_curves(axes[0, j], axes[1, j], name, styled, bool(groups))
    _sweep_finals(axes[0, -1], "test_acc", "final test accuracy", groups, zero)
    _sweep_finals(axes[1, -1], "weight_norm", "final weight norm ‖w‖₂", groups, zero)
    _percent(axes[0, -1])

    _draw_tiles(bottom.subplots(), tiles, labels)
    bottom.suptitle("Weights of each setting (bright = positive)", fontsize=10)
    fig.suptitle(f"{exp.title}: regularisation sweep")
    return fig


def draw_shuffle(exp: ExperimentRecord) -> Figure:
    """Validation accuracy and loss over training of every member on shared axes."""
    fig = _figure(10, 3.9)
    ax_acc, ax_loss = fig.subplots(1, 2)
    xlabel = "epoch"
    drawn: dict[str, list[np.ndarray]] = {"acc": [], "loss": []}
    for i, m in enumerate(exp.members):
        x, xlabel = m.x_axis()
        stop = _stop_text(m)
        label = f"{m.label} ({stop})" if stop else m.label
        color = f"C{i % 10}"
        for ax, what in ((ax_acc, "acc"), (ax_loss, "loss")):
            s = _series(m, f"val_{what}", f"test_{what}")
            if s is not None:
                ax.plot(x, s[0], color=color, label=label, lw=1.2)
                drawn[what].append(s[0])
        best = m.metrics.get("best_epoch")
        if best is not None and xlabel == "epoch":
            for ax in (ax_acc, ax_loss):
                ax.axvline(best, color=color, ls=":", lw=1)
    if not drawn["acc"]:
        raise ReportError(f"{exp.folder}: no member has validation curves")
    _zoom(ax_acc, drawn["acc"], higher_better=True)
    _zoom(ax_loss, drawn["loss"], higher_better=False)
    ax_acc.set(title="Validation accuracy", xlabel=xlabel, ylabel="validation accuracy")
    ax_loss.set(
        title="Validation loss (dotted: best epoch)",
        xlabel=xlabel,
        ylabel="validation loss (mean cross-entropy)",
    )
    _percent(ax_acc)
    ax_acc.legend(loc="best")
    ax_loss.legend(loc="best")
    fig.suptitle(exp.title)
    return fig


def draw_overlay(exp: ExperimentRecord) -> Figure:
    """Loss and accuracy over training of every member on shared axes: validation (test
    where there is none) solid, training dashed, one colour per member."""
    fig = _figure(10, 3.9)
    ax_loss, ax_acc = fig.subplots(1, 2)
    xlabel = "epoch"
    drawn: dict[str, list[np.ndarray]] = {"loss": [], "acc": []}
    handles = []
    for i, m in enumerate(exp.members):
        x, xlabel = m.x_axis()
        color = f"C{i % 10}"
        handles.append(Line2D([], [], color=color, label=m.label))
        for ax, what in ((ax_loss, "loss"), (ax_acc, "acc")):
            for keys, style in (((f"val_{what}", f"test_{what}"), "-"), ((f"train_{what}",), "--")):
                s = _series(m, *keys)
                if s is not None:
                    ax.plot(x, s[0], color=color, ls=style, lw=1.2, **_line_style(len(x)))
                    drawn[what].append(s[0])
    if not drawn["loss"] and not drawn["acc"]:
        raise ReportError(f"{exp.folder}: no run has loss or accuracy curves")
    handles += [
        Line2D([], [], color="0.3", label="validation (or test)"),
        Line2D([], [], color="0.3", ls="--", label="training"),
    ]
    _zoom(ax_loss, drawn["loss"], higher_better=False)
    _zoom(ax_acc, drawn["acc"], higher_better=True)
    ax_loss.set(title="Loss over training", xlabel=xlabel, ylabel="loss (mean cross-entropy)")
    ax_acc.set(title="Accuracy over training", xlabel=xlabel, ylabel="accuracy (percent correct)")
    _percent(ax_acc)
    ax_acc.legend(handles=handles, loc="best")
    fig.suptitle(exp.title)
    return fig


def _class_names(exp: ExperimentRecord, m: MemberRecord, k: int) -> list[str]:
    try:
        names = m.classes
    except ReportError:
        names = []
    if len(names) == k:
        return names
    found = exp.class_means()
    if found is not None and len(found[1]) == k:
        return found[1]
    return [str(i) for i in range(k)]


def draw_confusion(exp: ExperimentRecord) -> Figure:
    """The chosen member's confusion matrix on the test set (rows true, columns predicted)."""
    m = exp.member("chosen")
    if "confusion_test" not in m.metrics:
        raise ReportError(f"{m.folder}: metrics.json has no confusion_test")
    try:
        classes = len(m.classes) or None
    except ReportError:
        classes = None
    try:
        check_confusion(m.metrics["confusion_test"], f"{m.folder}", classes)
    except FileReadError as exc:
        raise ReportError(str(exc)) from None
    cm = np.asarray(m.metrics["confusion_test"], dtype=np.int64)
    k = cm.shape[0]
    names = _class_names(exp, m, k)
    rows = np.maximum(cm.sum(axis=1, keepdims=True), 1)
    frac = cm / rows
    size = max(4.2, 0.42 * k + 2.0)
    fig = _figure(size + 1.0, size)
    ax = fig.subplots()
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    ax.grid(False)
    fontsize = 9 if k <= 10 else 7 if k <= 16 else 5.5
    for i in range(k):
        for j in range(k):
            if cm[i, j] == 0 and k > 12:
                continue
            ax.text(
                j,
                i,
                str(cm[i, j]),
                ha="center",
                va="center",
                fontsize=fontsize,
                color="white" if frac[i, j] > 0.55 else "black",
            )
    ax.set_xticks(range(k), names)
    ax.set_yticks(range(k), names)
    ax.set(xlabel="predicted class", ylabel="true class")
    acc = np.trace(cm) / max(cm.sum(), 1)
    ax.set_title(
        f"Confusion matrix on the test set ({m.label})\n{cm.sum()} test images, accuracy {acc:.2%}"
    )
    fig.colorbar(im, ax=ax, shrink=0.8, label="fraction of the true class")
    return fig


def draw_lbfgs(exp: ExperimentRecord) -> Figure:
    """GD against the exact L-BFGS optimum: objective and accuracies per member."""
    ms = [m for m in exp.members if m.lbfgs]
    if not ms:
        raise ReportError(f"{exp.folder}: no member has lbfgs.json")
    n = len(ms)
    x = np.arange(n)
    fig = _figure(max(9.0, 2.2 * n + 4), 3.9)
    ax_obj, ax_acc = fig.subplots(1, 2)
    gd = [float(m.lbfgs.get("gd_objective", m.metrics.get("train_objective", np.nan))) for m in ms]
    lb = [float(m.lbfgs.get("objective", np.nan)) for m in ms]
    width = 0.38
    for offset, values, label, color in (
        (-width / 2, gd, "gradient descent", "C0"),
        (width / 2, lb, "L-BFGS optimum", "C3"),
    ):
        bars = ax_obj.bar(x + offset, values, width, label=label, color=color)
        ax_obj.bar_label(bars, fmt="%.4g", fontsize=7, padding=2)
    ax_obj.set_xticks(x, [m.label for m in ms], rotation=20 if n > 3 else 0)
    ax_obj.set(ylabel="training objective (lower is better)", title="Objective reached")
    positive = [v for v in gd + lb if v > 0]
    if positive and max(positive) > 100 * min(positive):
        ax_obj.set_yscale("log")
        ax_obj.set_ylabel("training objective (log scale, lower is better)")
    ax_obj.margins(y=0.25)
    ax_obj.legend(loc="upper left", ncols=2)
    for s, (key, _name, color) in enumerate(SPLITS):
        dx = (s - 1) * 0.22
        gd_acc = [m.metrics.get(f"{key}_acc", np.nan) for m in ms]
        lb_acc = [m.lbfgs.get(f"{key}_acc", np.nan) for m in ms]
        ax_acc.plot(x + dx - 0.04, gd_acc, "o", color=color, ls="none")
        ax_acc.plot(x + dx + 0.04, lb_acc, "x", color=color, ls="none", ms=7, mew=2)
    ax_acc.set_xticks(x, [m.label for m in ms], rotation=20 if n > 3 else 0)
    ax_acc.set_xlim(-0.6, n - 0.4)
    ax_acc.set(ylabel="accuracy", title="Accuracy: gradient descent (o) vs L-BFGS (x)")
    _percent(ax_acc)
    handles = [Line2D([], [], color=c, marker="s", ls="none", label=name) for _, name, c in SPLITS]
    handles += [
        Line2D([], [], color="0.3", marker="o", ls="none", label="gradient descent"),
        Line2D([], [], color="0.3", marker="x", ls="none", mew=2, label="L-BFGS"),
    ]
    ax_acc.legend(handles=handles, fontsize=7, loc="best")
    fig.suptitle(f"{exp.title}: gradient descent against the exact optimum")
    return fig


def draw_gallery(exp: ExperimentRecord, max_each: int = 24) -> Figure:
    """Grid of right and wrong predictions ("true x / predicted y"), wrong ones in red."""
    g = exp.gallery()
    images, labels, preds = g["images"], np.asarray(g["labels"]), np.asarray(g["preds"])
    classes = [str(c) for c in g.get("classes", [])]
    if len(images) == 0:
        raise ReportError(f"{exp.folder}: gallery.npz holds no images")

    def name(i: int) -> str:
        return classes[i] if 0 <= i < len(classes) else str(i)

    known = labels >= 0
    right = np.flatnonzero(known & (labels == preds))[:max_each]
    wrong = np.flatnonzero(known & (labels != preds))[:max_each]
    unknown = np.flatnonzero(~known)[:max_each]
    order = np.concatenate([right, wrong, unknown]).astype(int)
    ncols = min(8, len(order))
    nrows = math.ceil(len(order) / ncols)
    fig = _figure(1.3 * ncols + 0.2, 1.45 * nrows + 0.5)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, i in zip(axes, order, strict=False):
        ax.imshow(images[i], cmap="gray")
        _bare(ax)
        if labels[i] < 0:
            ax.set_title(f"predicted {name(preds[i])}", fontsize=7)
            continue
        ok = labels[i] == preds[i]
        color = GOOD if ok else BAD
        ax.set_title(
            f"true {name(labels[i])} / predicted {name(preds[i])}",
            fontsize=7,
            color=color,
            fontweight="normal" if ok else "bold",
        )
        _frame(ax, color, 1.0 if ok else 2.5)
    for ax in axes[len(order) :]:
        ax.set_visible(False)
    parts = [f"{len(right)} right (green)", f"{len(wrong)} wrong (red, bold)"]
    if len(unknown):
        parts.append(f"{len(unknown)} unlabelled")
    fig.suptitle(f"Predictions: {', '.join(parts)}")
    return fig


def seed_values(exp: ExperimentRecord, label: str, metric: str) -> list[float]:
    """The values of ``metric`` over the seeds of member ``label`` (empty: one run only)."""
    try:
        member = exp.member(label)
    except ReportError:
        return []
    runs = (member.repeats or {}).get("runs") or []
    values = [r.get(metric) for r in runs if isinstance(r, dict)]
    ok = [float(v) for v in values if isinstance(v, int | float) and math.isfinite(v)]
    return ok if len(ok) > 1 else []


def draw_spread(exp: ExperimentRecord) -> Figure:
    """Where each published number falls among the results of a member's random seeds."""
    panels = []
    for p in exp.published:
        try:
            label = exp.entry_member(p).label  # "chosen": the chosen member of p's task
        except ReportError:
            continue
        metric = str(p.get("metric"))
        values = seed_values(exp, label, metric)
        if values and isinstance(p.get("value"), int | float):
            panels.append((str(p.get("what") or metric), metric, values, float(p["value"])))
    if not panels:
        raise ReportError(f"{exp.folder}: no published number has a member run over seeds")
    panels = panels[:4]
    fig = _figure(max(7.0, 4.2 * len(panels)), 3.2)
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, (what, metric, values, published) in zip(axes, panels, strict=True):
        v = np.asarray(values)
        jitter = np.linspace(-0.15, 0.15, len(v))
        ax.scatter(v, jitter, color="C0", zorder=3, label=f"{len(v)} seeds")
        mean, sd = v.mean(), v.std(ddof=1)
        ax.errorbar(mean, -0.4, xerr=2 * sd, fmt="o", color="C0", capsize=4,
                    label="mean ± 2 sd")  # fmt: skip
        ax.axvline(published, color="C3", lw=2, label="published")
        lo = min(v.min(), mean - 2 * sd, published)
        hi = max(v.max(), mean + 2 * sd, published)
        pad = 0.1 * (hi - lo) or 0.01
        ax.set(xlim=(lo - pad, hi + pad), ylim=(-0.8, 0.5), yticks=[])
        ax.set_title(what if len(what) <= 48 else what[:47] + "…", fontsize=8)
        if metric.endswith("_acc"):
            ax.xaxis.set_major_formatter(PercentFormatter(1.0, decimals=1))
        ax.set_xlabel(metric)
        ax.legend(loc="upper left", fontsize=7)
    fig.suptitle(exp.title, fontsize=9)
    return fig


# ---------------------------------------------------------------------------------- saving
def figure_paths(exp_folder: str | os.PathLike, kind: str) -> tuple[Path, Path]:
    """``(png, svg)`` paths of one figure kind of an experiment."""
    folder = Path(exp_folder) / "figures"
    return folder / f"{kind}.png", folder / f"{kind}.svg"


def _save(fig: Figure, path: Path, fmt: str, inside: Path) -> None:
    """Save atomically (a new temporary file, then rename; no link followed below ``inside``)."""
    metadata = {"Date": None} if fmt == "svg" else {"Software": None}
    atomic_write_bytes(
        path, lambda f: fig.savefig(f, format=fmt, dpi=DPI, metadata=metadata), inside=inside
    )


def save_figure(fig: Figure, png: Path, svg: Path, inside: Path) -> None:
    """Save ``fig`` as PNG, then as SVG with the layout the PNG computed (laid out once).

    ``inside`` is the experiment folder: no folder below it on the way may be a link.
    """
    _save(fig, png, "png", inside)
    fig.set_layout_engine("none")
    _save(fig, svg, "svg", inside)
