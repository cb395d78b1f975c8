"""Learning-rate schedules: step decay, cosine with warm-up and reduce-on-plateau against
PyTorch's schedulers, the settings that select them, and bit-identical resume with each."""

from __future__ import annotations

import numpy as np
import pytest

from digitlab.checkpoint import load_checkpoint
from digitlab.cli import main
from digitlab.errors import ConfigError
from digitlab.optim import Constant, StepDecay, WarmupCosine, make_schedule
from digitlab.settings import Settings
from digitlab.train import Checkpoint, ReduceLROnPlateau

torch = pytest.importorskip("torch")


def _torch_rates(make_scheduler, steps: int, eta0: float) -> list[float]:
    """The rate of each of ``steps`` optimiser steps under a torch scheduler stepped per step."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=eta0)
    sched = make_scheduler(opt)
    rates = []
    for _ in range(steps):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return rates


def test_step_decay_matches_torch_steplr():
    ours = StepDecay(0.3, gamma=0.5, every=7, unit="step")
    theirs = _torch_rates(lambda o: torch.optim.lr_scheduler.StepLR(o, 7, gamma=0.5), 40, 0.3)
    np.testing.assert_allclose([ours(t, 0) for t in range(40)], theirs, rtol=1e-12)


@pytest.mark.parametrize(("total", "warmup", "eta_min"), [(50, 5, 0.0), (31, 2, 0.01), (20, 0, 0)])
def test_warmup_cosine_matches_torch_linear_then_cosine(total, warmup, eta_min):
    lr_sched = torch.optim.lr_scheduler

    def make(opt):
        cosine = lr_sched.CosineAnnealingLR(opt, T_max=total - warmup, eta_min=eta_min)
        if warmup == 0:
            return cosine
        linear = lr_sched.LinearLR(opt, start_factor=1 / warmup, total_iters=warmup - 1)
        return lr_sched.SequentialLR(opt, [linear, cosine], milestones=[warmup])

    ours = WarmupCosine(0.2, total, warmup, eta_min, unit="step")
    rates = [ours(t, 0) for t in range(total)]
    np.testing.assert_allclose(rates, _torch_rates(make, total, 0.2), rtol=1e-9, atol=1e-15)
    if warmup:
        assert rates[0] == pytest.approx(0.2 / warmup) and rates[warmup - 1] == 0.2
    assert ours(total, 0) == pytest.approx(eta_min)  # after the last step
    assert make_schedule(ours.config()) == ours


def test_cosine_in_epochs_counts_completed_epochs():
    s = WarmupCosine(1.0, total=4, warmup=1, unit="epoch")
    assert [s(999, e) for e in range(5)] == pytest.approx([1.0, 1.0, 0.75, 0.25, 0.0])


@pytest.mark.parametrize(
    "kwargs",
    [dict(total=0), dict(total=10, warmup=10), dict(total=10, warmup=-1),
     dict(total=10, eta_min=0.5), dict(total=10, eta_min=-1), dict(total=10, unit="hour")],
)  # fmt: skip
def test_cosine_refuses_bad_settings(kwargs):
    with pytest.raises(ConfigError):
        WarmupCosine(0.5, **kwargs)


class _View:
    """What the plateau callback uses of a trainer."""

    def __init__(self, eta0: float) -> None:
        self.schedule, self.step, self.epoch, self.lr_scale = Constant(eta0), 0, 0, 1.0


@pytest.mark.parametrize(
    ("mode", "kwargs"),
    [("min", dict(factor=0.5, patience=2)),
     ("min", dict(factor=0.1, patience=0, min_lr=0.004, cooldown=2)),
     ("max", dict(factor=0.3, patience=1, threshold=0.05))],
)  # fmt: skip
def test_reduce_on_plateau_matches_torch(mode, kwargs):
    values = np.random.default_rng(4).normal(1.0, 0.3, size=60).cumsum() % 5.0
    monitor = "val_loss" if mode == "min" else "val_acc"
    ours, view = ReduceLROnPlateau(monitor, **kwargs), _View(0.5)
    ours.on_train_begin(view)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.5)
    theirs = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode=mode, **kwargs)
    ours_rates, their_rates = [], []
    for v in values:
        ours.on_evaluate(view, {monitor: float(v)})
        theirs.step(float(v))
        ours_rates.append(0.5 * view.lr_scale)
        their_rates.append(opt.param_groups[0]["lr"])
    np.testing.assert_allclose(ours_rates, their_rates, rtol=1e-12)
    assert len(set(their_rates)) >= 3  # the rate did drop, more than once


def test_reduce_on_plateau_refuses_a_missing_metric_and_bad_values():
    cb = ReduceLROnPlateau("val_loss")
    with pytest.raises(ConfigError, match="give a validation split"):
        cb.on_evaluate(_View(0.1), {"train_loss": 1.0})
    for bad in (dict(factor=1.0), dict(factor=0), dict(patience=-1), dict(min_lr=-1),
                dict(mode="up")):  # fmt: skip
        with pytest.raises(ConfigError):
            ReduceLROnPlateau(**bad)


def test_schedule_settings_and_anneal_T_compatibility():
    assert Settings.from_dict({"model": "mlp"}).schedule_name == "inverse_time"  # anneal_T 2
    assert Settings.from_dict({"anneal_T": 3.0}).schedule_name == "inverse_time"
    assert Settings().schedule_name == "constant"
    s = Settings.from_dict({"schedule": "step", "step_gamma": 0.5, "step_every": 2})
    assert s.make_schedule() == StepDecay(s.lr, 0.5, 2, "epoch")
    s = Settings.from_dict({"schedule": "cosine", "warmup": 1, "eta_min": 0.01})
    assert s.make_schedule(5.0) == WarmupCosine(s.lr, 5.0, 1, 0.01, "epoch")
    assert Settings.from_dict({"schedule": "plateau"}).plateau_callback().factor == 0.5
    for bad in ({"schedule": "inverse_time"}, {"schedule": "cosine", "eta_min": 9.0},
                {"schedule": "plateau", "holdout": 0.0}, {"schedule": "linear"},
                {"step_gamma": 0}, {"step_gamma": 2.0}, {"step_every": 0}, {"warmup": -1},
                {"warmup": 1.5}, {"eta_min": float("nan")}, {"plateau_factor": 1},
                {"plateau_patience": True}, {"plateau_monitor": "loss"}):  # fmt: skip
        with pytest.raises(ConfigError):
            Settings.from_dict(bad)


@pytest.mark.parametrize(
    "options",
    [["--schedule", "step", "--step-gamma", "10"], ["--schedule", "cosine", "--warmup", "-3"],
     ["--schedule", "cosine", "--warmup", "1e99"], ["--schedule", "cosine", "--warmup", "30"],
     ["--plateau-patience", "x"], ["--plateau-factor", "inf"], ["--eta-min", "-1"],
     ["--schedule", "plateau", "--plateau-monitor", "val_time"], ["--schedule", "1"]],
)  # fmt: skip
def test_bad_schedule_options_exit_2_with_one_line(options, tmp_path, capsys):
    args = ["train", "--dataset", "mnist-5k", "--epochs", "2", "--out", str(tmp_path), *options]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("digitlab: error: ") and "\n" not in err
    assert not any(tmp_path.iterdir())


def _build(settings, data):
    from digitlab.runner import build_run_model, build_trainer

    model = build_run_model(settings, data.train[0].shape[1], 10)
    return build_trainer(settings, model, data, [])


@pytest.mark.parametrize(
    "schedule",
    [{"schedule": "step", "step_gamma": 0.5, "step_every": 7, "anneal_unit": "step"},
     {"schedule": "cosine", "warmup": 5, "eta_min": 0.01, "anneal_unit": "step"},
     {"schedule": "cosine", "warmup": 1},
     {"schedule": "plateau", "plateau_patience": 0, "plateau_monitor": "val_loss",
      "eval_every": 3, "lr": 6.0}],
)  # fmt: skip
def test_resume_from_every_periodic_checkpoint_is_bit_identical(schedule, tmp_path):
    from digitlab.runner import prepare_data

    s = Settings.from_dict({"model": "mlp", "hidden": [16], "dataset": "mnist-5k",
                            "n_train": 600, "batch": 64, "epochs": 4} | schedule)  # fmt: skip
    data = prepare_data(s)
    full = _build(s, data)
    full.callbacks.append(Checkpoint(tmp_path / "ck.npz", every=9, keep_steps=True))
    full.fit(data.train, data.val, epochs=s.epochs)
    rates = full.history.series("lr")
    assert len(set(rates.tolist())) >= 3, rates  # the schedule moved the rate
    points = sorted(int(p.stem.split("step")[1]) for p in tmp_path.glob("ck-step*.npz"))
    assert len(points) >= 4
    for at in points:
        resumed = _build(s, data)
        resumed.load_state_dict(*load_checkpoint(tmp_path / f"ck-step{at}.npz"))
        resumed.fit(data.train, data.val, epochs=s.epochs)
        for k, v in full.model.params.items():
            np.testing.assert_array_equal(resumed.model.params[k], v, err_msg=f"from step {at}")
        strip = [{**r, "time": 0} for r in full.history.records]
        assert [{**r, "time": 0} for r in resumed.history.records] == strip, at
        assert resumed.lr_scale == full.lr_scale


def test_estimator_schedules_cosine_and_plateau():
    from digitlab import SoftmaxRegression

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(120, 6)), rng.integers(0, 3, size=120)
    est = SoftmaxRegression(solver="gd", schedule="cosine", learning_rate_init=0.5, max_iter=6,
                            tol=None).fit(X, y)  # fmt: skip
    expected = [WarmupCosine(0.5, 6.0, unit="epoch")(0, e) for e in range(6)]
    np.testing.assert_allclose(est.history_.series("lr"), expected, rtol=1e-12)
    # random labels at a rate far too high: the objective stalls, the rate drops by 5x
    est = SoftmaxRegression(solver="gd", schedule="plateau", learning_rate_init=200.0,
                            max_iter=12, tol=None, alpha=0.0).fit(X, y)  # fmt: skip
    rates = est.history_.series("lr")
    drops = rates[1:] / rates[:-1]
    assert (np.isclose(drops, 1.0) | np.isclose(drops, 0.2)).all() and (drops < 1).any(), rates
    with pytest.raises(ValueError, match="anneal_T"):
        SoftmaxRegression(solver="gd", schedule="inverse_time").fit(X, y)
    with pytest.raises(ValueError):
        SoftmaxRegression(solver="gd", schedule="linear").fit(X, y)
