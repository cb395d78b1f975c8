"""Checkpoint loading against crafted files: metadata checked first, members checked from
their headers against the metadata before any data is read, unknown members never read."""

from __future__ import annotations

import copy
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

import hostile_files as hf
from digitlab.checkpoint import FORMAT, FORMAT_VERSION, load_checkpoint, save_checkpoint
from digitlab.errors import CheckpointError
from digitlab.fileio import atomic_write_bytes, new_file_mode
from test_fuzz_readers import REAL_ARRAYS, REAL_META, TRAINER_META, _resume_with


def _write(path, arrays=None, meta=None, extra_members=()):
    arrays = REAL_ARRAYS if arrays is None else arrays
    meta = REAL_META if meta is None else meta
    return hf.write_zip(path, hf.checkpoint_members(meta, arrays) + list(extra_members))


def _meta_with(change):
    meta = copy.deepcopy(REAL_META)
    change(meta)
    return meta


def test_file_written_by_save_checkpoint_round_trips(tmp_path):
    path = save_checkpoint(tmp_path / "ck.npz", REAL_ARRAYS, TRAINER_META)
    arrays, meta = load_checkpoint(path)
    assert meta == REAL_META
    assert set(arrays) == set(REAL_ARRAYS)
    for k, v in REAL_ARRAYS.items():
        np.testing.assert_array_equal(arrays[k], v)
        assert arrays[k].dtype == v.dtype and arrays[k].flags.writeable
    # the format is unchanged: numpy's own reader sees the same members
    with np.load(path, allow_pickle=False) as npz:
        assert set(npz.files) == {*REAL_ARRAYS, "meta.json"}


def test_member_that_is_not_expected_is_never_read(tmp_path):
    # a member whose compressed data is garbage: reading it would fail
    junk = ("notes/readme.npy", b"\x00garbage-not-deflate", 8, 0, 10**9)
    arrays, _ = load_checkpoint(_write(tmp_path / "ck.npz", extra_members=[junk]))
    assert set(arrays) == set(REAL_ARRAYS)


BAD_META = {
    "list": (lambda m: None, "must be a JSON object"),
    "no_model": (lambda m: m.pop("model"), "model is missing"),
    "model_str": (lambda m: m.__setitem__("model", "mlp"), "model has the wrong type"),
    "kind_unknown": (lambda m: m["model"].__setitem__("kind", "svm"), "unknown model kind"),
    "hidden_str": (lambda m: m["model"].__setitem__("hidden", "5"), "model.hidden"),
    "hidden_zero": (lambda m: m["model"].__setitem__("hidden", [0]), "hidden must be a list"),
    "features_float": (lambda m: m["model"].__setitem__("n_features", 4.0), "n_features"),
    "step_str": (lambda m: m["progress"].__setitem__("step", "3"), "progress.step"),
    "step_negative": (lambda m: m["progress"].__setitem__("step", -2), "negative"),
    "step_bool": (lambda m: m["progress"].__setitem__("step", True), "progress.step"),
    "no_progress": (lambda m: m.pop("progress"), "progress is missing"),
    "elapsed_nan": (lambda m: m["progress"].__setitem__("elapsed", float("nan")), "elapsed"),
    "rng_bad": (lambda m: m["rng"].__setitem__("bit_generator", "MT19937x"), "rng"),
    "rng_list": (lambda m: m.__setitem__("rng", [1, 2]), "rng has the wrong type"),
    "callbacks_dict": (lambda m: m.__setitem__("callbacks", {}), "callbacks has the wrong"),
    "callback_str": (lambda m: m["callbacks"].__setitem__(0, "History"), "callbacks[0]"),
    "early_no_wait": (lambda m: m["callbacks"][1]["state"].pop("wait"), "state.wait is missing"),
    "early_best_str": (lambda m: m["callbacks"][1]["state"].__setitem__("best", "x"), "best"),
    "records_str": (
        lambda m: m["callbacks"][0]["state"].__setitem__("records", ["x"]),
        "history records",
    ),
    "extra_list": (lambda m: m.__setitem__("extra", []), "extra must be an object"),
    "image_shape": (lambda m: m["extra"].__setitem__("image_shape", [28]), "image_shape"),
    "version_new": (lambda m: m.__setitem__("format_version", FORMAT_VERSION + 1), "newer"),
    "version_str": (lambda m: m.__setitem__("format_version", "1"), "format_version"),
    "no_format": (lambda m: m.pop("format"), "not a digitlab checkpoint"),
}


@pytest.mark.parametrize("case", sorted(BAD_META))
def test_malformed_metadata_is_one_line(tmp_path, case):
    change, fragment = BAD_META[case]
    meta = [REAL_META] if case == "list" else _meta_with(change)
    path = _write(tmp_path / "ck.npz", meta=meta)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert fragment in message and str(path) in message and "\n" not in message


def _arrays_with(**changes):
    arrays = {k: v.copy() for k, v in REAL_ARRAYS.items()}
    for k, v in changes.items():
        key = k.replace("__", "/")
        if v is None:
            arrays.pop(key)
        else:
            arrays[key] = v
    return arrays


BAD_ARRAYS = {
    "param_shape": (_arrays_with(model__W1=np.zeros((5, 4), np.float32)), "parameter W1"),
    "param_missing": (_arrays_with(model__b2=None), "do not match"),
    "param_extra": (_arrays_with(model__W9=np.zeros(3, np.float32)), "do not match"),
    "param_int": (_arrays_with(model__b1=np.zeros(5, np.int32)), "floating-point"),
    "velocity_shape": (_arrays_with(optim__W1=np.zeros((4, 6), np.float32)), "optim/W1"),
    "velocity_unknown": (_arrays_with(optim__Q=np.zeros((7, 7), np.float32)), "no parameter"),
    "best_shape": (_arrays_with(cb1__W2=np.zeros((3, 5), np.float32)), "callback state"),
    "order_2d": (_arrays_with(trainer__order=np.zeros((2, 2), np.int64)), "trainer/order"),
    "order_float": (_arrays_with(trainer__order=np.zeros(40)), "trainer/order"),
    "order_repeats": (_arrays_with(trainer__order=np.zeros(40, np.int64)), "permutation"),
    "order_negative": (_arrays_with(trainer__order=-np.ones(40, np.int64)), "negative"),
    "order_missing": (_arrays_with(trainer__order=None), "shuffle order"),
    "complex": (_arrays_with(model__b1=np.zeros(5, np.complex64)), "numbers only"),
    "strings": (_arrays_with(extra__names=np.array(["a", "b"])), "numbers only"),
}


@pytest.mark.parametrize("case", sorted(BAD_ARRAYS))
def test_members_that_disagree_with_the_metadata(tmp_path, case):
    arrays, fragment = BAD_ARRAYS[case]
    assert ("trainer/order" in REAL_ARRAYS) == REAL_META["progress"]["has_order"]
    path = _write(tmp_path / "ck.npz", arrays=arrays)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_member_whose_header_lies_about_its_size(tmp_path):
    name, data, method, crc, size = hf.stored("model/b1.npy", hf.npy_header("<f4", (5,)) + bytes(8))
    others = [m for m in hf.checkpoint_members(REAL_META, REAL_ARRAYS) if m[0] != name]
    path = hf.write_zip(tmp_path / "ck.npz", [*others, (name, data, method, crc, size)])
    with pytest.raises(CheckpointError, match="declares shape .5,. .20 bytes. but stores 8"):
        load_checkpoint(path)


def test_oversized_metadata_and_too_many_members(tmp_path):
    big = hf.zero_array_member("meta.json.npy", "uint8", (20 << 20,), crc=False)
    members = [m for m in hf.checkpoint_members(REAL_META, REAL_ARRAYS) if m[0] != "meta.json.npy"]
    with pytest.raises(CheckpointError, match="meta.json must be at most"):
        load_checkpoint(hf.write_zip(tmp_path / "a.npz", [*members, big]))
    many = [hf.stored(f"x{i}.npy", b"") for i in range(10_001)]
    with pytest.raises(CheckpointError, match="10001 members"):
        load_checkpoint(hf.write_zip(tmp_path / "b.npz", many))


def test_total_size_cap(tmp_path, monkeypatch):
    path = _write(tmp_path / "ck.npz")
    total = sum(v.nbytes for v in REAL_ARRAYS.values())
    with pytest.raises(CheckpointError, match="more than the .* limit"):
        load_checkpoint(path, max_bytes=total - 1)
    monkeypatch.setenv("DIGITLAB_MAX_BYTES", str(total - 1))
    with pytest.raises(CheckpointError, match="DIGITLAB_MAX_BYTES"):
        load_checkpoint(path)
    monkeypatch.setenv("DIGITLAB_MAX_BYTES", str(total))
    assert set(load_checkpoint(path)[0]) == set(REAL_ARRAYS)


@pytest.mark.parametrize(
    "content", [b"", b"PK\x03\x04", b"PK\x05\x06" + bytes(18), b"\x93NUMPY"], ids=repr
)
def test_not_a_zip(tmp_path, content):
    (tmp_path / "ck.npz").write_bytes(content)
    with pytest.raises(CheckpointError, match="ck.npz"):
        load_checkpoint(tmp_path / "ck.npz")


def test_a_folder_is_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path)


def test_loaded_checkpoint_resumes(tmp_path):
    arrays, meta = load_checkpoint(_write(tmp_path / "ck.npz"))
    _resume_with(arrays, meta)


def test_atomic_writes_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        assert new_file_mode() == 0o640
        path = atomic_write_bytes(tmp_path / "f.txt", lambda f: f.write(b"x"))
        assert path.stat().st_mode & 0o777 == 0o640
        os.umask(0o002)
        path = save_checkpoint(tmp_path / "ck.npz", REAL_ARRAYS, TRAINER_META)
        assert path.stat().st_mode & 0o777 == 0o664
    finally:
        os.umask(old)
    assert zipfile.is_zipfile(path) and FORMAT == REAL_META["format"]


@pytest.mark.parametrize("target", ["folder", "parent-is-file", "device"])
def test_atomic_write_refuses_bad_outputs_in_one_line(tmp_path, target):
    from digitlab.errors import OutputError

    (tmp_path / "folder").mkdir()
    (tmp_path / "afile").write_text("x")
    path = {"folder": tmp_path / "folder", "parent-is-file": tmp_path / "afile" / "out.csv",
            "device": Path("/dev/null")}[target]  # fmt: skip
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(OutputError) as info:
        atomic_write_bytes(path, lambda f: f.write(b"data"))
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert Path("/dev/null").is_char_device()


def test_model_and_optimizer_config_types_and_finite_parameters(tmp_path):
    for change, fragment in [
        (lambda m: m["model"].__setitem__("l2", "x"), "model.l2"),
        (lambda m: m["model"].__setitem__("regularize_bias", 1), "model.regularize_bias"),
        (lambda m: m["optimizer"].__setitem__("momentum", "0.9"), "optimizer.momentum"),
    ]:
        with pytest.raises(CheckpointError, match=fragment):
            load_checkpoint(_write(tmp_path / "ck.npz", meta=_meta_with(change)))
    arrays = {k: v.copy() for k, v in REAL_ARRAYS.items()}
    arrays["model/W1"][0, 0] = np.nan
    with pytest.raises(CheckpointError, match="W1 holds NaN"):
        load_checkpoint(_write(tmp_path / "ck.npz", arrays=arrays))
