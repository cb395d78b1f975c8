"""uint8-resident rows: ImageRows features equal the float32 path's, the Trainer and the runner
give the same numbers through either, and no float32 copy of a split is kept."""

from __future__ import annotations

import dataclasses
import gzip

import numpy as np
import pytest

from digitlab import MLPModel, SoftmaxModel
from digitlab.data import Augmenter, Preprocessor, load
from digitlab.data import idx as idx_module
from digitlab.data.rows import ImageRows
from digitlab.errors import ConfigError, ShapeError
from digitlab.runner import feature_augmenter, prepare_data, run
from digitlab.settings import Settings
from digitlab.train import BatchSource, Trainer, evaluate, is_source, predict


def _images(n=300, h=6, w=5, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, h, w), dtype=np.uint8)
    x[:, 0, 0] = 7  # a constant pixel (std 0 under "standardize")
    y = rng.integers(0, 3, size=n)
    return x, y


@pytest.mark.parametrize("method", ["scale01", "symmetric", "standardize", "none"])
@pytest.mark.parametrize("bias", [False, True])
def test_rows_equal_the_float32_features_exactly(method, bias):
    x, _ = _images()
    prep = Preprocessor(method, bias_column=bias).fit(x)
    full = prep.transform(x)
    rows = ImageRows(x, prep, chunk_rows=64)
    assert rows.shape == full.shape and len(rows) == 300 and isinstance(rows, BatchSource)
    idx = np.array([5, 0, 299, 5, 17])
    np.testing.assert_array_equal(rows.take(idx), full[idx])
    np.testing.assert_array_equal(rows.take(slice(10, 20)), full[10:20])
    np.testing.assert_array_equal(rows[3], full[3])
    np.testing.assert_array_equal(rows[full[:, 1] > 0], full[full[:, 1] > 0])
    np.testing.assert_array_equal(np.asarray(rows), full)
    starts = [s for s, _ in rows.chunks()]
    assert starts == list(range(0, 300, 64))
    np.testing.assert_array_equal(np.concatenate([c.copy() for _, c in rows.chunks()]), full)
    buf = np.full((8, full.shape[1]), np.nan, np.float32)
    got = rows.take(idx, out=buf)
    assert np.shares_memory(got, buf) and got.shape == (5, full.shape[1])
    np.testing.assert_array_equal(got, full[idx])
    wide = rows.astype(np.float64)
    assert wide.dtype == np.float64 and np.shares_memory(wide.pixels, rows.pixels)
    # float64 rows are computed in float64 from the pixels (as x / 255.0 is), not widened
    np.testing.assert_array_equal(wide.take(idx), prep.transform(x[idx], dtype=np.float64))
    np.testing.assert_allclose(wide.take(idx), full[idx], rtol=1e-6, atol=1e-6)
    if method == "scale01":
        np.testing.assert_array_equal(wide.take(idx)[:, :30], x[idx].reshape(5, -1) / 255.0)
    assert rows.astype(np.float32) is rows


def test_rows_keep_the_images_without_a_copy():
    x, _ = _images()
    rows = ImageRows(x, Preprocessor().fit(x))
    assert np.shares_memory(rows.pixels, x) and rows.nbytes == x.nbytes


def test_rows_refuse_bad_input():
    x, _ = _images()
    with pytest.raises(ConfigError, match="fitted"):
        ImageRows(x, Preprocessor())
    with pytest.raises(ShapeError, match="fitted on 30"):
        ImageRows(x[:, :3], Preprocessor().fit(x))
    with pytest.raises(ShapeError, match="integer"):
        ImageRows(x.astype(np.float32), Preprocessor().fit(x))
    with pytest.raises(ConfigError):
        ImageRows(x, Preprocessor().fit(x), dtype=np.int32)
    with pytest.raises(ShapeError, match="out must be float32"):
        Preprocessor().fit(x).transform(x, out=np.empty((300, 30), np.float64))


def _fit(X, y, **kw):
    model = SoftmaxModel(X.shape[1], 3, init="uniform", rng=1)
    trainer = Trainer(model, schedule=0.3, rng=5, **kw)
    trainer.fit((X, y), (X[:50], y[:50]), epochs=3)
    return trainer


@pytest.mark.parametrize(
    "kw",
    [
        {"batch_size": 32},
        {"batch_size": 32, "shuffle": False},
        {"batch_size": 1, "replacement": True},
        {"batch_size": "full"},
        {"batch_size": 50, "drop_last": True, "eval_every": 0.5},
    ],
)
def test_trainer_history_through_rows_equals_the_float32_path(kw):
    x, y = _images()
    prep = Preprocessor("standardize").fit(x)
    a = _fit(prep.transform(x), y, **kw)
    b = _fit(ImageRows(x, prep, chunk_rows=70), y, **kw)
    assert len(a.history.records) == len(b.history.records) > 0
    for ra, rb in zip(a.history.records, b.history.records, strict=True):
        assert ra.keys() == rb.keys()
        for key in ra:
            if key != "time":
                assert rb[key] == pytest.approx(ra[key], rel=1e-6, abs=1e-9), key
    for k in a.model.params:
        np.testing.assert_allclose(b.model.params[k], a.model.params[k], rtol=1e-6, atol=1e-7)


def test_trainer_rows_with_weights_augmentation_and_float64():
    x, y = _images(h=8, w=8)
    prep = Preprocessor("symmetric", bias_column=True).fit(x)
    w = np.random.default_rng(2).uniform(0.5, 2.0, size=len(y))
    aug = feature_augmenter(prep, (8, 8), Augmenter(1, 15.0))
    runs = []
    for X in (prep.transform(x), ImageRows(x, prep)):
        model = MLPModel(65, 3, [6], "tanh", dtype="float64", rng=3)
        trainer = Trainer(model, schedule=0.1, batch_size=40, batch_transform=aug, rng=4)
        trainer.fit((X, y), epochs=2, sample_weight=w)
        runs.append(trainer)
    a, b = runs
    for ra, rb in zip(a.history.records, b.history.records, strict=True):
        assert rb["train_loss"] == pytest.approx(ra["train_loss"], rel=1e-6)
        assert rb["train_acc"] == ra["train_acc"]
    assert all(p.dtype == np.float64 for p in b.model.params.values())


def test_evaluate_and_predict_chunk_a_source():
    x, y = _images()
    prep = Preprocessor().fit(x)
    model = SoftmaxModel(30, 3, init="uniform", rng=0)
    rows = ImageRows(x, prep, chunk_rows=7)
    full = prep.transform(x)
    assert is_source(rows) and not is_source(full)
    np.testing.assert_array_equal(predict(model, rows), model.predict(full))
    e_rows, e_full = evaluate(model, rows, y), evaluate(model, full, y)
    assert e_rows["acc"] == e_full["acc"]
    assert e_rows["loss"] == pytest.approx(e_full["loss"], rel=1e-6)


def test_trainer_refuses_rows_of_the_wrong_width():
    x, y = _images()
    rows = ImageRows(x, Preprocessor(bias_column=True).fit(x))
    with pytest.raises(ShapeError, match="needs"):
        Trainer(SoftmaxModel(30, 3)).fit((rows, y), epochs=1)


def test_prepare_data_keeps_uint8_images(monkeypatch):
    monkeypatch.delenv("DIGITLAB_DATA", raising=False)
    ds = load("mnist-5k")
    s = Settings.from_dict({"model": "softmax", "dataset": "mnist-5k", "epochs": 1})
    data = prepare_data(s, dataset=ds)
    for X, _ in (data.train, data.val, data.test):
        assert isinstance(X, ImageRows) and X.pixels.dtype == np.uint8
    assert np.shares_memory(data.train[0].pixels, ds.x_train)
    assert np.shares_memory(data.test[0].pixels, ds.x_test)


def test_run_through_rows_equals_run_through_float_arrays(tmp_path, monkeypatch):
    monkeypatch.delenv("DIGITLAB_DATA", raising=False)
    ds = load("mnist-5k")
    s = Settings.from_dict(
        {"model": "mlp", "hidden": [16], "dataset": "mnist-5k", "epochs": 2, "batch": 64,
         "preprocess": "standardize", "augment": True, "eval_every": 0.5}
    )  # fmt: skip
    rows = prepare_data(s, dataset=ds)

    def floats(pair):
        return None if pair is None else (np.asarray(pair[0]), pair[1])

    arrays = dataclasses.replace(
        rows, train=floats(rows.train), val=floats(rows.val), test=floats(rows.test)
    )
    a = run(s, out=tmp_path / "a", data=arrays)
    b = run(s, out=tmp_path / "b", data=rows)
    ha, hb = a.trainer.history.records, b.trainer.history.records
    assert len(ha) == len(hb) == 4
    for ra, rb in zip(ha, hb, strict=True):
        for key in ("train_loss", "val_loss", "test_loss", "weight_norm"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-6), key
        for key in ("train_acc", "val_acc", "test_acc"):
            assert rb[key] == ra[key], key
    assert b.metrics["confusion_test"] == a.metrics["confusion_test"]
    assert b.metrics["test_acc"] == a.metrics["test_acc"]


def test_gzip_idx_is_read_in_pieces(tmp_path, monkeypatch):
    x = np.random.default_rng(0).integers(0, 256, size=(50, 28, 28), dtype=np.uint8)
    path = tmp_path / "x.idx.gz"
    idx_module.write_idx(path, x)
    assert gzip.open(path).read()[:4] == b"\x00\x00\x08\x03"
    monkeypatch.setattr(idx_module, "_CHUNK", 1000)  # 40 pieces
    np.testing.assert_array_equal(idx_module.read_idx(path), x)


def test_data_record_checksum_is_that_of_the_bytes():
    import zlib

    from digitlab.runner import data_record

    ds = load("mnist-5k")
    crc = zlib.crc32(ds.y_train.tobytes())
    for a in (ds.x_train, ds.y_test, ds.x_test):
        crc = zlib.crc32(np.ascontiguousarray(a).tobytes(), crc)
    assert data_record(ds)["crc32"] == f"{crc:08x}"
    empty = dataclasses.replace(ds, x_test=ds.x_test[:0], y_test=ds.y_test[:0])
    assert data_record(empty)["n_test"] == 0
