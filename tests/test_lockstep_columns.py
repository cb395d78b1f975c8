"""Lock-step training skips the columns that are zero in every training row, exactly."""

import numpy as np
import pytest

from digitlab.models import LogisticModel, SoftmaxModel
from digitlab.models.linear import active_columns, stacked_loss_and_grad


def _data(n: int = 700, d: int = 40, zero: tuple[int, ...] = (0, 1, 7, 20, 39)):
    rng = np.random.default_rng(11)
    X = rng.random((n, d)).astype(np.float32)
    X[:, list(zero)] = 0.0
    return X, rng


def test_active_columns_finds_the_columns_used_by_some_row():
    X, _ = _data()
    X[650, 7] = 0.5  # one row is enough to make a column count
    got = active_columns(X)
    assert got is not None and got.dtype.kind == "i"
    assert sorted(set(range(40)) - set(got.tolist())) == [0, 1, 20, 39]
    # below the share worth a copy: None (1 zero column of 40 is 2.5%; at 5% it is not enough)
    X2, _ = _data(zero=(3,))
    assert active_columns(X2, min_share=0.05) is None
    assert active_columns(X2, min_share=0.02).tolist() == [c for c in range(40) if c != 3]


@pytest.mark.parametrize("kind", ["softmax", "logistic"])
@pytest.mark.parametrize("penalty", [{"l1": 0.01}, {"l2": 0.05}, {}])
def test_stacked_gradient_on_the_active_columns_equals_the_full_one(kind, penalty):
    X, rng = _data()
    if kind == "softmax":
        y = rng.integers(0, 5, X.shape[0])
        models = [
            SoftmaxModel(40, 5, init="normal", rng=s, reduction="sum", **penalty) for s in range(3)
        ]
    else:
        y = rng.integers(0, 2, X.shape[0])
        models = [
            LogisticModel(40, init="normal", rng=s, reduction="sum", **penalty) for s in range(3)
        ]
    cols = active_columns(X)
    full = stacked_loss_and_grad(models, X, y, chunk_rows=256)
    skip = stacked_loss_and_grad(
        models, np.ascontiguousarray(X[:, cols]), y, chunk_rows=256, columns=cols
    )
    for m, (lf, gf), (ls, gs) in zip(models, full, skip, strict=True):
        assert ls == pytest.approx(lf, rel=1e-6)
        np.testing.assert_allclose(gs["W"], gf["W"], rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(gs["b"], gf["b"], rtol=1e-5, atol=1e-4)
        zero = [c for c in range(40) if c not in set(cols.tolist())]
        # the skipped rows carry the penalty's gradient alone (zero without a penalty)
        own = m.add_penalty(0.0, {"W": np.zeros_like(m.params["W"]), "b": np.zeros_like(gs["b"])})
        np.testing.assert_array_equal(gs["W"][zero], own[1]["W"][zero])
        if penalty:
            assert np.abs(gs["W"][zero]).max() > 0


def test_stacked_gradient_refuses_features_that_do_not_match_the_columns():
    from digitlab.errors import ShapeError

    X, rng = _data()
    models = [SoftmaxModel(40, 3, init="normal", rng=0, reduction="sum")]
    cols = active_columns(X)
    with pytest.raises(ShapeError, match="shape"):
        stacked_loss_and_grad(models, X, rng.integers(0, 3, X.shape[0]), columns=cols)


def test_fit_together_skips_the_zero_columns_and_equals_fits_alone(monkeypatch):
    import digitlab.train.lockstep as lockstep
    from digitlab.train import Trainer, fit_together

    X, rng = _data(n=900)
    y = X[:, 2:5].argmax(1).astype(np.int64)
    widths = []
    real = lockstep.stacked_loss_and_grad
    monkeypatch.setattr(
        lockstep,
        "stacked_loss_and_grad",
        lambda ms, Xs, ys, **kw: widths.append(Xs.shape[1]) or real(ms, Xs, ys, **kw),
    )

    def trainer(seed: int) -> Trainer:
        # a smooth penalty and a small step: L1's sign flips amplify float rounding (lock-step
        # or not, the same draw then ends 1e-3 apart), which would hide what is tested here
        model = SoftmaxModel(40, 3, init="normal", rng=seed, reduction="sum", l2=0.01)
        return Trainer(model, schedule=0.001, batch_size="full", rng=seed, eval_every=5)

    group = [trainer(s) for s in range(3)]
    fit_together(group, (X, y), (X[:200], y[:200]), epochs=20)
    assert widths and set(widths) == {35}  # 5 of 40 columns skipped at every step
    for seed, t in enumerate(group):
        alone = trainer(seed)
        alone.fit((X, y), (X[:200], y[:200]), epochs=20)
        np.testing.assert_allclose(t.model.params["W"], alone.model.params["W"], atol=2e-5)
        assert t.history.records[-1]["val_acc"] == alone.history.records[-1]["val_acc"]


def test_flush_subnormal_zeroes_only_what_is_or_would_become_subnormal():
    from digitlab.models.functional import flush_subnormal_

    tiny = np.finfo(np.float32).tiny
    p = np.array([0.0, tiny / 4, tiny, 1e-35, 1e-30, 0.5, np.nan], dtype=np.float32)
    got = flush_subnormal_(p.copy())
    # subnormal, or subnormal once multiplied by a pixel of 1/255: zero; the rest kept
    np.testing.assert_array_equal(got[:6], [0.0, 0.0, 0.0, 0.0, np.float32(1e-30), 0.5])
    assert np.isnan(got[6])  # a diverged run still shows as one
    assert np.float32(np.float32(1e-30) / np.float32(255)) >= tiny
    # scaled by 1e-10 afterwards (a mean over many rows), 1e-30 would become too small
    got = flush_subnormal_(p.copy(), scale=1e-10)
    np.testing.assert_array_equal(got[:6], [0.0, 0.0, 0.0, 0.0, 0.0, 0.5])


def test_the_lock_step_softmax_gradient_has_no_subnormal_entries():
    rng = np.random.default_rng(3)
    X = rng.random((300, 20)).astype(np.float32) * 40  # logits far apart: exp underflows
    y = rng.integers(0, 4, 300)
    models = [SoftmaxModel(20, 4, init="normal", rng=s, reduction="sum") for s in range(2)]
    z = np.concatenate([X @ m.params["W"] + m.params["b"] for m in models], axis=1)
    z = np.ascontiguousarray(z.T.reshape(2, 4, 300))
    before = z.copy()
    models[0]._grouped_logit_loss_and_grad(z, y, 1.0)
    from digitlab.models.functional import FLUSH_MARGIN

    tiny = np.finfo(np.float32).tiny
    limit = tiny * FLUSH_MARGIN
    assert not ((z != 0) & (np.abs(z) < limit)).any()
    # and the values that are not flushed are each model's own p - onehot
    for r, m in enumerate(models):
        _, own = m._logit_loss_and_grad(before[r].T.copy(), y, 1.0)
        keep = np.abs(own) >= limit
        np.testing.assert_allclose(z[r].T[keep], own[keep], rtol=1e-6)
        assert ((np.abs(own) < tiny) & (own != 0)).any()  # the unflushed one had subnormals
