"""Run one ``digitlab`` command in this process and print its peak anonymous memory.

    python benchmarks/anonpeak.py train --dataset mnist-8m --model softmax --batch 1000 --epochs 1

``RssAnon`` (memory the process allocated itself, not the page cache of mapped files) is
sampled every 20 ms by a thread (``scale.AnonPeak``); printed to stderr with the wall time and
``VmHWM`` (peak RSS, mapped file pages included) when the command ends.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scale import AnonPeak, _status  # noqa: E402

from digitlab.cli import main  # noqa: E402


def run(argv: list[str]) -> int:
    t0 = time.perf_counter()
    with AnonPeak() as anon:
        code = main(argv)
    print(f"anonpeak: exit {code}, wall {time.perf_counter() - t0:.1f} s, peak anonymous "
          f"{anon.peak / 2**20:.0f} MiB, VmHWM {_status('VmHWM') / 2**20:.0f} MiB",
          file=sys.stderr)  # fmt: skip
    return code


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
