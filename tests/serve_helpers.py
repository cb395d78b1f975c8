"""Runs roots for the ``digitlab serve`` tests and benchmark: small trained runs on the
embedded MNIST sample, synthetic run folders, and digits drawn like a person would."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

#: Trained fixture runs: name -> settings (all on the embedded 5,000-image MNIST sample).
TRAINED = {
    "mlp": {"model": "mlp", "hidden": [64], "lr": 0.1, "momentum": 0.9, "batch": 64,
            "epochs": 6, "holdout": 0.1},
    "softmax": {"model": "softmax", "lr": 0.5, "batch": 64, "epochs": 5, "holdout": 0.1},
    "logistic": {"model": "logistic", "classes": [2, 3], "lr": 0.1, "batch": 32, "epochs": 4,
                 "holdout": 0.1},
}  # fmt: skip


def train_runs(root: Path) -> dict[str, str]:
    """Train the :data:`TRAINED` runs under ``root``; return ``{name: run id}``."""
    from digitlab.data import load
    from digitlab.runner import prepare_data, run
    from digitlab.settings import Settings

    ds = load("mnist-5k")
    ids = {}
    for name, values in TRAINED.items():
        settings = Settings.from_dict({"dataset": "mnist-5k"} | values)
        result = run(settings, out=root, name=name, data=prepare_data(settings, dataset=ds))
        ids[name] = result.folder.relative_to(root).as_posix()
    return ids


def write_synthetic_runs(root: Path, n: int, evals: int = 20, seed: int = 0) -> list[str]:
    """``n`` finished run folders (config.toml, history.csv, metrics.json) with plausible
    curves, 50 per sweep folder; return their ids."""
    rng = np.random.default_rng(seed)
    ids = []
    header = (
        "step,epoch,lr,weight_norm,time,train_loss,train_acc,val_loss,val_acc,test_loss,test_acc"
    )
    for i in range(n):
        rid = f"sweep-{i // 50:03d}/run-{i:04d}"
        folder = root / rid
        folder.mkdir(parents=True)
        model = ("softmax", "mlp", "logistic")[i % 3]
        lr = float(rng.choice([0.01, 0.05, 0.1, 0.5]))
        (folder / "config.toml").write_text(
            f'model = "{model}"\ndataset = "mnist"\nlr = {lr}\nbatch = 128\nepochs = {evals}\n'
            f"seed = {i}\nhidden = [64]\n"
        )
        t = np.arange(1, evals + 1)
        acc = rng.uniform(0.85, 0.98) - 0.3 * np.exp(-t / rng.uniform(2, 6))
        rows = [
            f"{k * 100},{k},{lr},{1 + 0.1 * k:.4f},{0.5 * k:.3f},{1 / k:.5f},{a:.5f},"
            f"{1.1 / k:.5f},{a - 0.01:.5f},{1.2 / k:.5f},{a - 0.015:.5f}"
            for k, a in zip(t, acc, strict=True)
        ]
        (folder / "history.csv").write_text(header + "\n" + "\n".join(rows) + "\n")
        metrics = {"val_acc": acc[-1] - 0.01, "test_acc": acc[-1] - 0.015, "train_acc": acc[-1],
                   "epochs": float(evals), "steps": evals * 100, "seconds": 0.5 * evals,
                   "stop_reason": f"finished {evals * 100} steps ({evals} epochs)"}  # fmt: skip
        (folder / "metrics.json").write_text(json.dumps(metrics))
        ids.append(rid)
    return ids


def draw_digit(kind: int, size: int = 280, mode: str = "RGB") -> bytes:
    """A PNG of a black-on-white hand-drawn-looking ``1`` or ``0`` (stroke 8% of the side);
    ``mode="L", size=140`` is what the draw page uploads."""
    from PIL import Image, ImageDraw

    im = Image.new(mode, (size, size), "white")
    d = ImageDraw.Draw(im)
    s = size / 280
    width = round(22 * s)
    if kind == 1:
        d.line([(150 * s, 45 * s), (136 * s, 235 * s)], fill="black", width=width)
    elif kind == 0:
        d.ellipse([85 * s, 45 * s, 195 * s, 235 * s], outline="black", width=width)
    else:
        raise ValueError("draw_digit draws 0 and 1")
    out = io.BytesIO()
    im.save(out, "PNG")
    return out.getvalue()


def train_dead_relu_run(root: Path, name: str = "dead-relu") -> str:
    """Train a small ReLU network on the embedded sample starting with its first-layer biases
    at -10 (every hidden unit dead from the start, so it never learns); return its run id."""
    from digitlab.data import load
    from digitlab.models import MLPModel
    from digitlab.runner import prepare_data, run
    from digitlab.settings import Settings

    settings = Settings.from_dict({"dataset": "mnist-5k", "model": "mlp", "hidden": [16],
                                   "activation": "relu", "lr": 0.1, "batch": 64, "epochs": 2,
                                   "holdout": 0.1})  # fmt: skip
    data = prepare_data(settings, dataset=load("mnist-5k"))
    init = MLPModel(784, 10, (16,), "relu", rng=0).state()
    init["b1"] = np.full_like(init["b1"], -10.0)
    result = run(settings, out=root, name=name, data=data, init_params=init)
    return result.folder.relative_to(root).as_posix()
