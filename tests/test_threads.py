"""The BLAS thread policy of a fit: usable cores, skinny products, busy cores."""

from __future__ import annotations

import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from digitlab import threads
from digitlab.errors import ConfigError
from digitlab.models import MLPModel, SoftmaxModel
from digitlab.train import Callback, Trainer


def blas_threads() -> int:
    return max(p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas")


def test_usable_cores_follow_affinity_and_quota(monkeypatch, tmp_path):
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5})
    monkeypatch.setattr(threads, "cgroup_quota", lambda: None)
    assert threads.usable_cores() == 6
    monkeypatch.setattr(threads, "cgroup_quota", lambda: 1.5)
    assert threads.usable_cores() == 2
    monkeypatch.undo()
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert threads.cgroup_quota(str(tmp_path)) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert threads.cgroup_quota(str(tmp_path)) is None
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("50000")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert threads.cgroup_quota(str(tmp_path)) == 0.5
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1")
    assert threads.cgroup_quota(str(tmp_path)) is None


def test_fixed_threads_parsed(monkeypatch):
    monkeypatch.setenv("DIGITLAB_THREADS", "3")
    assert threads.fixed_threads() == 3
    for bad in ("0", "x", "-2", "99999"):
        monkeypatch.setenv("DIGITLAB_THREADS", bad)
        with pytest.raises(ConfigError, match="DIGITLAB_THREADS"):
            threads.fixed_threads()


class Seen(Callback):
    """Records the BLAS thread count while the fit runs."""

    def __init__(self) -> None:
        self.counts: list[int] = []

    def on_step_end(self, trainer, loss) -> None:
        if not self.counts:
            self.counts.append(blas_threads())


def fit(model, batch, monkeypatch, cores=2):
    monkeypatch.setattr(threads, "usable_cores", lambda: cores)
    rng = np.random.default_rng(0)
    X = rng.random((512, 20), dtype=np.float32)
    y = rng.integers(0, 3, 512)
    seen = Seen()
    before = blas_threads()
    Trainer(model, batch_size=batch, rng=0, callbacks=[seen]).fit((X, y), epochs=1)
    assert blas_threads() == before  # given back at the end
    return seen.counts[0]


def test_skinny_fit_runs_on_one_thread(monkeypatch):
    assert fit(SoftmaxModel(20, 3, rng=0), 32, monkeypatch) == 1


def test_large_products_use_the_usable_cores(monkeypatch):
    monkeypatch.setattr(threads, "SKINNY_MACS", 1000)  # make the small MLP count as large
    assert fit(MLPModel(20, 3, hidden=[64], rng=0), 32, monkeypatch, cores=2) == 2
    monkeypatch.setenv("DIGITLAB_THREADS", "1")
    assert fit(MLPModel(20, 3, hidden=[64], rng=0), 32, monkeypatch, cores=2) == 1
    monkeypatch.delenv("DIGITLAB_THREADS")
    with threadpool_limits(limits=1, user_api="blas"):  # a limit set outside is a cap
        assert fit(MLPModel(20, 3, hidden=[64], rng=0), 32, monkeypatch, cores=2) == 1


def test_a_busy_core_is_given_up_and_taken_back(monkeypatch):
    clock = {"t": 100.0, "machine": 0.0, "own": 0.0}
    monkeypatch.setattr(threads.time, "monotonic", lambda: clock["t"])
    monkeypatch.setattr(threads, "machine_busy_s", lambda: (clock["machine"], 0.0))
    monkeypatch.setattr(threads, "own_busy_s", lambda: clock["own"])
    monkeypatch.setattr(threads, "usable_cores", lambda: 4)
    monkeypatch.setattr(threads, "blas_threads", lambda: 4)
    monkeypatch.delenv("DIGITLAB_THREADS", raising=False)
    policy = threads.ThreadPolicy(10**9)
    before = blas_threads()
    policy.start()
    try:
        assert policy.threads == 4

        def advance(seconds, own_cores, other_cores):
            clock["t"] += seconds
            clock["own"] += seconds * own_cores
            clock["machine"] += seconds * (own_cores + other_cores)
            policy.tick()

        advance(0.05, 4, 1.0)  # before the first check: nothing changes
        assert policy.threads == 4
        advance(0.2, 3, 1.0)  # one core busy with another process
        assert policy.threads == 3 and blas_threads() == 3
        advance(0.6, 3, 0.5)  # half a core: kept given up (hysteresis)
        assert policy.threads == 3
        advance(0.6, 2, 2.0)  # two busy cores
        assert policy.threads == 2
        advance(0.6, 4, 0.1)  # free again
        assert policy.threads == 4
        advance(0.6, 1, 9.0)  # never below one thread
        assert policy.threads == 1
    finally:
        policy.stop()
    assert blas_threads() == before


@pytest.mark.skipif(threads.usable_cores() < 2, reason="needs two usable cores")
def test_engine_workers_may_use_every_usable_core(monkeypatch):
    """joblib alone gives each of 2 workers cores // 2 BLAS threads; a chain running alone in
    the engine's workers gets every usable core (the policy shares them while others run)."""
    import joblib

    from digitlab.experiments.execute import backend

    monkeypatch.delenv("DIGITLAB_THREADS", raising=False)
    cores = threads.usable_cores()
    with backend(None):
        seen = joblib.Parallel(n_jobs=2)(joblib.delayed(blas_threads)() for _ in range(2))
    assert seen == [cores, cores]
    with threadpool_limits(limits=1, user_api="blas"):  # a limit set outside still caps them
        assert threads.worker_threads() == 1
    monkeypatch.setenv("DIGITLAB_THREADS", "3")
    assert threads.worker_threads() == 3


@pytest.mark.parametrize("other_cores, threads_after", [(0.0, 4), (1.0, 3), (3.0, 1)])
def test_small_steps_start_on_one_thread_until_the_cores_are_seen_free(
    monkeypatch, other_cores, threads_after
):
    clock = {"t": 100.0, "machine": 0.0, "own": 0.0}
    monkeypatch.setattr(threads.time, "monotonic", lambda: clock["t"])
    monkeypatch.setattr(threads, "machine_busy_s", lambda: (clock["machine"], 0.0))
    monkeypatch.setattr(threads, "own_busy_s", lambda: clock["own"])
    monkeypatch.setattr(threads, "usable_cores", lambda: 4)
    monkeypatch.setattr(threads, "blas_threads", lambda: 4)
    monkeypatch.delenv("DIGITLAB_THREADS", raising=False)
    policy = threads.ThreadPolicy.for_step(128, {"W": np.zeros((785, 10))}, small_on_cores=True)
    assert policy.macs_per_step < threads.SKINNY_MACS and policy.adjusting
    policy.start()
    try:
        assert policy.threads == 1  # a busy core would double a step on several threads
        clock["t"] += 0.2
        clock["own"] += 0.2
        clock["machine"] += 0.2 * (1 + other_cores)
        policy.tick()
        assert policy.threads == threads_after
    finally:
        policy.stop()
