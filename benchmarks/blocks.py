"""A large full batch's row blocks one after another against side by side on the fit's threads.

    DIGITLAB_DATA=/path/to/data OPENBLAS_CORETYPE=Zen python benchmarks/blocks.py \\
        [--epochs 5] [--rounds 2]

The first member of ``ucsd-softmax-1000`` (source 000's as-coded chain with 1,000 outputs in
float64: 18,000 x 785 x 1,000 full-batch epochs, 1,024-row blocks where the host's kernel
choice is blocks). Each round fits the same model ``--epochs`` epochs with the blocks one after
another (``PARALLEL_BLOCK_MACS`` above any block) and side by side (the default), both through
``Trainer.fit`` under its thread policy; prints the best seconds per epoch of each over the
rounds and their ratio. Run it on an otherwise idle machine. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import time

import digitlab.models.base as base
from digitlab.experiments import select_experiments
from digitlab.experiments.jobdata import job_data
from digitlab.runner import build_run_model, build_trainer
from digitlab.settings import Settings
from digitlab.threads import usable_cores


def epoch_seconds(settings: Settings, data, epochs: int) -> float:  # noqa: ANN001
    model = build_run_model(settings, data.train[0].shape[1], len(data.classes))
    trainer = build_trainer(settings, model, data, [])
    trainer.fit(data.train, epochs=1)  # warm: kernels, caches, the thread pool
    t0 = time.perf_counter()
    trainer.fit(data.train, epochs=1 + epochs)
    return (time.perf_counter() - t0) / epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    exp = select_experiments(["ucsd-softmax-1000"])[0]
    member = exp.members[0]
    settings = Settings.from_dict(exp.member_settings(member))
    data = job_data(settings, member.bias_input, member.validation)
    default = base.PARALLEL_BLOCK_MACS
    best = {"one after another": float("inf"), "side by side": float("inf")}
    for _ in range(args.rounds):
        for name, macs in (("one after another", 1 << 62), ("side by side", default)):
            base.PARALLEL_BLOCK_MACS = macs
            best[name] = min(best[name], epoch_seconds(settings, data, args.epochs))
    base.PARALLEL_BLOCK_MACS = default
    print(f"usable cores {usable_cores()}; best seconds per epoch over {args.rounds} rounds:")
    for name, seconds in best.items():
        print(f"  {name:18s} {seconds:.3f} s")
    print(f"side by side: {best['one after another'] / best['side by side']:.2f}x")


if __name__ == "__main__":
    main()
