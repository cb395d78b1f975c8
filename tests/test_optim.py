"""Update rules (hand-worked steps), schedules (the annealing formula) and L-BFGS."""

from __future__ import annotations

import numpy as np
import pytest

from digitlab import LogisticModel, MLPModel, SoftmaxModel
from digitlab.errors import ConfigError
from digitlab.optim import SGD, Constant, InverseTime, StepDecay, lbfgs, make_schedule


def test_plain_gradient_descent_step_by_hand():
    params = {"W": np.array([[1.0, -2.0]]), "b": np.array([0.5])}
    grads = {"W": np.array([[0.1, 0.4]]), "b": np.array([-1.0])}
    SGD().step(params, grads, lr=0.5)
    np.testing.assert_allclose(params["W"], [[0.95, -2.2]])
    np.testing.assert_allclose(params["b"], [1.0])


def test_momentum_two_steps_by_hand():
    opt = SGD(momentum=0.9)
    p = {"w": np.array([1.0])}
    opt.step(p, {"w": np.array([2.0])}, lr=0.1)  # v = 2, p = 1 - 0.2
    np.testing.assert_allclose(p["w"], [0.8])
    opt.step(p, {"w": np.array([1.0])}, lr=0.1)  # v = 0.9*2 + 1 = 2.8, p = 0.8 - 0.28
    np.testing.assert_allclose(p["w"], [0.52])
    np.testing.assert_allclose(opt.state_dict()["velocity/w"], [2.8])


def test_momentum_state_round_trip():
    a, b = SGD(momentum=0.5), SGD(momentum=0.5)
    pa, pb = {"w": np.ones(3)}, {"w": np.ones(3)}
    a.step(pa, {"w": np.arange(3.0)}, 0.1)
    b.load_state_dict(a.state_dict())
    pb["w"][...] = pa["w"]
    a.step(pa, {"w": np.ones(3)}, 0.1)
    b.step(pb, {"w": np.ones(3)}, 0.1)
    np.testing.assert_array_equal(pa["w"], pb["w"])


@pytest.mark.parametrize("mu", [-0.1, 1.0])
def test_momentum_range(mu):
    with pytest.raises(ConfigError, match="momentum"):
        SGD(momentum=mu)


def test_inverse_time_annealing_formula():
    s = InverseTime(eta0=0.0015, T=3, unit="epoch")
    for epoch in range(10):
        assert s(step=999, epoch=epoch) == pytest.approx(0.0015 / (1 + epoch / 3))
    assert s(0, 3) == pytest.approx(0.0015 / 2)  # halves at t = T
    per_step = InverseTime(eta0=0.01, T=1000, unit="step")
    assert per_step(step=2000, epoch=0) == pytest.approx(0.01 / 3)


def test_step_decay_and_constant():
    s = StepDecay(eta0=1.0, gamma=0.5, every=2)
    assert [s(0, e) for e in range(5)] == [1.0, 1.0, 0.5, 0.5, 0.25]
    assert Constant(0.3)(100, 7) == 0.3


@pytest.mark.parametrize("schedule", [Constant(0.1), InverseTime(0.1, 3.0), StepDecay(0.1, 0.5, 3)])
def test_schedule_config_round_trip(schedule):
    assert make_schedule(schedule.config()) == schedule


@pytest.mark.parametrize(
    "cfg",
    [
        {"name": "cosine", "eta0": 1},
        {"name": "inverse_time", "eta0": 0.1, "T": 0},
        {"name": "constant", "eta0": -1},
        {"name": "inverse_time", "eta0": 0.1, "T": 1, "unit": "h"},
    ],
)
def test_bad_schedules(cfg):
    with pytest.raises(ConfigError):
        make_schedule(cfg)


def _problem(n=200, d=10, k=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    y = (X[:, :k] + 0.8 * rng.standard_normal((n, k))).argmax(axis=1)
    return X, y


def test_lbfgs_reaches_a_stationary_point_softmax():
    X, y = _problem()
    res = lbfgs(SoftmaxModel(10, 3, l2=1e-3), X, y)
    assert res.converged
    assert res.grad_norm < 1e-5
    # no gradient-descent run can go below the optimum of the same objective
    model = SoftmaxModel(10, 3, l2=1e-3, dtype=np.float64)
    for _ in range(300):
        _, g = model.loss_and_grad(X, y)
        for k in model.params:
            model.params[k] -= 0.5 * g[k]
    assert model.loss(X, y) >= res.objective - 1e-12


def test_lbfgs_logistic_matches_scikit_learn():
    from sklearn.linear_model import LogisticRegression

    X, y = _problem(k=2)
    alpha = 1e-2
    res = lbfgs(LogisticModel(10, l2=alpha), X, y)
    assert res.grad_norm < 1e-5
    # sklearn minimises 0.5||w||^2 + C sum(CE); ours mean(CE) + alpha ||w||^2 => C = 1/(2 alpha n)
    ref = LogisticRegression(C=1 / (2 * alpha * len(y)), tol=1e-12, max_iter=10000).fit(X, y)
    np.testing.assert_allclose(res.model.params["W"][:, 0], ref.coef_[0], atol=1e-5)
    np.testing.assert_allclose(res.model.params["b"], ref.intercept_, atol=1e-5)


def test_lbfgs_refuses_nonconvex_or_l1():
    X, y = _problem()
    with pytest.raises(ConfigError, match="convex"):
        lbfgs(MLPModel(10, 3, hidden=(4,)), X, y)
    with pytest.raises(ConfigError, match="l1"):
        lbfgs(SoftmaxModel(10, 3, l1=0.1), X, y)


# ---------------------------------------------------------------- factored steps (issue 5)
@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("l2", [0.0, 0.01])
@pytest.mark.parametrize("n", [1, 6])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_factored_sgd_step_equals_the_array_step(momentum, l2, n, dtype):
    """The rank-1 (n = 1) and batched factored steps give the array step's numbers."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, 10)).astype(dtype)
    y = rng.integers(0, 3, n)
    a = MLPModel(10, 3, hidden=(7,), rng=0, l2=l2, dtype=dtype)
    b = MLPModel(10, 3, hidden=(7,), rng=0, l2=l2, dtype=dtype)
    opt_a, opt_b = SGD(momentum), SGD(momentum)
    for _ in range(4):  # several steps so the velocity matters
        opt_a.step(a.params, a.loss_and_grad(X, y)[1], 0.1)
        opt_b.step(b.params, b.loss_and_grad_factored(X, y)[1], 0.1)
    rtol = 1e-5 if dtype == np.float32 else 1e-13
    for k in a.params:
        if n > 1:  # formed densely: the same arithmetic
            np.testing.assert_array_equal(b.params[k], a.params[k])
        np.testing.assert_allclose(b.params[k], a.params[k], rtol=rtol, atol=rtol)
    assert set(opt_b.velocity) == set(opt_a.velocity)


# ---------------------------------------------------------------- fast L-BFGS (issue 5)
@pytest.mark.parametrize("kind", ["logistic", "softmax"])
def test_chunked_loss_and_grad_equals_one_pass(kind):
    X, y = _problem(n=203, k=2 if kind == "logistic" else 3)
    model = (
        LogisticModel(10, l2=0.01, init="normal", rng=0, dtype=np.float64)
        if kind == "logistic"
        else SoftmaxModel(10, 3, l2=0.01, init="normal", rng=0, dtype=np.float64)
    )
    loss, grads = model.loss_and_grad(X, y)
    loss_c, grads_c = model.loss_and_grad(X.astype(np.float32), y, chunk_rows=50)
    ref_loss, ref_grads = model.loss_and_grad(X.astype(np.float32).astype(np.float64), y)
    assert loss_c == pytest.approx(ref_loss, rel=1e-13)
    for k in grads:
        np.testing.assert_allclose(grads_c[k], ref_grads[k], rtol=1e-12, atol=1e-15)
    loss_c64, grads_c64 = model.loss_and_grad(X, y, chunk_rows=64)
    assert loss_c64 == pytest.approx(loss, rel=1e-13)
    for k in grads:
        np.testing.assert_allclose(grads_c64[k], grads[k], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("whiten", ["full", "diagonal"])
def test_lbfgs_coordinates_are_an_exact_reparametrisation(whiten, monkeypatch):
    from digitlab.optim.lbfgs import _Coordinates

    if whiten == "diagonal":  # what features beyond MAX_WHITEN get
        monkeypatch.setattr(_Coordinates, "MAX_WHITEN", 5)
    X, y = _problem(n=150)
    X = X + 3.0  # features with nonzero means, so the centring matters
    model = SoftmaxModel(10, 3, l2=0.01, init="normal", rng=1, dtype=np.float64)
    model.params["b"][...] = [0.3, -0.2, 0.1]
    coords = _Coordinates(model, X, chunk_rows=64)
    theta = coords.to_theta(model.params)
    back = coords.params(theta)
    for k in model.params:
        np.testing.assert_allclose(back[k], model.params[k], rtol=1e-13, atol=1e-13)

    def f(t):  # the objective as a function of theta
        m = model.copy()
        for k, v in coords.params(t).items():
            m.params[k][...] = v
        return m.loss(X, y)

    g = coords.grad_to_theta(model.loss_and_grad(X, y)[1])  # chain rule
    rng = np.random.default_rng(0)
    for i in rng.choice(theta.size, 8, replace=False):
        e = np.zeros_like(theta)
        e[i] = 1e-6
        assert (f(theta + e) - f(theta - e)) / 2e-6 == pytest.approx(g[i], rel=1e-5, abs=1e-8)


@pytest.mark.parametrize("bias", [True, False])
def test_lbfgs_float32_start_reaches_the_float64_optimum(bias):
    X, y = _problem(n=400)
    X = (X + 1.0).astype(np.float32)
    one = lbfgs(SoftmaxModel(10, 3, l2=1e-3, bias=bias), X, y, start_dtype=None)
    two = lbfgs(SoftmaxModel(10, 3, l2=1e-3, bias=bias), X, y)
    assert one.model.dtype == two.model.dtype == np.float64
    assert two.objective == pytest.approx(one.objective, rel=1e-10)
    assert two.grad_norm < 1e-5 and one.grad_norm < 1e-5
    np.testing.assert_allclose(two.model.params["W"], one.model.params["W"], atol=1e-4)


def test_scipy_blas_is_restored_after_lbfgs():
    from threadpoolctl import threadpool_info

    before = [(i["filepath"], i["num_threads"]) for i in threadpool_info()]
    X, y = _problem()
    lbfgs(SoftmaxModel(10, 3, l2=1e-3), X, y)
    assert [(i["filepath"], i["num_threads"]) for i in threadpool_info()] == before


def test_lbfgs_without_penalty_converges_on_digits():
    """Whitening must not stretch rarely-inked pixels without bound when l2 = 0 (a run on the
    embedded digits stalled at 500 iterations with gradient norm ~1 before the floor)."""
    from digitlab.data import Preprocessor, load

    data = load("mnist-5k")
    X = Preprocessor("scale01").fit_transform(data.x_train)
    res = lbfgs(SoftmaxModel(784, 10), X, data.y_train, max_iter=500)
    assert res.grad_norm < 1e-3, res.message


# ---------------------------------------------------------------- the Optimizer protocol
def test_registry_classes_follow_the_protocol():
    from digitlab.optim import OPTIMIZERS, Optimizer
    from digitlab.optim.base import HYPERPARAMETER_RANGES

    assert "sgd" in OPTIMIZERS and OPTIMIZERS["sgd"] is SGD
    for name, cls in OPTIMIZERS.items():
        assert cls.name == name
        assert set(cls.hyperparameters) <= set(HYPERPARAMETER_RANGES)
        assert isinstance(cls.supports_rank1, bool)
        opt = cls(**cls.hyperparameters)
        assert isinstance(opt, Optimizer)
        assert opt.config() == {"name": name, **cls.hyperparameters}
        for v in opt.state_dict().values():
            assert isinstance(v, np.ndarray)


def test_make_optimizer_round_trip_and_errors():
    from digitlab.optim import make_optimizer

    opt = make_optimizer({"name": "sgd", "momentum": 0.5})
    assert isinstance(opt, SGD) and opt.momentum == 0.5
    assert make_optimizer(opt.config()).config() == opt.config()
    assert make_optimizer({}).config() == {"name": "sgd", "momentum": 0.0}
    with pytest.raises(ConfigError, match="unknown optimizer 'lion'"):
        make_optimizer({"name": "lion"})
    with pytest.raises(ConfigError, match="no hyperparameter 'beta1'"):
        make_optimizer({"name": "sgd", "beta1": 0.9})
    with pytest.raises(ConfigError, match="momentum must be a number"):
        make_optimizer({"name": "sgd", "momentum": "x"})
    with pytest.raises(ConfigError, match="mapping"):
        make_optimizer(["sgd"])  # type: ignore[arg-type]


def test_trainer_fast_path_keyed_on_declared_capability():
    from digitlab.train import Trainer

    model = SoftmaxModel(4, 3, rng=0)

    class Spy(SGD):  # replaces step: no rank-1 capability unless declared
        def step(self, params, grads, lr):
            assert not any(type(g).__name__ == "LinearGrad" for g in grads.values())
            super().step(params, grads, lr)

    assert SGD.supports_rank1 and not Spy.supports_rank1
    fast = Trainer(model, optimizer=SGD(), batch_size=1).gradient_function(1)
    slow = Trainer(model, optimizer=Spy(), batch_size=1).gradient_function(1)
    assert fast == model.loss_and_grad_factored and slow == model.loss_and_grad


# ---------------------------------------------------------------- L-BFGS on row blocks (issue 23)
def _digits(n=1500):
    from digitlab.data import Preprocessor, load

    data = load("mnist-5k")
    return Preprocessor("scale01").fit_transform(data.x_train[:n]), data.y_train[:n]


def test_lbfgs_on_row_blocks_reaches_the_same_optimum(monkeypatch):
    """The float32 stage's data term comes from the row blocks (products skipping the zero
    entries) and ends where the chunked products end."""
    import sys

    from digitlab.models import linear

    lb = sys.modules["digitlab.optim.lbfgs"]
    X, y = _digits()
    calls = []
    stacked = linear.stacked_loss_and_grad
    monkeypatch.setattr(
        linear, "stacked_loss_and_grad", lambda *a, **k: calls.append(a[1]) or stacked(*a, **k)
    )
    blocked = lbfgs(SoftmaxModel(784, 10, l2=1e-3), X, y)
    assert calls and all(isinstance(b, linear.RowBlocks) for b in calls)
    assert all(b.dtype == np.float32 for b in calls)  # only the float32 stage is laid out
    monkeypatch.setattr(lb, "_blocked", lambda *a: False)
    calls.clear()
    dense = lbfgs(SoftmaxModel(784, 10, l2=1e-3), X, y)
    assert not calls
    # both stop at gtol 1e-6 (float64 stage, the solver's coordinates): objectives agree to ~1e-9
    assert blocked.objective == pytest.approx(dense.objective, rel=1e-8)
    assert blocked.converged and dense.converged
    assert blocked.grad_norm < 1e-4 and dense.grad_norm < 1e-4
    np.testing.assert_allclose(blocked.model.params["W"], dense.model.params["W"], atol=1e-4)


def test_lbfgs_lays_out_blocks_only_where_they_apply(monkeypatch):
    import sys

    from digitlab.models import linear

    blocked = sys.modules["digitlab.optim.lbfgs"]._blocked
    X, y = _digits(600)
    assert blocked(SoftmaxModel(784, 10), X, None, np.float32)
    assert not blocked(SoftmaxModel(784, 10), X, np.ones(600), np.float32)  # weighted rows
    assert not blocked(SoftmaxModel(784, 10), X, None, np.float64)  # not the stage in X's dtype
    assert not blocked(SoftmaxModel(784, 10), (X * 255).astype(np.uint8), None, np.float32)

    class Mine(SoftmaxModel):  # arithmetic of its own: the blocks would not compute it
        def _affine(self, X):
            return super()._affine(X) * 2.0

    assert not blocked(Mine(784, 10), X, None, np.float32)
    assert blocked(LogisticModel(784), X.astype(np.float64), None, np.float64)
    calls = []  # dense features: the layout is declined, the chunked products kept
    stacked = linear.stacked_loss_and_grad
    monkeypatch.setattr(
        linear, "stacked_loss_and_grad", lambda *a, **k: calls.append(a[1]) or stacked(*a, **k)
    )
    lbfgs(SoftmaxModel(784, 10, l2=1e-2), X[:200] + 1.0, y[:200], max_iter=5)
    assert not calls
    lbfgs(SoftmaxModel(784, 10, l2=1e-2), X[:200], y[:200], max_iter=5)
    assert calls  # the spy sees the blocked products where they apply


def test_lbfgs_weighted_rows_follow_the_unweighted_ones():
    """Weights of one (a general product for the second moment) and no weights (a symmetric
    one) reach the same optimum; weight 2 on a row equals the row twice."""
    X, y = _digits(400)
    plain = lbfgs(SoftmaxModel(784, 10, l2=1e-2), X, y)
    ones = lbfgs(SoftmaxModel(784, 10, l2=1e-2), X, y, sample_weight=np.ones(400))
    assert ones.objective == pytest.approx(plain.objective, rel=1e-10)
    w = np.ones(400)
    w[:50] = 2.0
    twice = lbfgs(SoftmaxModel(784, 10, l2=1e-2), np.vstack([X, X[:50]]), np.r_[y, y[:50]])
    weighted = lbfgs(SoftmaxModel(784, 10, l2=1e-2), X, y, sample_weight=w)
    assert weighted.objective == pytest.approx(twice.objective, rel=1e-10)
