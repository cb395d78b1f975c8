"""The velocity GEMM through NumPy's own BLAS (digitlab.blas) and momentum SGD's use of it."""

from __future__ import annotations

import numpy as np
import pytest

from digitlab import MLPModel, SoftmaxModel, blas
from digitlab.models.functional import LinearGrad
from digitlab.optim import SGD, Adam
from digitlab.train import Callback, Trainer
from digitlab.train.batching import FactoredBatches, gradient_method

needs_blas = pytest.mark.skipif(not blas.available(), reason="NumPy's BLAS not reachable")


@pytest.fixture
def no_numpy_blas(monkeypatch: pytest.MonkeyPatch):
    """The direct calls turned off (DIGITLAB_NUMPY_BLAS=0) for one test."""
    monkeypatch.setenv(blas.ENV, "0")
    blas._gemm_functions.cache_clear()
    yield
    monkeypatch.delenv(blas.ENV)
    blas._gemm_functions.cache_clear()


def _arrays(n: int, p: int, q: int, dtype: type, seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    return tuple(rng.standard_normal(s).astype(dtype) for s in ((n, p), (n, q), (p, q)))


def test_numpy_wheels_blas_is_found():
    """NumPy's wheels ship scipy-openblas: then the direct call must be reachable and compute
    ``beta C + A^T B`` (a broken discovery or signature would silently fall back and lose the
    fused step). Whether it is *used* is the probe's verdict: bit for bit NumPy's numbers, which
    OpenBLAS's SkylakeX kernels (AVX-512 hosts) do not give on small products."""
    config = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    if config.get("name") != "scipy-openblas":
        pytest.skip("NumPy built against another BLAS")
    fns = blas.bound_functions()
    assert fns is not None
    for dtype in (np.float32, np.float64):
        a, b, c = _arrays(128, 784, 400, dtype)
        expected = c * dtype(0.9) + a.T @ b
        blas._call(fns[np.dtype(dtype)], c, a, b, 0.9)
        np.testing.assert_allclose(c, expected, rtol=1e-4 if dtype == np.float32 else 1e-12,
                                   atol=1e-3 if dtype == np.float32 else 1e-10)  # fmt: skip
    assert blas.available() == blas._exact(fns)


@needs_blas
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [2, 128, blas.ONE_BLOCK_ROWS])
def test_gemm_into_equals_numpy_bit_for_bit(dtype, n):
    a, b, c = _arrays(n, 300, 100, dtype)
    expected = c * dtype(0.9)
    expected += a.T @ b
    assert blas.gemm_tn_(c, a, b, 0.9)
    np.testing.assert_array_equal(c, expected)


@needs_blas
def test_gemm_into_past_one_block_equals_to_rounding():
    a, b, c = _arrays(1000, 64, 80, np.float64)
    expected = 0.5 * c + a.T @ b
    assert blas.gemm_tn_(c, a, b, 0.5)
    np.testing.assert_allclose(c, expected, rtol=1e-12, atol=1e-12)


@needs_blas
@pytest.mark.parametrize(
    "case",
    ["fortran a", "strided b", "dtype mix", "byte order", "shape", "overlap", "read-only",
     "empty", "3-d"],  # fmt: skip
)
def test_unsuitable_arrays_are_left_to_numpy(case):
    a, b, c = _arrays(16, 6, 5, np.float32)
    if case == "fortran a":
        a = np.asfortranarray(a)
    elif case == "strided b":
        b = np.repeat(b, 2, axis=1)[:, ::2]
    elif case == "dtype mix":
        b = b.astype(np.float64)
    elif case == "byte order":
        a, b, c = (x.astype(">f4") for x in (a, b, c))
    elif case == "shape":
        c = c[:, :4].copy()
    elif case == "overlap":
        buf = np.zeros(16 * 6 + 6 * 6, np.float32)
        a, c = buf[: 16 * 6].reshape(16, 6), buf[16 * 6 - 30 : 16 * 6].reshape(6, 5)
    elif case == "read-only":
        c.flags.writeable = False
    elif case == "empty":
        a, b = a[:0], b[:0]
    elif case == "3-d":
        c = c[None]
    before = c.copy()
    assert not blas.gemm_tn_(c, a, b, 0.9)
    np.testing.assert_array_equal(c, before)


def test_turned_off_by_the_environment(no_numpy_blas):
    a, b, c = _arrays(8, 4, 3, np.float64)
    assert not blas.available()
    assert not blas.gemm_tn_(c, a, b, 0.9)
    assert not SGD(0.9).fuses_batch_gradients


def test_a_library_other_than_numpys_is_not_used(monkeypatch):
    """Only a scipy-openblas inside NumPy's installation is called (SciPy's own OpenBLAS is
    another library: interleaving the two makes each wait for the other's threads)."""
    import threadpoolctl

    fake = [{"internal_api": "openblas", "filepath": "/somewhere/scipy.libs/libscipy_openblas.so"}]
    monkeypatch.setattr(threadpoolctl, "threadpool_info", lambda: fake)
    assert blas._numpy_blas_path() is None


class _CountingSGD(SGD):
    """A rule changing the update: it must be given arrays, and its update called."""

    calls = 0

    def update(self, p, g, slots, lr):
        type(self).calls += 1
        assert isinstance(g, np.ndarray)
        super().update(p, g, slots, lr)


def test_a_kernel_rounding_otherwise_is_not_used(monkeypatch):
    """The probe compares with NumPy bit for bit: a BLAS whose small-matrix kernel rounds
    ``beta c + a^T b`` once (OpenBLAS's SkylakeX family) is turned down."""

    def fused_rounding(fn, c, a, b, beta):
        wide = np.float64 if c.dtype == np.float32 else np.longdouble
        exact = beta * c.astype(wide) + a.T.astype(wide) @ b.astype(wide)
        c[...] = exact.astype(c.dtype)

    fns = {np.dtype(np.float32): None, np.dtype(np.float64): None}
    monkeypatch.setattr(blas, "_call", fused_rounding)
    assert not blas._exact(fns)


@needs_blas
def test_only_momentum_sgd_of_its_own_rule_on_a_wide_layer_asks_for_factored_batches():
    model = MLPModel(20, 3, hidden=(80,), rng=0)
    assert isinstance(gradient_method(model, SGD(0.9), 32), FactoredBatches)
    assert gradient_method(model, SGD(0.0), 32) == model.loss_and_grad
    assert gradient_method(model, Adam(), 32) == model.loss_and_grad
    assert gradient_method(model, _CountingSGD(0.9), 32) == model.loss_and_grad
    big = blas.ONE_BLOCK_ROWS + 1
    assert gradient_method(model, SGD(0.9), big) == model.loss_and_grad
    narrow = MLPModel(20, 3, hidden=(64,), rng=0)  # nothing to fuse: arrays as before
    assert gradient_method(narrow, SGD(0.9), 32) == narrow.loss_and_grad
    softmax = SoftmaxModel(20, 10, rng=0)
    assert gradient_method(softmax, SGD(0.9), 32) == softmax.loss_and_grad
    patched = SGD(0.9)
    patched.update = lambda p, g, slots, lr: None  # a rule replaced on the instance
    assert not patched.fuses_batch_gradients
    assert gradient_method(model, patched, 1) == model.loss_and_grad  # not the rank-1 path
    assert gradient_method(model, SGD(0.9), 1) == model.loss_and_grad_factored
    assert not _CountingSGD.supports_rank1  # its update would be skipped by the rank-1 path


def _fit(model, optimizer, X, y, batch_size=32):
    Trainer(model, optimizer=optimizer, schedule=0.05, batch_size=batch_size, rng=1,
            eval_every=10**9).fit((X, y), epochs=2)  # fmt: skip
    return model.params


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(3)
    X = rng.random((300, 20)).astype(np.float32)
    y = (X[:, :3].argmax(axis=1)).astype(np.int64)
    return X, y


@needs_blas
@pytest.mark.parametrize(
    ("dtype", "l2", "inputs", "rows"),
    [
        (np.float32, 0.0, 20, 300),
        (np.float64, 0.0, 20, 300),
        (np.float32, 1e-3, 20, 300),  # decay: the arrays
        (np.float32, 0.0, 20, 289),  # 289 = 9 x 32 + 1: a last batch of one row
        (np.float32, 1e-3, 20, 289),
        (np.float64, 0.0, 1, 300),  # one input: NumPy's product is a matrix-vector one
    ],
)
def test_fused_training_equals_the_array_formulas_bit_for_bit(
    data, dtype, l2, inputs, rows, monkeypatch
):
    """An MLP with a wide hidden layer, momentum SGD: the same parameters whether the velocity
    is written by one GEMM or by NumPy's passes (and the GEMM path is taken)."""
    X, y = data
    X, y = X[:rows, :inputs], y[:rows]
    calls = []
    real = blas.gemm_tn_
    monkeypatch.setattr(blas, "gemm_tn_", lambda *a: calls.append(a[1].shape) or real(*a))

    def make():
        return MLPModel(inputs, 3, hidden=(80,), activation="tanh", l2=l2, dtype=dtype, rng=0)

    fused = _fit(make(), SGD(0.9), X, y)
    # W1 (inputs x 80) only: W2 is narrow; decay and one input: arrays
    assert bool(calls) == (l2 == 0.0 and inputs > 1)
    assert all(n > 1 for n, _ in calls)  # the one-row batch took loss_and_grad's arrays
    monkeypatch.setenv(blas.ENV, "0")
    blas._gemm_functions.cache_clear()
    try:
        plain = _fit(make(), SGD(0.9), X, y)
    finally:
        monkeypatch.delenv(blas.ENV)
        blas._gemm_functions.cache_clear()
    for k in fused:
        np.testing.assert_array_equal(fused[k], plain[k], err_msg=k)


@needs_blas
def test_a_subclass_changing_the_update_is_called_with_arrays(data):
    X, y = data
    _CountingSGD.calls = 0
    _fit(MLPModel(20, 3, hidden=(80,), rng=0), _CountingSGD(0.9), X, y)
    assert _CountingSGD.calls == 2 * 10 * 4  # 2 epochs x 10 batches x 4 parameters


def test_a_narrow_factored_gradient_takes_the_array_formula():
    """Softmax regression's 10 columns: the calibrated layout of the narrow product decides,
    not the GEMM; the step equals loss_and_grad's array step."""
    rng = np.random.default_rng(0)
    X = rng.random((64, 30)).astype(np.float32)
    y = rng.integers(0, 10, 64)
    a, b = SoftmaxModel(30, 10, init="normal", rng=0), SoftmaxModel(30, 10, init="normal", rng=0)
    opt_a, opt_b = SGD(0.9), SGD(0.9)
    for _ in range(3):
        opt_a.step(a.params, a.loss_and_grad_factored(X, y)[1], 0.1)
        opt_b.step(b.params, b.loss_and_grad(X, y)[1], 0.1)
    assert isinstance(a.loss_and_grad_factored(X, y)[1]["W"], LinearGrad)
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])


class _Grads(Callback):
    """Records each evaluated step's gradients and its gradient recomputed with arrays."""

    def __init__(self, model):
        self.model, self.seen = model, []

    def measure(self, trainer, step):
        check = self.model.copy()
        check.params.update({k: v.copy() for k, v in step.before.items()})
        self.seen.append((dict(step.grads), check.loss_and_grad(step.X, step.y)[1]))
        return {"scaled": float(np.abs(-0.1 * step.grads["W1"]).sum())}  # arrays: no TypeError


@pytest.mark.parametrize("batch_size", [1, 32])
def test_callbacks_measure_array_gradients(data, batch_size):
    """A measure sees arrays, equal to the model's array gradient at the step's weights, also
    where the update used them factored (rank-1 steps, the velocity GEMM)."""
    X, y = data
    model = MLPModel(20, 3, hidden=(80,), l2=0.0, rng=0)
    spy = _Grads(model)
    Trainer(model, optimizer=SGD(0.9), schedule=0.05, batch_size=batch_size, rng=1,
            eval_every=7, callbacks=[spy]).fit((X[:64], y[:64]), steps=14)  # fmt: skip
    assert len(spy.seen) == 2
    for grads, expected in spy.seen:
        for k, g in grads.items():
            assert isinstance(g, np.ndarray), k
            np.testing.assert_array_equal(g, expected[k], err_msg=k)
