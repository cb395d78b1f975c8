"""Shared by the tests of training from the browser (``digitlab serve --allow-train``): the
command-line reference of a run stopped at a step and resumed, and checkpoint comparison."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from digitlab.checkpoint import load_checkpoint
from digitlab.cli import main

TOKEN = "test-token-0123456789"
#: A softmax run on the embedded sample long enough to be stopped while it trains.
LONG_RUN = {"dataset": "mnist-5k", "model": "softmax", "lr": "0.5", "batch": "64",
            "epochs": "400", "eval_every": "0.5"}  # fmt: skip
#: What the run is resumed with: a new learning rate and penalty, two more epochs.
RESUME = {"lr": "0.05", "l2": "0.001"}
MORE_EPOCHS = 2


def wait_for(check: Callable[[], Any], what: str, timeout: float = 90.0) -> Any:
    """Poll ``check`` until it returns something true; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def progress(checkpoint: Path) -> dict[str, int]:
    return load_checkpoint(checkpoint)[1]["progress"]


def cli_reference(out: Path, stopped_at: int) -> tuple[Path, Path]:
    """``digitlab train`` with :data:`LONG_RUN` ending at step ``stopped_at`` (where the browser's
    run was stopped), then ``digitlab resume`` with :data:`RESUME`; the final checkpoint and
    the first run's."""
    options = [f"--{k.replace('_', '-')}={v}" for k, v in LONG_RUN.items()]
    assert main(["train", *options, f"--steps={stopped_at}", "--out", str(out), "--name", "cli",
                 "--quiet"]) == 0  # fmt: skip
    (first,) = (out / "cli").glob("*/checkpoint.npz")
    assert progress(first)["step"] == stopped_at
    more = [f"--{k}={v}" for k, v in RESUME.items()]
    assert main(["resume", str(first), "--steps=none", *more, f"--more-epochs={MORE_EPOCHS}",
                 "--out", str(out), "--quiet"]) == 0  # fmt: skip
    (final,) = set((out / "cli").glob("*/checkpoint.npz")) - {first}
    return final, first


def assert_same_arrays(a: Path, b: Path) -> int:
    """Every array of checkpoints ``a`` and ``b`` equal bit for bit; returns how many."""
    arrays_a, arrays_b = load_checkpoint(a)[0], load_checkpoint(b)[0]
    assert sorted(arrays_a) == sorted(arrays_b)
    for key, value in arrays_a.items():
        assert value.dtype == arrays_b[key].dtype, key
        assert np.array_equal(value, arrays_b[key]), key
    return len(arrays_a)
