"""The scikit-learn estimator path against the trainer path, per epoch, on full MNIST (issue 23).

For each model it times, alternately ``--rounds`` times, keeping each one's best:

- **trainer**: the Trainer path exactly as ``benchmarks/run.py`` times it (cases softmax_epoch
  and mlp_epoch: SGD momentum 0.9, rate 0.01, batches of 128, ``eval_every`` past the run;
  softmax regression from the uint8 images, ``ImageRows``, the MLP from the float32 features),
  here for ``--epochs`` epochs;
- **trainer_float32** (softmax only): the same, from the float32 features the estimator gets;
- **trainer_settings**: the Trainer on the float32 features with the estimator's own model,
  penalty, update rule and schedule (its ``sweep_setup``), ``eval_every`` past the run: what the
  estimator's epochs cost without the estimator around them;
- **estimator**: ``SoftmaxRegression(solver="minibatch", batch_size=128)`` or
  ``MLPClassifier(hidden_layer_sizes=(400,), activation="tanh", solver="minibatch",
  batch_size=128)`` with ``max_iter=--epochs``, ``random_state=0`` and the estimator's defaults
  otherwise (``tol=1e-4``, no early stopping, quiet), fit on the float32 features.

The estimator's epoch is its fit time / epochs (what a user timing ``fit`` sees). The printed
ratios are the estimator's epoch over each trainer variant's, by wall clock and by the
process's CPU time (with ``--threads 1`` the steadier of the two on a shared machine: it leaves
out the time spent waiting for a core). One more, instrumented, estimator fit gives the CPU
time of its end-of-epoch evaluations (per epoch) and of everything outside the training loop
(validation, labels, model, the trainer's preparation: once per fit), which do not depend on
how loaded the machine is as the whole-epoch times do. Run::

    DIGITLAB_DATA=/path/to/data python benchmarks/estimator_path.py [--quick] [--threads N]

and it writes ``benchmarks/estimator_path.json`` (``--out`` elsewhere). ``--quick`` is 2
rounds of 3 epochs (about a minute on two idle cores). Only ratios measured in one run mean
anything on a shared machine.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from threadpoolctl import threadpool_limits

from digitlab import MLPClassifier, SoftmaxModel, SoftmaxRegression
from digitlab.data import Preprocessor, load
from digitlab.data.rows import ImageRows
from digitlab.optim import SGD, InverseTime
from digitlab.train import Trainer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import HIDDEN, N_CLASSES, NO_EVAL, SEED, SWITCH_PAUSE, _busy_cpu_s, _mlp  # noqa: E402

HERE = Path(__file__).resolve().parent
BS, LR = 128, 0.01  # run.py's softmax_epoch and mlp_epoch
CLOCKS = ("wall", "cpu")


def estimator(kind: str, epochs: int) -> SoftmaxRegression | MLPClassifier:
    """The issue's estimator, ``max_iter=epochs``, defaults otherwise."""
    if kind == "softmax":
        return SoftmaxRegression(
            solver="minibatch", batch_size=BS, max_iter=epochs, random_state=SEED
        )
    return MLPClassifier(
        hidden_layer_sizes=(HIDDEN,),
        activation="tanh",
        solver="minibatch",
        batch_size=BS,
        max_iter=epochs,
        random_state=SEED,
    )


def runs(kind: str, X: np.ndarray, rows: ImageRows, y: np.ndarray, epochs: int) -> dict:
    """The timed calls of one model, by name."""

    def trainer(train: Any) -> Callable[[], Any]:
        def fit() -> None:
            model = SoftmaxModel(X.shape[1], N_CLASSES) if kind == "softmax" else _mlp(X)
            Trainer(
                model, optimizer=SGD(0.9), schedule=LR, batch_size=BS, rng=SEED,
                eval_every=NO_EVAL,
            ).fit((train, y), epochs=epochs)  # fmt: skip

        return fit

    def fit_estimator(n: int) -> Callable[[], Any]:
        def fit() -> None:
            with warnings.catch_warnings():  # max_iter reached: what a short run says
                warnings.simplefilter("ignore", ConvergenceWarning)
                estimator(kind, n).fit(X, y)

        return fit

    out = {"trainer": trainer(rows if kind == "softmax" else X)}
    if kind == "softmax":
        out["trainer_float32"] = trainer(X)
    return out | {
        "trainer_settings": same_settings(estimator(kind, epochs), X, y, epochs),
        "estimator": fit_estimator(epochs),
    }


def same_settings(est: Any, X: np.ndarray, y: np.ndarray, epochs: int) -> Callable[[], Any]:
    """The Trainer with ``est``'s model, update rule and schedule, on ``X``, for ``epochs``."""
    model0, X, y_enc, optimizer0, batch = est.sweep_setup(X, y)
    lr = est.learning_rate_init
    schedule = lr if est.anneal_T is None else InverseTime(lr, est.anneal_T)

    def fit() -> None:
        Trainer(
            model0.copy(), optimizer=copy.deepcopy(optimizer0), schedule=schedule,
            batch_size=batch, rng=SEED, eval_every=NO_EVAL,
        ).fit((X, y_enc), epochs=epochs)  # fmt: skip

    return fit


def timed(fn: Callable[[], Any]) -> tuple[float, float, float]:
    """Wall and own CPU seconds of ``fn()``, and the other processes' load meanwhile (cores)."""
    busy0, t0, c0 = _busy_cpu_s(), time.perf_counter(), time.process_time()
    fn()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return wall, cpu, max(_busy_cpu_s() - busy0 - cpu, 0.0) / wall


def inside_fit(kind: str, X: np.ndarray, y: np.ndarray, epochs: int) -> dict[str, float]:
    """CPU seconds of one estimator fit: in its end-of-epoch evaluations (the record, the
    per-layer statistics, any split evaluated) per epoch, and outside the training loop."""
    import digitlab.estimators

    cls = getattr(digitlab.estimators, "_EpochTrainer", Trainer)  # older code: the Trainer
    spent = {"evaluate_splits": 0.0, "fit_prepared": 0.0}
    originals = {name: getattr(cls, name) for name in spent}

    def timing(name: str) -> Callable[..., Any]:
        def timed_method(self: Trainer, *args: Any) -> Any:
            c0 = time.process_time()
            try:
                return originals[name](self, *args)
            finally:
                spent[name] += time.process_time() - c0

        return timed_method

    for name in spent:
        setattr(cls, name, timing(name))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            c0 = time.process_time()
            estimator(kind, epochs).fit(X, y)
            total = time.process_time() - c0
    finally:
        for name, method in originals.items():
            if name in vars(Trainer) and cls is not Trainer and method is vars(Trainer)[name]:
                delattr(cls, name)  # inherited: back to the Trainer's
            else:
                setattr(cls, name, method)
    return {
        "evaluations_cpu_s_per_epoch": spent["evaluate_splits"] / epochs,
        "outside_loop_cpu_s": total - spent["fit_prepared"],
    }


def measure(calls: dict[str, Callable[[], Any]], rounds: int) -> dict[str, Any]:
    """Each call's wall and CPU times over ``rounds`` alternating rounds, and the foreign load.

    On a shared machine the CPU time of a one-thread run (``--threads 1``) is the steadier
    figure: it leaves out the time the process waited for a core.
    """
    out: dict[str, dict[str, list[float]]] = {k: {} for k in ("wall_s", "cpu_s", "load")}
    for _ in range(rounds):
        for name, fn in calls.items():
            time.sleep(SWITCH_PAUSE)
            for key, value in zip(out, timed(fn), strict=True):
                out[key].setdefault(name, []).append(value)
    return out


def figures(times: dict[str, list[float]], epochs: int) -> dict[str, Any]:
    """Per-epoch seconds and the estimator's ratios from the best time of each call (as
    run.py), and from the median (steadier when every round is disturbed)."""
    out: dict[str, Any] = {}
    for stat, suffix in ((min, ""), (statistics.median, "_median")):
        per_epoch = {name: stat(t) / epochs for name, t in times.items()}
        out[f"per_epoch_s{suffix}"] = per_epoch
        out[f"ratios{suffix}"] = {
            f"estimator/{name}": per_epoch["estimator"] / per_epoch[name]
            for name in per_epoch
            if name.startswith("trainer")
        }
    return out


def row(kind: str, clock: str, f: dict[str, Any]) -> str:
    """One line of the printed table."""
    e = f["per_epoch_s"]
    ratios = ", ".join(
        f"{k} {v:.3f} (median {f['ratios_median'][k]:.3f})" for k, v in f["ratios"].items()
    )
    return f"| {kind} | {clock} | {e['trainer']:.4g} | {e['estimator']:.4g} | {ratios} |"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 rounds of 3 epochs")
    ap.add_argument("--rounds", type=int, help="alternating rounds (default 5; 2 with --quick)")
    ap.add_argument("--epochs", type=int, help="epochs per fit (default 5; 3 with --quick)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="BLAS threads")
    ap.add_argument("--models", default="softmax,mlp", help="softmax, mlp or both")
    ap.add_argument("--out", type=Path, default=HERE / "estimator_path.json")
    args = ap.parse_args(argv)
    rounds = args.rounds or (2 if args.quick else 5)
    epochs = args.epochs or (3 if args.quick else 5)
    if epochs < 2 or rounds < 1:
        ap.error("--epochs must be >= 2 and --rounds >= 1")
    threadpool_limits(args.threads)
    data = load("mnist", allow_sample=False)
    pre = Preprocessor("scale01")
    X, y = pre.fit_transform(data.x_train), data.y_train
    rows = ImageRows(data.x_train, pre)
    results: dict[str, Any] = {
        "command": " ".join(["benchmarks/estimator_path.py", *(argv or sys.argv[1:])]),
        "threads": args.threads,
        "rounds": rounds,
        "loadavg_start": os.getloadavg(),
        "models": {},
    }
    print(f"{args.threads} threads, {rounds} rounds of {epochs} epochs; load {os.getloadavg()}")
    print("| model | clock | trainer s/epoch | estimator s/epoch | ratios |")
    print("|---|---|---|---|---|", flush=True)
    for kind in args.models.split(","):
        m = measure(runs(kind, X, rows, y, epochs), rounds)
        r = {"epochs": epochs} | {clock: figures(m[f"{clock}_s"], epochs) for clock in CLOCKS}
        r["inside_estimator_fit"] = inside = inside_fit(kind, X, y, epochs)
        results["models"][kind] = r | m
        for clock in CLOCKS:
            print(row(kind, clock, r[clock]), flush=True)
        evals, outside = inside["evaluations_cpu_s_per_epoch"], inside["outside_loop_cpu_s"]
        share = evals / r["cpu"]["per_epoch_s"]["estimator"]
        print(f"|   {kind}: end-of-epoch evaluations {evals * 1e3:.1f} ms CPU per epoch "
              f"({share:.1%} of the estimator's epoch); outside the loop {outside * 1e3:.0f} ms "
              "CPU per fit |", flush=True)  # fmt: skip
    results["loadavg_end"] = os.getloadavg()
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
