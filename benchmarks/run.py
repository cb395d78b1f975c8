"""digitlab against PyTorch and scikit-learn on full MNIST, in one process, on the same data.

Run with ``make bench`` (installs the ``bench`` extra, torch==2.13.0) or::

    DIGITLAB_DATA=/path/to/data .venv/bin/python benchmarks/run.py [--quick] [--threads N]

Every case times digitlab (through its public API, as users run it) and the peer with the same
model, batch size, data and thread count, alternating the two ``--rounds`` times and keeping
each side's best time (the machine may be shared). It prints a table as it goes and writes
``benchmarks/results.json`` (``results-quick.json`` with ``--quick``). See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import textwrap
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

from digitlab import MLPModel, SoftmaxModel, kernels
from digitlab.data import Preprocessor, load
from digitlab.data.rows import ImageRows
from digitlab.models.functional import activate_, activation_backward_, softmax_cross_entropy_
from digitlab.models.linear import row_blocks
from digitlab.optim import SGD, lbfgs
from digitlab.threads import usable_cores
from digitlab.train import Callback, Trainer, evaluate

HERE = Path(__file__).resolve().parent
N_CLASSES = 10
HIDDEN = 400
SEED = 0
SWITCH_PAUSE = 0.25  # s between the two libraries: lets the other's idle threads stop spinning
NO_EVAL = 10**9  # eval_every beyond the run: time training steps only, as the peer does
BUSY_LIMIT = 0.25  # cores kept busy by other processes above which a round is disturbed


# ----------------------------------------------------------------------------- timing helpers
def best_of(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """Smallest wall time of ``repeat`` calls and the last call's result."""
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def _busy_cpu_s() -> float:
    """CPU seconds all processes have spent busy since boot (Linux /proc/stat; 0 elsewhere)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return 0.0
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # minus idle, iowait


def _own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def timed(fn: Callable[[], Any]) -> tuple[float, float]:
    """Wall time of ``fn()`` and the other processes' CPU load meanwhile, in cores."""
    busy0, own0, t0 = _busy_cpu_s(), _own_cpu_s(), time.perf_counter()
    fn()
    wall = time.perf_counter() - t0
    foreign = (_busy_cpu_s() - busy0) - (_own_cpu_s() - own0)
    return wall, max(foreign, 0.0) / wall


def duel(ours: Callable[[], Any], peer: Callable[[], Any], rounds: int) -> dict[str, Any]:
    """Alternate digitlab and the peer ``rounds`` times; best (smallest) time of each.

    Rounds during which other processes kept more than ``BUSY_LIMIT`` cores busy are
    reported but not used, unless every round of that side was disturbed.
    """
    t_ours, t_peer, l_ours, l_peer = [], [], [], []
    for _ in range(rounds):
        for fn, times, loads in ((ours, t_ours, l_ours), (peer, t_peer, l_peer)):
            time.sleep(SWITCH_PAUSE)
            wall, load = timed(fn)
            times.append(wall)
            loads.append(load)

    def best(times: list[float], loads: list[float]) -> float:
        quiet = [t for t, load in zip(times, loads, strict=True) if load <= BUSY_LIMIT]
        return min(quiet or times)

    return {
        "digitlab_s": best(t_ours, l_ours),
        "peer_s": best(t_peer, l_peer),
        "digitlab_all_s": t_ours,
        "peer_all_s": t_peer,
        "other_processes_cores_digitlab": l_ours,
        "other_processes_cores_peer": l_peer,
        "disturbed_rounds": sum(x > BUSY_LIMIT for x in l_ours + l_peer),
    }


def per_step_us(fn: Callable[[], Any], steps: int, repeat: int = 3) -> float:
    """Best time of ``steps`` calls of ``fn``, per call, in microseconds."""

    def loop() -> None:
        for _ in range(steps):
            fn()

    return best_of(loop, repeat)[0] / steps * 1e6


# ----------------------------------------------------------------------------- machine
def machine(threads: int) -> dict[str, Any]:
    from digitlab.kernels import cpu_model

    cpu = cpu_model() or "?"
    import scipy
    import sklearn
    import torch

    blas = [
        {k: lib.get(k) for k in ("internal_api", "version", "architecture", "num_threads")}
        | {"library": Path(lib["filepath"]).name}
        for lib in threadpool_info()
    ]
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads": threads,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "scikit-learn": sklearn.__version__,
        "torch": torch.__version__,
        "threadpools": blas,
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
        "usable_cores": usable_cores(),
        "kernels": kernels.describe(),  # digitlab's calibrated kernel choices on this host
        "loadavg_start": os.getloadavg(),
    }


def gemm_rate(size: int, repeat: int) -> float:
    """float32 GEMM rate of NumPy's BLAS in GFLOP/s (square matrices)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    c = np.empty_like(a)
    t, _ = best_of(lambda: np.matmul(a, b, out=c), repeat)
    return 2 * size**3 / t / 1e9


def bandwidth(threads: int, repeat: int) -> dict[str, float]:
    """Memory bandwidth in GB/s: reading 512 MiB (summed by ``threads`` threads), and copying."""
    x = np.ones(2**27, dtype=np.float32)  # 512 MiB
    parts = np.array_split(x, threads)
    with ThreadPoolExecutor(threads) as pool:  # NumPy releases the GIL in reductions

        def read() -> None:
            list(pool.map(np.sum, parts))

        t_read, _ = best_of(read, repeat)
    y = np.empty_like(x)
    t_copy, _ = best_of(lambda: np.copyto(y, x), repeat)
    return {"read_GBps": x.nbytes / t_read / 1e9, "copy_GBps": 2 * x.nbytes / t_copy / 1e9}


# ----------------------------------------------------------------------------- PyTorch peers
def torch_mlp(torch: Any, model: MLPModel | SoftmaxModel) -> Any:
    """The PyTorch twin of a digitlab model, starting from the same parameters."""
    nn = torch.nn
    if isinstance(model, SoftmaxModel):
        net = nn.Linear(model.n_features, model.n_classes)
        pairs = [(net, "W", "b")]
    else:
        net = nn.Sequential(nn.Linear(model.n_features, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, 10))
        pairs = [(net[0], "W1", "b1"), (net[2], "W2", "b2")]
    with torch.no_grad():
        for layer, w, b in pairs:
            layer.weight.copy_(torch.from_numpy(model.params[w].T.copy()))
            layer.bias.copy_(torch.from_numpy(model.params[b]))
    return net


def torch_epoch(
    torch: Any, net: Any, Xt: Any, yt: Any, bs: int, opt: Any, gen: np.random.Generator
) -> None:
    """One shuffled epoch of mini-batch SGD, the idiomatic DataLoader-free loop.

    The permutation comes from a NumPy Generator seeded like digitlab's Trainer, so both
    libraries see the same batches in the same order (and case 5 compares like with like).
    """
    loss_fn = torch.nn.CrossEntropyLoss()
    perm = torch.from_numpy(gen.permutation(Xt.shape[0]))
    for start in range(0, Xt.shape[0], bs):
        idx = perm[start : start + bs]
        opt.zero_grad(set_to_none=True)
        loss_fn(net(Xt[idx]), yt[idx]).backward()
        opt.step()


# ----------------------------------------------------------------------------- the cases
def case_softmax_epoch(ctx: dict[str, Any]) -> dict[str, Any]:
    X, y, torch, Xt, yt = ctx["X"], ctx["y"], ctx["torch"], ctx["Xt"], ctx["yt"]
    rows = ctx["rows"]  # the uint8 images, made float32 per batch: what digitlab runs train on
    bs, lr = 128, 0.01

    def ours() -> None:
        model = SoftmaxModel(X.shape[1], N_CLASSES)
        Trainer(
            model, optimizer=SGD(0.9), schedule=lr, batch_size=bs, rng=SEED, eval_every=NO_EVAL
        ).fit((rows, y), epochs=1)

    def peer() -> None:
        net = torch_mlp(torch, SoftmaxModel(X.shape[1], N_CLASSES))
        opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
        torch_epoch(torch, net, Xt, yt, bs, opt, np.random.default_rng(SEED))

    res = duel(ours, peer, ctx["rounds"])
    floor = X.nbytes / (ctx["bandwidth"]["read_GBps"] * 1e9)
    # where one step's time goes: each kernel of the step timed alone on a real batch
    model = SoftmaxModel(X.shape[1], N_CLASSES, init="normal", rng=0)
    order = np.random.default_rng(0).permutation(X.shape[0])
    buf = np.empty((bs, X.shape[1]), np.float32)
    idx = order[:bs]
    Xb = np.take(X, idx, axis=0, out=buf).copy()
    yb = y[idx]
    Z = Xb @ model.params["W"]
    G = softmax_cross_entropy_(Z.copy(), yb, 1 / bs)[1]
    grads, opt = {"W": Xb.T @ G, "b": G.sum(axis=0)}, SGD(0.9)
    steps = ctx["steps_micro"]
    parts = {
        "gather_128_uint8_rows_to_float32": per_step_us(lambda: rows.take(idx, out=buf), steps),
        "gather_128_float32_rows": per_step_us(lambda: np.take(X, idx, axis=0, out=buf), steps),
        "forward_XW": per_step_us(lambda: Xb @ model.params["W"], steps),
        "softmax_ce_and_grad": per_step_us(
            lambda: softmax_cross_entropy_(Z.copy(), yb, 1 / bs), steps
        ),
        "backward_XtG_and_bias": per_step_us(lambda: (Xb.T @ G, G.sum(axis=0)), steps),
        "sgd_momentum_update": per_step_us(lambda: opt.step(model.params, grads, 0.0), steps),
        "label_and_shape_checks": per_step_us(
            lambda: (model.check_X(Xb), model.check_y(yb, bs)), steps
        ),
    }
    n_steps = math.ceil(X.shape[0] / bs)
    parts["step_total_measured"] = res["digitlab_s"] / n_steps * 1e6
    return res | {
        "what": "softmax regression, mini-batch 128, SGD momentum 0.9, one shuffled epoch "
        "(digitlab from the uint8 images, ImageRows; PyTorch from the float32 tensor)",
        "unit": "s/epoch",
        "ratio": res["peer_s"] / res["digitlab_s"],
        "target": ">= 3x PyTorch",
        "met": res["peer_s"] / res["digitlab_s"] >= 3,
        "bandwidth_floor_s": floor,
        "per_step_us": parts,
    }


def case_full_batch(ctx: dict[str, Any]) -> dict[str, Any]:
    X, y, torch, Xt, yt = ctx["X"], ctx["y"], ctx["torch"], ctx["Xt"], ctx["yt"]
    steps, lr = ctx["full_steps"], 0.5

    def ours() -> None:
        model = SoftmaxModel(X.shape[1], N_CLASSES)
        Trainer(model, optimizer=SGD(0.9), schedule=lr, batch_size="full", eval_every=NO_EVAL).fit(
            (X, y), steps=steps
        )

    def peer() -> None:
        net = torch_mlp(torch, SoftmaxModel(X.shape[1], N_CLASSES))
        opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
        loss_fn = torch.nn.CrossEntropyLoss()
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            loss_fn(net(Xt), yt).backward()
            opt.step()

    res = duel(ours, peer, ctx["rounds"])
    res["digitlab_s"] /= steps
    res["peer_s"] /= steps
    floor = 2 * X.nbytes / (ctx["bandwidth"]["read_GBps"] * 1e9)  # X read for XW and X^T G
    start = time.perf_counter()
    blocks = row_blocks(X)  # what each of our fits above built once (inside its timing)
    layout_s = time.perf_counter() - start
    return res | {
        "what": (
            f"full-batch gradient step of softmax regression (mean of a {steps}-step fit, "
            "its one-off row layout included)"
        ),
        "layout_s": layout_s,
        "layout_kept_share": None if blocks is None else blocks.kept_share,
        "unit": "s/step",
        "ratio": res["peer_s"] / res["digitlab_s"],
        "target": "(no target; reported)",
        "met": None,
        "bandwidth_floor_s": floor,
    }


def _mlp(X: np.ndarray) -> MLPModel:
    return MLPModel(X.shape[1], N_CLASSES, hidden=(HIDDEN,), activation="tanh", rng=SEED)


def case_mlp_epoch(ctx: dict[str, Any]) -> dict[str, Any]:
    X, y, torch, Xt, yt = ctx["X"], ctx["y"], ctx["torch"], ctx["Xt"], ctx["yt"]
    bs, lr = 128, 0.01

    def ours() -> None:
        Trainer(
            _mlp(X), optimizer=SGD(0.9), schedule=lr, batch_size=bs, rng=SEED, eval_every=NO_EVAL
        ).fit((X, y), epochs=1)

    def peer() -> None:
        net = torch_mlp(torch, _mlp(X))
        opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
        torch_epoch(torch, net, Xt, yt, bs, opt, np.random.default_rng(SEED))

    res = duel(ours, peer, ctx["rounds"])
    n, d = X.shape
    floor = 2 * 3 * n * d * HIDDEN / (ctx["gemm_GFLOPs"] * 1e9)
    # where one step's time goes
    model = _mlp(X)
    W1, b1, W2, b2 = (model.params[k] for k in ("W1", "b1", "W2", "b2"))
    idx = np.random.default_rng(0).permutation(n)[:bs]
    buf = np.empty((bs, d), np.float32)
    Xb = X[idx].copy()
    yb = y[idx]
    A1 = np.tanh(Xb @ W1 + b1)
    Z2 = A1 @ W2 + b2
    D2 = softmax_cross_entropy_(Z2.copy(), yb, 1 / bs)[1]
    D1 = D2 @ W2.T
    G1 = Xb.T @ D1
    grads = model.loss_and_grad(Xb, yb)[1]
    opt = SGD(0.9)
    steps = max(ctx["steps_micro"] // 10, 20)
    parts = {
        "gather_128_rows": per_step_us(lambda: np.take(X, idx, axis=0, out=buf), steps),
        "gemm_X_W1": per_step_us(lambda: Xb @ W1, steps),
        "tanh": per_step_us(lambda: activate_(Xb @ W1, "tanh"), steps)
        - per_step_us(lambda: Xb @ W1, steps),
        "layer2_forward_softmax_backward": per_step_us(
            lambda: (softmax_cross_entropy_(A1 @ W2 + b2, yb, 1 / bs), D2 @ W2.T, A1.T @ D2),
            steps,
        ),
        "tanh_backward": per_step_us(lambda: activation_backward_(D1.copy(), A1, "tanh"), steps),
        "gemm_Xt_D1": per_step_us(lambda: Xb.T @ D1, steps),
        "bias_sums": per_step_us(lambda: (D1.sum(axis=0), D2.sum(axis=0)), steps),
        "sgd_momentum_update": per_step_us(lambda: opt.step(model.params, grads, 0.0), steps),
    }
    del G1
    parts["step_total_measured"] = res["digitlab_s"] / math.ceil(n / bs) * 1e6
    ratio = res["peer_s"] / res["digitlab_s"]
    return res | {
        "what": "MLP 784-400-10 tanh, mini-batch 128, SGD momentum 0.9, one shuffled epoch",
        "unit": "s/epoch",
        "ratio": ratio,
        "gemm_floor_s": floor,
        "vs_gemm_floor": res["digitlab_s"] / floor,
        "target": ">= 1.3x PyTorch and <= 1.2x the GEMM floor 2*3*n*784*400/rate",
        "met": ratio >= 1.3 and res["digitlab_s"] <= 1.2 * floor,
        "per_step_us": parts,
    }


def case_single_sample(ctx: dict[str, Any]) -> dict[str, Any]:
    X, y, torch, Xt, yt = ctx["X"], ctx["y"], ctx["torch"], ctx["Xt"], ctx["yt"]
    steps, lr = ctx["sgd_steps"], 0.01

    def ours() -> None:
        Trainer(
            _mlp(X), schedule=lr, batch_size=1, replacement=True, rng=SEED, eval_every=NO_EVAL
        ).fit((X, y), steps=steps)

    draws = torch.randint(0, X.shape[0], (steps,), generator=torch.Generator().manual_seed(SEED))
    draws = draws.tolist()

    def peer() -> None:
        net = torch_mlp(torch, _mlp(X))
        opt = torch.optim.SGD(net.parameters(), lr=lr)
        loss_fn = torch.nn.CrossEntropyLoss()
        for j in draws:
            opt.zero_grad(set_to_none=True)
            loss_fn(net(Xt[j : j + 1]), yt[j : j + 1]).backward()
            opt.step()

    res = duel(ours, peer, ctx["rounds"])
    ours_rate, peer_rate = steps / res["digitlab_s"], steps / res["peer_s"]
    return res | {
        "what": f"single-sample SGD (with replacement) of the MLP, {steps} steps",
        "unit": "steps/s",
        "digitlab_steps_per_s": ours_rate,
        "peer_steps_per_s": peer_rate,
        "ratio": ours_rate / peer_rate,
        "target": ">= 3x PyTorch's steps/s",
        "met": ours_rate / peer_rate >= 3,
    }


class _StopAt(Callback):
    """Evaluate the test split at each epoch's end; stop at the target accuracy."""

    def __init__(self, X: np.ndarray, y: np.ndarray, target: float) -> None:
        self.X, self.y, self.target, self.accs = X, y, target, []

    def on_step_end(self, trainer: Trainer, loss: float) -> None:
        if trainer.pos == 0:  # an epoch just ended
            self.accs.append(evaluate(trainer.model, self.X, self.y)["acc"])
            if self.accs[-1] >= self.target:
                trainer.request_stop("target accuracy")


def case_time_to_accuracy(ctx: dict[str, Any]) -> dict[str, Any]:
    X, y, torch, Xt, yt = ctx["X"], ctx["y"], ctx["torch"], ctx["Xt"], ctx["yt"]
    Xte, yte, Xte_t = ctx["X_test"], ctx["y_test"], ctx["Xt_test"]
    bs, lr, target, cap = 128, 0.05, ctx["target_acc"], ctx["max_epochs"]
    out: dict[str, Any] = {}

    def ours() -> None:
        stop = _StopAt(Xte, yte, target)
        Trainer(
            _mlp(X),
            optimizer=SGD(0.9),
            schedule=lr,
            batch_size=bs,
            rng=SEED,
            eval_every=NO_EVAL,
            callbacks=[stop],
        ).fit((X, y), epochs=cap)
        out["digitlab_test_acc"] = stop.accs

    def peer() -> None:
        net = torch_mlp(torch, _mlp(X))
        opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
        gen = np.random.default_rng(SEED)
        accs: list[float] = []
        for _ in range(cap):
            torch_epoch(torch, net, Xt, yt, bs, opt, gen)
            with torch.no_grad():
                accs.append(float((net(Xte_t).argmax(1) == ctx["yt_test"]).float().mean()))
            if accs[-1] >= target:
                break
        out["peer_test_acc"] = accs

    res = duel(ours, peer, ctx["acc_rounds"])
    reached = out["digitlab_test_acc"][-1] >= target and out["peer_test_acc"][-1] >= target
    return (
        res
        | out
        | {
            "what": f"MLP to {target:.1%} test accuracy: lr {lr}, momentum 0.9, batch {bs}, "
            "same initial weights, test accuracy after every epoch (time includes it)",
            "unit": "s",
            "digitlab_epochs": len(out["digitlab_test_acc"]),
            "peer_epochs": len(out["peer_test_acc"]),
            "ratio": res["peer_s"] / res["digitlab_s"],
            "target": "less wall time than PyTorch",
            "met": reached and res["peer_s"] > res["digitlab_s"],
        }
    )


def case_exact_optimum(ctx: dict[str, Any]) -> dict[str, Any]:
    from sklearn.linear_model import LogisticRegression

    from digitlab.optim.lbfgs import _scipy_blas_single_threaded

    X, y, alpha = ctx["X"], ctx["y"], ctx["alpha"]
    n = X.shape[0]
    C = 1.0 / (2.0 * alpha * n)  # sklearn: 0.5||W||^2 + C sum CE; ours: mean CE + alpha ||W||^2
    out: dict[str, Any] = {}

    def ours() -> None:  # float32 arithmetic to gtol 1e-5, float64 penalty: the fast setting
        out["ours"] = lbfgs(
            SoftmaxModel(X.shape[1], N_CLASSES, l2=alpha), X, y, dtype=np.float32, gtol=1e-5
        )

    def ours_default() -> None:  # the defaults: float32 start, float64 finish to gtol 1e-6
        out["ours64"] = lbfgs(SoftmaxModel(X.shape[1], N_CLASSES, l2=alpha), X, y)

    def peer() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ConvergenceWarning: we report the objective
            out["peer"] = LogisticRegression(C=C, tol=ctx["sk_tol"], max_iter=10000).fit(X, y)

    def peer_fixed() -> None:  # scikit-learn given digitlab's BLAS-thread fix, for reference
        with _scipy_blas_single_threaded():
            peer()

    res = duel(ours, peer, ctx["lbfgs_rounds"])
    t_default, _ = best_of(ours_default, 1)
    time.sleep(SWITCH_PAUSE)
    t_peer_fixed, _ = best_of(peer_fixed, 1)

    def objective(W: np.ndarray, b: np.ndarray) -> float:  # float64, by digitlab's model
        ref = SoftmaxModel(X.shape[1], N_CLASSES, l2=alpha, dtype=np.float64)
        ref.params["W"][...] = W
        ref.params["b"][...] = b
        return ref.loss(X, y)

    obj_peer = objective(out["peer"].coef_.T, out["peer"].intercept_)
    obj_ours = objective(out["ours"].model.params["W"], out["ours"].model.params["b"])
    obj_default = out["ours64"].objective
    rel = (obj_ours - obj_peer) / abs(obj_peer)
    ratio = res["peer_s"] / res["digitlab_s"]
    return res | {
        "what": f"L2 softmax optimum on {n} images: l2={alpha:g} (sklearn C={C:.6g}, "
        f"tol={ctx['sk_tol']:g}, lbfgs); digitlab lbfgs(dtype=float32, gtol=1e-5); "
        "objectives evaluated in float64 by digitlab",
        "unit": "s",
        "digitlab_objective": obj_ours,
        "peer_objective": obj_peer,
        "relative_objective_difference": rel,
        "digitlab_iterations": out["ours"].n_iter,
        "peer_iterations": int(np.max(out["peer"].n_iter_)),
        "digitlab_default_float64_s": t_default,
        "digitlab_default_objective": obj_default,
        "digitlab_default_relative_difference": (obj_default - obj_peer) / abs(obj_peer),
        "peer_with_scipy_blas_1_thread_s": t_peer_fixed,
        "ratio": ratio,
        "target": ">= 5x scikit-learn, objectives within 1e-6",
        "met": ratio >= 5 and abs(rel) <= 1e-6,
    }


MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, sys
    def hwm():  # peak resident set size so far, bytes
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    import numpy as np
    from digitlab import SoftmaxModel
    from digitlab.optim import SGD
    from digitlab.runner import prepare_data
    from digitlab.settings import Settings
    from digitlab.train import Trainer
    base = hwm()
    # what `digitlab train` does: the splits stay uint8 (ImageRows), features are made per
    # batch and per evaluation chunk
    data = prepare_data(Settings.from_dict({"model": "softmax", "holdout": 0.0}))
    after_data = hwm()
    trainer = Trainer(SoftmaxModel(784, 10), optimizer=SGD(0.9), schedule=0.01,
                      batch_size=128, rng=0)
    trainer.fit(data.train, test=data.test, epochs=int(sys.argv[1]))
    print(json.dumps({"baseline": base, "after_data": after_data, "peak": hwm(),
                      "train_bytes": data.train[0].nbytes, "test_bytes": data.test[0].nbytes}))
    """
)


def case_memory(ctx: dict[str, Any]) -> dict[str, Any]:
    epochs = ctx["mem_epochs"]
    proc = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, str(epochs)],
        capture_output=True,
        text=True,
        check=True,
        env=os.environ | {"OMP_NUM_THREADS": str(ctx["threads"])},
    )
    m = json.loads(proc.stdout.strip().splitlines()[-1])
    dataset = 60000 * 784 * 4
    delta = m["peak"] - m["baseline"]
    return {
        "what": f"peak RSS of a subprocess: runner.prepare_data (uint8 ImageRows splits, all "
        f"60,000 training images), train softmax {epochs} epochs (batch 128, test evaluated "
        "each epoch); VmHWM after training minus VmHWM right after importing numpy and digitlab",
        "train_uint8_bytes": m["train_bytes"],
        "test_uint8_bytes": m["test_bytes"],
        "unit": "bytes",
        "baseline_bytes": m["baseline"],
        "peak_bytes": m["peak"],
        "peak_after_data_bytes": m["after_data"] - m["baseline"],
        "delta_bytes": delta,
        "dataset_bytes": dataset,
        "ratio": delta / dataset,
        "target": "<= 0.5x the float32 training set (60000*784*4 bytes)",
        "met": delta / dataset <= 0.5,
    }


CASES = {
    "softmax_epoch": case_softmax_epoch,
    "full_batch_step": case_full_batch,
    "mlp_epoch": case_mlp_epoch,
    "single_sample_sgd": case_single_sample,
    "time_to_98": case_time_to_accuracy,
    "exact_optimum": case_exact_optimum,
    "peak_memory": case_memory,
}


def fmt_row(name: str, r: dict[str, Any]) -> str:
    if name == "peak_memory":
        ours = f"{r['delta_bytes'] / 2**20:.0f} MiB"
        peer = f"data {r['dataset_bytes'] / 2**20:.0f} MiB"
        ratio = f"{r['ratio']:.2f}x data"
    elif name == "single_sample_sgd":
        ours, peer = f"{r['digitlab_steps_per_s']:,.0f}/s", f"{r['peer_steps_per_s']:,.0f}/s"
        ratio = f"{r['ratio']:.2f}x"
    else:
        ours, peer = f"{r['digitlab_s']:.4g} s", f"{r['peer_s']:.4g} s"
        ratio = f"{r['ratio']:.2f}x"
    met = {True: "yes", False: "NO", None: "-"}[r["met"]]
    disturbed = r.get("disturbed_rounds", 0)
    note = f" ({disturbed} disturbed rounds)" if disturbed else ""
    return f"| {name} | {ours} | {peer} | {ratio}{note} | {r['target']} | {met} |"


def run_coretypes(args: argparse.Namespace, argv: list[str]) -> int:
    """Run this script once per OpenBLAS core type, each in its own process (OpenBLAS reads
    ``OPENBLAS_CORETYPE`` when it loads); each writes ``results-<coretype>.json``."""
    rest, skip = [], False
    for a in argv:  # the same arguments without --coretypes / --out
        if skip:
            skip = False
        elif a in ("--coretypes", "--out"):
            skip = True
        elif not a.startswith(("--coretypes=", "--out=")):
            rest.append(a)
    status = 0
    for core in [c for c in args.coretypes.split(",") if c]:
        out = HERE / f"results-{core}{'-quick' if args.quick else ''}.json"
        print(f"== OPENBLAS_CORETYPE={core}", flush=True)
        env = os.environ | {"OPENBLAS_CORETYPE": core}
        cmd = [sys.executable, __file__, *rest, "--out", str(out)]
        status = max(status, subprocess.call(cmd, env=env))
    return status


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a fast smoke run (fewer repeats)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="BLAS/torch threads")
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated subset")
    ap.add_argument("--out", type=Path, help="results JSON (default benchmarks/results.json)")
    ap.add_argument("--coretypes", help="comma-separated OPENBLAS_CORETYPE values: run the "
                    "benchmark once under each (results-<coretype>.json)")  # fmt: skip
    args = ap.parse_args(argv)
    if args.coretypes:
        return run_coretypes(args, argv if argv is not None else sys.argv[1:])
    names = [c for c in args.cases.split(",") if c]
    unknown = sorted(set(names) - set(CASES))
    if unknown:
        ap.error(f"unknown cases {unknown}; choose from {', '.join(CASES)}")
    out_path = args.out or HERE / ("results-quick.json" if args.quick else "results.json")
    threads = args.threads

    import torch

    threadpool_limits(threads)  # NumPy's and SciPy's OpenBLAS, scikit-learn's OpenMP
    torch.set_num_threads(threads)
    torch.manual_seed(SEED)

    info = machine(threads)
    print(
        f"machine: {info['cpu']}, {info['cores']} cores, {threads} threads; numpy "
        f"{info['numpy']}, torch {info['torch']}, scikit-learn {info['scikit-learn']}; "
        f"OPENBLAS_CORETYPE={info['OPENBLAS_CORETYPE']}; load {info['loadavg_start']}",
        flush=True,
    )
    quick = args.quick
    data = load("mnist", allow_sample=False)
    pre = Preprocessor("scale01")
    X = pre.fit_transform(data.x_train)
    X_test = pre.transform(data.x_test)
    rows = ImageRows(data.x_train, pre)
    y, y_test = data.y_train, data.y_test
    gemm = gemm_rate(2048, 3 if quick else 10)
    bw = bandwidth(threads, 3 if quick else 8)
    print(
        f"float32 GEMM {gemm:.0f} GFLOP/s; memory read {bw['read_GBps']:.1f} GB/s, "
        f"copy {bw['copy_GBps']:.1f} GB/s",
        flush=True,
    )
    ctx = {
        "X": X,
        "rows": rows,
        "y": y,
        "X_test": X_test,
        "y_test": y_test,
        "torch": torch,
        "Xt": torch.from_numpy(X),
        "yt": torch.from_numpy(y),
        "Xt_test": torch.from_numpy(X_test),
        "yt_test": torch.from_numpy(y_test),
        "threads": threads,
        "gemm_GFLOPs": gemm,
        "bandwidth": bw,
        "rounds": 2 if quick else 7,
        "steps_micro": 200 if quick else 1000,
        # a full-batch fit runs hundreds of steps; at 50 the one-off row layout (row_blocks,
        # built in each round's fit and timed with it) is a fifth of the fit, not its bulk
        "full_steps": 40 if quick else 50,
        "sgd_steps": 3000 if quick else 20000,
        "target_acc": 0.98,
        "max_epochs": 2 if quick else 30,
        "acc_rounds": 1 if quick else 2,
        "alpha": 1e-3,
        "sk_tol": 1e-6,
        "lbfgs_rounds": 1 if quick else 2,
        "mem_epochs": 1 if quick else 3,
    }
    results: dict[str, Any] = {"machine": info, "quick": quick, "float32_gemm_GFLOPs": gemm}
    results["memory_bandwidth"] = bw
    results["cases"] = {}
    print("| case | digitlab | peer | peer/digitlab | target | met |")
    print("|---|---|---|---|---|---|", flush=True)
    for name in names:
        r = CASES[name](ctx)
        results["cases"][name] = r
        print(fmt_row(name, r), flush=True)
    info["loadavg_end"] = os.getloadavg()
    out_path.write_text(json.dumps(results, indent=2, default=float) + "\n")
    print(f"wrote {out_path} (load average at the end {info['loadavg_end']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
