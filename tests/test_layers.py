"""The tricks of the trade as layers: dropout, batch normalisation, new activations and
initialisations, each checked against PyTorch (float64), by finite differences, and through
checkpoints and resume."""

from __future__ import annotations

import numpy as np
import pytest

from digitlab.checkpoint import load_checkpoint
from digitlab.errors import ConfigError, ShapeError
from digitlab.gradcheck import MASK_SEED, gradcheck
from digitlab.models import INITS, MLPModel, init_weight
from digitlab.models.functional import ACTIVATIONS, activate_, activation_backward_
from digitlab.optim import SGD
from digitlab.settings import Settings
from digitlab.train import Checkpoint, Trainer

torch = pytest.importorskip("torch")
F = torch.nn.functional
NEW_ACTIVATIONS = ["scaled_tanh", "leaky_relu", "elu", "gelu"]


def _torch_activation(z, name: str, slope: float = 0.01):
    return {
        "tanh": torch.tanh,
        "sigmoid": torch.sigmoid,
        "relu": F.relu,
        "scaled_tanh": lambda t: 1.7159 * torch.tanh(2.0 * t / 3.0),
        "leaky_relu": lambda t: F.leaky_relu(t, slope),
        "elu": F.elu,
        "gelu": F.gelu,  # the exact (erf) form
    }[name](z)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_and_its_derivative_equal_pytorch(name):
    z = np.random.default_rng(0).standard_normal((50, 7)) * 3
    zt = torch.tensor(z, requires_grad=True)
    at = _torch_activation(zt, name, 0.2)
    upstream = np.random.default_rng(1).standard_normal(z.shape)
    at.backward(torch.tensor(upstream))
    a = activate_(z.copy(), name, 0.2)
    np.testing.assert_allclose(a, at.detach().numpy(), rtol=1e-12, atol=1e-14)
    delta = activation_backward_(upstream.copy(), a, name, z, 0.2)
    np.testing.assert_allclose(delta, zt.grad.numpy(), rtol=1e-10, atol=1e-12)


def _torch_mlp(model: MLPModel, X, y, masks, running):
    """The same network in PyTorch: Linear -> BatchNorm1d (training; ``running`` holds its
    running statistics, updated in place) -> activation -> mask."""
    p = {k: torch.tensor(v, requires_grad=True) for k, v in model.params.items()}
    a = torch.tensor(X)
    for i in range(1, model.n_layers):
        z = a @ p[f"W{i}"] + p[f"b{i}"]
        if model.batch_norm:
            h = z.shape[1]
            fresh = (torch.zeros(h, dtype=torch.float64), torch.ones(h, dtype=torch.float64))
            rm, rv = running.setdefault(i, fresh)
            z = F.batch_norm(z, rm, rv, p[f"gamma{i}"], p[f"beta{i}"], training=True,
                             momentum=model.bn_momentum, eps=model.bn_eps)  # fmt: skip
        a = _torch_activation(z, model.activation, model.leaky_slope)
        if masks:
            a = a * torch.tensor(masks[i - 1])
    L = model.n_layers
    logits = a @ p[f"W{L}"] + p[f"b{L}"]
    loss = F.cross_entropy(logits, torch.tensor(y)) + model.l2 * sum(
        (p[k] ** 2).sum() for k in model.params if k.startswith("W")
    )
    loss.backward()
    return float(loss.detach()), {k: v.grad.numpy() for k, v in p.items()}


def _masks(model: MLPModel, n: int) -> list[np.ndarray]:
    """The masks a model draws from MASK_SEED, redrawn the documented way."""
    rng = np.random.default_rng(MASK_SEED)
    rates = zip(model.hidden, model.dropout, strict=True)
    return [(rng.random((n, h)) >= r) / (1 - r) for h, r in rates]


CASES = {
    "bn_relu": dict(batch_norm=True, activation="relu"),
    "bn_gelu_two_layers": dict(batch_norm=True, activation="gelu", hidden=(6, 5)),
    "dropout_tanh": dict(dropout=0.3, activation="tanh"),
    "dropout_per_layer_elu": dict(dropout=[0.5, 0.1], activation="elu", hidden=(6, 5)),
    "bn_dropout_leaky": dict(batch_norm=True, dropout=0.25, activation="leaky_relu"),
    "scaled_tanh": dict(activation="scaled_tanh"),
    "leaky_slope_plain": dict(activation="leaky_relu", leaky_slope=0.2),
    "elu_plain": dict(activation="elu", hidden=(6, 5)),
}


def _model(case: dict, **kw) -> MLPModel:
    args = {"hidden": (6,), **case, **kw}
    hidden, activation = args.pop("hidden"), args.pop("activation")
    return MLPModel(8, 3, hidden, activation, rng=0, dtype=np.float64, l2=0.01, **args)


def _data(n: int = 20):
    rng = np.random.default_rng(3)
    return rng.standard_normal((n, 8)), rng.integers(0, 3, n)


@pytest.mark.parametrize("case", sorted(CASES))
def test_loss_gradients_and_steps_equal_pytorch(case):
    X, y = _data()
    model = _model(CASES[case])
    opt, running = SGD(momentum=0.9), {}
    for _ in range(3):  # several momentum steps: the running statistics move too
        masks = _masks(model, len(y)) if model.uses_rng else []
        loss_t, grads_t = _torch_mlp(model, X, y, masks, running)
        loss, grads = model.loss_and_grad(X, y, rng=np.random.default_rng(MASK_SEED))
        assert loss == pytest.approx(loss_t, rel=1e-12)
        for k, g in grads.items():
            np.testing.assert_allclose(g, grads_t[k], rtol=1e-9, atol=1e-12, err_msg=k)
        opt.step(model.params, grads, 0.1)
    for i, (rm, rv) in running.items():
        np.testing.assert_allclose(model.buffers[f"running_mean{i}"], rm.numpy(), rtol=1e-12)
        np.testing.assert_allclose(model.buffers[f"running_var{i}"], rv.numpy(), rtol=1e-12)
    assert bool(running) == model.batch_norm


@pytest.mark.parametrize("case", sorted(CASES))
def test_gradcheck_passes_for_every_new_option(case):
    X, y = _data()
    assert gradcheck(_model(CASES[case]), X, y, eps=1e-5) < 1e-6


def test_evaluation_uses_running_statistics_and_no_dropout():
    X, y = _data(40)
    model = _model(dict(batch_norm=True, dropout=0.5, activation="relu"))
    for _ in range(5):
        model.loss_and_grad(X, y, rng=np.random.default_rng(1))
    whole = model.logits(X)
    np.testing.assert_allclose(model.logits(X[:1]), whole[:1], rtol=1e-12)  # row by itself
    assert model.loss(X, y) == model.loss(X, y)  # deterministic
    mean, var = model.buffers["running_mean1"], model.buffers["running_var1"]
    z = X @ model.params["W1"] + model.params["b1"]
    u = model.params["gamma1"] * (z - mean) / np.sqrt(var + 1e-5) + model.params["beta1"]
    expected = np.maximum(u, 0) @ model.params["W2"] + model.params["b2"]
    np.testing.assert_allclose(whole, expected, rtol=1e-10)


def test_batch_norm_refuses_a_training_batch_of_one_row():
    X, y = _data(1)
    with pytest.raises(ShapeError, match="at least 2 rows"):
        _model(dict(batch_norm=True, activation="relu")).loss_and_grad(X, y)


def test_dropout_keeps_the_expected_fraction_and_scale():
    model = _model(dict(dropout=0.3, activation="relu"), hidden=(500,))
    X, _ = _data(200)
    acts, layers = model._forward_train(X, np.random.default_rng(0), update=False)
    mask = layers[0].mask
    assert abs((mask > 0).mean() - 0.7) < 0.01
    np.testing.assert_allclose(mask[mask > 0], 1 / 0.7)


# ------------------------------------------------------------------ initialisations
def _torch_init(method: str, shape: tuple[int, int], slope: float) -> np.ndarray:
    w = torch.empty(shape[1], shape[0], dtype=torch.float64)  # PyTorch: (fan_out, fan_in)
    nonlin = "leaky_relu" if slope else "relu"
    {
        "glorot_uniform": lambda: torch.nn.init.xavier_uniform_(w),
        "glorot_normal": lambda: torch.nn.init.xavier_normal_(w),
        "he_uniform": lambda: torch.nn.init.kaiming_uniform_(w, a=slope, nonlinearity=nonlin),
        "he_normal": lambda: torch.nn.init.kaiming_normal_(w, a=slope, nonlinearity=nonlin),
        "lecun_normal": lambda: torch.nn.init.kaiming_normal_(w, nonlinearity="linear"),
    }[method]()
    return w.numpy().T


@pytest.mark.parametrize("slope", [0.0, 0.2])
@pytest.mark.parametrize(
    "method", ["glorot_uniform", "glorot_normal", "he_uniform", "he_normal", "lecun_normal"]
)
def test_initialisation_statistics_equal_pytorch(method, slope):
    torch.manual_seed(0)
    shape = (300, 200)
    ours = init_weight(shape, method, np.random.default_rng(0), np.float64, slope)
    ref = _torch_init(method, shape, slope)
    assert abs(ours.mean()) < 4 * ref.std() / np.sqrt(ours.size)
    assert ours.std() == pytest.approx(ref.std(), rel=0.01)
    if method.endswith("uniform"):
        assert ours.max() <= np.abs(ref).max() * 1.0001 and ours.max() > 0.99 * ref.max()


def test_every_init_is_registered_and_drawn():
    for method in INITS:
        w = init_weight((30, 20), method, np.random.default_rng(0), np.float32)
        assert w.shape == (30, 20) and w.dtype == np.float32


# ------------------------------------------------------------------ training and resume
def _trainer(callbacks=()) -> Trainer:
    model = MLPModel(8, 3, (6,), "relu", rng=0, dropout=0.3, batch_norm=True)
    return Trainer(model, optimizer=SGD(0.9), schedule=0.05, batch_size=7, eval_every=3,
                   callbacks=list(callbacks), rng=2)  # fmt: skip


def test_resume_from_every_periodic_checkpoint_is_bit_identical(tmp_path):
    X, y = _data(40)
    X = X.astype(np.float32)
    full = _trainer()
    full.fit((X, y), epochs=4)
    saver = Checkpoint(tmp_path / "ck.npz", every=4, keep_steps=True)
    _trainer([saver]).fit((X, y), epochs=4)
    steps = sorted(tmp_path.glob("ck-step*.npz"))
    assert len(steps) >= 5
    for path in steps:
        arrays, meta = load_checkpoint(path)
        resumed = _trainer()
        resumed.load_state_dict(arrays, meta)
        resumed.fit((X, y), epochs=4)
        for k, v in full.model.state().items():
            np.testing.assert_array_equal(resumed.model.state()[k], v, err_msg=f"{path} {k}")
        strip = [{**r, "time": 0} for r in full.history.records]
        assert [{**r, "time": 0} for r in resumed.history.records] == strip


def test_settings_refuse_layer_options_that_do_not_apply():
    with pytest.raises(ConfigError, match="MLP's hidden layers only"):
        Settings.from_dict({"model": "softmax", "dropout": [0.5]})
    with pytest.raises(ConfigError, match="one per hidden layer"):
        Settings.from_dict({"model": "mlp", "hidden": [4, 4, 4], "dropout": [0.1, 0.2]})
    with pytest.raises(ConfigError, match="dropout"):
        Settings.from_dict({"model": "mlp", "dropout": [1.0]})
    s = Settings.from_dict({"model": "mlp", "hidden": [4, 4], "dropout": [0.1, 0.2],
                            "batch_norm": True, "activation": "gelu"})  # fmt: skip
    model = MLPModel.from_settings(s, 8, 3, np.random.default_rng(0))
    assert model.dropout == (0.1, 0.2) and "gamma2" in model.params


def test_cli_trains_with_the_tricks_and_refuses_bad_values(tmp_path, capsys):
    from digitlab.cli import main

    base = ["train", "--model", "mlp", "--hidden", "16", "--dataset", "mnist-5k",
            "--n-train", "300", "--n-test", "100", "--epochs", "1", "--quiet",
            "--out", str(tmp_path)]  # fmt: skip
    assert main([*base, "--dropout", "0.2", "--batch-norm", "--activation", "elu",
                 "--init", "he_normal"]) == 0  # fmt: skip
    for bad in (["--dropout", "1.5"], ["--dropout", "x"], ["--leaky-slope", "-1"],
                ["--activation", "swish"], ["--init", "orthogonal"]):  # fmt: skip
        assert main([*base, *bad]) == 2
        assert capsys.readouterr().err.count("\n") == 1


@pytest.mark.parametrize(
    "options",
    [["--activation", "relu"], ["--activation", "leaky_relu", "--leaky-slope", "0.2"],
     ["--activation", "gelu", "--dropout", "0.3", "--batch-norm", "--init", "he_normal",
      "--hidden", "16,8"],
     ["--activation", "scaled_tanh", "--init", "lecun_normal"]],
)  # fmt: skip
def test_the_gradcheck_command_passes_for_the_new_options(options, capsys):
    """ReLU-like units: entries whose difference crosses a kink are left out, the rest agree."""
    from digitlab.cli import main

    argv = ["gradcheck", "--model", "mlp", "--dataset", "mnist-5k", "--n", "8", *options]
    assert main(argv) == 0, capsys.readouterr().out
    assert capsys.readouterr().out.strip().endswith("PASS")


@pytest.mark.parametrize(
    "batch", [["--batch", "sgd"], ["--batch", "1"], ["--batch", "199", "--holdout", "0"]]
)
def test_batch_norm_with_a_one_row_batch_is_refused_before_anything_is_written(
    batch, tmp_path, capsys
):
    from digitlab.cli import main

    argv = ["train", "--model", "mlp", "--hidden", "8", "--dataset", "mnist-5k", "--n-train",
            "200", "--n-test", "50", "--epochs", "1", "--quiet", "--batch-norm",
            "--out", str(tmp_path / "out"), *batch]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "at least 2 rows" in err
    assert not (tmp_path / "out").exists()
    assert main([*argv, "--drop-last"]) == (2 if batch[1] in ("sgd", "1") else 0)
