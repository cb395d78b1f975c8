"""Hostile inputs the battery (scripts/hostile_battery.py) found after the merge of the
settings, reader and engine work: each is refused with one line and leaves nothing behind."""

from __future__ import annotations

import numpy as np
import pytest

from digitlab.cli import main
from digitlab.data import write_idx
from digitlab.errors import CheckpointError, ConfigError
from digitlab.models import SoftmaxModel
from digitlab.runfiles import check_run_name
from digitlab.settings import read_toml
from digitlab.train import Trainer


def test_flat_settings_beside_a_train_table_are_refused(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('dataset = "digits-8x8"\n[train]\nepochs = 1\n')
    with pytest.raises(ConfigError, match="dataset outside the \\[train\\] table"):
        read_toml(path)
    path.write_text("[train]\nepochs = 1\n")
    assert read_toml(path) == {"epochs": 1}


@pytest.mark.parametrize("name", ["", "a\x01b", "tab\there", ".hidden", "../up", "/abs", "a/b"])
def test_run_names_must_be_plain_printable_folder_names(name):
    with pytest.raises(ConfigError, match="run name"):
        check_run_name(name)
    check_run_name("sgd-run_1")


@pytest.mark.parametrize("name", ["", "a\x01b"])
def test_train_refuses_a_bad_name_before_loading_data(tmp_path, capsys, name):
    argv = ["train", "--dataset", "digits-8x8", "--epochs", "1", "--out", str(tmp_path / "runs")]
    assert main([*argv, "--name", name]) == 2
    err = capsys.readouterr().err.strip()
    assert "run name" in err and "\n" not in err
    assert not (tmp_path / "runs").exists()


def test_predict_never_writes_over_its_input(tmp_path, capsys):
    runs = tmp_path / "runs"
    argv = ["train", "--dataset", "digits-8x8", "--model", "softmax", "--epochs", "1"]
    assert main([*argv, "--out", str(runs)]) == 0
    ck = next(runs.glob("*/*/checkpoint.npz"))
    x = (np.arange(3 * 64).reshape(3, 8, 8) % 17).astype(np.uint8)
    write_idx(tmp_path / "x.idx", x)
    before = (tmp_path / "x.idx").read_bytes()
    capsys.readouterr()
    for out in ("x.idx", str(ck)):
        assert main(["predict", str(ck), str(tmp_path / "x.idx"), "-o", str(tmp_path / out)]) == 2
        assert "is one of the inputs" in capsys.readouterr().err
    assert (tmp_path / "x.idx").read_bytes() == before


def test_reproduce_with_a_scheme_dask_does_not_know_is_one_line(tmp_path, capsys):
    pytest.importorskip("distributed")
    argv = ["reproduce", "tdt4265-task2", "--scheduler", "bogus://x", "--out", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "not a Dask address" in err and "\n" not in err
    assert list(tmp_path.iterdir()) == []  # refused before any experiment folder


def test_predict_on_an_input_that_is_a_symlink_loop_is_one_line(tmp_path, capsys):
    (tmp_path / "loop.idx").symlink_to(tmp_path / "loop.idx")
    runs = tmp_path / "runs"
    argv = ["train", "--dataset", "digits-8x8", "--model", "softmax", "--epochs", "1"]
    assert main([*argv, "--out", str(runs)]) == 0
    ck = next(runs.glob("*/*/checkpoint.npz"))
    capsys.readouterr()
    assert main(["predict", str(ck), str(tmp_path / "loop.idx"), "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "loop.idx" in err and "\n" not in err
    assert not (tmp_path / "o").exists()


def _trainer(shuffle: bool = True) -> tuple[Trainer, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 5)).astype(np.float32)
    y = rng.integers(0, 3, 40)
    model = SoftmaxModel(5, 3, rng=0)
    return Trainer(model, batch_size=8, shuffle=shuffle, rng=0, schedule=0.1), (X, y)


def test_a_resumed_position_outside_the_epoch_is_refused():
    trainer, data = _trainer()
    trainer.pos = 10**12  # as a crafted checkpoint's progress.pos would set it
    with pytest.raises(CheckpointError, match="outside an epoch of 5 steps"):
        trainer.fit(data, epochs=1)
    assert trainer.step == 0


def test_a_resumed_shuffle_order_of_another_length_is_refused():
    trainer, data = _trainer()
    trainer.pos = 2  # mid-epoch: the stored order is used for the rest of the epoch
    trainer.order = np.arange(5)  # a valid permutation, of the wrong training set
    with pytest.raises(CheckpointError, match="order has 5 rows, the training set 40"):
        trainer.fit(data, epochs=1)
    good, data = _trainer()
    good.fit(data, steps=2)
    assert good.order is not None and good.order.shape == (40,)
