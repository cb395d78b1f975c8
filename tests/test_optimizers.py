"""Nesterov, Adam, AdamW and RMSprop: step for step against torch.optim, and exact resume."""

from __future__ import annotations

import numpy as np
import pytest

from digitlab import MLPModel
from digitlab.checkpoint import load_checkpoint
from digitlab.errors import CheckpointError, ConfigError
from digitlab.models.functional import LinearGrad
from digitlab.optim import OPTIMIZERS, Adam, AdamW, Nesterov, RMSprop, make_optimizer
from digitlab.train import Checkpoint, EarlyStopping, Trainer

torch = pytest.importorskip("torch")

# (digitlab name, hyperparameters, torch constructor taking (params, lr))
CASES = [
    ("nesterov", {"momentum": 0.9}, lambda p, lr: torch.optim.SGD(p, lr, 0.9, nesterov=True)),
    (
        "nesterov",
        {"momentum": 0.5, "weight_decay": 0.1},
        lambda p, lr: torch.optim.SGD(p, lr, 0.5, nesterov=True, weight_decay=0.1),
    ),
    ("adam", {}, lambda p, lr: torch.optim.Adam(p, lr)),
    (
        "adam",
        {"beta1": 0.8, "beta2": 0.95, "eps": 1e-6, "weight_decay": 0.05},
        lambda p, lr: torch.optim.Adam(p, lr, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.05),
    ),
    ("adamw", {}, lambda p, lr: torch.optim.AdamW(p, lr)),
    (
        "adamw",
        {"beta1": 0.5, "weight_decay": 0.3},
        lambda p, lr: torch.optim.AdamW(p, lr, betas=(0.5, 0.999), weight_decay=0.3),
    ),
    ("rmsprop", {}, lambda p, lr: torch.optim.RMSprop(p, lr)),
    (
        "rmsprop",
        {"alpha": 0.9, "eps": 1e-4, "momentum": 0.7, "weight_decay": 0.02},
        lambda p, lr: torch.optim.RMSprop(
            p, lr, alpha=0.9, eps=1e-4, momentum=0.7, weight_decay=0.02
        ),
    ),
]


@pytest.mark.parametrize(("name", "hp", "make_torch"), CASES)
def test_steps_match_torch_optim(name, hp, make_torch):
    rng = np.random.default_rng(0)
    params = {"W": rng.standard_normal((5, 3)), "b": rng.standard_normal(3)}
    tparams = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in params.items()}
    ours = make_optimizer({"name": name, **hp})
    theirs = make_torch(list(tparams.values()), 0.05)
    for step in range(8):
        lr = 0.05
        grads = {k: rng.standard_normal(v.shape) * (step + 1) for k, v in params.items()}
        if step == 3:  # a zero gradient (Adam's and RMSprop's eps matter here)
            grads["b"][:] = 0.0
        ours.step(params, grads, lr)
        for k, t in tparams.items():
            t.grad = torch.tensor(grads[k])
        theirs.step()
        for k, t in tparams.items():
            np.testing.assert_allclose(params[k], t.detach().numpy(), rtol=1e-11, atol=1e-13)
    assert int(ours.state_dict()["step"]) == 8


@pytest.mark.parametrize("name", ["nesterov", "adam", "adamw", "rmsprop"])
def test_float32_parameters_stay_float32(name):
    opt = make_optimizer({"name": name})
    p = {"w": np.ones((2, 3), dtype=np.float32)}
    opt.step(p, {"w": np.full((2, 3), 0.5, dtype=np.float32)}, 0.1)
    assert p["w"].dtype == np.float32 and (p["w"] < 1).all()
    assert all(v.dtype == np.float32 for k, v in opt.state_dict().items() if k != "step")


@pytest.mark.parametrize("name", ["nesterov", "adam", "adamw", "rmsprop"])
def test_a_factored_gradient_is_applied_as_its_dense_array(name):
    rng = np.random.default_rng(1)
    w = rng.standard_normal((4, 3)).astype(np.float32)
    g = LinearGrad(
        rng.standard_normal((1, 4)).astype(np.float32),
        rng.standard_normal((1, 3)).astype(np.float32),
        decay=0.01,
    )
    a, b = make_optimizer({"name": name}), make_optimizer({"name": name})
    pa, pb = {"W": w.copy()}, {"W": w.copy()}
    for _ in range(3):
        a.step(pa, {"W": g}, 0.1)
        b.step(pb, {"W": g.dense(pb["W"])}, 0.1)
    np.testing.assert_array_equal(pa["W"], pb["W"])


@pytest.mark.parametrize("name", ["nesterov", "adam", "adamw", "rmsprop"])
def test_single_sample_training_uses_the_dense_path(name):
    X, y = _data(40)
    model = MLPModel(8, 3, hidden=(5,), rng=0, l2=1e-3)
    trainer = Trainer(
        model,
        optimizer=make_optimizer({"name": name}),
        schedule=0.01,
        batch_size=1,
        replacement=True,
        rng=0,
    )
    assert trainer.gradient_function(1) == model.loss_and_grad
    hist = trainer.fit((X, y), epochs=2)
    assert np.isfinite(hist.series("train_loss")).all()
    assert hist.series("train_loss")[-1] < hist.series("train_loss")[0]


def _data(n, d=8, k=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(np.float32)
    y = (X[:, :k] + 0.5 * rng.standard_normal((n, k))).argmax(axis=1)
    return X, y


def _trainer(name, seed=0, callbacks=()):
    hp = {"momentum": 0.6} if name == "rmsprop" else {}
    return Trainer(
        MLPModel(8, 3, hidden=(6,), rng=seed, l2=1e-3),
        optimizer=make_optimizer({"name": name, **hp}),
        schedule=0.01,
        batch_size=16,
        eval_every=4,
        callbacks=[EarlyStopping("val_loss", patience=100), *callbacks],
        rng=seed,
    )


@pytest.mark.parametrize("name", list(OPTIMIZERS))
@pytest.mark.parametrize("split_at", [5, 11])
def test_resume_from_a_checkpoint_is_bit_identical(tmp_path, name, split_at):
    X, y = _data(120)
    val = _data(30, seed=1)
    full = _trainer(name)
    full.fit((X, y), val, steps=30)
    first = _trainer(name, callbacks=[Checkpoint(tmp_path / "ck.npz", split_at, True)])
    first.fit((X, y), val, steps=split_at + 1)
    arrays, meta = load_checkpoint(tmp_path / f"ck-step{split_at}.npz")
    assert meta["optimizer"] == first.optimizer.config()
    resumed = _trainer(name, seed=5)  # other init and rng: all must come from the file
    resumed.load_state_dict(arrays, meta)
    resumed.fit((X, y), val, steps=30)
    for k in full.model.params:
        np.testing.assert_array_equal(resumed.model.params[k], full.model.params[k])
    for k, v in full.optimizer.state_dict().items():
        np.testing.assert_array_equal(resumed.optimizer.state_dict()[k], v)
    strip = [{**r, "time": 0} for r in full.history.records]
    assert [{**r, "time": 0} for r in resumed.history.records] == strip


def test_hyperparameter_checks():
    with pytest.raises(ConfigError, match="nesterov needs momentum"):
        Nesterov(momentum=0.0)
    with pytest.raises(ConfigError, match=r"beta2 must be in \[0, 1\)"):
        Adam(beta2=1.0)
    with pytest.raises(ConfigError, match=r"eps must be in \(0, inf\)"):
        RMSprop(eps=0.0)
    with pytest.raises(ConfigError, match="weight_decay must be in"):
        AdamW(weight_decay=-1.0)
    with pytest.raises(ConfigError, match="no hyperparameter 'momentum'"):
        Adam(momentum=0.9)
    assert AdamW().weight_decay == 0.01 and Adam().weight_decay == 0.0


def test_malformed_state_is_refused():
    opt = Adam()
    p = {"w": np.ones(3)}
    opt.step(p, {"w": np.ones(3)}, 0.1)
    state = opt.state_dict()
    assert state["step"].shape == () and set(state) == {"step", "exp_avg/w", "exp_avg_sq/w"}
    with pytest.raises(CheckpointError, match="step count"):
        Adam().load_state_dict({k: v for k, v in state.items() if k != "step"})
    with pytest.raises(CheckpointError, match="unexpected entry 'velocity/w'"):
        Adam().load_state_dict({**state, "velocity/w": np.ones(3)})
    wrong = Adam()
    wrong.load_state_dict({**state, "exp_avg/w": np.ones(4)})
    with pytest.raises(CheckpointError, match="has shape"):
        wrong.step(p, {"w": np.ones(3)}, 0.1)
    fresh = Adam()
    fresh.load_state_dict(state)
    q = {"w": p["w"].copy()}
    opt.step(p, {"w": np.ones(3)}, 0.1)
    fresh.step(q, {"w": np.ones(3)}, 0.1)
    np.testing.assert_array_equal(p["w"], q["w"])


def test_a_checkpoint_of_another_optimizer_is_refused(tmp_path):
    X, y = _data(40)
    first = _trainer("adam", callbacks=[Checkpoint(tmp_path / "ck.npz")])
    first.fit((X, y), steps=3)
    arrays, meta = load_checkpoint(tmp_path / "ck.npz")
    with pytest.raises(CheckpointError, match="trained with optimizer 'adam', this run uses 'sgd'"):
        _trainer("sgd").load_state_dict(arrays, meta)
