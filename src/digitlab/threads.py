"""How many BLAS threads a fit uses: the cores it may use, one for skinny products, fewer when
other processes keep cores busy.

- **Cores this process may use**: its CPU affinity, capped by a cgroup CPU quota (a container
  given 1.5 CPUs on a 64-core machine gets 2 threads, not 64).
- **Skinny products on one thread**: a step whose products are small (softmax regression on
  mini-batches: 128 x 785 x 10) runs on one thread, unless this host's kernel calibration
  found such steps faster on the fit's cores (``digitlab.kernels``' ``batch_parallel``: on a
  2-core Zen 3, 0.117 -> 0.105 s per softmax epoch). Such a fit starts on one thread and takes
  the other cores when the first check finds them free: a busy core costs a small step 2x.
- **A busy core is given up**: OpenBLAS splits a product evenly over its threads and waits for
  the last; with another process on one of two cores, the thread sharing that core finishes
  late and an epoch takes twice as long (measured: a softmax epoch 0.107 -> 0.215 s with two
  threads, 0.115 s with one). Every half second the fit reads how much CPU time the other
  processes took (``/proc/stat`` minus this process's own) and drops a thread per busy core,
  taking it back once the core is free.

The same count works through the row blocks of a large full batch side by side, each block's
products on one BLAS thread (:func:`map_in_order`): the blocks' softmax, which BLAS does not
run, then no longer leaves the other cores idle, nor do the BLAS threads' hand-overs.

A thread limit set outside (``OPENBLAS_NUM_THREADS``, threadpoolctl) caps the count;
``DIGITLAB_THREADS=N`` fixes it (no adjusting); the library's own defaults apply where
threadpoolctl is missing.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from digitlab.errors import ConfigError

#: A step whose products do fewer multiply-adds than this runs on one thread.
SKINNY_MACS = 4_000_000
#: Seconds between two readings of the other processes' load (the first after FIRST_CHECK_S).
CHECK_S, FIRST_CHECK_S = 0.5, 0.1
#: A core counts as busy above this share of other processes' time, free again below RELEASE.
BUSY, RELEASE = 0.6, 0.3
ENV = "DIGITLAB_THREADS"
#: The BLAS thread count of the fit running now (set by :class:`ThreadPolicy`; 1 outside).
_fit_threads = 1
_pool: Any = None


def fit_threads() -> int:
    """The running fit's thread count (1 outside a fit)."""
    return _fit_threads


def map_in_order(fn: Any, items: Sequence[Any], threads: int) -> Iterator[Any]:
    """``fn(item)`` for each item, on ``threads`` threads with BLAS on one thread each, yielded
    in the items' order (the caller sums them in that order: the same numbers as one thread
    at that BLAS thread count); at most ``threads`` results wait to be taken."""
    global _pool
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_limits

    if _pool is None or _pool._max_workers < threads:
        _pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="digitlab-rows")
    with threadpool_limits(limits=1, user_api="blas"):
        pending = [_pool.submit(fn, item) for item in items[:threads]]
        for i in range(len(items)):
            result = pending.pop(0).result()
            if i + threads < len(items):
                pending.append(_pool.submit(fn, items[i + threads]))
            yield result


def usable_cores() -> int:
    """Cores this process may run on: its affinity mask, capped by a cgroup CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    quota = cgroup_quota()
    return max(1, min(cores, math.ceil(quota)) if quota else cores)


def cgroup_quota(root: str = "/sys/fs/cgroup") -> float | None:
    """The cgroup's CPU quota in cores (v2 ``cpu.max`` or v1 ``cfs_quota_us`` under
    ``root``), None if none."""
    try:
        with open(f"{root}/cpu.max", encoding="ascii") as f:
            quota, period = f.read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        with open(f"{root}/cpu/cpu.cfs_quota_us", encoding="ascii") as f:
            quota_us = int(f.read())
        with open(f"{root}/cpu/cpu.cfs_period_us", encoding="ascii") as f:
            period_us = int(f.read())
    except (OSError, ValueError):
        return None
    return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us


def fixed_threads() -> int | None:
    """``DIGITLAB_THREADS`` as a whole number of threads, None when unset."""
    text = os.environ.get(ENV, "").strip()
    if not text:
        return None
    if not text.isdigit() or not 1 <= int(text) <= 4096:
        raise ConfigError(f"{ENV} must be a whole number of threads from 1, got {text!r}")
    return int(text)


def worker_threads() -> int:
    """The BLAS thread cap of a worker process this one starts: ``DIGITLAB_THREADS``, else the
    usable cores capped, as a fit's are, by a limit set outside (:func:`capped`)."""
    fixed = fixed_threads()
    return fixed if fixed is not None else capped(usable_cores())


def capped(cores: int) -> int:
    """``cores``, or fewer where a thread limit was set outside (``OPENBLAS_NUM_THREADS`` and
    the like when the library loaded, threadpoolctl since)."""
    return min(cores, blas_threads() or cores)


def machine_busy_s() -> tuple[float, float] | None:
    """CPU seconds all processes spent so far: ``(normal priority, niced)``, from /proc/stat."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in fields[1:8])
    tick = os.sysconf("SC_CLK_TCK")
    return (user + system + irq + softirq) / tick, nice / tick


def own_busy_s() -> float:
    """CPU seconds this process has spent (all its threads)."""
    t = os.times()
    return t.user + t.system


def blas_threads() -> int:
    """The BLAS libraries' current thread count (the largest; 0 when none is known)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        return 0
    counts = [p.get("num_threads", 0) for p in threadpool_info() if p.get("user_api") == "blas"]
    return max(counts, default=0)


class LoadMeter:
    """Cores kept busy by other processes between its creation and :meth:`finish`."""

    def __init__(self) -> None:
        self.t0, self.start = time.monotonic(), machine_busy_s()
        self.own0 = own_busy_s()

    def finish(self) -> float | None:
        """The other processes' mean load in cores since creation (None off Linux)."""
        end, wall = machine_busy_s(), time.monotonic() - self.t0
        if end is None or self.start is None or wall <= 0:
            return None
        others = end[0] - self.start[0] - (own_busy_s() - self.own0)
        if os.nice(0) > 0:
            others += end[1] - self.start[1]
        return max(0.0, others / wall)


def others_load() -> LoadMeter:
    """A :class:`LoadMeter` started now."""
    return LoadMeter()


class ThreadPolicy:
    """BLAS threads for one fit (module docstring); ``start`` / ``tick`` / ``stop``.

    Parameters
    ----------
    macs_per_step : int
        Multiply-adds of one step's products (batch rows x weights): below
        :data:`SKINNY_MACS` the fit runs on one thread,
    small_on_cores : bool
        unless this host's kernel calibration found such steps faster on the fit's cores
        (``digitlab.kernels``' ``batch_parallel``): they then run there, under the same watch of
        the other processes' load as a large step.
    """

    def __init__(self, macs_per_step: int, small_on_cores: bool = False) -> None:
        self.macs_per_step = int(macs_per_step)
        self.small_on_cores = bool(small_on_cores)
        self.cores = usable_cores()
        self.threads = 0
        self._limiter: Any = None
        self._previous: Any = None
        self._last: LoadMeter | None = None  # the load since the last check
        self._next_check = 0.0
        self._busy_cores = 0

    @classmethod
    def for_step(
        cls, rows: int, params: dict[str, Any], small_on_cores: bool = False
    ) -> ThreadPolicy:
        """The policy of steps of ``rows`` rows through the weight arrays ``params`` (a batch
        of one row is never put on several cores)."""
        macs = rows * sum(int(np.size(w)) for w in params.values())
        return cls(macs, small_on_cores and rows > 1)

    @property
    def adjusting(self) -> bool:
        """Whether the thread count follows the other processes' load."""
        return self.cores > 1 and (self.macs_per_step >= SKINNY_MACS or self.small_on_cores)

    def start(self) -> None:
        """Set this fit's thread count (kept until :meth:`stop`)."""
        fixed = fixed_threads()
        if fixed is not None:
            self.cores, self.macs_per_step = fixed, SKINNY_MACS * int(fixed > 1)
            self.small_on_cores = False
        else:  # a limit set outside (OPENBLAS_NUM_THREADS, threadpoolctl) is a cap
            self.cores = capped(self.cores)
        self._busy_cores = 0
        if self.adjusting and self.macs_per_step < SKINNY_MACS:
            # small steps gain ~10% from the other cores and lose 2x when one is busy: on one
            # thread until the first check finds the other cores free
            self._busy_cores = self.cores - 1
        self._set(max(1, self.cores - self._busy_cores) if self.adjusting else 1)
        if self.adjusting and fixed is None:
            self._last = LoadMeter()
            self._next_check = time.monotonic() + FIRST_CHECK_S
        else:
            self._last = None

    def tick(self) -> None:
        """Called after every step: every :data:`CHECK_S` seconds, follow the load."""
        if self._last is None or time.monotonic() < self._next_check:
            return
        load = self._last.finish()
        if load is None:
            self._last = None
            return
        busy, target = self._busy_cores, min(self.cores - 1, math.floor(load + 1 - BUSY))
        if target > busy or load < busy - 1 + RELEASE:
            busy = target
        if busy != self._busy_cores:
            self._busy_cores = busy
            self._set(max(1, self.cores - busy))
        self._last, self._next_check = LoadMeter(), time.monotonic() + CHECK_S

    def stop(self) -> None:
        """Give the libraries back their thread counts."""
        global _fit_threads
        _fit_threads = 1
        if self._previous is not None:
            self._previous.restore_original_limits()
        self._previous = self._limiter = None
        self._last = None

    def _set(self, threads: int) -> None:
        global _fit_threads
        _fit_threads = threads
        if threads == self.threads:
            return
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
            return
        limiter = threadpool_limits(limits=threads, user_api="blas")
        if self._previous is None:
            self._previous = limiter  # remembers the counts from before the fit
        self.threads = threads
