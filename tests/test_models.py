"""Models: exact gradients (float64 central differences), stability, hand-worked values, errors."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import log_softmax

from digitlab import LogisticModel, MLPModel, SoftmaxModel, build_model, gradcheck
from digitlab.errors import CheckpointError, ConfigError, ShapeError

PENALTIES = {"none": {}, "l1": {"l1": 0.05}, "l2": {"l2": 0.1}}


def _problem(kind: str, n: int = 24, d: int = 6, k: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    y = rng.integers(0, 2 if kind == "logistic" else k, n)
    return X, y


def _away_from_zero(model, margin: float = 0.1):
    """Push every weight to |w| >= margin so the L1 term is differentiable within eps."""
    for v in model.params.values():
        v[...] = np.where(v >= 0, np.maximum(v, margin), np.minimum(v, -margin))
        v[np.abs(v) < margin] = margin
    return model


def _clear_relu_kinks(model, X):
    """Shift each hidden bias so no pre-activation lies near relu's kink at 0.

    Central differences straddling the kink measure a one-sided slope, not a bug; the
    biases are chosen (per unit, from a grid) to maximise the distance to the kink.
    """
    a = X
    offsets = np.linspace(-1.5, 1.5, 61)
    for i in range(1, model.n_layers):
        z = a @ model.params[f"W{i}"]  # (n, h)
        margin = np.abs(z[None, :, :] + offsets[:, None, None]).min(axis=1)  # (offsets, h)
        model.params[f"b{i}"][...] = offsets[margin.argmax(axis=0)]
        a = np.maximum(z + model.params[f"b{i}"], 0)
    return model


def _make(kind: str, activation: str = "tanh", **kw):
    kw.setdefault("dtype", np.float64)
    if kind == "logistic":
        return LogisticModel(6, init="normal", rng=1, **kw)
    if kind == "softmax":
        return SoftmaxModel(6, 4, init="normal", rng=1, **kw)
    return MLPModel(6, 4, hidden=(5, 3), activation=activation, init="normal", rng=1, **kw)


CASES = [("logistic", "-"), ("softmax", "-")] + [("mlp", a) for a in ("tanh", "sigmoid", "relu")]


@pytest.mark.parametrize(("kind", "activation"), CASES)
@pytest.mark.parametrize("penalty", list(PENALTIES))
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("regularize_bias", [False, True])
def test_gradcheck_is_second_order(kind, activation, penalty, reduction, regularize_bias):
    model = _make(
        kind,
        activation,
        reduction=reduction,
        regularize_bias=regularize_bias,
        **PENALTIES[penalty],
    )
    if regularize_bias:  # nonzero biases so their penalty gradient is exercised
        for key, v in model.params.items():
            if key.startswith("b"):
                v[...] = np.linspace(-0.7, 0.9, v.size)
    if penalty == "l1":
        _away_from_zero(model)
    X, y = _problem(kind)
    if activation == "relu":
        _clear_relu_kinks(model, X)
    coarse = gradcheck(model, X, y, eps=1e-2)
    fine = gradcheck(model, X, y, eps=1e-3)
    scale = 1.0 if reduction == "mean" else len(y)
    assert coarse < 5e-3 * scale, coarse  # O(eps^2) with eps = 1e-2, the seed's check
    # halving the order of magnitude of eps cuts the error ~100x: the error is truncation,
    # so the analytic gradient is exact
    assert fine < max(coarse / 30, 1e-9 * scale), (coarse, fine)


def test_gradcheck_detects_a_wrong_gradient():
    model = _make("softmax")
    X, y = _problem("softmax")
    assert gradcheck(model, X, y) < 1e-4
    cls = type(model)
    orig = cls.loss_and_grad

    def wrong(self, X, y):
        loss, grads = orig(self, X, y)
        grads["W"][0, 0] += 1e-3
        return loss, grads

    cls.loss_and_grad = wrong
    try:
        assert gradcheck(model, X, y) > 9e-4
    finally:
        cls.loss_and_grad = orig


def test_gradcheck_subsample_is_seeded():
    model = _make("mlp")
    X, y = _problem("mlp")
    a = gradcheck(model, X, y, n_checks=3, rng=5)
    b = gradcheck(model, X, y, n_checks=3, rng=5)
    assert a == b


def test_logistic_hand_worked_zero_weights():
    X = np.array([[1.0, 2.0], [3.0, -1.0], [0.0, 1.0]])
    y = np.array([1, 0, 1])
    model = LogisticModel(2, dtype=np.float64)
    loss, grads = model.loss_and_grad(X, y)
    assert loss == pytest.approx(np.log(2.0))
    # dE/dw = mean((sigmoid(0) - t) x) = mean((0.5 - t) x)
    expected = ((0.5 - y)[:, None] * X).mean(axis=0)
    np.testing.assert_allclose(grads["W"][:, 0], expected)
    np.testing.assert_allclose(grads["b"], [np.mean(0.5 - y)])
    np.testing.assert_allclose(model.forward(X), 0.5)


def test_softmax_loss_matches_independent_log_softmax():
    rng = np.random.default_rng(3)
    X = rng.standard_normal((50, 8))
    y = rng.integers(0, 5, 50)
    model = SoftmaxModel(8, 5, init="normal", rng=2, dtype=np.float64, l2=0.01)
    Z = X @ model.params["W"] + model.params["b"]
    expected = -log_softmax(Z, axis=1)[np.arange(50), y].mean() + 0.01 * np.sum(
        model.params["W"] ** 2
    )
    assert model.loss(X, y) == pytest.approx(expected, rel=1e-12)
    assert model.loss_and_grad(X, y)[0] == pytest.approx(expected, rel=1e-12)
    assert model.loss(X, y, penalty=False) == pytest.approx(expected - model.penalty(), rel=1e-12)


def test_sum_reduction_is_n_times_mean():
    X, y = _problem("softmax")
    mean = _make("softmax")
    summed = _make("softmax", reduction="sum")
    lm, gm = mean.loss_and_grad(X, y)
    ls, gs = summed.loss_and_grad(X, y)
    assert ls == pytest.approx(len(y) * lm)
    np.testing.assert_allclose(gs["W"], len(y) * gm["W"])


def test_mlp_without_hidden_layers_is_softmax_regression():
    X, y = _problem("softmax")
    soft = _make("softmax", l2=0.1)
    mlp = MLPModel(6, 4, hidden=(), dtype=np.float64, l2=0.1)
    mlp.params["W1"][...] = soft.params["W"]
    mlp.params["b1"][...] = soft.params["b"]
    l1, g1 = soft.loss_and_grad(X, y)
    l2, g2 = mlp.loss_and_grad(X, y)
    assert l1 == pytest.approx(l2)
    np.testing.assert_allclose(g1["W"], g2["W1"])


@pytest.mark.parametrize("kind", ["logistic", "softmax", "mlp"])
def test_float32_default_and_stable_for_huge_logits(kind):
    model = _make(kind, dtype=np.float32)
    assert all(v.dtype == np.float32 for v in model.params.values())
    X, y = _problem(kind)
    X = (X * 1e4).astype(np.float32)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        loss, grads = model.loss_and_grad(X, y)
        probs = model.forward(X)
    assert np.isfinite(loss)
    assert all(g.dtype == np.float32 and np.all(np.isfinite(g)) for g in grads.values())
    assert np.all((probs >= 0) & (probs <= 1))


@pytest.mark.parametrize("kind", ["logistic", "softmax", "mlp"])
def test_grads_have_the_keys_and_shapes_of_params(kind):
    model = _make(kind)
    X, y = _problem(kind)
    _, grads = model.loss_and_grad(X, y)
    assert list(grads) == list(model.params)
    assert all(grads[k].shape == v.shape for k, v in model.params.items())


def test_parameter_shapes_follow_the_convention():
    assert LogisticModel(784).params["W"].shape == (784, 1)
    assert LogisticModel(784).params["b"].shape == (1,)
    m = MLPModel(784, 10, hidden=(400, 100))
    assert [m.params[k].shape for k in ("W1", "b1", "W2", "b2", "W3", "b3")] == [
        (784, 400),
        (400,),
        (400, 100),
        (100,),
        (100, 10),
        (10,),
    ]
    assert LogisticModel(784, bias=False).params.keys() == {"W"}


def test_gradient_descent_fits_a_tiny_set_perfectly():
    X, y = _problem("mlp", n=16)
    model = MLPModel(6, 4, hidden=(20,), rng=0, dtype=np.float64)
    for _ in range(2000):
        _, grads = model.loss_and_grad(X, y)
        for k in model.params:
            model.params[k] -= 0.5 * grads[k]
    assert model.accuracy(X, y) == 1.0


def test_more_l2_gives_smaller_weights():
    X, y = _problem("softmax", n=60)
    norms = []
    for lam in (0.0, 0.01, 0.1):
        model = SoftmaxModel(6, 4, l2=lam, dtype=np.float64)
        for _ in range(500):
            _, grads = model.loss_and_grad(X, y)
            for k in model.params:
                model.params[k] -= 0.5 * grads[k]
        norms.append(model.weight_norm())
    assert norms[0] > norms[1] > norms[2]


@pytest.mark.parametrize("method", ["zeros", "normal", "fan_in", "uniform"])
def test_initialisation_is_seeded(method):
    a = MLPModel(50, 3, hidden=(40,), init=method, rng=7)
    b = MLPModel(50, 3, hidden=(40,), init=method, rng=7)
    c = MLPModel(50, 3, hidden=(40,), init=method, rng=8)
    np.testing.assert_array_equal(a.params["W1"], b.params["W1"])
    w = a.params["W1"]
    if method == "zeros":
        assert not w.any()
        return
    assert not np.array_equal(w, c.params["W1"])
    if method == "normal":
        assert 0.9 < w.std() < 1.1
    elif method == "fan_in":
        assert 0.9 / np.sqrt(50) < w.std() < 1.1 / np.sqrt(50)
    else:
        assert w.min() >= -1 and w.max() <= 1 and w.std() > 0.5


@pytest.mark.parametrize("kind", ["logistic", "softmax", "mlp"])
def test_build_model_round_trip(kind):
    model = _make(kind, l1=0.2, reduction="sum")
    clone = build_model(model.config(), model.params)
    X, y = _problem(kind)
    assert clone.config() == model.config()
    assert clone.loss(X, y) == model.loss(X, y)


def test_flat_view_round_trip():
    model = _make("mlp")
    theta = model.get_flat()
    assert theta.size == sum(v.size for v in model.params.values())
    model.set_flat(theta * 2)
    np.testing.assert_allclose(model.get_flat(), theta * 2)


@pytest.mark.parametrize(
    ("call", "error", "words"),
    [
        (lambda m: m.loss_and_grad(np.zeros((3, 5)), np.zeros(3, int)), ShapeError, "shape (n, 6)"),
        (lambda m: m.loss_and_grad(np.zeros((3, 6)), np.zeros(4, int)), ShapeError, "y must"),
        (lambda m: m.loss_and_grad(np.zeros((3, 6)), np.array([0, 1, 4])), ShapeError, "[0, 3]"),
        (lambda m: m.loss_and_grad(np.zeros((3, 6)), np.array([0, -1, 1])), ShapeError, "labels"),
        (lambda m: m.loss_and_grad(np.zeros((2, 6)), np.array([0.5, 1.0])), ShapeError, "integer"),
        (lambda m: m.forward(np.zeros(6)), ShapeError, "X must"),
    ],
)
def test_bad_input_raises_specific_errors(call, error, words):
    with pytest.raises(error, match=None) as info:
        call(_make("softmax"))
    assert words in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "make",
    [
        lambda: MLPModel(4, 2, activation="softplus"),
        lambda: SoftmaxModel(4, 2, l2=-1),
        lambda: SoftmaxModel(4, 2, reduction="median"),
        lambda: SoftmaxModel(4, 2, init="xavier"),
        lambda: SoftmaxModel(4, 2, dtype=np.int32),
        lambda: MLPModel(4, 2, hidden=(0,)),
        lambda: build_model({"kind": "svm"}),
    ],
)
def test_bad_hyperparameters_raise_config_error(make):
    with pytest.raises(ConfigError):
        make()


def test_build_model_rejects_mismatched_params():
    model = _make("softmax")
    with pytest.raises(CheckpointError, match="shape"):
        build_model(model.config(), {"W": np.zeros((5, 4)), "b": np.zeros(4)})
    with pytest.raises(CheckpointError, match="names"):
        build_model(model.config(), {"W": np.zeros((6, 4))})


# ---------------------------------------------------------------- fast kernels (issue 5)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_single_row_outer_product_equals_the_batched_gemm(dtype):
    from digitlab.models.functional import outer_sum

    rng = np.random.default_rng(0)
    a = rng.standard_normal((1, 50)).astype(dtype)
    delta = rng.standard_normal((1, 7)).astype(dtype)
    np.testing.assert_array_equal(outer_sum(a, delta), a.T @ delta)  # bit for bit
    A = rng.standard_normal((9, 50)).astype(dtype)
    D = rng.standard_normal((9, 7)).astype(dtype)
    np.testing.assert_array_equal(outer_sum(A, D), A.T @ D)


@pytest.mark.parametrize(("kind", "activation"), CASES)
@pytest.mark.parametrize("penalty", list(PENALTIES))
@pytest.mark.parametrize("n", [1, 5])
def test_factored_gradient_is_loss_and_grad_bit_for_bit(kind, activation, penalty, n):
    from digitlab.models.functional import LinearGrad

    model = _make(kind, activation, dtype=np.float32, regularize_bias=True, **PENALTIES[penalty])
    X, y = _problem(kind, n=n)
    X = X.astype(np.float32)
    loss, grads = model.loss_and_grad(X, y)
    loss_f, factored = model.loss_and_grad_factored(X, y)
    assert loss_f == loss
    assert list(factored) == list(grads)
    for k, g in factored.items():
        if penalty != "l1" and k.startswith("W"):
            assert isinstance(g, LinearGrad)
            g = g.dense(model.params[k])
        np.testing.assert_array_equal(g, grads[k])


def test_single_sample_gradient_equals_the_batch_of_one_reference():
    """The n = 1 path (outer product, no k=1 GEMM) gives the textbook backprop numbers."""
    model = _make("mlp", "tanh", l2=0.1)
    X, y = _problem("mlp", n=1)
    _, grads = model.loss_and_grad(X, y)
    W1, b1, W2, b2, W3, b3 = (model.params[k] for k in ("W1", "b1", "W2", "b2", "W3", "b3"))
    a1 = np.tanh(X @ W1 + b1)
    a2 = np.tanh(a1 @ W2 + b2)
    p = np.exp(log_softmax(a2 @ W3 + b3, axis=1))
    d3 = p - np.eye(4)[y]
    d2 = (d3 @ W3.T) * (1 - a2**2)
    d1 = (d2 @ W2.T) * (1 - a1**2)
    np.testing.assert_allclose(grads["W3"], a2.T @ d3 + 0.2 * W3, rtol=1e-12)
    np.testing.assert_allclose(grads["W1"], X.T @ d1 + 0.2 * W1, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(grads["b1"], d1[0], rtol=1e-12)


def test_rank1_update_matches_numpy_and_falls_back_for_strided_arrays():
    from digitlab.models.functional import rank1_update_

    rng = np.random.default_rng(1)
    for dtype, rtol in ((np.float32, 1e-6), (np.float64, 1e-14)):
        w = rng.standard_normal((30, 8)).astype(dtype)
        x = rng.standard_normal(30).astype(dtype)
        d = rng.standard_normal(8).astype(dtype)
        expected = w - 0.05 * np.outer(x, d)
        out = rank1_update_(w, x, d, -0.05)
        assert out is w
        np.testing.assert_allclose(w, expected, rtol=rtol, atol=rtol)
    big = rng.standard_normal((8, 60))
    view = big[:, ::2]  # not contiguous: the NumPy fallback, still in place
    expected = view + 2.0 * np.outer(np.ones(8), np.arange(30.0))
    rank1_update_(view, np.ones(8), np.arange(30.0), 2.0)
    np.testing.assert_allclose(big[:, ::2], expected)


def test_single_row_softmax_cross_entropy_equals_the_batched_rows():
    from digitlab.models.functional import softmax_cross_entropy_

    rng = np.random.default_rng(2)
    for dtype in (np.float32, np.float64):
        Z = (rng.standard_normal((6, 10)) * 30).astype(dtype)
        y = rng.integers(0, 10, 6)
        total, G = softmax_cross_entropy_(Z.copy(), y, 0.5)
        rows = [softmax_cross_entropy_(Z[i : i + 1].copy(), y[i : i + 1], 0.5) for i in range(6)]
        np.testing.assert_array_equal(np.concatenate([g for _, g in rows]), G)  # bit for bit
        for i, (loss, _) in enumerate(rows):  # each row's loss as the batched formula gives it
            single = softmax_cross_entropy_(np.vstack([Z[i], Z[i]]), y[[i, i]], 1.0)[0] / 2
            assert loss == single
        assert sum(loss for loss, _ in rows) == pytest.approx(total, rel=1e-12)


# ---------------------------------------------------------------- sample weights (issue 12)
def _weighted_models():
    return [
        LogisticModel(6, init="normal", rng=0, l2=0.01, dtype=np.float64),
        SoftmaxModel(6, 4, init="normal", rng=0, l2=0.01, dtype=np.float64),
        MLPModel(6, 4, hidden=(5,), rng=0, l2=0.01, dtype=np.float64),
    ]


@pytest.mark.parametrize("model", _weighted_models(), ids=["logistic", "softmax", "mlp"])
def test_integer_sample_weights_equal_repeated_rows(model):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((9, 6))
    y = rng.integers(0, model.n_classes, 9)
    w = np.array([0, 1, 2, 3, 1, 0, 4, 1, 2])
    loss_w, grads_w = model.loss_and_grad(X, y, sample_weight=w)
    loss_r, grads_r = model.loss_and_grad(X.repeat(w, axis=0), y.repeat(w))
    assert loss_w == pytest.approx(loss_r, rel=1e-13)
    for k in grads_r:
        np.testing.assert_allclose(grads_w[k], grads_r[k], rtol=1e-12, atol=1e-15)
    assert model.loss(X, y, sample_weight=w) == pytest.approx(loss_r, rel=1e-13)
    # the chunked pass and the factored pass agree with the one-block pass
    loss_c, grads_c = model.loss_and_grad(X, y, chunk_rows=4, sample_weight=w)
    assert loss_c == pytest.approx(loss_w, rel=1e-13)
    _, grads_f = model.loss_and_grad_factored(X, y, sample_weight=w)
    for k in grads_w:
        np.testing.assert_allclose(grads_c[k], grads_w[k], rtol=1e-12, atol=1e-15)
        g = grads_f[k].dense(model.params[k]) if hasattr(grads_f[k], "dense") else grads_f[k]
        np.testing.assert_allclose(g, grads_w[k], rtol=1e-12, atol=1e-15)
    # weight_total replaces sum(w) as the divisor of the weighted sum
    loss_t, grads_t = model.loss_and_grad(X, y, sample_weight=w, weight_total=2 * w.sum())
    data_w = loss_w - model.penalty()
    assert loss_t - model.penalty() == pytest.approx(data_w / 2, rel=1e-12)


def test_single_row_weight_scales_its_gradient():
    model = SoftmaxModel(6, 4, init="normal", rng=1, dtype=np.float64)
    X, y = np.random.default_rng(1).standard_normal((1, 6)), np.array([2])
    loss, grads = model.loss_and_grad(X, y)
    loss3, grads3 = model.loss_and_grad(X, y, sample_weight=[3.0], weight_total=1.0)
    assert loss3 == pytest.approx(3 * loss, rel=1e-14)
    np.testing.assert_allclose(grads3["W"], 3 * grads["W"], rtol=1e-14)


@pytest.mark.parametrize("bad", [[1.0, -1.0, 1.0], [1.0, np.nan, 1.0], [1.0, 1.0], ["a", "b", "c"]])
def test_bad_sample_weights_are_refused(bad):
    model = SoftmaxModel(2, 3)
    with pytest.raises(ShapeError, match="sample_weight"):
        model.loss_and_grad(np.ones((3, 2)), np.array([0, 1, 2]), sample_weight=np.array(bad))


@pytest.mark.parametrize("weighted", [False, True])
def test_row_blocks_side_by_side_equal_the_blocks_one_after_another(monkeypatch, weighted):
    """A large full batch's blocks on the fit's threads (each block's products on one BLAS
    thread, summed in the blocks' order): the numbers of the blocks run one by one on one
    BLAS thread, to the bit."""
    from threadpoolctl import threadpool_limits

    import digitlab.models.base as base
    import digitlab.threads as threads

    rng = np.random.default_rng(0)
    X = rng.random((700, 40))
    y = rng.integers(0, 30, 700)
    w = rng.random(700) if weighted else None
    model = SoftmaxModel(40, 30, init="normal", rng=0, l2=0.01, dtype=np.float64)
    monkeypatch.setattr(base, "PARALLEL_BLOCK_MACS", 1)
    with threadpool_limits(limits=1, user_api="blas"):
        loss_1, grads_1 = model.loss_and_grad(X, y, chunk_rows=64, sample_weight=w)
    calls = []
    real = threads.map_in_order
    monkeypatch.setattr(base, "map_in_order", lambda *a: calls.append(a[2]) or real(*a))
    monkeypatch.setattr(threads, "_fit_threads", 3)  # inside a fit that uses 3 threads
    loss_3, grads_3 = model.loss_and_grad(X, y, chunk_rows=64, sample_weight=w)
    assert calls == [3] and loss_3 == loss_1
    for k in grads_1:
        np.testing.assert_array_equal(grads_3[k], grads_1[k])
    # a model whose gradient is replaced (it may keep state) runs its blocks one by one
    model.loss_and_grad = lambda *a, **k: SoftmaxModel.loss_and_grad(model, *a, **k)
    assert not model.parallel_blocks
