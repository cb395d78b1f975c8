"""The registry of figure kinds: one record per kind, read by experiments, figures and report.

A :class:`FigureKind` says everything about a kind: its name (what an experiment file lists),
its drawer, its caption in the report, and the saved files it is drawn from. Experiment
specs accept the names in :data:`FIGURE_KINDS` (and the table kinds), the report draws and
captions every listed kind from its record, and a figure is redrawn when one of its inputs
has gone or changed. Adding a figure kind is one drawer and one record given to
:func:`register_figure`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

from digitlab.errors import OutputError, ReportError
from digitlab.report import figures as f
from digitlab.report import inside
from digitlab.report.rundata import load_experiment
from digitlab.runfiles import CHECKPOINT

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from digitlab.report.rundata import ExperimentRecord

__all__ = [
    "FIGURE_KINDS",
    "TABLE_KINDS",
    "FigureKind",
    "caption",
    "draw_experiment",
    "draw_figure",
    "is_stale",
    "listed_kinds",
    "register_figure",
]


@dataclass(frozen=True)
class FigureKind:
    """One figure kind.

    Attributes
    ----------
    name : str
        What an experiment file lists; the figure is saved as ``figures/<name>.png|svg``.
    draw : callable
        ``draw(experiment record) -> matplotlib Figure``; raises ReportError when the saved
        data it needs are missing or malformed.
    caption : str
        The report's caption; ``{chosen}`` names the chosen member, ``{first_two}`` the first
        two members.
    experiment_files, member_files, any_member_files : tuple of str
        Files it is drawn from: in the experiment folder, in every member's folder, in at
        least one member's folder. When one has gone, the saved figure is stale.
    """

    name: str
    draw: Callable[[ExperimentRecord], Figure]
    caption: str
    experiment_files: tuple[str, ...] = ()
    member_files: tuple[str, ...] = ()
    any_member_files: tuple[str, ...] = ()

    def inputs_missing(self, exp: ExperimentRecord) -> bool:
        """Whether a file the figure is drawn from has gone (the figure must not stay)."""
        members = [m.folder for m in exp.members]
        return (
            not all((exp.folder / name).is_file() for name in self.experiment_files)
            or not all((m / name).is_file() for m in members for name in self.member_files)
            or not all(any((m / n).is_file() for m in members) for n in self.any_member_files)
        )


#: Figure kinds by name, in the order the report explains them.
FIGURE_KINDS: dict[str, FigureKind] = {}
#: Kinds an experiment may list that are tables in the report, not figures.
TABLE_KINDS = ("table",)


def register_figure(kind: FigureKind) -> FigureKind:
    """Add ``kind`` to the registry (after the kinds registered before it)."""
    if kind.name in FIGURE_KINDS or kind.name in TABLE_KINDS or not kind.name.isidentifier():
        raise ReportError(f"figure kind {kind.name!r}: taken, or not a plain name")
    FIGURE_KINDS[kind.name] = kind
    return kind


def listed_kinds() -> tuple[str, ...]:
    """Every kind an experiment file may list: the figure kinds, then the table kinds."""
    return (*FIGURE_KINDS, *TABLE_KINDS)


for _kind in (
    FigureKind("curves", f.draw_curves,
               "Loss (mean cross-entropy) and accuracy over training for the training, "
               "validation (hold-out) and test sets; {chosen}."),
    FigureKind("weights", f.draw_weights,
               "Weights of {chosen} drawn as images (bright = positive, dark = negative), "
               "beside the average training image of each class where saved.",
               member_files=(CHECKPOINT,)),
    FigureKind("weight_diff", f.draw_weight_diff,
               "Weight images of each logistic classifier and the difference of {first_two}, "
               "which separates the two negative classes.", member_files=(CHECKPOINT,)),
    FigureKind("sweep", f.draw_sweep,
               "Regularisation sweep: validation accuracy and length of the weight vector over "
               "training per penalty type, final test accuracy and weight length against "
               "lambda, and the weights of every setting.", member_files=(CHECKPOINT,)),
    FigureKind("shuffle", f.draw_shuffle,
               "Validation accuracy and loss over training of each setting; the legend gives "
               "where early stopping ended training and the best (restored) epoch."),
    FigureKind("overlay", f.draw_overlay,
               "Loss and accuracy over training of each run, one colour per run: validation "
               "(test where there is no validation set) solid, training dashed."),
    FigureKind("confusion", f.draw_confusion,
               "Confusion matrix of {chosen} on the test set: rows are true classes, columns "
               "predicted classes, counts in the cells, shading the fraction of the true class."),
    FigureKind("lbfgs", f.draw_lbfgs,
               "Gradient descent against the exact optimum of the same convex objective found "
               "by L-BFGS: training objective and train/validation/test accuracy.",
               any_member_files=("lbfgs.json",)),
    FigureKind("gallery", f.draw_gallery,
               "Right (green) and wrong (red) predictions, each titled true / predicted class.",
               experiment_files=("gallery.npz",)),
    FigureKind("spread", f.draw_spread,
               "Published numbers (red line) among the results of the member's random seeds "
               "(dots: one per seed, e.g. per N(0, 1) draw of the initial weights; bar: "
               "mean ± 2 sd)."),
    FigureKind("layers", inside.draw_layers,
               "Inside {chosen}, layer by layer over training: weight and bias norms, gradient "
               "norms and the update/weight ratio of the last step (log axis; shaded: the usual "
               "1e-4 – 1e-1). Look for ratios far above the band (the learning rate is too "
               "large: the weights change by a tenth each step), far below it (the layer "
               "hardly learns), gradient norms that shrink towards the first layer (vanishing "
               "gradients) and, for hidden layers, a large fraction of saturated (tanh, sigmoid "
               "near their limits) or dead (ReLU never above 0) units: those units pass no "
               "gradient."),
    FigureKind("activations", inside.draw_activations,
               "Activation histograms of each hidden layer of {chosen} on a fixed probe batch "
               "at every evaluation (bright = many values). Look for mass piling up at the "
               "limits of tanh or sigmoid (saturation), at 0 for ReLU (dead or silent units), "
               "or a distribution that collapses towards 0 (shrinking activations, often a too "
               "small initialisation)."),
    FigureKind("loss_gallery", inside.draw_loss_gallery,
               "Test images of {chosen} ranked by loss (cross-entropy under the final "
               "checkpoint), the highest first: the most confidently wrong images, each titled "
               "true / predicted class with the predicted probability. Look for wrong labels, "
               "ambiguous digits and classes that the model confuses with confidence.",
               any_member_files=(CHECKPOINT,)),
):  # fmt: skip
    register_figure(_kind)


def caption(exp: ExperimentRecord, kind: str) -> str:
    """The report's caption of figure ``kind`` of ``exp``."""
    if exp.chosen:
        chosen = f"the chosen setting ({exp.chosen})"
    else:
        chosen = f"the run ({exp.members[0].label})" if exp.members else "the run"
    two = exp.members[:2]
    first_two = f"({two[0].label}) − ({two[1].label})" if len(two) == 2 else "the first two"
    return FIGURE_KINDS[kind].caption.format(chosen=chosen, first_two=first_two)


def draw_figure(exp: ExperimentRecord, kind: str) -> list[Path]:
    """Draw one figure kind of ``exp`` and save it as PNG and SVG.

    Returns
    -------
    list of Path
        ``[png, svg]``.

    Raises
    ------
    ReportError
        When the saved data the figure needs are missing or malformed, or ``figures/`` is a
        link (a figure is never written through one).
    """
    if kind not in FIGURE_KINDS:
        raise ReportError(f"unknown figure kind {kind!r}; known: {', '.join(FIGURE_KINDS)}")
    png, svg = f.figure_paths(exp.folder, kind)
    with matplotlib.rc_context(f.STYLE):
        try:
            fig = FIGURE_KINDS[kind].draw(exp)
        except ReportError:
            raise
        except (KeyError, ValueError, IndexError, OSError) as exc:
            raise ReportError(
                f"{exp.folder}: figure {kind!r}: {type(exc).__name__}: {exc}"
            ) from exc
        try:
            f.save_figure(fig, png, svg, exp.folder)
        except OutputError as exc:
            raise ReportError(str(exc)) from None
        finally:
            fig.clear()
    return [png, svg]


def code_files() -> list[Path]:
    """This package's source files (a figure older than them is redrawn)."""
    return sorted(Path(__file__).parent.glob("*.py"))


def is_stale(exp: ExperimentRecord, kind: str) -> bool:
    """Whether a figure is missing or older than the data (or code) it is drawn from."""
    outputs = f.figure_paths(exp.folder, kind)
    if not all(p.is_file() for p in outputs) or FIGURE_KINDS[kind].inputs_missing(exp):
        return True
    newest_input = max(p.stat().st_mtime for p in [*exp.inputs(), *code_files()])
    return min(p.stat().st_mtime for p in outputs) < newest_input


def draw_experiment(exp_folder: str | os.PathLike, *, only_stale: bool = False) -> list[Path]:
    """Draw every figure kind listed in ``exp_folder/experiment.json`` into ``figures/``.

    Parameters
    ----------
    exp_folder : path-like
        ``runs/<experiment>``.
    only_stale : bool
        Skip figures that exist and are newer than their data.

    Returns
    -------
    list of Path
        The PNG and SVG of each kind drawn (or kept), in the listed order.

    Raises
    ------
    ReportError
        After drawing every other figure, when one or more could not be drawn.
    """
    exp = load_experiment(exp_folder)
    paths: list[Path] = []
    problems: list[str] = []
    for kind in exp.figure_kinds:
        if only_stale and not is_stale(exp, kind):
            paths += f.figure_paths(exp.folder, kind)
            continue
        try:
            paths += draw_figure(exp, kind)
        except ReportError as exc:
            problems.append(str(exc))
    if problems:
        raise ReportError("; ".join(problems))
    return paths
