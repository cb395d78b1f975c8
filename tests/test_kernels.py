"""Kernel choices: overrides, calibration, the per-host cache, and their use by the trainer."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest

from digitlab import kernels, threads
from digitlab.errors import ConfigError
from digitlab.models import SoftmaxModel
from digitlab.models.functional import outer_sum
from digitlab.train import Trainer


@pytest.fixture(autouse=True)
def fresh(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(kernels, "CAL_ROWS", 2048)  # a quick calibration
    quiet(monkeypatch, 0.0)  # as if no other process ran (the test machine may be busy)
    kernels.reset()
    yield
    kernels.reset()


def quiet(monkeypatch, load):
    """Make the calibration see ``load`` cores of other processes' load."""

    class Meter:
        def finish(self):
            return load

    monkeypatch.setattr(threads, "others_load", Meter)


def test_disturbed_calibration_is_used_not_kept(monkeypatch):
    monkeypatch.delenv("DIGITLAB_KERNELS", raising=False)
    quiet(monkeypatch, 0.8)
    assert kernels.choices(np.float32).source == "disturbed"
    assert not kernels.cache_file(kernels.host_key(np.float32)).exists()
    kernels.reset()
    quiet(monkeypatch, 0.1)
    assert kernels.choices(np.float32).source == "calibrated"
    assert kernels.cache_file(kernels.host_key(np.float32)).exists()


def test_override_parsed_and_refused(monkeypatch):
    c = kernels.parse_override("rows=512,transposed=1")
    assert (c.rows, c.transposed, c.source) == (512, True, "environment")
    assert kernels.parse_override("transposed=0").rows == kernels.BLOCK_ROWS
    c = kernels.parse_override("batch_transposed=1")
    assert (c.rows, c.transposed, c.batch_transposed) == (kernels.BLOCK_ROWS, False, True)
    assert kernels.parse_override("batch_parallel=1").batch_parallel
    for bad in ("rows=-1", "rows=x", "transposed=yes", "speed=1", "rows", "batch_transposed=2",
                "batch_parallel=", "batch_parallel=yes"):  # fmt: skip
        with pytest.raises(ConfigError, match="DIGITLAB_KERNELS"):
            kernels.parse_override(bad)
    monkeypatch.setenv("DIGITLAB_KERNELS", "rows=0,transposed=1")
    assert kernels.choices(np.float32) == kernels.Choices(0, True, source="environment")


def test_calibration_is_cached_per_host(monkeypatch):
    monkeypatch.setenv("DIGITLAB_KERNELS", "calibrate")
    first = kernels.choices(np.float32)
    assert first.source == "calibrated"
    full = {f"rows={r},transposed={t}" for r in (kernels.BLOCK_ROWS, 0) for t in (0, 1)}
    parallel = (0, 1) if threads.blas_threads() > 1 else (0,)  # several cores to try
    batch = {f"batch_transposed={t},batch_parallel={p}" for t in (0, 1) for p in parallel}
    assert set(first.timings_ms) == full | batch
    fastest = min(full, key=first.timings_ms.__getitem__)
    chosen = kernels.parse_override(fastest)
    assert (chosen.rows, chosen.transposed) == (first.rows, first.transposed)
    fastest_batch = kernels.parse_override(min(batch, key=first.timings_ms.__getitem__))
    assert first.batch_transposed == fastest_batch.batch_transposed
    assert first.batch_parallel == fastest_batch.batch_parallel
    path = kernels.cache_file(kernels.host_key(np.float32))
    record = json.loads(path.read_text())
    assert record["key"]["cpu"] == (kernels.cpu_model() or "unknown")
    chosen = (first.rows, first.transposed, first.batch_transposed, first.batch_parallel)
    assert tuple(record[k] for k in ("rows", *kernels.FLAGS)) == chosen
    # a new process (here: a reset) reads the cache instead of measuring
    monkeypatch.delenv("DIGITLAB_KERNELS")
    kernels.reset()
    again = kernels.choices(np.float32)
    assert again.source == "cache"
    assert (again.rows, again.transposed, again.batch_transposed, again.batch_parallel) == chosen


def test_stale_or_corrupt_cache_is_measured_again(monkeypatch):
    monkeypatch.delenv("DIGITLAB_KERNELS", raising=False)
    key = kernels.host_key(np.float32)
    path = kernels.cache_file(key)
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    assert kernels.choices(np.float32).source == "calibrated"
    kernels.reset()
    other = dict(key, cpu="another CPU")
    path.write_text(json.dumps({"key": other, "rows": 7, "transposed": True}))
    assert kernels.choices(np.float32).source == "calibrated"
    kernels.reset()
    path.write_text(json.dumps({"key": key, "rows": 7, "transposed": "yes"}))
    assert kernels.choices(np.float32).source == "calibrated"
    kernels.reset()  # a cache written before the mini-batch choice existed
    path.write_text(json.dumps({"key": key, "rows": 7, "transposed": True}))
    assert kernels.choices(np.float32).source == "calibrated"
    kernels.reset()
    flags = {"transposed": True, "batch_transposed": False}  # before batch_parallel existed
    path.write_text(json.dumps({"key": key, "rows": 7} | flags))
    assert kernels.choices(np.float32).source == "calibrated"
    kernels.reset()
    path.write_text(json.dumps({"key": key, "rows": 7, "batch_parallel": True} | flags))
    assert kernels.choices(np.float32) == kernels.Choices(7, True, False, True, "cache")


def test_transposed_layout_equals_the_plain_product(monkeypatch):
    rng = np.random.default_rng(0)
    a = rng.random((3000, 50), dtype=np.float32)
    d = rng.standard_normal((3000, 10)).astype(np.float32)
    plain = a.T @ d
    monkeypatch.setenv("DIGITLAB_KERNELS", "transposed=1")
    kernels.choices(np.float32)
    assert kernels.transposed(a, d) and not kernels.transposed(a[:100], d[:100])
    got = outer_sum(a, d)
    assert got.flags.f_contiguous and not got.flags.c_contiguous  # the other layout was used
    np.testing.assert_allclose(got, plain, rtol=1e-5, atol=1e-4)
    wide = rng.standard_normal((3000, 100)).astype(np.float32)
    assert outer_sum(a, wide).flags.c_contiguous  # wide products keep the plain layout


def test_mini_batch_layout_is_its_own_choice(monkeypatch):
    rng = np.random.default_rng(2)
    a = rng.random((3000, 50), dtype=np.float32)
    d = rng.standard_normal((3000, 10)).astype(np.float32)
    monkeypatch.setenv("DIGITLAB_KERNELS", "transposed=0,batch_transposed=1")
    kernels.choices(np.float32)
    assert kernels.transposed(a[:128], d[:128]) and kernels.transposed(a[:2], d[:2])
    assert not kernels.transposed(a, d) and not kernels.transposed(a[:1], d[:1])
    got = outer_sum(a[:128], d[:128])
    assert got.flags.f_contiguous and not got.flags.c_contiguous
    np.testing.assert_allclose(got, a[:128].T @ d[:128], rtol=1e-5, atol=1e-5)
    assert outer_sum(a, d).flags.c_contiguous


def test_a_mini_batch_fit_resolves_the_choices(monkeypatch):
    monkeypatch.setenv("DIGITLAB_KERNELS", "batch_transposed=1")
    rng = np.random.default_rng(3)
    X = rng.random((64, 30), dtype=np.float32)
    y = rng.integers(0, 4, 64)
    model = SoftmaxModel(30, 4, rng=0)
    plain = model.loss_and_grad(X, y)  # nothing resolved yet: the plain layout
    assert plain[1]["W"].flags.c_contiguous
    fn = Trainer(model, batch_size=64).gradient_function(64)
    assert kernels._current[np.dtype(np.float32)].batch_transposed  # resolved by the trainer
    loss, g = fn(X, y)
    assert g["W"].flags.f_contiguous and not g["W"].flags.c_contiguous
    assert loss == pytest.approx(plain[0], rel=1e-6)
    np.testing.assert_allclose(g["W"], plain[1]["W"], rtol=1e-5, atol=1e-6)
    kernels.reset()
    Trainer(model, batch_size=1).gradient_function(1)  # single samples need no choice
    assert kernels._current == {}


@pytest.mark.parametrize("rows", [0, 512])
def test_trainer_uses_the_resolved_block_rows(monkeypatch, rows):
    monkeypatch.setenv("DIGITLAB_KERNELS", f"rows={rows}")
    model = SoftmaxModel(20, 3, rng=0)
    fn = Trainer(model, batch_size="full").gradient_function(5000)
    if rows:
        assert isinstance(fn, functools.partial) and fn.keywords["chunk_rows"] == rows
    else:
        assert fn == model.loss_and_grad


def test_full_batch_gradient_same_under_every_choice(monkeypatch):
    rng = np.random.default_rng(1)
    X = rng.random((5000, 30), dtype=np.float32)
    y = rng.integers(0, 4, 5000)
    results = []
    for choice in ("rows=1024,transposed=0", "rows=1024,transposed=1", "rows=0,transposed=1"):
        monkeypatch.setenv("DIGITLAB_KERNELS", choice)
        kernels.reset()
        model = SoftmaxModel(30, 4, rng=0)
        loss, g = Trainer(model, batch_size="full").gradient_function(5000)(X, y)
        results.append((loss, g["W"]))
    for loss, g in results[1:]:
        assert loss == pytest.approx(results[0][0], rel=1e-5)
        np.testing.assert_allclose(g, results[0][1], rtol=1e-4, atol=1e-5)


def test_a_calibrated_parallel_mini_batch_runs_under_the_thread_policy(monkeypatch):
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    monkeypatch.delenv("DIGITLAB_THREADS", raising=False)
    rng = np.random.default_rng(6)
    X = rng.random((512, 20), dtype=np.float32)
    y = rng.integers(0, 3, 512)
    for choice, on_cores in (("batch_parallel=0", False), ("batch_parallel=1", True)):
        monkeypatch.setenv("DIGITLAB_KERNELS", choice)
        kernels.reset()
        trainer = Trainer(SoftmaxModel(20, 3, rng=0), batch_size=32, rng=0)
        trainer.fit((X, y), epochs=1)
        assert trainer.threads.small_on_cores is on_cores
        assert trainer.threads.adjusting is on_cores  # watched like a large product, or one thread
    trainer = Trainer(SoftmaxModel(20, 3, rng=0), batch_size=1, rng=0)
    trainer.fit((X[:20], y[:20]), epochs=1)
    assert not trainer.threads.small_on_cores  # a batch of one row never goes on several cores

