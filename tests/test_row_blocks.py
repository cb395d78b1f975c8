"""Full-batch products of linear models skip the zero entries of the features, block by
block of rows (RowBlocks), exactly up to float rounding: lock-step groups and single fits."""

import numpy as np
import pytest

from digitlab.errors import ShapeError
from digitlab.models import LogisticModel, SoftmaxModel
from digitlab.models.linear import row_blocks, row_order, stacked_loss_and_grad


def _images(n: int = 700, side: int = 16, bias: bool = True, seed: int = 11):
    """Sparse square images like centred digits: each row inks a box of its own (width 1-9,
    height 4-10 pixels) about the middle, and the border is never inked."""
    rng = np.random.default_rng(seed)
    imgs = np.zeros((n, side, side), dtype=np.float32)
    for i in range(n):  # a test fixture, not a hot path
        w, h = rng.integers(1, 10), rng.integers(4, 11)
        left = int(np.clip((side - w) // 2 + rng.integers(-2, 3), 1, side - 1 - w))
        top = int(np.clip((side - h) // 2 + rng.integers(-2, 3), 1, side - 1 - h))
        imgs[i, top : top + h, left : left + w] = rng.random((h, w)) + 0.1
    X = imgs.reshape(n, -1)
    if bias:
        X = np.hstack([np.full((n, 1), 1 / 255, np.float32), X])
    return X, rng


def _restore(blocks) -> np.ndarray:
    out = np.zeros(blocks.shape, blocks.dtype)
    start = 0
    for cols, Xb in zip(blocks.columns, blocks.blocks, strict=True):
        rows = blocks.order[start : start + Xb.shape[0]]
        out[np.ix_(rows, cols)] = Xb
        start += Xb.shape[0]
    return out


@pytest.mark.parametrize("bias", [True, False])
def test_row_blocks_keep_every_nonzero_entry_and_only_the_columns_their_rows_use(bias):
    X, _ = _images(bias=bias)
    blocks = row_blocks(X, rows=64)
    assert blocks is not None
    assert sorted(blocks.order.tolist()) == list(range(X.shape[0]))
    np.testing.assert_array_equal(_restore(blocks), X)  # nothing lost, nothing invented
    start = 0
    for cols, Xb in zip(blocks.columns, blocks.blocks, strict=True):
        used = np.flatnonzero((X[blocks.order[start : start + Xb.shape[0]]] != 0).any(0))
        np.testing.assert_array_equal(cols, used)
        assert Xb.flags.c_contiguous
        start += Xb.shape[0]
    assert [b.shape[0] for b in blocks.blocks] == [64] * 10 + [60]


@pytest.mark.parametrize("bias", [True, False])
def test_the_row_order_groups_images_by_their_ink_and_keeps_fewer_columns(bias):
    X, _ = _images(n=2000, bias=bias)
    stored = np.mean([(X[s : s + 64] != 0).any(0).sum() for s in range(0, 2000, 64)])
    blocks = row_blocks(X, rows=64, max_share=1.0)
    kept = np.mean([c.size for c in blocks.columns])
    assert kept < 0.6 * stored  # boxes sorted by width, left and top edge
    # features that are not square images: rows sorted by their first and last column
    flat = X[:, :-3]
    order = row_order(flat != 0)
    firsts = (flat[order] != 0).argmax(1)
    lasts = flat.shape[1] - 1 - (flat[order][:, ::-1] != 0).argmax(1)
    assert (np.diff(lasts) >= 0).all()
    assert all((np.diff(firsts[lasts == v]) >= 0).all() for v in np.unique(lasts))


def test_row_blocks_decline_dense_features_and_refuse_bad_input():
    from digitlab.errors import ConfigError

    rng = np.random.default_rng(0)
    assert row_blocks(rng.random((300, 20)).astype(np.float32)) is None
    with pytest.raises(ShapeError, match="2-D"):
        row_blocks(np.zeros((0, 5), np.float32))
    with pytest.raises(ConfigError, match="rows per block"):
        row_blocks(np.zeros((4, 5), np.float32), rows=0)


@pytest.mark.parametrize("kind", ["softmax", "logistic"])
@pytest.mark.parametrize("penalty", [{"l1": 0.01}, {"l2": 0.05}, {}])
@pytest.mark.parametrize("bias", [True, False])
def test_the_gradient_from_row_blocks_equals_the_full_one(kind, penalty, bias):
    X, rng = _images()
    d = X.shape[1]
    if kind == "softmax":
        y = rng.integers(0, 5, X.shape[0])
        models = [
            SoftmaxModel(d, 5, init="normal", rng=s, reduction="sum", bias=bias, **penalty)
            for s in range(3)
        ]
    else:
        y = rng.integers(0, 2, X.shape[0])
        models = [
            LogisticModel(d, init="normal", rng=s, reduction="mean", bias=bias, **penalty)
            for s in range(3)
        ]
    blocks = row_blocks(X, rows=128, max_share=1.0)
    got = stacked_loss_and_grad(models, blocks, y)
    for m, (loss, grads) in zip(models, got, strict=True):
        own_loss, own = m.loss_and_grad(X, y)
        assert loss == pytest.approx(own_loss, rel=1e-5)
        assert grads.keys() == own.keys()
        for k in own:
            np.testing.assert_allclose(grads[k], own[k], rtol=1e-4, atol=1e-4)
        unused = ~(X != 0).any(0)
        if unused.any() and not penalty:  # never inked anywhere: no data gradient at all
            assert not grads["W"][unused].any()


def test_row_blocks_that_do_not_fit_the_models_are_refused():
    X, rng = _images()
    blocks = row_blocks(X, max_share=1.0)
    y = rng.integers(0, 3, X.shape[0])
    with pytest.raises(ShapeError, match="row blocks"):
        stacked_loss_and_grad([SoftmaxModel(X.shape[1] - 1, 3)], blocks, y)
    with pytest.raises(ShapeError, match="row blocks"):
        stacked_loss_and_grad([SoftmaxModel(X.shape[1], 3, dtype="float64")], blocks, y)


def _trainer(seed: int, d: int):
    from digitlab.train import Trainer

    # a smooth penalty and a small step: L1's sign flips amplify float rounding (lock-step
    # or not, the same draw then ends 1e-3 apart), which would hide what is tested here
    model = SoftmaxModel(d, 3, init="normal", rng=seed, reduction="sum", l2=0.01)
    return Trainer(model, schedule=0.001, batch_size="full", rng=seed, eval_every=5)


def _labels(X):
    return X[:, 30:33].argmax(1).astype(np.int64)


def _spy_on_lock_step_products(monkeypatch) -> list:
    """The row arguments of every lock-step gradient, in order."""
    import digitlab.train.lockstep as lockstep

    seen: list = []
    real = lockstep.stacked_loss_and_grad
    monkeypatch.setattr(
        lockstep,
        "stacked_loss_and_grad",
        lambda ms, Xs, ys, **kw: seen.append(Xs) or real(ms, Xs, ys, **kw),
    )
    return seen


def test_fit_together_skips_the_zero_entries_and_equals_fits_alone(monkeypatch):
    from digitlab.models.linear import RowBlocks
    from digitlab.train import fit_together

    X, _ = _images(n=3000)
    y = _labels(X)
    seen = _spy_on_lock_step_products(monkeypatch)
    group = [_trainer(s, X.shape[1]) for s in range(3)]
    fit_together(group, (X, y), (X[:200], y[:200]), epochs=40)
    assert len(seen) == 40 and all(isinstance(b, RowBlocks) for b in seen)
    assert seen[0].kept_share < 0.8 * (X != 0).any(0).mean()
    for seed, t in enumerate(group):
        alone = _trainer(seed, X.shape[1])
        alone.fit((X, y), (X[:200], y[:200]), epochs=40)
        np.testing.assert_allclose(t.model.params["W"], alone.model.params["W"], atol=2e-5)
        assert t.history.records[-1]["val_acc"] == alone.history.records[-1]["val_acc"]


def test_a_single_full_batch_fit_uses_row_blocks_and_equals_the_plain_path(monkeypatch):
    import digitlab.train.batching as batching

    X, _ = _images(n=3000)
    y = _labels(X)
    blocked = _trainer(0, X.shape[1])
    blocked.fit((X, y), (X[:200], y[:200]), epochs=40)
    assert isinstance(blocked._grad_fn, batching.BlockedFullBatch)
    assert blocked._grad_fn.blocks.kept_share < 0.8 * (X != 0).any(0).mean()
    # the same fit with the layout declined takes the model's own gradient
    monkeypatch.setattr(
        batching.BlockedFullBatch, "__call__", lambda self, X, y: self.fallback(X, y)
    )
    plain = _trainer(0, X.shape[1])
    plain.fit((X, y), (X[:200], y[:200]), epochs=40)
    np.testing.assert_allclose(blocked.model.params["W"], plain.model.params["W"], atol=2e-5)
    assert blocked.history.records[-1]["val_acc"] == plain.history.records[-1]["val_acc"]
    assert blocked.history.records[-1]["val_loss"] == pytest.approx(
        plain.history.records[-1]["val_loss"], rel=1e-5
    )


def test_full_batch_fits_in_pieces_or_resumed_equal_one_fit_bit_for_bit(tmp_path):
    from digitlab.checkpoint import load_checkpoint
    from digitlab.train import Checkpoint

    X, _ = _images(n=800)
    y = _labels(X)
    val = (X[:200], y[:200])
    one = _trainer(0, X.shape[1])
    one.fit((X, y), val, steps=45)
    assert one._grad_fn.blocks  # laid out, however many steps a fit has
    parts = _trainer(0, X.shape[1])
    for steps in (3, 40, 45):  # a 3-step fit, then continued
        parts.continue_fit((X, y), val, steps=steps - parts.step)
    np.testing.assert_array_equal(parts.model.params["W"], one.model.params["W"])
    first = _trainer(0, X.shape[1])
    first.callbacks.append(Checkpoint(tmp_path / "ck.npz", 42, True))
    first.fit((X, y), val, steps=43)
    resumed = _trainer(5, X.shape[1])
    resumed.load_state_dict(*load_checkpoint(tmp_path / "ck-step42.npz"))
    resumed.fit((X, y), val, steps=45)  # 3 steps left
    np.testing.assert_array_equal(resumed.model.params["W"], one.model.params["W"])
    strip = [{**r, "time": 0} for r in one.history.records]
    assert [{**r, "time": 0} for r in resumed.history.records] == strip
    assert [{**r, "time": 0} for r in parts.history.records] == strip


def test_mini_batches_weights_and_transforms_keep_the_plain_gradient():
    import digitlab.train.batching as batching
    from digitlab.train import Trainer

    X, _ = _images(n=300)
    y = _labels(X)
    for kw in (
        {"batch_size": 64},
        {"batch_size": "full", "batch_transform": lambda Xb, rng: Xb},
    ):
        t = Trainer(SoftmaxModel(X.shape[1], 3), schedule=0.01, rng=0, **kw)
        t.fit((X, y), epochs=1)
        assert not isinstance(t._grad_fn, batching.BlockedFullBatch)
    t = Trainer(SoftmaxModel(X.shape[1], 3), schedule=0.01, batch_size="full", rng=0)
    t.fit((X, y), epochs=1, sample_weight=np.ones(300))
    assert not isinstance(t._grad_fn, batching.BlockedFullBatch)


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


@pytest.mark.parametrize("kind", ["softmax", "logistic"])
def test_an_evaluation_over_row_blocks_equals_the_plain_one(kind):
    from digitlab.train.evaluation import evaluate, evaluate_together

    X, rng = _images(n=900)
    if kind == "softmax":
        y = rng.integers(0, 4, X.shape[0])
        models = [SoftmaxModel(X.shape[1], 4, init="normal", rng=s, l2=0.1) for s in range(3)]
    else:
        y = rng.integers(0, 2, X.shape[0])
        models = [LogisticModel(X.shape[1], init="normal", rng=s, l1=0.1) for s in range(3)]
    got = evaluate_together(models, row_blocks(X, rows=128, max_share=1.0), y)
    for m, res in zip(models, got, strict=True):
        own = evaluate(m, X, y)
        assert res["acc"] == own["acc"]
        assert res["loss"] == pytest.approx(own["loss"], rel=1e-5)
        assert res["objective"] == pytest.approx(own["objective"], rel=1e-5)


def test_fits_evaluate_their_training_rows_from_the_blocks(monkeypatch):
    import digitlab.train.evaluation as evaluation
    import digitlab.train.trainer as trainer_module
    from digitlab.models.linear import RowBlocks
    from digitlab.train import Trainer, fit_together

    X, _ = _images(n=2000)
    y = _labels(X)
    seen = []
    real = evaluation.evaluate_together

    def spy(models, rows, ys):
        seen.append((len(models), isinstance(rows, RowBlocks)))
        return real(models, rows, ys)

    monkeypatch.setattr(trainer_module, "evaluate_together", spy)

    def make(seed):
        model = SoftmaxModel(X.shape[1], 3, init="normal", rng=seed, l2=0.01)
        return Trainer(model, schedule=0.5, batch_size="full", eval_every=10)

    alone = make(0)
    alone.fit((X, y), (X[:300], y[:300]), epochs=40)
    assert seen == [(1, True)] * 4  # the training split of each evaluation; val is plain
    import digitlab.train.lockstep as lockstep

    monkeypatch.setattr(lockstep, "evaluate_together", spy)
    seen.clear()
    group = [make(s) for s in range(2)]
    fit_together(group, (X, y), (X[:300], y[:300]), epochs=40)
    assert seen == [(2, True), (2, False)] * 4
    plain = make(0)
    monkeypatch.setattr(Trainer, "_evaluate", lambda self, name, Xs, ys: evaluation.evaluate(
        self.model, Xs, ys))
    plain.fit((X, y), (X[:300], y[:300]), epochs=40)
    for a, b in zip(alone.history.records, plain.history.records, strict=True):
        assert a["train_acc"] == pytest.approx(b["train_acc"], abs=1e-3)
        assert a["val_acc"] == pytest.approx(b["val_acc"], abs=1e-3)
    assert [r["train_acc"] for r in group[0].history.records] == pytest.approx(
        [r["train_acc"] for r in alone.history.records], abs=1e-3
    )


def test_a_wide_float64_model_trains_from_row_blocks_too():
    """1,000-output models are not stacked (arithmetic-bound), but a single full-batch fit of
    one still skips the zero entries, with the same result."""
    import digitlab.train.batching as batching
    from digitlab.train import Trainer

    X, _ = _images(n=1500)
    X = X.astype(np.float64)
    y = _labels(X)

    def fit(blocked: bool):
        model = SoftmaxModel(X.shape[1], 300, init="normal", rng=0, dtype="float64", l2=0.01)
        t = Trainer(model, schedule=0.5, batch_size="full", eval_every=20)
        if not blocked:
            t._blocked_full_batch = lambda X: False  # the model's own chunked gradient
        t.fit((X, y), (X[:300], y[:300]), epochs=40)
        return t

    wide = fit(True)
    assert isinstance(wide._grad_fn, batching.BlockedFullBatch) and wide._grad_fn.blocks
    plain = fit(False)
    np.testing.assert_allclose(wide.model.params["W"], plain.model.params["W"], atol=1e-10)
    assert wide.history.records[-1]["train_acc"] == plain.history.records[-1]["train_acc"]


def test_models_with_their_own_arithmetic_are_trained_by_their_own_methods():
    """A subclass that changes the loss (here: half of it) must not be trained by the stacked
    products or the row blocks, which compute the library classes' arithmetic."""
    import digitlab.train.batching as batching
    from digitlab.models.linear import can_stack
    from digitlab.train import Trainer

    class Half(SoftmaxModel):
        def _logit_loss_and_grad(self, z, y, scale, weight=None):
            loss, g = super()._logit_loss_and_grad(z, y, scale, weight)
            return loss / 2, g / 2

    X, _ = _images(n=600)
    y = _labels(X)
    model = Half(X.shape[1], 3, init="normal", rng=0)
    assert not model.own_arithmetic and model.own_gradient
    assert not can_stack([model, Half(X.shape[1], 3)])
    t = Trainer(model, schedule=0.1, batch_size="full")
    t.fit((X, y), steps=2)
    assert not isinstance(t._grad_fn, batching.BlockedFullBatch)
    loss, _ = t.gradient(X, y)
    assert loss == pytest.approx(model.loss_and_grad(X, y)[0])
    replaced = SoftmaxModel(X.shape[1], 3)
    replaced.logits = lambda X: np.zeros((X.shape[0], 3), np.float32)  # on the instance
    assert not replaced.own_arithmetic and SoftmaxModel(X.shape[1], 3).own_arithmetic


def test_release_data_drops_the_row_blocks():
    from digitlab.train import Trainer

    X, _ = _images(n=600)
    t = Trainer(SoftmaxModel(X.shape[1], 3), schedule=0.1, batch_size="full")
    t.fit((X, _labels(X)), steps=3)
    assert t._grad_fn.blocks
    t.release_data()
    assert getattr(t._grad_fn, "blocks", None) is None and getattr(t._grad_fn, "X", None) is None
