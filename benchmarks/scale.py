"""Epoch time and peak memory of softmax mini-batch training against the training-set size.

    digitlab data synth mnist-8m --root /data          # once: 8,100,000 digits, 6.4 GB
    python benchmarks/scale.py --root /data [--sizes 500000,1000000,2000000,4000000,8000000]

Each size ``n`` runs in its own process, through the public API as ``digitlab train`` does
it: ``Settings(dataset="mnist-8m", n_train=n, holdout=0, model="softmax", batch=1000)``,
``runner.prepare_data`` (the first ``n`` rows of the memory-mapped uint8 training file, made
into float32 features a batch at a time) and the run's ``Trainer`` (shuffled batches, SGD lr
0.5), for one epoch without evaluations. Before the timed epoch the prefix is read once, so
the epoch reads the page cache, not the disk (the first read is timed and reported too).

``--threads 1`` keeps the epoch on one core, which a shared machine disturbs less than two
threads that must meet at every BLAS call. With ``--repeat k`` every size runs k times
(round-robin over the sizes) and keeps its fastest epoch; all rounds are in the JSON. Per
size it records the epoch's wall and CPU time, time per image, the peak RSS (``VmHWM``: it
counts the mapped file's pages the process touched) and the peak anonymous memory
(``RssAnon`` sampled every 20 ms: what the process allocated itself, which must stay
O(batch) + model + the shuffle order, 8 bytes per image). Writes
``scale-results.json`` and ``scale.png`` beside this script. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_SIZES = "500000,1000000,2000000,4000000,8000000"


def _status(key: str) -> int:
    """A ``/proc/self/status`` memory field, in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


class AnonPeak:
    """Samples ``RssAnon`` every ``every`` seconds in a thread; ``peak`` is the largest seen."""

    def __init__(self, every: float = 0.02) -> None:
        self.every, self.peak, self._stop = every, _status("RssAnon"), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.peak = max(self.peak, _status("RssAnon"))

    def __enter__(self) -> AnonPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _status("RssAnon"))


def child(n: int, root: str | None, batch: int, threads: int | None) -> dict:
    """One size: prepare the data, read it once, time one epoch. Runs in its own process."""
    import numpy as np
    from threadpoolctl import threadpool_limits

    if threads:
        threadpool_limits(threads)  # NumPy's OpenBLAS

    from digitlab.runner import build_run_model, prepare_data
    from digitlab.settings import Settings
    from digitlab.train import Trainer

    base_anon, base_hwm = _status("RssAnon"), _status("VmHWM")
    load_before = os.getloadavg()[0]
    with AnonPeak() as anon:
        settings = Settings.from_dict({
            "dataset": "mnist-8m", "data_root": root, "n_train": n, "holdout": 0.0,
            "model": "softmax", "batch": batch, "lr": 0.5, "seed": 0,
        })  # fmt: skip
        t0 = time.perf_counter()
        data = prepare_data(settings)
        prepare_s = time.perf_counter() - t0
        X, y = data.train
        t0 = time.perf_counter()
        checksum = 0
        for start in range(0, n, 100_000):  # first read: disk (or page cache) to this process
            checksum += int(np.add.reduce(X.pixels[start : start + 100_000], axis=None))
        read_s = time.perf_counter() - t0
        model = build_run_model(settings, X.shape[1], len(data.classes))
        trainer = Trainer(model, schedule=0.5, batch_size=batch, eval_every=10**12, rng=0)
        t0, c0 = time.perf_counter(), time.process_time()
        trainer.fit((X, y), steps=-(-n // batch))
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {
        "n": n, "batch": batch, "epoch_s": wall, "epoch_cpu_s": cpu, "us_per_image": wall / n * 1e6,
        "steps": trainer.step, "prepare_s": prepare_s, "first_read_s": read_s,
        "peak_rss_bytes": _status("VmHWM"), "baseline_rss_bytes": base_hwm,
        "peak_anon_bytes": anon.peak, "baseline_anon_bytes": base_anon,
        "uint8_bytes": n * 784, "float32_bytes": n * 785 * 4, "pixel_sum": checksum,
        "load_before": load_before, "load_after": os.getloadavg()[0], "threads": threads,
    }  # fmt: skip


def plot(results: list[dict], path: Path) -> None:
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [r["n"] / 1e6 for r in results]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(n, [r["epoch_s"] for r in results], "o-", label="measured (best round)")
    x, t = (np.array([r[k] for r in results], dtype=float) for k in ("n", "epoch_s"))
    slope = float(x @ t / (x @ x))  # least squares through the origin: t = slope * n
    ax1.plot(n, slope * x, "--", color="grey",
             label=f"t = {slope * 1e6:.2f} us x n (least squares)")  # fmt: skip
    ax1.set(xlabel="training images (millions)", ylabel="one epoch (s)",
            title="softmax, batch 1000, one epoch")  # fmt: skip
    ax1.legend()
    gib = 2**30
    ax2.plot(n, [r["peak_rss_bytes"] / gib for r in results], "o-", label="peak RSS (VmHWM)")
    ax2.plot(n, [r["peak_anon_bytes"] / gib for r in results], "s-",
             label="peak anonymous (RssAnon)")
    ax2.plot(n, [r["uint8_bytes"] / gib for r in results], "--", label="uint8 images (n x 784 B)")
    ax2.plot(n, [r["float32_bytes"] / gib for r in results], ":", label="float32 features")
    ax2.set(xlabel="training images (millions)", ylabel="GiB", title="memory")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=None, help="folder holding mnist-8m/ (default: search)")
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help=f"(default: {DEFAULT_SIZES})")
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds over the sizes; each keeps its fastest epoch")  # fmt: skip
    parser.add_argument("--threads", type=int, default=None,
                        help="BLAS threads (default: the library's, all cores)")  # fmt: skip
    parser.add_argument("--out", default=str(HERE / "scale-results.json"))
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child, args.root, args.batch, args.threads)))
        return
    sizes = [int(s) for s in args.sizes.split(",") if s]
    rounds: dict[int, list[dict]] = {n: [] for n in sizes}
    for _ in range(args.repeat):  # all sizes in each round: a slow spell hits one round
        for n in sizes:
            cmd = [sys.executable, __file__, "--child", str(n), "--batch", str(args.batch)]
            if args.root:
                cmd += ["--root", args.root]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                raise SystemExit(f"n={n}: {proc.stderr.strip().splitlines()[-1]}")
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            rounds[n].append(r)
            print(f"n={n:>9,}  epoch {r['epoch_s']:7.2f} s (CPU {r['epoch_cpu_s']:6.2f} s)  "
                  f"{r['us_per_image']:.3f} us/image  peak RSS "
                  f"{r['peak_rss_bytes'] / 2**20:7.0f} MiB  peak anon "
                  f"{r['peak_anon_bytes'] / 2**20:5.0f} MiB  uint8 data "
                  f"{r['uint8_bytes'] / 2**20:6.0f} MiB  first read {r['first_read_s']:.1f} s"
                  f"  load {r['load_before']:.1f}->{r['load_after']:.1f}",
                  flush=True)  # fmt: skip
    results = []
    for n in sizes:
        best = dict(min(rounds[n], key=lambda r: r["epoch_s"]))
        best["all_epoch_s"] = [r["epoch_s"] for r in rounds[n]]
        best["all_epoch_cpu_s"] = [r["epoch_cpu_s"] for r in rounds[n]]
        best["max_peak_anon_bytes"] = max(r["peak_anon_bytes"] for r in rounds[n])
        results.append(best)
    if args.repeat > 1:
        print("best of", args.repeat, "rounds: " + ", ".join(
            f"{r['n']:,}: {r['epoch_s']:.2f} s ({r['us_per_image']:.2f} us/image)"
            for r in results))  # fmt: skip
    base = results[0]["us_per_image"]
    print("time per image relative to the smallest n: "
          + ", ".join(f"{r['n']:,}: {r['us_per_image'] / base:.2f}" for r in results))  # fmt: skip
    import numpy as np

    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
               f"Python {platform.python_version()}, NumPy {np.__version__}")  # fmt: skip
    Path(args.out).write_text(json.dumps({"machine": machine, "results": results}, indent=1))
    plot(results, Path(args.out).with_name("scale.png"))
    print(f"wrote {args.out} and {Path(args.out).with_name('scale.png')}")


if __name__ == "__main__":
    main()
