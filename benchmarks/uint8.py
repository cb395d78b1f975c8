"""One softmax epoch (batch 128) on float32 feature arrays against uint8-resident ImageRows.

    DIGITLAB_DATA=/path/to/data python benchmarks/uint8.py [--rounds 7]

Same data, model, seed and batches on both sides; the two alternate ``--rounds`` times and
each side's best wall time is printed (the machine may be shared). The float32 side is the
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


def epoch_seconds(X: object, y: np.ndarray, d: int) -> float:
    """Wall time of one epoch of softmax regression, batch 128, lr 0.5, seed 0."""
    model = SoftmaxModel(d, 10)
    trainer = Trainer(model, schedule=0.5, batch_size=128, eval_every=NO_EVAL, rng=0)
    n = len(y)
    t0 = time.perf_counter()
    trainer.fit((X, y), steps=-(-n // 128))
    return time.perf_counter() - t0


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
    times: dict[str, list[float]] = {"float32": [], "uint8": []}
    for _ in range(args.rounds):
        times["float32"].append(epoch_seconds(floats, ds.y_train, d))
        times["uint8"].append(epoch_seconds(rows, ds.y_train, d))
    for name, ts in times.items():
        rounds = " ".join(f"{t:.3f}" for t in ts)
        print(f"{name:8s} best {min(ts):.3f} s  median {np.median(ts):.3f} s  (rounds: {rounds})")
    print(f"float32 / uint8 (best): {min(times['float32']) / min(times['uint8']):.2f}x")


if __name__ == "__main__":
    main()
