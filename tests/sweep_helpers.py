"""A λ × seed sweep written as finished run folders, with values known to the tests, and a
small experiment folder made by the experiments engine on the embedded sample."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

LAMBDAS = (0.0001, 0.001, 0.01, 0.1)
SEEDS = (1, 2, 3)
EPOCHS = 5


def run_values(lam: float, seed: int) -> tuple[float, np.ndarray]:
    """(test_acc, val_acc per epoch (EPOCHS,)) of the synthetic run (lam, seed): accuracy
    falls with λ, the seed moves it by a few tenths of a percent, curves rise and wobble."""
    rng = np.random.default_rng(seed)
    test = 0.95 - 0.5 * lam - 0.003 * seed + 0.001 * seed**2
    epochs = np.arange(1, EPOCHS + 1)
    val = test - 0.2 * np.exp(-epochs) + 0.02 * (epochs % 2) + 0.001 * rng.standard_normal(EPOCHS)
    return float(test), val


def write_lambda_sweep(root: Path, folder: str = "l2-sweep", extra: str = "") -> dict[tuple, str]:
    """Write the 4 λ × 3 seed runs under ``root/folder``; return ``{(lam, seed): run id}``.

    Each run has ``config.toml`` (model, lr, batch equal in all; ``l2`` and ``seed`` vary;
    ``extra`` appended), ``history.csv`` (epoch, step, val_acc, val_loss) and ``metrics.json``.
    """
    ids = {}
    for lam in LAMBDAS:
        for seed in SEEDS:
            rid = f"{folder}/l2-{lam:g}-seed-{seed}"
            run = root / rid
            run.mkdir(parents=True)
            (run / "config.toml").write_text(
                f'model = "softmax"\ndataset = "mnist"\nlr = 0.1\nbatch = 64\nl2 = {lam!r}\n'
                f"seed = {seed}\nepochs = {EPOCHS}\n{extra}"
            )
            test, val = run_values(lam, seed)
            rows = [f"{e},{100 * e},{v!r},{1 - v!r}" for e, v in enumerate(val.tolist(), 1)]
            text = "epoch,step,val_acc,val_loss\n" + "\n".join(rows) + "\n"
            (run / "history.csv").write_text(text)
            metrics = {"test_acc": test, "val_acc": float(val[-1]), "val_loss": float(1 - val[-1]),
                       "epochs": EPOCHS, "stop_reason": "finished"}  # fmt: skip
            (run / "metrics.json").write_text(json.dumps(metrics))
            ids[(lam, seed)] = rid
    return ids


TINY: dict[str, Any] = {
    "name": "tiny",
    "source": "000",
    "section": "test",
    "title": "tiny L2 sweep",
    "protocol": "softmax on the embedded sample",
    "figures": ["curves", "sweep", "table"],
    "settings": {"model": "softmax", "dataset": "mnist-5k", "batch": 256, "lr": 0.3, "epochs": 2,
                 "n_train": 1500, "n_test": 500},
    "grid": {"l2": [0.0, 0.01, 1.0]},
    "published": [{"what": "test accuracy", "metric": "test_acc", "value": 0.5}],
}  # fmt: skip


def make_experiment(root: Path) -> Path:
    """Run :data:`TINY` with the experiments engine into ``root/tiny``, then mark its data
    comparable and give it published numbers that meet, come within tolerance, fall outside
    it and are missing (so every mark shows); return the experiment folder."""
    from digitlab.experiments import parse_experiment, run_experiment

    run_experiment(parse_experiment(TINY, "tiny.toml"), root, n_jobs=1)
    folder = root / "tiny"
    path = folder / "experiment.json"
    record = json.loads(path.read_text())
    record["data"] |= {"is_sample": False, "comparable": True}
    test = {m["label"]: m["metrics"]["test_acc"] for m in record["members"]}
    record["published"] = [
        {"what": "test accuracy", "metric": "test_acc", "value": 0.5},
        {"what": "near", "member": "l2=0.0", "metric": "test_acc", "value": test["l2=0.0"] + 0.005},
        {"what": "far", "member": "l2=1.0", "metric": "test_acc", "value": test["l2=1.0"] + 0.2},
        {"what": "absent", "metric": "no_such_metric", "value": 1.0},
    ]
    path.write_text(json.dumps(record))
    return folder


def markdown_table(md: str, heading: str) -> list[list[str]]:
    """Rows (cells unescaped) of the first table after ``heading`` in report.md."""
    lines = md[md.index(heading) :].splitlines()
    start = next(i for i, x in enumerate(lines) if x.startswith("| "))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = re.split(r"(?<!\\)\|", line)[1:-1]
        rows.append([html.unescape(c.strip()).replace("\\|", "|") for c in cells])
    return rows
