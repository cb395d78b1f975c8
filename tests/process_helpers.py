"""Shared by the tests that kill a command and check what becomes of its child processes:
their state read from /proc (a zombie, not reaped by a container's init, counts as ended)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def children(pid: int) -> list[int]:
    """The pids of the live processes whose parent is ``pid``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def gone_within(pids: list[int], seconds: float) -> list[int]:
    """Wait up to ``seconds`` for the processes ``pids`` to end; those still alive."""
    deadline = time.monotonic() + seconds
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return [p for p in pids if alive(p)]


def start_parent(script: str) -> tuple[subprocess.Popen, int]:
    """Run ``python -c script`` (digitlab importable from src/), a stand-in for a command that
    starts a child and prints the child's pid first; return the process and that pid."""
    env = os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                            text=True)  # fmt: skip
    return proc, int(proc.stdout.readline())
