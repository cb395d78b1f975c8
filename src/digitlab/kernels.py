"""Kernel choices for the hot products, measured on this host and cached.

A layout that wins on one CPU can lose on another: the full-batch gradient of a linear model,
``X^T delta`` over 18,000 x 785 rows and 10 columns, took 39 ms on an Intel SkylakeX host as
1,024-row blocks and 19-21 ms as one product, where on an AMD Zen 3 host the blocks win
(the block is still in cache when the gradient's product reads it). So the choices below are
made by a short calibration (at most about a second) the first time they are needed, timed on
the shapes they serve, and kept in the user's cache folder per CPU model, BLAS build, kernel family
(``OPENBLAS_CORETYPE``), thread count and dtype. A calibration disturbed by other processes
(more than a quarter of a core busy meanwhile) is used by its process but not kept.

Choices
-------
``rows`` : int or 0
    Rows per block of a full batch's loss and gradient (0: the whole batch at once).
``transposed`` : bool
    Compute a tall, narrow gradient ``a^T delta`` (from :data:`BLOCK_ROWS` rows) as
    ``(delta^T a)^T``.
``batch_transposed`` : bool
    The same for a mini-batch's narrow gradient (2 to ``BLOCK_ROWS - 1`` rows; timed on
    :data:`BATCH_ROWS` rows and one BLAS thread, as the thread policy runs them): under
    OpenBLAS's SandyBridge kernels ``(delta^T a)^T`` took 44 us where ``a^T delta`` took 86
    (128 x 784 x 10, one thread); under Haswell and Zen 55 us vs 43.
``batch_parallel`` : bool
    Whether a mini-batch's skinny products (below ``threads.SKINNY_MACS`` multiply-adds a
    step) run on the fit's cores instead of one thread (then under the thread policy's watch
    of other processes' load, like a large product). On this 2-core Zen 3 a softmax epoch
    (batch 128) took 0.105 s on two threads and 0.117 s on one.

``DIGITLAB_KERNELS`` overrides them: ``"rows=1024,transposed=0,batch_transposed=1,
batch_parallel=0"`` (any key may be left out: it keeps its default), ``"calibrate"`` measures
again and rewrites the cache, ``"default"`` uses the defaults without measuring (what the
tests pin). Results of a run depend on the choice only through the order of float summation.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import platform
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from digitlab.errors import ConfigError

#: The blocked layout's rows per block, and the smallest batch that is worked in blocks
#: (twice that).
BLOCK_ROWS = 1024
#: Calibration shape: the source's full-batch softmax (784 pixels + bias, 10 classes), on
#: half its 18,000 rows.
CAL_ROWS, CAL_FEATURES, CAL_OUTPUTS = 9216, 785, 10
#: Calibration shape of a mini-batch (the batches of the seeds' mini-batch runs), and how many
#: steps on one gathered batch one timing runs.
BATCH_ROWS, BATCH_STEPS = 128, 40
#: A gradient product is "narrow" (the transposed choice applies, from BLOCK_ROWS rows) up to
#: this many columns.
NARROW_COLUMNS = 64
ENV = "DIGITLAB_KERNELS"
#: The yes/no choices, in :class:`Choices`' order.
FLAGS = ("transposed", "batch_transposed", "batch_parallel")
#: A calibration during which other processes kept more than this many cores busy is used by
#: its process but not cached.
DISTURBED = 0.25


@dataclass(frozen=True)
class Choices:
    """The kernel choices of one dtype (module docstring)."""

    rows: int = BLOCK_ROWS
    transposed: bool = False
    batch_transposed: bool = False
    batch_parallel: bool = False
    source: str = "default"  # "default", "calibrated", "disturbed", "cache" or "environment"
    timings_ms: dict[str, float] | None = None


_lock = threading.Lock()
#: The resolved choices by dtype (keyed by the dtype object: ``dtype.name`` costs ~3 us, a
#: mini-batch step reads this once).
_current: dict[np.dtype, Choices] = {}


def host_key(dtype: Any) -> dict[str, Any]:
    """What a calibration depends on: CPU model, BLAS build and kernel family, threads, dtype."""
    blas = blas_info()
    return {
        "cpu": cpu_model() or "unknown",
        "machine": platform.machine(),
        "blas": f"{blas.get('internal_api', '?')} {blas.get('version', '?')}",
        "kernels": os.environ.get("OPENBLAS_CORETYPE") or blas.get("architecture", "?"),
        "threads": int(blas.get("num_threads", 1)),
        "dtype": np.dtype(dtype).name,
    }


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo; the platform's processor name elsewhere,
    possibly empty)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def blas_info() -> dict[str, Any]:
    """NumPy's BLAS as threadpoolctl reports it (internal_api, version, architecture,
    num_threads); empty when threadpoolctl is missing."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        return {}
    for pool in threadpool_info():
        if pool.get("user_api") == "blas" and "numpy" in str(pool.get("filepath", "")):
            return pool
    pools = [p for p in threadpool_info() if p.get("user_api") == "blas"]
    return pools[0] if pools else {}


def parse_override(text: str) -> Choices:
    """``DIGITLAB_KERNELS``'s ``key=value`` list as :class:`Choices`."""
    values: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or key not in ("rows", *FLAGS):
            raise ConfigError(
                f"{ENV}: {part!r} is not rows=N, transposed=0|1, batch_transposed=0|1 or "
                "batch_parallel=0|1 (or 'calibrate', 'default')"
            )
        if key == "rows":
            if not value.isdigit() or int(value) > 10**7:
                raise ConfigError(f"{ENV}: rows must be a whole number >= 0, got {value!r}")
            values["rows"] = int(value)
        elif value not in ("0", "1"):
            raise ConfigError(f"{ENV}: {key} must be 0 or 1, got {value!r}")
        else:
            values[key] = value == "1"
    return Choices(**values, source="environment")


def cache_file(key: dict[str, Any]) -> Path:
    """The cache file of ``key``'s choices, in the user cache folder."""
    from digitlab.data.registry import cache_root

    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_root() / "kernels" / f"{digest}.json"


def read_cached(path: Path, key: dict[str, Any]) -> Choices | None:
    """The choices cached in ``path`` for ``key``; None when absent, unreadable or stale."""
    from digitlab.fileio import parse_json, read_text

    try:
        data = parse_json(read_text(path, 64 * 1024), str(path))
    except Exception:  # noqa: BLE001 - a bad cache file is recalibrated, never an error
        return None
    if not isinstance(data, dict) or data.get("key") != key:
        return None
    rows, flags = data.get("rows"), tuple(data.get(k) for k in FLAGS)
    if not isinstance(rows, int) or isinstance(rows, bool) or rows < 0:
        return None
    if not all(isinstance(f, bool) for f in flags):  # a cache of an older digitlab: measured
        return None
    return Choices(rows, *flags, "cache", data.get("timings_ms"))


def choices(dtype: Any = np.float32) -> Choices:
    """The kernel choices for ``dtype`` in this process (overridden, cached or measured)."""
    key = np.dtype(dtype)
    found = _current.get(key)
    if found is not None:
        return found
    with _lock:
        if key not in _current:
            _current[key] = _resolve(dtype)
        return _current[key]


def _resolve(dtype: Any) -> Choices:
    mode = os.environ.get(ENV, "").strip()
    if mode == "default":
        return Choices()
    if mode and mode != "calibrate":
        return parse_override(mode)
    key = host_key(dtype)
    path = cache_file(key)
    if mode != "calibrate":
        cached = read_cached(path, key)
        if cached is not None:
            return cached
    found = calibrate(dtype)
    if found.source != "calibrated":  # measured beside other load: used, not kept
        return found
    record = {
        "key": key,
        "rows": found.rows,
        "transposed": found.transposed,
        "batch_transposed": found.batch_transposed,
        "batch_parallel": found.batch_parallel,
        "timings_ms": found.timings_ms,
        "measured": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    try:
        from digitlab.fileio import atomic_write_text

        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(record, indent=1))
    except OSError:  # a read-only home: measured again by the next process
        pass
    return found


def transposed(a: np.ndarray, delta: np.ndarray) -> bool:
    """Whether ``a.T @ delta`` (``a (n, p)``, ``delta (n, q)``) is to be computed as
    ``(delta.T @ a).T``: a narrow product (at most :data:`NARROW_COLUMNS` columns) of at least
    two rows, on a host whose resolved choices say so (``transposed`` from
    :data:`BLOCK_ROWS` rows, ``batch_transposed`` below).

    Reads only the choices already resolved in this process (by the trainer): the models
    never measure or read files.
    """
    if a.shape[0] < 2 or delta.shape[1] > NARROW_COLUMNS:
        return False
    found = _current.get(a.dtype)
    if found is None:
        return False
    return found.transposed if a.shape[0] >= BLOCK_ROWS else found.batch_transposed


def resolved(dtype: Any) -> Choices | None:
    """The choices for ``dtype`` if this process has resolved them (None otherwise): what the
    models and the thread policy read, never measuring."""
    return _current.get(np.dtype(dtype))


def reset() -> None:
    """Forget this process's choices (the next use resolves them again)."""
    with _lock:
        _current.clear()


def calibrate(dtype: Any = np.float32, rounds: int = 7, budget_s: float = 0.8) -> Choices:
    """Time each layout on the calibration shapes; return the fastest as :class:`Choices`.

    Each candidate computes a softmax model's loss and gradient (the forward product, the
    softmax and the gradient's product): the full-batch layouts on :data:`CAL_ROWS` rows, the
    mini-batch ones :data:`BATCH_STEPS` times on one batch of :data:`BATCH_ROWS` rows. After one
    warm-up call each, the candidates run in interleaved rounds (so that a burst of other load
    hits them alike) until ``rounds`` are done or ``budget_s`` has passed; each keeps its best.
    """
    from digitlab.threads import others_load

    timers = _timers(dtype)
    best = dict.fromkeys(timers, math.inf)
    load = others_load()
    start = time.perf_counter()
    for run in timers.values():  # warm-up
        run()
    for _ in range(rounds):
        for name, run in timers.items():
            best[name] = min(best[name], run())
        if time.perf_counter() - start > budget_s:
            break
    timings = {k: round(v * 1e3, 3) for k, v in best.items()}
    full = parse_override(min((k for k in best if k.startswith("rows=")), key=best.__getitem__))
    batch = parse_override(min((k for k in best if k.startswith("batch_")), key=best.__getitem__))
    others = load.finish()
    source = "calibrated" if others is not None and others < DISTURBED else "disturbed"
    return Choices(
        full.rows, full.transposed, batch.batch_transposed, batch.batch_parallel, source, timings
    )


def _timers(dtype: Any) -> dict[str, Any]:
    """The calibration's candidates by their override text: each a function that computes the
    loss and gradient in its layout and returns the seconds it took."""
    from digitlab.models.functional import softmax_cross_entropy_

    rng = np.random.default_rng(0)
    dt = np.dtype(dtype)
    X = rng.random((CAL_ROWS, CAL_FEATURES), dtype=np.float32)
    X[X < 0.8] = 0.0  # about as sparse as digits
    X = X.astype(dt, copy=False)
    W = (rng.standard_normal((CAL_FEATURES, CAL_OUTPUTS)) * 0.01).astype(dt)
    y = rng.integers(0, CAL_OUTPUTS, CAL_ROWS)

    def run(step: int, transposed: bool) -> float:
        t = time.perf_counter()
        g = np.zeros_like(W)
        for start in range(0, CAL_ROWS, step):
            Xb = X[start : start + step]
            _, d = softmax_cross_entropy_(Xb @ W, y[start : start + step], 1.0)
            g += (d.T @ Xb).T if transposed else Xb.T @ d
        return time.perf_counter() - t

    timers: dict[str, Any] = {}
    for rows in (BLOCK_ROWS, 0):
        for t in (0, 1):
            timers[f"rows={rows},transposed={t}"] = functools.partial(
                run, rows or CAL_ROWS, bool(t)
            )
    Xb, yb = X[:BATCH_ROWS].copy(), y[:BATCH_ROWS]  # a gathered batch, in cache as in a fit

    def batch(transposed: bool, threads: int) -> float:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=threads, user_api="blas"):
            t = time.perf_counter()
            for _ in range(BATCH_STEPS):
                _, d = softmax_cross_entropy_(Xb @ W, yb, 1.0)
                _g = (d.T @ Xb).T if transposed else Xb.T @ d
            return time.perf_counter() - t

    from digitlab.threads import blas_threads

    cores = blas_threads()  # the fit's cores, as the thread policy would give them
    for p in (0, 1) if cores > 1 else (0,):
        for t in (0, 1):
            timers[f"batch_transposed={t},batch_parallel={p}"] = functools.partial(
                batch, bool(t), cores if p else 1
            )
    return timers


def describe() -> dict[str, Any]:
    """The host key and the float32 choices, for benchmarks and ``digitlab kernels``."""
    c = choices(np.float32)
    return {"host": host_key(np.float32), "choices": asdict(c)}
