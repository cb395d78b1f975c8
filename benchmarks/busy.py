"""An epoch with one core kept busy by another process, against the same epoch idle.

    DIGITLAB_DATA=/path/to/data python benchmarks/busy.py [--quick] [--json PATH]

Cases (full MNIST, 60,000 x 784 float32 features / 255, mini-batches of 128, momentum 0.9,
through the Trainer as `benchmarks/run.py` times them): softmax regression and the 784-400-10
tanh MLP. Each epoch is timed idle, then while a second process spins on one core, under
digitlab's thread policy (digitlab.threads) and, for reference, with the thread count fixed to
all cores (DIGITLAB_THREADS, what the policy replaces). Best of the rounds each; the target is
a busy epoch at most 1.3x the idle one. Writes benchmarks/busy-results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from digitlab import kernels
from digitlab.data import load
from digitlab.data.preprocess import Preprocessor
from digitlab.models import MLPModel, SoftmaxModel
from digitlab.optim import SGD
from digitlab.threads import usable_cores
from digitlab.train import Trainer

HERE = Path(__file__).resolve().parent
SPIN = "import time\nend = time.monotonic() + 600\nwhile time.monotonic() < end:\n    pass\n"


def epoch_s(model_fn: Any, X: np.ndarray, y: np.ndarray, rounds: int) -> float:
    """Best time of one training epoch (a fresh model each round; no evaluation)."""
    best = float("inf")
    for r in range(rounds):
        trainer = Trainer(model_fn(), optimizer=SGD(0.9), schedule=0.05, batch_size=128,
                          eval_every=10**9, rng=r)  # fmt: skip
        t = time.perf_counter()
        trainer.fit((X, y), epochs=1)
        best = min(best, time.perf_counter() - t)
    return best


def timed_cases(X: np.ndarray, y: np.ndarray, rounds: int) -> dict[str, float]:
    d = X.shape[1]
    return {
        "softmax_epoch": epoch_s(lambda: SoftmaxModel(d, 10, rng=0), X, y, rounds),
        "mlp_epoch": epoch_s(
            lambda: MLPModel(d, 10, hidden=[400], activation="tanh", rng=0), X, y, rounds
        ),
    }


def with_busy_core(fn: Any) -> Any:
    """``fn()`` while another process spins on one core."""
    spinner = subprocess.Popen([sys.executable, "-c", SPIN])
    try:
        time.sleep(0.5)
        return fn()
    finally:
        spinner.kill()
        spinner.wait()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one round and 10,000 rows")
    ap.add_argument("--json", type=Path, default=HERE / "busy-results.json")
    args = ap.parse_args(argv)
    data = load("mnist", allow_sample=False)
    X = Preprocessor("scale01").fit_transform(data.x_train)
    y = data.y_train
    if args.quick:
        X, y = X[:10000], y[:10000]
    rounds = 1 if args.quick else 3
    results: dict[str, Any] = {
        "machine": {"cpu": kernels.cpu_model(), "cores": usable_cores(),
                    "python": platform.python_version(), "kernels": kernels.describe(),
                    "loadavg_start": os.getloadavg()},  # fmt: skip
        "idle": timed_cases(X, y, rounds),
        "busy": with_busy_core(lambda: timed_cases(X, y, rounds)),
    }
    os.environ["DIGITLAB_THREADS"] = str(usable_cores())
    results["busy_fixed_threads"] = with_busy_core(lambda: timed_cases(X, y, rounds))
    del os.environ["DIGITLAB_THREADS"]
    print("| case | idle | one core busy | ratio | threads fixed, busy | ratio | <= 1.3x |")
    print("|---|---|---|---|---|---|---|")
    for case, idle in results["idle"].items():
        busy, fixed = results["busy"][case], results["busy_fixed_threads"][case]
        met = "yes" if busy <= 1.3 * idle else "NO"
        print(f"| {case} | {idle:.3f} s | {busy:.3f} s | {busy / idle:.2f}x | {fixed:.3f} s | "
              f"{fixed / idle:.2f}x | {met} |")  # fmt: skip
    results["machine"]["loadavg_end"] = os.getloadavg()
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
