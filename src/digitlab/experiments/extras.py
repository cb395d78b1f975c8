"""Extras an experiment may ask for, computed from its chosen member.

``class_means.npz`` (always: the per-class mean training image), and as listed in the
experiment's ``extras``: ``lbfgs`` (the L-BFGS optimum of a convex model without L1, saved as
the chosen member's ``lbfgs.json``), ``gallery`` (``gallery.npz``: 16 right and 16 wrong test
predictions) and ``kaggle`` (``kaggle.csv``: the test predictions as ``Id,Category`` rows).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from digitlab.experiments.spec import ExperimentSpec, MemberSpec


def _class_means(data: Any, folder: Path) -> None:
    """``folder/class_means.npz``: means (k, h, w) of the training images of each class."""
    x_tr, y_tr = data.splits.train
    means = np.stack(
        [
            x_tr[y_tr == c].mean(axis=0) if np.any(y_tr == c) else np.zeros(x_tr.shape[1:])
            for c in range(len(data.classes))
        ]
    )
    np.savez(
        folder / "class_means.npz", means=means.astype(np.float32), classes=np.array(data.classes)
    )


def _lbfgs(model: Any, data: Any, member_folder: Path) -> dict[str, Any]:
    """The L-BFGS optimum of ``model``'s objective on the training split, next to the
    gradient-descent objective; written to ``member_folder/lbfgs.json`` and returned."""
    from digitlab.optim import lbfgs
    from digitlab.runfiles import write_json
    from digitlab.runner import split_metrics

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
    write_json(member_folder / "lbfgs.json", record)
    return record


def _gallery(model: Any, data: Any, folder: Path) -> None:
    """``folder/gallery.npz``: the first 16 right and 16 wrong test predictions."""
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


def _kaggle(model: Any, data: Any, folder: Path) -> None:
    """``folder/kaggle.csv``: the test predictions, labels as the dataset's files store them."""
    from digitlab.fileio import atomic_write_bytes

    pred = model.predict(data.test[0]) + data.dataset.label_offset
    text = "Id,Category\n" + "".join(f"{i},{p}\n" for i, p in enumerate(pred.tolist(), 1))
    atomic_write_bytes(folder / "kaggle.csv", lambda f: f.write(text.encode()))


def write_extras(
    exp: ExperimentSpec, folder: Path, chosen: MemberSpec, settings: dict[str, Any]
) -> dict[str, Any]:
    """Class means, L-BFGS optimum, gallery and Kaggle CSV, as the experiment asks.

    Returns what the experiment record keeps of them: ``{"lbfgs": ...}`` when the L-BFGS
    optimum was computed, else ``{}``.
    """
    from digitlab.runfiles import load_run_checkpoint
    from digitlab.runner import prepare_data
    from digitlab.settings import Settings

    info: dict[str, Any] = {}
    data = prepare_data(Settings.from_dict(settings))
    _class_means(data, folder)
    model, _, _ = load_run_checkpoint(folder / chosen.folder / "checkpoint.npz")
    if "lbfgs" in exp.extras and model.convex and not model.l1:
        info["lbfgs"] = _lbfgs(model, data, folder / chosen.folder)
    if "gallery" in exp.extras:
        _gallery(model, data, folder)
    if "kaggle" in exp.extras:
        _kaggle(model, data, folder)
    return info
