"""Per-layer statistics: planted conditions are reported, and the columns survive resume."""

from __future__ import annotations

import numpy as np
import pytest

from digitlab.checkpoint import load_checkpoint
from digitlab.models import MLPModel, SoftmaxModel
from digitlab.models.inspect import HIST_BINS, activation_statistics, layer_histograms
from digitlab.optim import SGD
from digitlab.train import Checkpoint, Trainer
from digitlab.train.layerstats import LayerStats


def _digits(n: int = 200, d: int = 64) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    X = (rng.random((n, d)) < 0.3) * rng.random((n, d))  # sparse, in [0, 1], like pixels
    return X.astype(np.float32), rng.integers(0, 10, n)


def test_a_tanh_net_with_large_weights_is_reported_saturated():
    X, _ = _digits()
    X = 2 * X - 1  # pixels in [-1, 1], as the assignment preprocesses them
    model = MLPModel(64, 10, (32,), "tanh", rng=0)
    before = activation_statistics(model, X)["a1_saturated"]
    model.params["W1"] *= 10
    after = activation_statistics(model, X)
    assert before < 0.1 and after["a1_saturated"] > 0.9
    counts = layer_histograms(after, 1)
    assert counts.shape == (HIST_BINS,) and counts.sum() == X.shape[0] * 32
    assert counts[0] + counts[-1] > 0.8 * counts.sum()  # most outputs in the end bins


def test_relu_units_with_very_negative_biases_are_reported_dead():
    X, _ = _digits()
    model = MLPModel(64, 10, (32, 16), "relu", rng=0)
    assert activation_statistics(model, X)["a1_dead"] < 0.5
    model.params["b1"][:] = -10
    stats = activation_statistics(model, X)
    assert stats["a1_dead"] == 1.0 and stats["a2_dead"] <= 1.0


def _trainer(lr: float, callbacks=(), **kw) -> Trainer:
    X, _ = _digits()
    model = MLPModel(64, 10, (16,), "relu", rng=0, **kw)
    return Trainer(model, optimizer=SGD(), schedule=lr, batch_size=20, eval_every=1,
                   callbacks=[LayerStats(X[:50]), *callbacks], rng=1)  # fmt: skip


def test_halving_the_learning_rate_halves_the_update_weight_ratio():
    X, y = _digits()
    ratios = []
    for lr in (0.1, 0.05):
        trainer = _trainer(lr)
        trainer.fit((X, y), steps=1)  # the same start and batch: the update scales with lr
        ratios.append(trainer.history.series("W1_update_ratio")[0])
    assert ratios[0] == pytest.approx(2 * ratios[1], rel=1e-4)
    grad = trainer.history.series("W1_grad_norm")[0]
    assert ratios[1] == pytest.approx(0.05 * grad / trainer.history.series("W1_norm")[0], rel=0.05)


def test_batch_norm_statistics_and_linear_models_are_recorded():
    X, y = _digits()
    trainer = _trainer(0.1, batch_norm=True)
    trainer.fit((X, y), steps=3)
    rec = trainer.history.records[-1]
    assert rec["bn1_running_var"] > 0 and "bn1_running_mean" in rec
    linear = Trainer(SoftmaxModel(64, 10, rng=0), schedule=0.1, batch_size=50,
                     callbacks=[LayerStats(X[:10])], rng=0)  # fmt: skip
    linear.fit((X, y), epochs=1)
    assert {"W_norm", "b_norm", "W_grad_norm", "W_update_ratio"} <= set(linear.history.columns)


def test_statistics_of_a_resumed_run_equal_an_uninterrupted_one(tmp_path):
    X, y = _digits()
    full = _trainer(0.1)
    full.fit((X, y), epochs=3)
    _trainer(0.1, [Checkpoint(tmp_path / "ck.npz")]).fit((X, y), steps=13)
    resumed = _trainer(0.1)
    resumed.load_state_dict(*load_checkpoint(tmp_path / "ck.npz"))
    resumed.fit((X, y), epochs=3)
    strip = [{k: v for k, v in r.items() if k != "time"} for r in full.history.records]
    assert [{k: v for k, v in r.items() if k != "time"} for r in resumed.history.records] == strip
    assert "a1_hist00" in full.history.columns and "W2_update_ratio" in full.history.columns


def test_a_cli_run_records_layer_statistics_and_the_reader_returns_them(tmp_path):
    from digitlab.cli import main
    from digitlab.runfiles import read_layer_stats

    args = ["train", "--model", "mlp", "--hidden", "16,8", "--activation", "tanh",
            "--dataset", "mnist-5k", "--n-train", "400", "--n-test", "100", "--epochs", "2",
            "--quiet", "--out", str(tmp_path)]  # fmt: skip
    assert main(args) == 0
    folder = next((tmp_path / "mlp").iterdir())
    stats = read_layer_stats(folder)
    assert stats["step"].shape == (2,)
    assert {"W1_norm", "W3_update_ratio", "a1_saturated", "a2_hist15"} <= set(stats)
    assert "train_loss" not in stats and np.all(stats["W1_norm"] > 0)
    assert main([*args, "--no-layer-stats"]) == 0
    newest = sorted((tmp_path / "mlp").iterdir())[-1]
    assert set(read_layer_stats(newest)) == {"step"}


def test_estimator_layers_and_layer_stats():
    from digitlab import MLPClassifier

    X, y = _digits(300)
    clf = MLPClassifier((12,), "tanh", dropout=0.2, batch_norm=True, init="glorot_uniform",
                        max_iter=3, random_state=0).fit(X, y)  # fmt: skip
    stats = clf.layer_stats_
    assert stats["epoch"].shape == (3,) and stats["a1_saturated"].shape == (3,)
    assert {"W1_grad_norm", "W2_update_ratio", "bn1_running_var"} <= set(stats)
    assert "gamma1" in clf.model_.params and clf.model_.dropout == (0.2,)
    assert clf.predict(X[:1]).shape == (1,)  # evaluation mode: a single row
    with pytest.raises(ValueError, match="dropout"):
        MLPClassifier(dropout=1.5).fit(X, y)
