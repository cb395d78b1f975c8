"""The digitlab command end to end on the embedded 5,000-digit sample, and its error paths."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from digitlab.checkpoint import load_checkpoint
from digitlab.cli import main
from digitlab.data import Augmenter, Preprocessor, load, write_idx
from digitlab.runner import feature_augmenter, load_run_checkpoint

FAST = ["--dataset", "mnist-5k", "--batch", "128", "--lr", "0.5", "--epochs", "3"]


def _run_folder(out: Path) -> Path:
    folders = [p for p in out.glob("*/*") if p.is_dir()]
    assert len(folders) == 1, folders
    return folders[0]


def test_train_writes_a_complete_run_folder(tmp_path, capsys):
    assert main(["train", "--model", "softmax", *FAST, "--out", str(tmp_path)]) == 0
    folder = _run_folder(tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == [
        "checkpoint.npz",
        "config.toml",
        "history.csv",
        "metrics.json",
    ]
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["test_acc"] > 0.8 and metrics["n_train"] == 3600 and metrics["n_test"] == 1000
    rows = list(csv.DictReader((folder / "history.csv").open()))
    assert [float(r["epoch"]) for r in rows] == [1.0, 2.0, 3.0]
    config = tomllib.loads((folder / "config.toml").read_text())
    assert config["lr"] == 0.5 and config["batch"] == 128 and config["model"] == "softmax"
    printed = capsys.readouterr().out
    assert "test" in printed and f"{metrics['test_acc']:.4f}" in printed and str(folder) in printed


def test_config_file_with_command_line_override(tmp_path):
    cfg = tmp_path / "exp.toml"
    cfg.write_text('model = "mlp"\nhidden = [16]\nlr = 0.2\nepochs = 1\ndataset = "mnist-5k"\n')
    assert main(["train", "--config", str(cfg), "--epochs", "2", "--out", str(tmp_path / "r")]) == 0
    config = tomllib.loads((_run_folder(tmp_path / "r") / "config.toml").read_text())
    assert config["epochs"] == 2 and config["lr"] == 0.2 and config["hidden"] == [16]


def test_logistic_two_vs_three(tmp_path):
    args = [
        "train",
        "--model",
        "logistic",
        "--classes",
        "2,3",
        "--dataset",
        "mnist-5k",
        "--lr",
        "0.5",
        "--batch",
        "full",
        "--epochs",
        "50",
        "--out",
        str(tmp_path),
    ]
    assert main(args) == 0
    metrics = json.loads((_run_folder(tmp_path) / "metrics.json").read_text())
    assert metrics["test_acc"] > 0.93
    assert metrics["n_train"] < 1000  # only the 2s and 3s of the 4,000 training digits


def test_evaluate_reproduces_the_run_metrics(tmp_path, capsys):
    main(["train", "--model", "softmax", *FAST, "--out", str(tmp_path)])
    folder = _run_folder(tmp_path)
    metrics = json.loads((folder / "metrics.json").read_text())
    capsys.readouterr()
    assert main(["evaluate", str(folder / "checkpoint.npz")]) == 0
    assert f"{metrics['test_acc']:.4f}" in capsys.readouterr().out


def test_predict_idx_csv_and_png_folder(tmp_path):
    import matplotlib.image

    main(["train", "--model", "softmax", *FAST, "--out", str(tmp_path / "r")])
    ck = _run_folder(tmp_path / "r") / "checkpoint.npz"
    model, prep, _ = load_run_checkpoint(ck)
    images = load("mnist-5k").x_test[:7]
    expected = model.predict(prep.transform(images))
    write_idx(tmp_path / "imgs.idx3.gz", images)
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i, img in enumerate(images):
        matplotlib.image.imsave(folder / f"{i:02d}.png", img, cmap="gray", vmin=0, vmax=255)
    for src in (tmp_path / "imgs.idx3.gz", folder):
        out = tmp_path / "pred.csv"
        assert main(["predict", str(ck), str(src), "--raw", "--kaggle", "-o", str(out)]) == 0
        rows = list(csv.reader(out.open()))
        assert rows[0] == ["Id", "Category"]
        assert [r[0] for r in rows[1:]] == [str(i) for i in range(1, 8)]
        assert [int(r[1]) for r in rows[1:]] == expected.tolist()


def test_resume_continues_and_refuses_structural_changes(tmp_path, capsys):
    main(["train", "--model", "softmax", *FAST, "--out", str(tmp_path / "a")])
    ck = _run_folder(tmp_path / "a") / "checkpoint.npz"
    assert main(["resume", str(ck), "--more-steps", "10", "--lr", "0.1",
                 "--out", str(tmp_path / "b")]) == 0  # fmt: skip
    _, meta = load_checkpoint(_run_folder(tmp_path / "b") / "checkpoint.npz")
    _, before = load_checkpoint(ck)
    assert meta["progress"]["step"] == before["progress"]["step"] + 10
    assert meta["schedule"]["eta0"] == 0.1
    capsys.readouterr()
    assert main(["resume", str(ck), "--model", "mlp", "--out", str(tmp_path / "c")]) == 2
    assert "cannot change model" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_gradcheck_command(capsys):
    assert main(["gradcheck", "--model", "mlp", "--hidden", "8", "--dataset", "mnist-5k",
                 "--l2", "0.01", "--checks", "5"]) == 0  # fmt: skip
    assert "PASS" in capsys.readouterr().out


def test_data_list_and_info(capsys):
    assert main(["data", "list"]) == 0
    listing = capsys.readouterr().out
    assert "mnist-5k" in listing and "emnist-letters" in listing
    assert main(["data", "info", "mnist-5k"]) == 0
    assert "4000 train, 1000 test, 28x28, 10 classes" in capsys.readouterr().out


def test_feature_augmenter_is_identity_without_motion():
    images = load("mnist-5k").x_train[:5]
    for method in ("scale01", "symmetric", "standardize"):
        prep = Preprocessor(method, bias_column=True).fit(images)
        X = prep.transform(images)
        same = feature_augmenter(prep, (28, 28), Augmenter(0, 0.0))(X, np.random.default_rng(0))
        np.testing.assert_allclose(same, X, atol=1e-4)
        moved = feature_augmenter(prep, (28, 28), Augmenter(3, 10.0))(X, np.random.default_rng(0))
        assert not np.allclose(moved, X) and np.all(moved[:, -1] == 1)


def test_augmented_single_sample_sgd_run(tmp_path):
    args = ["train", "--model", "mlp", "--hidden", "32", "--dataset", "mnist-5k", "--batch", "sgd",
            "--preprocess", "standardize", "--augment", "--lr", "0.01", "--steps", "300",
            "--out", str(tmp_path)]  # fmt: skip
    assert main(args) == 0
    metrics = json.loads((_run_folder(tmp_path) / "metrics.json").read_text())
    assert metrics["steps"] == 300 and metrics["test_acc"] > 0.3


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["train", "--lr", "-1", "--dataset", "mnist-5k"], "lr must be > 0"),
        (["train", "--dataset", "nope"], "nope"),
        (["train", "--model", "logistic", "--dataset", "mnist-5k"], "two different classes"),
        (["train", "--batch", "lots", "--dataset", "mnist-5k"], "batch='lots'"),
        (["train", "--config", "missing.toml"], "no such config file"),
        (["train", "--dataset", "mnist-5k", "--n-train", "999999"], "n_train=999999"),
        (["evaluate", "nothing.npz"], "no such checkpoint"),
        (
            ["train", "--dataset", "mnist-5k", "--early-stopping", "3", "--holdout", "0"],
            "validation split",
        ),
    ],
)
def test_user_errors_exit_2_with_one_line_and_write_nothing(tmp_path, args, words):
    out = ["--out", "runs"] if args[0] == "train" else []
    proc = subprocess.run(
        [sys.executable, "-m", "digitlab.cli", *args, *out], cwd=tmp_path, capture_output=True,
        text=True,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("digitlab: error: ") and words in proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_bad_toml_and_unknown_setting(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("lr = = 3\n")
    assert main(["train", "--config", str(bad)]) == 2
    assert "not valid TOML" in capsys.readouterr().err
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("learning_rate = 3\n")
    assert main(["train", "--config", str(unknown)]) == 2
    assert "unknown setting(s) learning_rate" in capsys.readouterr().err


def test_predict_rejects_wrong_image_size(tmp_path, capsys):
    main(["train", "--model", "softmax", *FAST, "--out", str(tmp_path / "r")])
    ck = _run_folder(tmp_path / "r") / "checkpoint.npz"
    write_idx(tmp_path / "small.idx", np.zeros((3, 8, 8), np.uint8))
    assert (
        main(["predict", str(ck), str(tmp_path / "small.idx"), "-o", str(tmp_path / "p.csv")]) == 2
    )
    assert "8x8" in capsys.readouterr().err
    assert not (tmp_path / "p.csv").exists()
