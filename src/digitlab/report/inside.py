"""Inside a run for the report: per-layer figures, test images ranked by loss, per-class scores.

- :func:`class_scores` -- precision, recall and F1 of each class from a confusion matrix
  (pure; a score that divides by zero is None, never NaN);
- :func:`loss_ranking` -- the test images ordered by their cross-entropy under a model (pure);
- :func:`member_loss_gallery` -- that ranking for a run, from its checkpoint and the data it
  was trained on (other data are refused, as ``digitlab evaluate`` refuses them);
- :func:`draw_layers`, :func:`draw_activations`, :func:`draw_loss_gallery` -- the drawers of
  the ``layers``, ``activations`` and ``loss_gallery`` figure kinds.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from digitlab.errors import DigitlabError, ReportError
from digitlab.models.inspect import HIST_BINS, RATIO_BAND, histogram_range
from digitlab.report.figures import (
    BAD,
    GOOD,
    bare,
    frame,
    line_style,
    mark_epochs,
    new_figure,
)

if TYPE_CHECKING:
    from digitlab.models.base import Model
    from digitlab.report.rundata import ExperimentRecord, MemberRecord

#: Images in the loss gallery.
GALLERY_SIZE = 24


# ---------------------------------------------------------------------------------- scores
@dataclass(frozen=True)
class ClassScore:
    """Scores of one class on the test set; None where undefined (a division by zero).

    ``precision`` is None when the class was never predicted, ``recall`` when no test image
    has it, ``f1`` when either is None (0 when both are 0).
    """

    index: int
    precision: float | None
    recall: float | None
    f1: float | None
    support: int
    predicted: int


def class_scores(confusion: Any) -> list[ClassScore]:
    """Precision, recall and F1 of every class of a confusion matrix.

    Parameters
    ----------
    confusion : array-like of int (k, k)
        Rows true classes, columns predicted classes.

    Returns
    -------
    list of ClassScore
        One per class, in label order.
    """
    cm = np.asarray(confusion, dtype=np.int64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ReportError(f"confusion matrix of shape {cm.shape}: expected (k, k)")
    out = []
    for j in range(cm.shape[0]):
        right, support, predicted = int(cm[j, j]), int(cm[j].sum()), int(cm[:, j].sum())
        precision = right / predicted if predicted else None
        recall = right / support if support else None
        if precision is None or recall is None:
            f1 = None
        else:
            total = precision + recall
            f1 = 2 * precision * recall / total if total else 0.0
        out.append(ClassScore(j, precision, recall, f1, support, predicted))
    return out


def score_text(score: ClassScore, what: str) -> str:
    """One cell of the per-class table: the score to 3 decimals, or why it is undefined."""
    value = getattr(score, what)
    if value is not None:
        return f"{value:.3f}"
    if what == "precision" or (what == "f1" and score.precision is None):
        return "undefined (never predicted)"
    return "undefined (no test images)"


# ---------------------------------------------------------------------------------- losses
def loss_ranking(model: Model, X: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """The rows of ``X`` ordered by cross-entropy under ``model``, highest first.

    Parameters
    ----------
    model : Model
    X : ndarray (n, d)
    y : ndarray of int (n,)

    Returns
    -------
    dict
        ``order`` (n,) row indices, highest loss first (ties by index); ``loss`` (n,) each
        row's cross-entropy; ``pred`` (n,) the predicted class; ``prob`` (n,) its probability.
    """
    z = np.asarray(model.logits(X), dtype=np.float64)
    if z.ndim == 1:  # one logit: P(class 1) = sigmoid(z), the softmax of (0, z)
        z = np.stack([np.zeros_like(z), z], axis=1)
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    y = np.asarray(y, dtype=np.int64)
    loss = -log_p[np.arange(len(y)), y]
    pred = log_p.argmax(axis=1)
    prob = np.exp(log_p[np.arange(len(y)), pred])
    order = np.lexsort((np.arange(len(y)), -loss))
    return {"order": order, "loss": loss, "pred": pred, "prob": prob}


@dataclass(frozen=True)
class LossGallery:
    """The test images of a run with the highest loss: images (m, h, w), ``index`` (m,) their
    rows in the test split, ``label``, ``pred``, ``prob``, ``loss`` (m,); ``n_test`` and
    ``n_wrong`` count the whole test split; ``classes`` names the labels."""

    images: np.ndarray
    index: np.ndarray
    label: np.ndarray
    pred: np.ndarray
    prob: np.ndarray
    loss: np.ndarray
    n_test: int
    n_wrong: int
    classes: list[str]


def member_loss_gallery(m: MemberRecord, size: int = GALLERY_SIZE) -> LossGallery:
    """The ``size`` test images of run ``m`` with the highest loss under its final checkpoint.

    The test split is prepared from the run's settings and must be the data the checkpoint
    was trained on (as ``digitlab evaluate`` without ``--dataset``); nothing is trained.

    Raises
    ------
    ReportError
        No checkpoint, unreadable, the data are missing or not the run's data.
    """
    from digitlab.runfiles import find_checkpoint, load_run_checkpoint, run_settings
    from digitlab.runner import data_for_checkpoint

    path = find_checkpoint(m.folder)
    if path is None:
        raise ReportError(f"{m.folder}: no checkpoint to rank the test images by loss")
    try:
        model, _prep, meta = load_run_checkpoint(path)
        settings = run_settings(meta, path).replace(data_root=None)  # never a path from a file
        data = data_for_checkpoint(settings, meta, path, dataset_given=False)
    except DigitlabError as exc:
        raise ReportError(str(exc)) from None
    X, y = data.test
    if len(y) == 0:
        raise ReportError(f"{m.folder}: the run has no test images")
    ranked = loss_ranking(model, X, y)
    top = ranked["order"][:size]
    classes = [str(c) for c in meta.get("extra", {}).get("classes", [])]
    return LossGallery(
        images=np.asarray(data.splits.test[0])[top], index=top, label=np.asarray(y)[top],
        pred=ranked["pred"][top], prob=ranked["prob"][top], loss=ranked["loss"][top],
        n_test=len(y), n_wrong=int(np.count_nonzero(ranked["pred"] != y)), classes=classes,
    )  # fmt: skip


def draw_loss_gallery(exp: ExperimentRecord) -> Figure:
    """The chosen member's test images with the highest loss, the most confidently wrong
    first, each titled true / predicted class, probability and loss."""
    g = member_loss_gallery(exp.member("chosen"))

    def name(i: int) -> str:
        return g.classes[i] if 0 <= i < len(g.classes) else str(i)

    ncols = min(8, len(g.index))
    nrows = math.ceil(len(g.index) / ncols)
    fig = new_figure(1.35 * ncols + 0.2, 1.6 * nrows + 0.6)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for rank, ax in enumerate(axes[: len(g.index)]):
        ok = g.label[rank] == g.pred[rank]
        color = GOOD if ok else BAD
        ax.imshow(g.images[rank], cmap="gray")
        bare(ax)
        ax.set_title(
            f"#{rank + 1} true {name(g.label[rank])} / pred {name(g.pred[rank])}\n"
            f"p={g.prob[rank]:.2f} · loss {g.loss[rank]:.2f}",
            fontsize=6.5, color=color, fontweight="normal" if ok else "bold",
        )  # fmt: skip
        frame(ax, color, 1.0 if ok else 2.0)
    for ax in axes[len(g.index) :]:
        ax.set_visible(False)
    fig.suptitle(f"Test images ranked by loss, highest first ({g.n_wrong} of {g.n_test} wrong)")
    return fig


# ---------------------------------------------------------------------------------- layers
WEIGHT_NORM = re.compile(r"W(\d*)_norm")
HIDDEN_HIST = re.compile(r"a(\d+)_hist00")


def weight_layers(history: dict[str, np.ndarray]) -> list[str]:
    """Suffixes of the weight layers with statistics (``["1", "2"]``; ``[""]`` for a linear
    model's ``W``), in layer order."""
    found = [m.group(1) for k in history if (m := WEIGHT_NORM.fullmatch(k))]
    return sorted(found, key=lambda s: int(s or 0))


def hidden_layers(history: dict[str, np.ndarray]) -> list[int]:
    """Numbers of the hidden layers with an activation histogram, in order."""
    return sorted(int(m.group(1)) for k in history if (m := HIDDEN_HIST.fullmatch(k)))


def _layer_name(suffix: str) -> str:
    return f"layer {suffix}" if suffix else "weights"


def _plot_layers(ax: Axes, m: MemberRecord, columns: list[tuple[str, str, str]]) -> int:
    """Plot each ``(column, label, style)`` with finite values; return how many were drawn."""
    x, _ = m.x_axis()
    drawn = 0
    for i, (key, label, style) in enumerate(columns):
        y = m.history.get(key)
        if y is not None and np.isfinite(y).any():
            ax.plot(x, y, style, color=f"C{i % 10}", label=label, **line_style(len(x)))
            drawn += 1
    return drawn


def _log_scale(ax: Axes, m: MemberRecord, keys: list[str]) -> None:
    values = np.concatenate([m.history[k] for k in keys if k in m.history] or [np.zeros(0)])
    if (values[np.isfinite(values)] > 0).any():
        ax.set_yscale("log")


def _layer_panels(m: MemberRecord, layers: list[str], hidden: list[int]) -> list[tuple]:
    """``(title, ylabel, columns, log)`` of each panel with data."""
    norms = [(f"W{s}_norm", f"W {_layer_name(s)}", "-") for s in layers]
    norms += [(f"b{s}_norm", f"b {_layer_name(s)}", "--") for s in layers]
    panels = [
        ("Weight norms", "‖W‖, ‖b‖ (Frobenius)", norms, False),
        ("Gradient norms", "‖∂E/∂W‖ (log scale)",
         [(f"W{s}_grad_norm", _layer_name(s), "-") for s in layers], True),
        ("Update / weight ratio of the last step", "‖ΔW‖ / ‖W‖ (log scale)",
         [(f"W{s}_update_ratio", _layer_name(s), "-") for s in layers], True),
    ]  # fmt: skip
    units = [
        (f"a{i}_{what}", f"{what}: hidden layer {i}", "-")
        for i in hidden
        for what in ("saturated", "dead")
        if f"a{i}_{what}" in m.history
    ]
    if units:
        panels.append(("Saturated / dead units", "fraction of the layer's units", units, False))
    return panels


def draw_layers(exp: ExperimentRecord) -> Figure:
    """Per-layer curves of the chosen member over training: weight and bias norms, gradient
    norms, update/weight ratio (log axis, the healthy band shaded) and, for hidden layers,
    the fraction of saturated or dead units."""
    m = exp.member("chosen")
    layers = weight_layers(m.history)
    if not layers:
        raise ReportError(f"{m.folder}: history.csv has no per-layer statistics (W*_norm)")
    panels = _layer_panels(m, layers, hidden_layers(m.history))
    fig = new_figure(10, 3.4 * math.ceil(len(panels) / 2))
    axes = fig.subplots(math.ceil(len(panels) / 2), 2, squeeze=False).ravel()
    _, xlabel = m.x_axis()
    for ax, (title, ylabel, columns, log) in zip(axes, panels, strict=False):
        drawn = _plot_layers(ax, m, columns)
        if log:
            _log_scale(ax, m, [c[0] for c in columns])
        if title.startswith("Update"):
            ax.axhspan(*RATIO_BAND, color=GOOD, alpha=0.08, label="usual range 1e-4 – 1e-1")
        if title.startswith("Saturated"):
            ax.set_ylim(-0.03, 1.03)
            ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
        mark_epochs(ax, m, label=False)
        ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
        if drawn:
            ax.legend(loc="best", fontsize=7)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    fig.suptitle(f"{exp.title}: {m.label}, per layer")
    return fig


def _activation(m: MemberRecord) -> str:
    """The run's hidden activation: from its settings, else a guess from its statistics
    (dead units are counted for rectifiers, saturated ones for tanh and sigmoid)."""
    given = m.settings.get("activation")
    if isinstance(given, str) and given:
        return given
    if any(k.endswith("_dead") for k in m.history):
        return "relu"
    return "tanh" if any(k.endswith("_saturated") for k in m.history) else "unknown"


def draw_activations(exp: ExperimentRecord) -> Figure:
    """Each hidden layer's activation histogram on the probe batch at every evaluation, as a
    heat map (evaluations up, activation value across; shading the fraction of values)."""
    m = exp.member("chosen")
    hidden = hidden_layers(m.history)
    if not hidden:
        raise ReportError(f"{m.folder}: history.csv has no activation histograms (no hidden layer)")
    activation = _activation(m)
    lo, hi = histogram_range(activation)
    edges = np.linspace(lo, hi, HIST_BINS + 1)
    x, xlabel = m.x_axis()
    fig = new_figure(min(4.0 * len(hidden) + 1.2, 13), 3.8)
    axes = np.atleast_1d(fig.subplots(1, len(hidden)))
    for ax, i in zip(axes, hidden, strict=True):
        counts = np.stack([m.history[f"a{i}_hist{j:02d}"] for j in range(HIST_BINS)], axis=1)
        counts = np.nan_to_num(counts, nan=0.0)
        frac = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)
        rows = np.arange(len(frac) + 1) - 0.5
        mesh = ax.pcolormesh(edges, rows, frac, cmap="magma", vmin=0, vmax=1)
        ax.grid(False)
        ticks = np.unique(np.linspace(0, len(frac) - 1, min(len(frac), 6)).round().astype(int))
        ax.set_yticks(ticks, [f"{x[t]:g}" for t in ticks])
        ax.set(title=f"hidden layer {i} ({activation})", xlabel="activation value",
               ylabel=f"evaluation ({xlabel})")  # fmt: skip
    fig.colorbar(mesh, ax=list(axes), shrink=0.85, label="fraction of the probe activations")
    fig.suptitle(f"{exp.title}: {m.label}, activation histograms over training")
    return fig


# ---------------------------------------------------------------------------------- tables
SCORE_NOTE = (
    "Precision: of the test images predicted as the class, the fraction that are of it; "
    "recall: of the test images of the class, the fraction predicted as it; F1: their harmonic "
    "mean. Computed from the confusion matrix saved in metrics.json."
)


def class_scores_table(m: MemberRecord) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the per-class table of run ``m`` (from ``confusion_test``)."""
    from digitlab.errors import FileReadError
    from digitlab.runfiles import check_confusion

    matrix = m.metrics.get("confusion_test")
    try:
        check_confusion(matrix, str(m.folder), None)
    except FileReadError as exc:
        raise ReportError(str(exc)) from None
    scores = class_scores(matrix)
    try:
        names = m.classes
    except ReportError:
        names = []
    if len(names) != len(scores):
        names = [str(s.index) for s in scores]
    rows = [
        [name, *(score_text(s, w) for w in ("precision", "recall", "f1")),
         str(s.support), str(s.predicted)]
        for name, s in zip(names, scores, strict=True)
    ]  # fmt: skip
    return ["class", "precision", "recall", "F1", "test images", "predicted"], rows
