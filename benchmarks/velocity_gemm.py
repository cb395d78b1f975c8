"""One momentum-SGD step of the 784-400-10 tanh MLP (batch 128) with the velocity of ``W1``
written by one GEMM into it (``digitlab.blas.gemm_tn_``, what the trainer does) against the
array formulas (gradient array, ``v *= mu``, ``v += g``). Both give the same parameters bit
for bit (tests/test_blas.py); this times them alternately, 50 steps a round.

    python benchmarks/velocity_gemm.py [--rounds 30] [--out velocity_gemm.json]
    OPENBLAS_CORETYPE=SandyBridge python benchmarks/velocity_gemm.py ...

Prints and records the best and median time per step of each and their ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from digitlab import MLPModel, blas, kernels
from digitlab.optim import SGD

STEPS = 50


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if not blas.available():
        print("NumPy's BLAS is not reachable here: nothing to compare")
        return 1
    rng = np.random.default_rng(0)
    # MNIST-like sparsity: a fifth of the pixels inked
    X = (rng.random((128, 784)) * (rng.random((128, 784)) < 0.2)).astype(np.float32)
    y = rng.integers(0, 10, 128)
    model, opt = MLPModel(784, 10, hidden=(400,), activation="tanh", rng=0), SGD(0.9)
    ways = {  # the trainer's two gradient methods, each followed by the same update
        "arrays": lambda: opt.step(model.params, model.loss_and_grad(X, y)[1], 1e-4),
        "velocity_gemm": lambda: opt.step(
            model.params, model.loss_and_grad_factored(X, y)[1], 1e-4
        ),
    }
    times: dict[str, list[float]] = {k: [] for k in ways}
    for _ in range(args.rounds):
        for name, step in ways.items():
            t = time.perf_counter()
            for _ in range(STEPS):
                step()
            times[name].append((time.perf_counter() - t) / STEPS * 1e6)
    out = {
        "coretype": os.environ.get("OPENBLAS_CORETYPE") or kernels.blas_info().get("architecture"),
        "cpu": kernels.cpu_model(),
        "rounds": args.rounds,
        "us_per_step": times,
        "best_us": {k: min(v) for k, v in times.items()},
        "median_us": {k: float(np.median(v)) for k, v in times.items()},
    }
    out["ratio_best"] = out["best_us"]["arrays"] / out["best_us"]["velocity_gemm"]
    out["ratio_median"] = out["median_us"]["arrays"] / out["median_us"]["velocity_gemm"]
    for k in ways:
        print(f"{k:14s} best {out['best_us'][k]:7.0f} us, median {out['median_us'][k]:7.0f} us")
    best, median = out["ratio_best"], out["ratio_median"]
    print(f"arrays / velocity_gemm: best {best:.3f}x, median {median:.3f}x")
    if args.out:
        args.out.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
