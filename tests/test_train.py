"""Trainer: batching, shuffling, evaluation schedule, early stopping, checkpoints, resume."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from digitlab import MLPModel, SoftmaxModel
from digitlab.checkpoint import load_checkpoint
from digitlab.errors import CheckpointError, ConfigError, DivergenceError
from digitlab.optim import SGD, InverseTime
from digitlab.runfiles import read_history, write_history
from digitlab.train import (
    Callback,
    Checkpoint,
    EarlyStopping,
    Trainer,
    evaluate,
    resolve_batch_size,
    resolve_eval_every,
)


def _data(n=120, d=8, k=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(np.float32)
    y = (X[:, :k] + 0.5 * rng.standard_normal((n, k))).argmax(axis=1)
    return X, y


def _record_batches(trainer, X, y, epochs):
    seen = []
    original = trainer.model.loss_and_grad

    def spy(Xb, yb):
        seen.append(Xb[:, 0].copy())
        return original(Xb, yb)

    trainer.model.loss_and_grad = spy
    trainer.fit((X, y), epochs=epochs)
    return seen


def test_resolve_batch_size():
    assert resolve_batch_size("full", 50) == 50
    assert resolve_batch_size(0.1, 18000) == 1800
    assert resolve_batch_size(128, 100) == 100
    assert resolve_batch_size(1, 100) == 1
    for bad in (0, -3, 1.5, "half", True):
        with pytest.raises(ConfigError):
            resolve_batch_size(bad, 10)


def test_resolve_eval_every():
    assert resolve_eval_every("epoch", 140) == 140
    assert resolve_eval_every(0.2, 140) == 28  # seed 004: steps_per_epoch // 5
    assert resolve_eval_every(7, 140) == 7
    with pytest.raises(ConfigError):
        resolve_eval_every(0.0, 10)


def test_no_shuffle_keeps_stored_order_and_shuffle_is_seeded():
    X, y = _data(n=10)
    X[:, 0] = np.arange(10)
    plain = _record_batches(Trainer(SoftmaxModel(8, 3), batch_size=4, shuffle=False), X, y, 2)
    assert [b.tolist() for b in plain] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]] * 2
    a = _record_batches(Trainer(SoftmaxModel(8, 3), batch_size=4, rng=3), X, y, 2)
    b = _record_batches(Trainer(SoftmaxModel(8, 3), batch_size=4, rng=3), X, y, 2)
    c = _record_batches(Trainer(SoftmaxModel(8, 3), batch_size=4, rng=4), X, y, 2)
    assert [x.tolist() for x in a] == [x.tolist() for x in b]
    assert [x.tolist() for x in a] != [x.tolist() for x in c]
    first_epoch = np.concatenate(a[:3])
    assert sorted(first_epoch.tolist()) == list(range(10))  # a permutation: each row once
    assert np.concatenate(a[3:]).tolist() != first_epoch.tolist()  # a new order per epoch


def test_drop_last_and_replacement():
    X, y = _data(n=10)
    X[:, 0] = np.arange(10)
    dropped = _record_batches(Trainer(SoftmaxModel(8, 3), batch_size=4, drop_last=True), X, y, 1)
    assert [len(b) for b in dropped] == [4, 4]
    sgd = _record_batches(
        Trainer(SoftmaxModel(8, 3), batch_size=1, replacement=True, rng=0), X, y, 3
    )
    assert len(sgd) == 30 and all(len(b) == 1 for b in sgd)
    drawn = np.concatenate(sgd)
    assert len(np.unique(drawn)) < 30  # with replacement: repeats occur


def test_full_batch_one_step_per_epoch_and_eval_records():
    X, y = _data()
    trainer = Trainer(SoftmaxModel(8, 3, l2=0.01), schedule=0.5)
    hist = trainer.fit((X[:100], y[:100]), (X[100:], y[100:]), epochs=5)
    assert trainer.step == 5 and len(hist) == 5
    rec = hist.records[-1]
    for key in (
        "step",
        "epoch",
        "lr",
        "weight_norm",
        "train_loss",
        "train_objective",
        "train_acc",
        "val_loss",
        "val_acc",
    ):
        assert key in rec
    assert rec["train_objective"] == pytest.approx(rec["train_loss"] + trainer.model.penalty())
    assert rec["weight_norm"] == pytest.approx(trainer.model.weight_norm())
    assert np.all(np.diff(hist.series("train_objective")) < 0)  # GD descends


def test_eval_every_fraction_of_epoch():
    X, y = _data(n=100)
    trainer = Trainer(SoftmaxModel(8, 3), batch_size=10, eval_every=0.2)
    hist = trainer.fit((X, y), epochs=2)
    assert hist.series("step").tolist() == [2, 4, 6, 8, 10, 12, 14, 16, 18, 20]
    assert hist.series("epoch").tolist() == pytest.approx([0.2 * i for i in range(1, 11)])


def test_annealed_rate_is_applied_per_epoch():
    X, y = _data(n=100)
    trainer = Trainer(SoftmaxModel(8, 3), schedule=InverseTime(1.0, T=2), batch_size=50)
    hist = trainer.fit((X, y), epochs=3)
    assert hist.series("lr").tolist() == pytest.approx([1.0, 1 / 1.5, 0.5])


class Scripted(Callback):
    """Replaces val_loss with a scripted curve and marks params with the evaluation index."""

    def __init__(self, curve):
        self.curve, self.i = curve, 0

    def on_evaluate(self, trainer, record):
        record["val_loss"] = self.curve[self.i]
        trainer.model.params["b"][...] = self.i
        self.i += 1


def test_early_stopping_on_a_synthetic_curve():
    X, y = _data()
    curve = [5.0, 4.0, 3.0, 3.5, 3.2, 2.999, 3.1, 3.3, 3.4, 1.0, 0.5]
    es = EarlyStopping("val_loss", patience=3)
    trainer = Trainer(SoftmaxModel(8, 3), callbacks=[Scripted(curve), es])
    hist = trainer.fit((X, y), epochs=50)
    # best at eval 5 (2.999), then 3 evaluations without improvement: stop after eval 8
    assert len(hist) == 9 and trainer.step == 9
    assert es.best == 2.999 and es.best_step == 6
    assert np.all(trainer.model.params["b"] == 5)  # the best evaluation's parameters
    assert "early stopping" in trainer.stop_reason


def test_early_stopping_start_epoch_ignores_an_early_rise():
    X, y = _data()
    curve = [5.0, 6.0, 7.0, 8.0, 4.0, 4.5, 4.6, 4.7, 1.0]
    es = EarlyStopping("val_loss", patience=3, start_epoch=4)
    trainer = Trainer(SoftmaxModel(8, 3), callbacks=[Scripted(curve), es])
    trainer.fit((X, y), epochs=50)
    # epochs 2-3 rise but count for nothing; epochs 6, 7, 8 do: stop after the 8th evaluation
    assert trainer.step == 8 and es.best == 4.0
    plain = EarlyStopping("val_loss", patience=3)
    trainer = Trainer(SoftmaxModel(8, 3), callbacks=[Scripted(curve), plain])
    trainer.fit((X, y), epochs=50)
    assert trainer.step == 4


def test_early_stopping_min_delta_and_accuracy_mode():
    X, y = _data()
    es = EarlyStopping("val_acc", patience=2, min_delta=0.05)
    assert es.mode == "max"

    class Acc(Callback):
        def __init__(self):
            self.vals = iter([0.5, 0.52, 0.54, 0.9])

        def on_evaluate(self, trainer, record):
            record["val_acc"] = next(self.vals)

    trainer = Trainer(SoftmaxModel(8, 3), callbacks=[Acc(), es])
    trainer.fit((X, y), epochs=10)
    assert trainer.step == 3  # +0.02 and +0.04 are within min_delta


def test_early_stopping_without_validation_says_so():
    X, y = _data()
    trainer = Trainer(SoftmaxModel(8, 3), callbacks=[EarlyStopping("val_loss")])
    with pytest.raises(ConfigError, match="val_loss"):
        trainer.fit((X, y), epochs=2)


def test_divergence_stops_with_a_clear_error_and_keeps_last_good_checkpoint(tmp_path):
    X, y = _data()
    ck = Checkpoint(tmp_path / "ck.npz", every=1)
    X *= 10
    trainer = Trainer(SoftmaxModel(8, 3), schedule=1e36, batch_size=10, callbacks=[ck], rng=0)
    with pytest.raises(DivergenceError, match="loss became"):
        trainer.fit((X, y), epochs=5)
    assert trainer.diverged and trainer.step >= 2
    arrays, meta = load_checkpoint(tmp_path / "ck.npz")
    assert 1 <= meta["progress"]["step"] <= trainer.step
    assert all(np.all(np.isfinite(v)) for v in arrays.values() if v.dtype.kind == "f")


def _make_trainer(seed=0, callbacks=()):
    model = MLPModel(8, 3, hidden=(6,), rng=seed)
    return Trainer(
        model,
        optimizer=SGD(momentum=0.9),
        schedule=InverseTime(0.1, T=5, unit="step"),
        batch_size=16,
        eval_every=3,
        callbacks=[EarlyStopping("val_loss", patience=100), *callbacks],
        batch_transform=lambda Xb, rng: Xb + rng.normal(0, 0.01, Xb.shape).astype(Xb.dtype),
        rng=seed,
    )


class InterruptAt(Callback):
    def __init__(self, step):
        self.at = step

    def on_step_end(self, trainer, loss):
        if trainer.step == self.at:
            trainer.interrupted = True
            trainer.request_stop("interrupted")


@pytest.mark.parametrize("split_at", [5, 8, 16])  # mid-epoch, at an epoch's end (8 batches)
@pytest.mark.parametrize("how", ["periodic", "interrupt"])
def test_resume_is_bit_identical(tmp_path, split_at, how):
    X, y = _data(n=120)
    val = _data(n=30, seed=1)
    full = _make_trainer()
    full.fit((X, y), val, steps=25)

    if how == "periodic":  # a checkpoint written every split_at steps of a longer run
        first = _make_trainer(callbacks=[Checkpoint(tmp_path / "ck.npz", split_at, True)])
        first.fit((X, y), val, steps=split_at + 1)
        path = tmp_path / f"ck-step{split_at}.npz"
    else:  # Ctrl-C at split_at: the end-of-training checkpoint
        first = _make_trainer(callbacks=[InterruptAt(split_at), Checkpoint(tmp_path / "ck.npz")])
        first.fit((X, y), val, steps=25)
        path = tmp_path / "ck.npz"
    arrays, meta = load_checkpoint(path)
    assert meta["progress"]["step"] == split_at
    resumed = _make_trainer(seed=99)  # different init and rng: everything must come back
    resumed.load_state_dict(arrays, meta)
    resumed.fit((X, y), val, steps=25)
    for k in full.model.params:
        np.testing.assert_array_equal(resumed.model.params[k], full.model.params[k])
    assert resumed.history.records == [
        {**r, "time": resumed.history.records[i]["time"]}
        for i, r in enumerate(full.history.records)
    ]


class RaiseAt(Callback):
    """An exception out of the loop at ``step`` (a killed worker's KeyboardInterrupt)."""

    def __init__(self, step, exc=KeyboardInterrupt):
        self.at, self.exc = step, exc

    def on_step_end(self, trainer, loss):
        if trainer.step == self.at:
            raise self.exc


@pytest.mark.parametrize("exc", [KeyboardInterrupt, RuntimeError])
def test_a_fit_ended_by_an_exception_keeps_the_last_checkpoint_as_written(tmp_path, exc):
    """No end-of-training checkpoint after an exception: it would hold early stopping's best
    weights (or half a step) under the step count of the moment, and resume wrong."""
    X, y = _data(n=120)
    val = _data(n=30, seed=1)
    full = _make_trainer()
    full.fit((X, y), val, steps=25)
    first = _make_trainer(callbacks=[Checkpoint(tmp_path / "ck.npz", every=7), RaiseAt(9, exc)])
    with pytest.raises(exc):
        first.fit((X, y), val, steps=25)
    assert first.aborted
    arrays, meta = load_checkpoint(tmp_path / "ck.npz")
    assert meta["progress"]["step"] == 7
    resumed = _make_trainer(seed=99)
    resumed.load_state_dict(arrays, meta)
    resumed.fit((X, y), val, steps=25)
    assert not resumed.aborted
    for k in full.model.params:
        np.testing.assert_array_equal(resumed.model.params[k], full.model.params[k])


def test_checkpoint_by_seconds_of_training(tmp_path, monkeypatch):
    X, y = _data()
    clock = iter(range(0, 10_000, 10))  # each reading of the clock: 10 s later
    monkeypatch.setattr("digitlab.train.callbacks.time.monotonic", lambda: next(clock))
    ck = Checkpoint(tmp_path / "ck.npz", seconds=25, keep_steps=True)
    Trainer(SoftmaxModel(8, 3), batch_size=10, callbacks=[ck]).fit((X, y), steps=9)
    # read at the start, then once per step: a save every third step, and at the end
    steps = sorted(int(p.stem.split("step")[1]) for p in tmp_path.glob("ck-step*.npz"))
    assert steps == [3, 6, 9]
    for bad in (-1.0, math.nan, True, "5"):
        with pytest.raises(ConfigError, match="seconds"):
            Checkpoint(tmp_path / "x.npz", seconds=bad)


def test_checkpoint_every_n_steps_and_contents(tmp_path):
    X, y = _data()
    ck = Checkpoint(tmp_path / "run" / "ck.npz", every=4, keep_steps=True)
    trainer = Trainer(SoftmaxModel(8, 3), batch_size=10, callbacks=[ck])
    trainer.extra_meta = {"dataset": "synthetic"}
    trainer.fit((X, y), steps=9)
    names = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert names == ["ck-step4.npz", "ck-step8.npz", "ck-step9.npz", "ck.npz"]
    arrays, meta = load_checkpoint(tmp_path / "run" / "ck.npz")
    assert meta["model"]["kind"] == "softmax" and meta["progress"]["step"] == 9
    assert meta["extra"] == {"dataset": "synthetic"}
    np.testing.assert_array_equal(arrays["model/W"], trainer.model.params["W"])


def test_checkpoint_for_another_model_is_refused(tmp_path):
    X, y = _data()
    trainer = Trainer(SoftmaxModel(8, 3), callbacks=[Checkpoint(tmp_path / "ck.npz")])
    trainer.fit((X, y), steps=1)
    arrays, meta = load_checkpoint(tmp_path / "ck.npz")
    with pytest.raises(CheckpointError, match="do not fit"):
        Trainer(MLPModel(8, 3)).load_state_dict(arrays, meta)


def test_bad_checkpoint_files(tmp_path):
    with pytest.raises(CheckpointError, match="no such"):
        load_checkpoint(tmp_path / "missing.npz")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="junk.npz"):
        load_checkpoint(junk)
    plain = tmp_path / "plain.npz"
    np.savez(plain, a=np.zeros(2))
    with pytest.raises(CheckpointError, match="not a digitlab checkpoint"):
        load_checkpoint(plain)


def test_history_csv_round_trip(tmp_path):
    X, y = _data()
    trainer = Trainer(SoftmaxModel(8, 3), schedule=0.3)
    hist = trainer.fit((X, y), epochs=3)
    write_history(tmp_path / "history.csv", hist.records)
    back = read_history(tmp_path / "history.csv")
    assert list(back) == hist.columns and len(hist) == 3
    for key in hist.columns:
        np.testing.assert_array_equal(back[key], hist.series(key), strict=True)


SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    from digitlab import MLPModel
    from digitlab.train import Checkpoint, Trainer, graceful_interrupts

    rng = np.random.default_rng(0)
    X = rng.standard_normal((2000, 50)).astype(np.float32)
    y = rng.integers(0, 4, 2000)
    trainer = Trainer(MLPModel(50, 4, hidden=(64,)), batch_size=8, schedule=0.01,
                      callbacks=[Checkpoint(sys.argv[1])])

    class Ready:
        def on_train_begin(self, t): print("ready", flush=True)
        def on_step_end(self, t, loss): pass
        def on_evaluate(self, t, r): pass
        def on_train_end(self, t): pass
        def state_dict(self): return {}, {}

    trainer.callbacks.append(Ready())
    with graceful_interrupts(trainer):
        trainer.fit((X, y), epochs=100000)
    print(trainer.stop_reason, trainer.step, flush=True)
    """
)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_a_checkpoint_and_exits_cleanly(tmp_path, sig):
    ck = tmp_path / "ck.npz"
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(ck)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.5)
    os.kill(proc.pid, sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    reason, step = out.strip().rsplit(" ", 1)
    assert reason == f"interrupted by {sig.name}"
    arrays, meta = load_checkpoint(ck)
    assert meta["progress"]["step"] == int(step) > 0
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


# ---------------------------------------------------------------- hot path (issue 5)
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_single_sample_fast_path_equals_the_plain_path(momentum):
    """Single-sample SGD through factored rank-1 updates follows the loss_and_grad path."""
    X, y = _data(n=60)

    def run(patch):
        model = MLPModel(8, 3, hidden=(6,), rng=0, l2=1e-3)
        trainer = Trainer(
            model, optimizer=SGD(momentum), schedule=0.05, batch_size=1, replacement=True, rng=1
        )
        if patch:  # an instance override: the trainer must call it, so no factored path
            model.loss_and_grad = model.loss_and_grad
        hist = trainer.fit((X, y), epochs=2)
        return model, hist

    fast, hist_fast = run(False)
    plain, hist_plain = run(True)
    for k in fast.params:
        np.testing.assert_allclose(fast.params[k], plain.params[k], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        hist_fast.series("train_loss"), hist_plain.series("train_loss"), rtol=1e-5
    )


def test_fast_path_is_chosen_only_for_unmodified_single_sample_sgd():
    model = SoftmaxModel(8, 3)
    assert Trainer(model, batch_size=1).gradient_function(1) == model.loss_and_grad_factored
    assert Trainer(model, batch_size=4).gradient_function(4) == model.loss_and_grad

    class Custom(SoftmaxModel):
        def loss_and_grad(self, X, y):
            return super().loss_and_grad(X, y)

    custom = Custom(8, 3)
    assert Trainer(custom, batch_size=1).gradient_function(1) == custom.loss_and_grad


def test_finite_check_has_no_false_alarm_on_huge_finite_values():
    X, y = _data(n=20)
    X[3] = np.float32(3e38)  # the row sum overflows; the exact check must still pass it
    Trainer(SoftmaxModel(8, 3), schedule=1e-30).fit((X, y), steps=1)
    X[5, 2] = np.nan
    with pytest.raises(Exception, match="NaN or inf"):
        Trainer(SoftmaxModel(8, 3)).fit((X, y), steps=1)


# ---------------------------------------------------------------- continue training
def test_continue_fit_equals_one_longer_fit():
    X, y = _data(n=120)
    val = _data(n=30, seed=1)

    def make():  # momentum, an annealed rate, augmentation: all state must carry on
        trainer = _make_trainer()
        trainer.callbacks[1].restore_best = False  # else each call ends at its best weights
        return trainer

    one = make()
    one.fit((X, y), val, steps=20)
    parts = make()
    parts.continue_fit((X, y), val, steps=7)  # mid-epoch (8 steps per epoch)
    parts.continue_fit((X, y), val, epochs=1)
    parts.continue_fit((X, y), val, steps=5)
    assert parts.step == one.step == 20 and parts.epoch == one.epoch == 2
    for k in one.model.params:
        np.testing.assert_array_equal(parts.model.params[k], one.model.params[k])
    strip = [{**r, "time": 0} for r in one.history.records]
    assert [{**r, "time": 0} for r in parts.history.records] == strip


def test_continue_fit_callbacks_apply_to_that_call_only():
    X, y = _data(n=40)
    seen = []

    class Count(Callback):
        def on_step_end(self, trainer, loss):
            seen.append(trainer.step)

    trainer = Trainer(SoftmaxModel(8, 3), schedule=0.1, batch_size=10, rng=0)
    cb = Count()
    trainer.continue_fit((X, y), epochs=1, callbacks=[cb])
    assert cb not in trainer.callbacks
    trainer.continue_fit((X[:20], y[:20]), epochs=2)  # new data: 2 steps per epoch
    assert seen == [1, 2, 3, 4] and trainer.step == 8 and trainer.epoch == 3
    for bad in ({}, {"epochs": 1, "steps": 2}, {"steps": -1}, {"epochs": 1.5}):
        with pytest.raises(ConfigError):
            trainer.continue_fit((X, y), **bad)


def test_sample_weights_are_gathered_with_each_batch():
    X, y = _data(n=120)

    def run(w):
        trainer = Trainer(
            MLPModel(8, 3, hidden=(6,), rng=0), schedule=0.1, batch_size=16, eval_every=4, rng=0
        )
        trainer.fit((X, y), epochs=2, sample_weight=w)
        return trainer

    plain, const = run(None), run(np.full(120, 3.0))
    for k in plain.model.params:  # w / mean(w) = 1: the unweighted run, to float rounding
        np.testing.assert_allclose(
            const.model.params[k], plain.model.params[k], rtol=2e-5, atol=1e-6
        )
    w = np.where(y == 0, 5.0, 0.5)
    weighted = run(w)
    assert not np.allclose(weighted.model.params["W1"], plain.model.params["W1"], atol=1e-3)
    rec = weighted.history.records[-1]
    expected = evaluate(weighted.model, X, y, w.astype(np.float32))
    assert rec["train_loss"] == expected["loss"] and rec["train_acc"] == expected["acc"]
    assert expected["loss"] != evaluate(weighted.model, X, y)["loss"]
    with pytest.raises(Exception, match="sums to 0"):
        run(np.zeros(120))


# ---------------------------------------------------------------- issue 10: numerics, resume
def test_divergence_on_the_last_step_is_caught(tmp_path):
    X, y = _data(n=40)
    ck = Checkpoint(tmp_path / "ck.npz")
    trainer = Trainer(SoftmaxModel(8, 3, init="normal", rng=0), schedule=math.inf, callbacks=[ck])
    with pytest.raises(DivergenceError, match="step 1"):
        trainer.fit((X, y), epochs=1)  # one full-batch step: its loss was finite
    assert trainer.diverged and not (tmp_path / "ck.npz").exists()


def test_a_checkpoint_is_never_skipped_silently(tmp_path):
    X, y = _data(n=40)
    ck = Checkpoint(tmp_path / "ck.npz", every=1)
    trainer = Trainer(SoftmaxModel(8, 3), schedule=0.1, batch_size=10, callbacks=[ck], rng=0)
    trainer.fit((X, y), steps=2)
    good = load_checkpoint(tmp_path / "ck.npz")[0]["model/W"].copy()
    trainer.model.params["W"][0, 0] = np.nan
    with pytest.raises(DivergenceError, match="not overwriting the last good checkpoint"):
        ck.save(trainer)
    assert trainer.diverged
    np.testing.assert_array_equal(load_checkpoint(tmp_path / "ck.npz")[0]["model/W"], good)


def _crash_trainer(callbacks=(), seed=0):
    return Trainer(
        MLPModel(8, 3, hidden=(6,), rng=seed),
        optimizer=SGD(momentum=0.9),
        schedule=0.3,
        batch_size=8,
        eval_every=10,
        callbacks=[EarlyStopping("val_loss", patience=3), *callbacks],
        rng=seed,
    )


def test_resume_after_a_crash_from_any_periodic_checkpoint_is_identical(tmp_path):
    """kill -9 after a periodic checkpoint at an evaluation step (issue 10, item 1)."""
    X, y = _data(n=120)
    val = _data(n=40, seed=1)
    val = (val[0], np.random.default_rng(3).permutation(val[1]))  # noisy: stops early
    full = _crash_trainer([Checkpoint(tmp_path / "ck.npz", every=10, keep_steps=True)])
    full.fit((X, y), val, epochs=30)
    stopped_at = full.step
    assert full.callbacks[1].stopped and stopped_at < 30 * 15  # early stopping fired
    crash_points = sorted(int(p.stem.split("step")[1]) for p in tmp_path.glob("ck-step*.npz"))
    assert crash_points[-1] == stopped_at and len(crash_points) >= 4
    for at in crash_points:
        arrays, meta = load_checkpoint(tmp_path / f"ck-step{at}.npz")
        assert meta["progress"]["last_eval_step"] == at  # the evaluation is inside
        resumed = _crash_trainer(seed=5)
        resumed.load_state_dict(arrays, meta)
        resumed.fit((X, y), val, epochs=30)
        assert resumed.step == stopped_at, at
        for k in full.model.params:
            np.testing.assert_array_equal(resumed.model.params[k], full.model.params[k])
        strip = [{**r, "time": 0} for r in full.history.records]
        assert [{**r, "time": 0} for r in resumed.history.records] == strip, at
        es, es_full = resumed.callbacks[1], full.callbacks[1]
        assert (es.best, es.best_step, es.wait) == (es_full.best, es_full.best_step, es_full.wait)


def test_wrong_shape_optimizer_state_is_refused_at_load(tmp_path):
    X, y = _data(n=40)
    trainer = _crash_trainer([Checkpoint(tmp_path / "ck.npz")])
    trainer.fit((X, y), steps=3)
    arrays, meta = load_checkpoint(tmp_path / "ck.npz")
    arrays["optim/W1"] = np.zeros((2, 2), dtype=np.float32)
    with pytest.raises(CheckpointError, match="optimizer state W1 has shape"):
        _crash_trainer().load_state_dict(arrays, meta)


# ------------------------------------------------------------- numpy's legacy shuffles
def test_legacy_shuffle_draws_the_orders_of_np_random_shuffle_and_resumes(tmp_path):
    """``shuffle_rng``: each epoch's order is what ``np.random.seed(s)`` followed by one
    ``np.random.shuffle`` per epoch gives (the TDT4265 starter code), and a checkpoint carries
    that stream's state, so a resumed run goes on with the same orders."""
    from digitlab.checkpoint import check_meta

    rng = np.random.default_rng(0)
    X = rng.random((40, 6)).astype(np.float32)
    y = rng.integers(0, 3, 40)
    seen = []

    def trainer(**kw) -> Trainer:
        model = SoftmaxModel(6, 3, rng=0)
        orig = model.loss_and_grad
        model.loss_and_grad = lambda Xb, yb, **k: (seen.append(Xb.copy()), orig(Xb, yb, **k))[1]
        return Trainer(model, schedule=0.1, batch_size=40 // 4, rng=1, **kw)

    t = trainer(shuffle_rng=np.random.RandomState(7))
    t.fit((X, y), epochs=3)
    np.random.seed(7)  # noqa: NPY002 (the legacy global stream, as the source's code)
    expected = []
    for _ in range(3):
        idx = np.arange(40)
        np.random.shuffle(idx)  # noqa: NPY002
        expected += [X[idx[b * 10 : (b + 1) * 10]] for b in range(4)]
    assert len(seen) == 12
    for got, want in zip(seen, expected, strict=True):
        np.testing.assert_array_equal(got, want)
    # a checkpoint after 1.5 epochs resumes to the same weights as the run straight through
    first = trainer(shuffle_rng=np.random.RandomState(7))
    first.fit((X, y), steps=6)
    first.save(tmp_path / "half.npz")
    arrays, meta = load_checkpoint(tmp_path / "half.npz")  # checked by check_meta
    again = trainer(shuffle_rng=np.random.RandomState(99))  # the checkpoint's state wins
    again.load_state_dict(arrays, meta)
    again.fit((X, y), epochs=3)
    np.testing.assert_array_equal(again.model.params["W"], t.model.params["W"])
    # without the state, or with a broken one, the checkpoint is refused
    del meta["legacy_rng"]
    with pytest.raises(CheckpointError, match="legacy shuffle state"):
        trainer(shuffle_rng=np.random.RandomState(7)).load_state_dict(arrays, meta)
    for bad in ({"keys": [1] * 3, "pos": 0, "has_gauss": 0, "gauss": 0.0},
                {"keys": [2**32] * 624, "pos": 0, "has_gauss": 0, "gauss": 0.0},
                {"keys": [1] * 624, "pos": 700, "has_gauss": 0, "gauss": 0.0},
                "state"):  # fmt: skip
        with pytest.raises(CheckpointError, match="legacy_rng"):
            check_meta(meta | {"legacy_rng": bad})


def _split_counts(monkeypatch):
    """Counts the rows each evaluation pass reads, by split array identity."""
    import digitlab.train.lockstep as lockstep_mod
    import digitlab.train.trainer as trainer_mod

    calls: list[int] = []
    real_one, real_many = trainer_mod.evaluate, lockstep_mod.evaluate_together
    monkeypatch.setattr(trainer_mod, "evaluate", lambda m, X, y, w=None: calls.append(len(y))
                        or real_one(m, X, y, w))  # fmt: skip
    monkeypatch.setattr(lockstep_mod, "evaluate_together", lambda ms, X, y: calls.append(len(y))
                        or real_many(ms, X, y))  # fmt: skip
    return calls


@pytest.mark.parametrize("together", [False, True])
def test_validation_on_the_test_split_is_measured_once(monkeypatch, together):
    """Source 004 validates on the test split (``val`` is the ``test`` pair): one pass over
    its rows per evaluation gives both records, equal to two passes'."""
    from digitlab.train import fit_together

    rng = np.random.default_rng(0)
    X = rng.random((120, 8)).astype(np.float32)
    y = rng.integers(0, 3, 120)
    train, test = (X[:90], y[:90]), (X[90:], y[90:])

    def run(val):
        trainers = [Trainer(SoftmaxModel(8, 3, rng=s), batch_size=30, rng=s, eval_every=1)
                    for s in (0, 1)]  # fmt: skip
        if together:
            return [h.records for h in fit_together(trainers, train, val, test, epochs=2)]
        return [t.fit(train, val, test, epochs=2).records for t in trainers]

    calls = _split_counts(monkeypatch)
    shared = run(test)
    passes_shared = calls.count(30)  # passes over the 30 test rows
    assert passes_shared > 0
    calls.clear()
    copy_of_test = (test[0].copy(), test[1].copy())  # equal rows, other arrays: measured
    apart = run(copy_of_test)
    assert calls.count(30) == 2 * passes_shared
    for a, b in zip(shared, apart, strict=True):
        for ra, rb in zip(a, b, strict=True):
            assert ra["val_acc"] == ra["test_acc"] and ra["val_loss"] == ra["test_loss"]
            for k in ra:
                if k != "time":
                    assert ra[k] == rb[k], k
