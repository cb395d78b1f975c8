"""Full-batch softmax repeats trained alone against trained in lock-step (``fit_together``).

    DIGITLAB_DATA=/path/to/data OPENBLAS_NUM_THREADS=1 python benchmarks/lockstep.py \\
        [--repeats 5] [--epochs 20] [--rounds 3]

The "as coded" seed-000 protocol's data (the seeds' split: 18,000 x 785 training features, bias
column, x/255), summed cross-entropy, N(0, 1) starts from seeds 0..R-1: ``R`` trainers fitted one
after another against the same ``R`` trainers fitted together. Prints each side's best seconds
per epoch over ``--rounds`` alternating rounds, their ratio and the largest relative difference
of the final weights (float rounding). Run with one BLAS thread, as the experiment engine's
worker processes do. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from digitlab.runner import build_run_model, build_trainer, prepare_data
from digitlab.settings import Settings
from digitlab.train import fit_together


def trainers(settings: Settings, data, repeats: int) -> list:  # noqa: ANN001
    out = []
    for seed in range(repeats):
        s = settings.replace(seed=seed)
        model = build_run_model(s, data.train[0].shape[1], len(data.classes))
        out.append(build_trainer(s, model, data, []))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    settings = Settings.from_dict(
        {"model": "softmax", "split": "seed", "bias_column": True, "init": "normal",
         "reduction": "sum", "batch": "full", "lr": 0.0015, "anneal_T": 3.0, "l2": 5e-5,
         "epochs": args.epochs, "eval_every": args.epochs}  # fmt: skip
    )
    data = prepare_data(settings)
    train = (np.asarray(data.train[0]), data.train[1])  # the features once, as the engine's
    alone_s, together_s = [], []
    for _ in range(args.rounds):
        alone = trainers(settings, data, args.repeats)
        t0 = time.perf_counter()
        for t in alone:
            t.fit(train, epochs=args.epochs)
        alone_s.append(time.perf_counter() - t0)
        together = trainers(settings, data, args.repeats)
        t0 = time.perf_counter()
        fit_together(together, train, epochs=args.epochs)
        together_s.append(time.perf_counter() - t0)
    diff = max(
        float(np.max(np.abs(a.model.params["W"] - b.model.params["W"])))
        / float(np.max(np.abs(a.model.params["W"])))
        for a, b in zip(alone, together, strict=True)
    )
    per = args.repeats * args.epochs
    print(f"data: {data.dataset.name}, {train[0].shape[0]} x {train[0].shape[1]} features")
    alone_ms, together_ms = min(alone_s) / args.epochs * 1e3, min(together_s) / args.epochs * 1e3
    print(f"{args.repeats} runs alone:    {alone_ms:7.1f} ms per epoch of all"
          f" ({min(alone_s) / per * 1e3:.1f} ms per run-epoch)")  # fmt: skip
    print(f"{args.repeats} runs together: {together_ms:7.1f} ms per epoch"
          f" of all ({min(together_s) / per * 1e3:.1f} ms per run-epoch)")  # fmt: skip
    print(f"speed-up {min(alone_s) / min(together_s):.2f}x; together costs "
          f"{min(together_s) / (min(alone_s) / args.repeats):.2f}x one run; "
          f"largest relative weight difference {diff:.1e}")  # fmt: skip


if __name__ == "__main__":
    main()
