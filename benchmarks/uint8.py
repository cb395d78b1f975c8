"""One softmax epoch (batch 128) on float32 feature arrays against uint8-resident ImageRows.

    DIGITLAB_DATA=/path/to/data python benchmarks/uint8.py [--rounds 7]

Same data, model, seed and batches on both sides; the two alternate ``--rounds`` times and
each side's best wall time and best process CPU time are printed (the machine may be shared:
CPU time is less disturbed by other processes than wall time; run with
``OPENBLAS_NUM_THREADS=1`` so that it counts one thread). The float32 side is the
path runs took before rows stayed uint8 (``Preprocessor.transform`` of the whole split).
See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from digitlab import SoftmaxModel
from digitlab.data import Preprocessor, load
from digitlab.data.rows import ImageRows
from digitlab.train import Trainer

NO_EVAL = 10**9


def epoch_seconds(X: object, y: np.ndarray, d: int) -> tuple[float, float]:
    """Wall and process CPU time of one epoch of softmax regression, batch 128, lr 0.5."""
    model = SoftmaxModel(d, 10)
    trainer = Trainer(model, schedule=0.5, batch_size=128, eval_every=NO_EVAL, rng=0)
    n = len(y)
    t0, c0 = time.perf_counter(), time.process_time()
    trainer.fit((X, y), steps=-(-n // 128))
    return time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    ds = load("mnist")
    if ds.is_sample:
        raise SystemExit("full MNIST not found: set DIGITLAB_DATA")
    prep = Preprocessor("scale01").fit(ds.x_train)
    rows = ImageRows(ds.x_train, prep)
    floats = prep.transform(ds.x_train)
    d = floats.shape[1]
    times: dict[str, list[tuple[float, float]]] = {"float32": [], "uint8": []}
    for _ in range(args.rounds):
        times["float32"].append(epoch_seconds(floats, ds.y_train, d))
        times["uint8"].append(epoch_seconds(rows, ds.y_train, d))
    best = {}
    for name, ts in times.items():
        wall, cpu = (np.array(t) for t in zip(*ts, strict=True))
        best[name] = (wall.min(), cpu.min())
        rounds = " ".join(f"{t:.3f}" for t in wall)
        print(f"{name:8s} wall best {wall.min():.3f} s, median {np.median(wall):.3f} s; "
              f"CPU best {cpu.min():.3f} s  (wall rounds: {rounds})")  # fmt: skip
    f, u = best["float32"], best["uint8"]
    print(f"float32 / uint8: wall {f[0] / u[0]:.2f}x, CPU {f[1] / u[1]:.2f}x (best of each)")


if __name__ == "__main__":
    main()
