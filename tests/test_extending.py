"""Extending digitlab: a model buffer, a step statistic and an optimiser's state, each added in
one place (the class or the callback) and carried through training, checkpoints and resume."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from digitlab.checkpoint import load_checkpoint
from digitlab.errors import CheckpointError
from digitlab.models import MODELS, SoftmaxModel, build_model
from digitlab.optim import SGD
from digitlab.train import Callback, Checkpoint, EarlyStopping, Step, Trainer


class RunningMean(SoftmaxModel):
    """Softmax regression with one buffer: the running mean of the inputs it trained on."""

    kind = "softmax-running-mean"

    def __init__(self, n_features: int, n_classes: int, **kwargs: Any) -> None:
        super().__init__(n_features, n_classes, **kwargs)
        self.buffers["input_mean"] = np.zeros(self.n_features, dtype=self.dtype)

    @classmethod
    def state_shapes(cls, config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
        shapes = super().state_shapes(config)
        return shapes | {"input_mean": (shapes["W"][0],)}

    def loss_and_grad(self, X, y, **kw):  # the buffer follows the training batches
        self.buffers["input_mean"] *= 0.9
        self.buffers["input_mean"] += 0.1 * np.asarray(X).mean(axis=0)
        return super().loss_and_grad(X, y, **kw)


def _data(n: int = 60, d: int = 5, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, d)).astype(np.float32), rng.integers(0, k, n)


def _trainer(callbacks=(), momentum: float = 0.5) -> Trainer:
    model = RunningMean(5, 3, rng=0, init="normal")
    return Trainer(model, optimizer=SGD(momentum), schedule=0.1, batch_size=16,
                   callbacks=list(callbacks), rng=1)  # fmt: skip


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(MODELS, RunningMean.kind, RunningMean)


def test_a_model_buffer_is_saved_restored_and_resumed_bit_for_bit(tmp_path, registered):
    X, y = _data()
    full = _trainer()
    full.fit((X, y), epochs=6)
    assert np.abs(full.model.buffers["input_mean"]).sum() > 0  # it moved

    first = _trainer([Checkpoint(tmp_path / "ck.npz")])
    first.fit((X, y), steps=9)  # stops mid-epoch
    arrays, meta = load_checkpoint(tmp_path / "ck.npz")  # the reader asks the class its shapes
    assert arrays["model/input_mean"].shape == (5,)
    resumed = _trainer()
    resumed.load_state_dict(arrays, meta)
    resumed.fit((X, y), epochs=6)
    for k, v in full.model.state().items():
        np.testing.assert_array_equal(resumed.model.state()[k], v)
    rebuilt = build_model(meta["model"], {k[6:]: v for k, v in arrays.items() if k[:6] == "model/"})
    np.testing.assert_array_equal(rebuilt.buffers["input_mean"], arrays["model/input_mean"])


def test_a_buffer_of_the_wrong_shape_is_refused_before_reading(tmp_path, registered):
    X, y = _data()
    _trainer([Checkpoint(tmp_path / "ck.npz")]).fit((X, y), steps=2)
    arrays, meta = load_checkpoint(tmp_path / "ck.npz")
    arrays["model/input_mean"] = np.zeros(4, np.float32)
    with pytest.raises(CheckpointError, match="input_mean"):
        _trainer().load_state_dict(arrays, meta)


def test_early_stopping_restores_buffers_with_the_parameters(registered):
    X, y = _data()
    es = EarlyStopping("train_loss", patience=100)
    trainer = _trainer([es])
    trainer.fit((X, y), epochs=4)
    best = es.best_params
    assert "input_mean" in best
    for k, v in best.items():
        np.testing.assert_array_equal(trainer.model.state()[k], v)


class UpdateRatio(Callback):
    """A step statistic added as a callback: one history column, no change to the loop."""

    def __init__(self) -> None:
        self.steps: list[Step] = []

    def measure(self, trainer, step: Step) -> dict[str, float]:
        self.steps.append(step)
        W, W0 = trainer.model.params["W"], step.before["W"]
        return {"update_ratio_W": float(np.linalg.norm(W - W0) / np.linalg.norm(W0))}


def test_a_measure_hook_sees_the_step_and_adds_a_history_column():
    X, y = _data()
    probe = UpdateRatio()
    model = SoftmaxModel(5, 3, rng=0, init="normal")
    trainer = Trainer(model, schedule=0.1, batch_size=16, callbacks=[probe], rng=1)
    trainer.fit((X, y), epochs=3)
    ratios = trainer.history.series("update_ratio_W")
    assert ratios.shape == (3,) and np.all(ratios > 0)
    step = probe.steps[-1]
    assert step.X.shape == (60 - 3 * 16, 5) and step.lr == 0.1  # the epoch's last batch
    # plain gradient descent: the update is -lr times the gradient the step used
    np.testing.assert_allclose(
        model.params["W"] - step.before["W"], -0.1 * step.grads["W"], rtol=1e-5, atol=1e-7
    )


def test_halving_the_learning_rate_halves_the_measured_update():
    X, y = _data()

    def ratios(lr: float) -> np.ndarray:
        model = SoftmaxModel(5, 3, rng=0, init="normal")
        trainer = Trainer(model, schedule=lr, batch_size=16, eval_every=1,
                          callbacks=[UpdateRatio()], rng=1)  # fmt: skip
        trainer.fit((X, y), steps=1)  # the first step: the same start and batch
        return trainer.history.series("update_ratio_W")

    assert ratios(0.1)[0] == pytest.approx(2 * ratios(0.05)[0], rel=1e-5)


def test_optimizer_state_of_format_1_is_read_and_missing_state_refused(tmp_path):
    X, y = _data()
    ck = Checkpoint(tmp_path / "ck.npz")
    trainer = Trainer(SoftmaxModel(5, 3, rng=0), optimizer=SGD(0.9), schedule=0.1,
                      batch_size=16, callbacks=[ck], rng=1)  # fmt: skip
    trainer.fit((X, y), steps=5)
    arrays, meta = load_checkpoint(tmp_path / "ck.npz")

    def fresh() -> Trainer:
        return Trainer(SoftmaxModel(5, 3, rng=0), optimizer=SGD(0.9), schedule=0.1,
                       batch_size=16, rng=1)  # fmt: skip

    old = {k.replace("optim/velocity/", "optim/"): v for k, v in arrays.items()}
    old.pop("optim/step")
    resumed = fresh()
    resumed.load_state_dict(old, meta)  # velocity keyed by parameter alone
    np.testing.assert_array_equal(resumed.optimizer.velocity["W"], arrays["optim/velocity/W"])

    partial = {k: v for k, v in arrays.items() if k != "optim/velocity/b"}
    with pytest.raises(CheckpointError, match="lacks optimiser state velocity/b"):
        fresh().load_state_dict(partial, meta)
