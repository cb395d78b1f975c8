"""Ctrl-C and SIGTERM as a clean stop after the current step."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from typing import Any

from digitlab.train.callbacks import TrainerView


@contextlib.contextmanager
def graceful_interrupts(trainer: TrainerView) -> Iterator[None]:
    """Turn SIGINT (Ctrl-C) and SIGTERM into a clean stop after the current step.

    The trainer's callbacks then run their end-of-training hooks, so a
    :class:`~digitlab.train.Checkpoint` callback saves a resumable checkpoint.
    Only usable from the main thread.
    """

    def handler(signum: int, frame: Any) -> None:
        trainer.interrupted = True
        trainer.request_stop(f"interrupted by {signal.Signals(signum).name}")

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
