"""The learning-rate range test: sweep, smoothing, divergence stop, the suggestion rule, the
estimators and models untouched, and the ``lr-find`` command."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from sklearn.base import clone

from digitlab import MLPClassifier, SoftmaxRegression
from digitlab.cli import main
from digitlab.data import load
from digitlab.errors import ConfigError
from digitlab.lrfind import SKIP_START, lr_find, steepest_descent
from digitlab.models import SoftmaxModel
from digitlab.optim import SGD


@pytest.fixture(scope="module")
def digits():
    ds = load("mnist-5k")
    X = ds.x_train[:2000].reshape(-1, 784).astype(np.float32) / 255
    return X, ds.y_train[:2000].astype(np.int64)


def test_sweep_rates_smoothing_and_divergence_stop(digits):
    X, y = digits
    est = MLPClassifier((32,), "relu", solver="minibatch", momentum=0.9, random_state=0)
    r = lr_find(est, X, y,
                start_lr=1e-6, end_lr=10.0, steps=150)  # fmt: skip
    m = len(r.lrs)
    assert 20 < m < 150 and "4x its best" in r.stop_reason  # stopped at divergence
    np.testing.assert_allclose(r.lrs, 1e-6 * (1e7) ** (np.arange(m) / 149), rtol=1e-12)
    avg, expected = 0.0, []
    for i, loss in enumerate(r.losses, start=1):  # EMA, bias-corrected, beta 0.98
        avg = 0.98 * avg + 0.02 * loss
        expected.append(avg / (1 - 0.98**i))
    np.testing.assert_allclose(r.smoothed, expected, rtol=1e-12)
    assert r.smoothed[-1] > 4 * r.smoothed.min() and (r.smoothed[:-1] <= 4 * r.smoothed.min()).all()
    slope = np.gradient(r.smoothed[SKIP_START : m - 1])
    assert r.suggestion == r.lrs[SKIP_START + int(np.argmin(slope))]
    assert 1e-4 < r.suggestion < r.min_loss_lr


def test_the_suggestion_trains_better_than_a_tenth_or_ten_times_it(digits):
    X, y = digits
    est = SoftmaxRegression(solver="minibatch", batch_size=64, max_iter=2, tol=None,
                            random_state=0)  # fmt: skip
    r = lr_find(est, X, y)
    acc = {}
    for factor in (0.1, 1.0, 10.0):
        fitted = clone(est).set_params(learning_rate_init=r.suggestion * factor).fit(X, y)
        acc[factor] = fitted.score(X, y)
    assert acc[1.0] > acc[0.1] and acc[1.0] > acc[10.0], (r.suggestion, acc)


def test_the_estimator_and_the_model_are_left_unchanged(digits):
    X, y = digits
    est = MLPClassifier(hidden_layer_sizes=(8,), max_iter=1, random_state=0)
    lr_find(est, X, y, steps=30)
    assert not hasattr(est, "n_features_in_") and not hasattr(est, "model_")
    model = SoftmaxModel(784, 10, init="normal", rng=0)
    before = {k: v.copy() for k, v in model.params.items()}
    r = lr_find(model, X, y, optimizer=SGD(momentum=0.9), batch_size=32, steps=40)
    assert len(r.lrs) >= 2
    for k, v in model.params.items():
        np.testing.assert_array_equal(v, before[k])
    with pytest.raises(ValueError, match="lbfgs"):
        lr_find(SoftmaxRegression(), X, y)
    with pytest.raises(ConfigError, match="estimator or Model"):
        lr_find(object(), X, y)


@pytest.mark.parametrize(
    "bad",
    [dict(start_lr=0.0), dict(start_lr=-1.0), dict(end_lr=1e-9), dict(end_lr=float("inf")),
     dict(start_lr=float("nan")), dict(steps=1), dict(steps=10**9), dict(steps=2.5),
     dict(beta=1.0), dict(diverge=1.0), dict(start_lr=True)],
)  # fmt: skip
def test_bad_sweep_settings_are_refused(bad, digits):
    X, y = digits
    with pytest.raises(ConfigError):
        lr_find(SoftmaxModel(784, 10), X, y, **bad)


def test_steepest_descent_with_few_points():
    lrs = np.array([1e-3, 1e-2, 1e-1])
    assert steepest_descent(lrs, np.array([2.0, 1.0, 3.0])) == 1e-3
    assert steepest_descent(lrs[:1], np.array([2.0])) == 1e-3


def test_lr_find_command_writes_csv_and_png(tmp_path, capsys):
    out = tmp_path / "lf"
    args = ["lr-find", "--model", "mlp", "--hidden", "16", "--dataset", "mnist-5k",
            "--sweep-steps", "60", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "suggested lr" in printed and "steepest descent" in printed
    rows = list(csv.DictReader((out / "lr_find.csv").open()))
    assert rows[0].keys() == {"step", "lr", "loss", "smoothed_loss"} and 2 <= len(rows) <= 60
    assert (out / "lr_find.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "options",
    [["--start-lr", "0"], ["--start-lr", "nan"], ["--end-lr", "-3"], ["--end-lr", "1e-9"],
     ["--sweep-steps", "0"], ["--sweep-steps", "1e9"], ["--sweep-steps", "999999999"],
     ["--start-lr", "x"], ["--hidden", "-1"], ["--batch", "0"], ["--model", "svm"]],
)  # fmt: skip
def test_bad_lr_find_options_exit_2_with_one_line(options, tmp_path, capsys):
    out = tmp_path / "lf"
    args = ["lr-find", "--dataset", "mnist-5k", "--out", str(out), *options]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("digitlab: error: ") and "\n" not in err
    assert not out.exists()
