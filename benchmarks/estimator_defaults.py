"""digitlab's estimators at their defaults against scikit-learn's at theirs, same max_iter.

    DIGITLAB_DATA=/path/to/data python benchmarks/estimator_defaults.py \
        [--n-train 60000] [--mlp-max-iter 200] [--linear-max-iter 100] [--json PATH]

Per dataset (MNIST, Fashion-MNIST; pixels / 255, float32; the first ``--n-train`` training
images, the whole test set): ``MLPClassifier()`` of both libraries; digitlab's
``SoftmaxRegression()`` and scikit-learn's ``LogisticRegression()`` on the ten classes; both
``LogisticRegression()`` on a hard pair of classes (MNIST 4 vs 9, Fashion-MNIST T-shirt 0 vs
shirt 6). Only ``max_iter`` (the same for both) and ``random_state=0`` are set. Prints test
accuracy and fit time of each, writes the JSON (default
``benchmarks/estimator_defaults.json``). Not a test: full data takes a long while on two cores.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression as SkLogistic
from sklearn.neural_network import MLPClassifier as SkMLP

from digitlab import LogisticRegression, MLPClassifier, SoftmaxRegression
from digitlab.data import load

PAIRS = {"mnist": (4, 9), "fashion-mnist": (0, 6)}


def _data(name: str, n_train: int | None) -> tuple[np.ndarray, ...]:
    ds = load(name)
    if ds.is_sample:
        sys.exit(f"{name} not found: set DIGITLAB_DATA or install it (digitlab data list)")
    X = ds.x_train[:n_train].reshape(-1, 784).astype(np.float32) / 255
    Xt = ds.x_test.reshape(-1, 784).astype(np.float32) / 255
    return X, ds.y_train[:n_train].astype(np.int64), Xt, ds.y_test.astype(np.int64)


def _fit(est: Any, X: np.ndarray, y: np.ndarray, Xt: np.ndarray, yt: np.ndarray) -> dict:
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X, y)
    seconds = time.perf_counter() - t0
    return {"test_acc": float((est.predict(Xt) == yt).mean()), "seconds": round(seconds, 2),
            "n_iter": int(np.max(est.n_iter_))}  # fmt: skip


def tasks(mlp_iter: int, linear_iter: int) -> dict[str, tuple[Any, Any, bool]]:
    """Task -> (digitlab estimator, scikit-learn estimator, binary pair?)."""
    return {
        "mlp": (MLPClassifier(max_iter=mlp_iter, random_state=0),
                SkMLP(max_iter=mlp_iter, random_state=0), False),
        "softmax": (SoftmaxRegression(max_iter=linear_iter, random_state=0),
                    SkLogistic(max_iter=linear_iter, random_state=0), False),
        "logistic": (LogisticRegression(max_iter=linear_iter, random_state=0),
                     SkLogistic(max_iter=linear_iter, random_state=0), True),
    }  # fmt: skip


def run(datasets: list[str], n_train: int | None, mlp_iter: int, linear_iter: int,
        only: list[str]) -> list[dict]:  # fmt: skip
    rows = []
    for name in datasets:
        X, y, Xt, yt = _data(name, n_train)
        for task, (ours, theirs, pair) in tasks(mlp_iter, linear_iter).items():
            if task not in only:
                continue
            Xa, ya, Xb, yb = X, y, Xt, yt
            if pair:
                a, b = PAIRS[name]
                keep, keep_t = np.isin(y, (a, b)), np.isin(yt, (a, b))
                Xa, ya, Xb, yb = X[keep], y[keep], Xt[keep_t], yt[keep_t]
            row = {"dataset": name, "task": task, "n_train": len(ya), "n_test": len(yb),
                   "max_iter": mlp_iter if task == "mlp" else linear_iter,
                   "digitlab": _fit(ours, Xa, ya, Xb, yb),
                   "sklearn": _fit(theirs, Xa, ya, Xb, yb)}  # fmt: skip
            d, s = row["digitlab"], row["sklearn"]
            print(f"{name:14s} {task:9s} n={len(ya):6d}  digitlab {d['test_acc']:.4f} "
                  f"({d['seconds']:7.1f} s, {d['n_iter']} it)  scikit-learn {s['test_acc']:.4f} "
                  f"({s['seconds']:7.1f} s, {s['n_iter']} it)", flush=True)  # fmt: skip
            rows.append(row)
    return rows


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+", default=["mnist", "fashion-mnist"])
    p.add_argument("--tasks", nargs="+", default=["mlp", "softmax", "logistic"])
    p.add_argument("--n-train", type=int, default=None, help="first N training images")
    p.add_argument("--mlp-max-iter", type=int, default=200, help="(scikit-learn's default)")
    p.add_argument("--linear-max-iter", type=int, default=100, help="(scikit-learn's default)")
    p.add_argument("--json", type=Path, default=Path(__file__).with_name("estimator_defaults.json"))
    a = p.parse_args()
    results = run(a.datasets, a.n_train, a.mlp_max_iter, a.linear_max_iter, a.tasks)
    meta = {"n_train": a.n_train, "mlp_max_iter": a.mlp_max_iter,
            "linear_max_iter": a.linear_max_iter, "machine": platform.processor() or "",
            "results": results}  # fmt: skip
    a.json.write_text(json.dumps(meta, indent=2) + "\n")
