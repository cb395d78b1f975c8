#!/usr/bin/env python3
"""Simulate TDT4265 assignment 1 task 2d/2e (the early-stopping epoch) under the starter code.

Independent of digitlab: plain NumPy, re-implementing the starter code's loop so the stop epoch can
be swept over the learning rate, the early-stopping reading and the random seed.

Protocols (see the experiment file ``tdt4265-task2de.toml`` for the sources):

- ``2020``: spring-2020 starter ``utils.load_binary_dataset(class1, class2, val_percentage)``:
  first 20,000 training images and last 2,000 test images, both pruned to {2, 3}, then a random
  10% of the training part held out (``np.random.shuffle`` of the indices after
  ``np.random.seed(0)``); ``task2.py``: lr 0.2, batch 128.
- ``2021``: spring-2021/2022 starter (``trainer.py``, ``utils.batch_loader``):
  training = first 20,000 training images pruned to {2, 3}, validation = first 10,000 *test*
  images pruned, no test split; ``task2.py``: lr 0.05, batch 128.

Both: pixels to [-1, 1] plus a bias input 1, zero weights, mean cross-entropy, batches of 128 in
order, the last short batch dropped, validation every ``(N // 128) // 5`` steps starting at
step 0, shuffling (task 2e) with ``np.random.shuffle`` of the indices before each epoch.

Stopping readings (``--rule``):

- ``best``: stop after 10 validations in a row without a new lowest validation loss;
- ``prev``: stop after 10 validations in a row whose loss exceeds the last non-increasing value
  (several forks' reading);
- ``window``: stop when the loss is not below any of the previous 10 validation losses.

The reported epoch is the starter loop's 0-based ``epoch`` at the stop (what forks print).
Measured (full MNIST): protocol 2021, lr 0.05, rule best or prev: 33 without shuffling (every
seed), 16 with shuffling for seed 0 (12-31 over seeds 0-7); ``--offset 1``: 28 without.
"""

from __future__ import annotations

import argparse
import gzip
from pathlib import Path

import numpy as np


def read_idx_gz(path: Path) -> np.ndarray:
    raw = gzip.open(path, "rb").read()
    rank = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(rank)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * rank).reshape(dims)


def prune(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keep = (y == 2) | (y == 3)
    return x[keep], (y[keep] == 2).astype(np.float64).reshape(-1, 1)


def prep(x: np.ndarray) -> np.ndarray:
    x = x.reshape(len(x), -1) / 127.5 - 1.0
    return np.hstack([x, np.ones((len(x), 1))])


def load(data: Path, protocol: str, seed: int) -> tuple[np.ndarray, ...]:
    xi = read_idx_gz(data / "train-images-idx3-ubyte.gz")
    yi = read_idx_gz(data / "train-labels-idx1-ubyte.gz")
    xt = read_idx_gz(data / "t10k-images-idx3-ubyte.gz")
    yt = read_idx_gz(data / "t10k-labels-idx1-ubyte.gz")
    np.random.seed(seed)  # noqa: NPY002 (the starter code's legacy global stream)
    xtr, ytr = prune(xi[:20000], yi[:20000])
    if protocol == "2020":
        idx = np.arange(len(xtr))
        np.random.shuffle(idx)  # noqa: NPY002 (as utils.train_val_split)
        n = int(len(xtr) * 0.9)
        xva, yva = xtr[idx[n:]], ytr[idx[n:]]
        xtr, ytr = xtr[idx[:n]], ytr[idx[:n]]
    else:
        xva, yva = prune(xt[:10000], yt[:10000])
    return prep(xtr), ytr, prep(xva), yva


def loss(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
    p = 1.0 / (1.0 + np.exp(-(x @ w)))
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def run(
    arrays: tuple[np.ndarray, ...], lr: float, shuffle: bool, rule: str, offset: int = 0
) -> tuple[int, int]:
    """Return (stop epoch 0-based, epoch of the best validation loss).

    ``offset`` 0 validates after the starter code's steps 1, 7, 13, ... (its 0-based
    ``global_step % every == 0``); 1 after steps 6, 12, ... (digitlab's default schedule).
    """
    xtr, ytr, xva, yva = arrays
    w = np.zeros((xtr.shape[1], 1))
    nb = len(xtr) // 128
    every = nb // 5
    step, best, best_epoch, count, last, hist = 0, np.inf, 0, 0, np.inf, []
    for epoch in range(500):
        idx = np.arange(len(xtr))
        if shuffle:
            np.random.shuffle(idx)  # noqa: NPY002 (as utils.batch_loader)
        for b in range(nb):
            sel = idx[b * 128 : (b + 1) * 128]
            xb, yb = xtr[sel], ytr[sel]
            p = 1.0 / (1.0 + np.exp(-(xb @ w)))
            w -= lr * (-(xb.T @ (yb - p)) / len(xb))
            if (step + offset) % every == 0:
                v = loss(xva, yva, w)
                if v < best:
                    best, best_epoch = v, epoch
                if rule == "best":
                    count = 0 if v == best else count + 1
                    stop = count >= 10
                elif rule == "prev":
                    if v > last:
                        count += 1
                    else:
                        count, last = 0, v
                    stop = count >= 10
                else:
                    stop = len(hist) >= 10 and all(v >= h for h in hist[-10:])
                hist.append(v)
                if stop:
                    return epoch, best_epoch
            step += 1
    return 500, best_epoch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=Path("/work/shared/data/mnist"))
    p.add_argument("--protocol", choices=["2020", "2021"], default="2020")
    p.add_argument("--lrs", nargs="+", type=float, default=[0.2, 0.05])
    p.add_argument("--rules", nargs="+", default=["best", "prev", "window"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--offset", type=int, default=0, help="1: validate after steps 6, 12, ...")
    args = p.parse_args()
    for lr in args.lrs:
        for rule in args.rules:
            rows = []
            for seed in args.seeds:
                arrays = load(args.data, args.protocol, seed)
                # the split consumed the seeded stream first, as in the starter code
                no = run(arrays, lr, False, rule, args.offset)
                yes = run(arrays, lr, True, rule, args.offset)
                rows.append((no[0], yes[0]))
            a = np.array(rows)
            print(
                f"protocol={args.protocol} lr={lr:g} rule={rule} "
                f"no-shuffle={a[:, 0].tolist()} shuffle={a[:, 1].tolist()} "
                f"mean={a[:, 0].mean():.1f}/{a[:, 1].mean():.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
