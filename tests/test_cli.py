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
from digitlab.runfiles import load_run_checkpoint
from digitlab.runner import feature_augmenter

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
            "--activation", "tanh", "--momentum", "0", "--anneal-T", "none",
            "--out", str(tmp_path)]  # fmt: skip
    assert main(args) == 0
    metrics = json.loads((_run_folder(tmp_path) / "metrics.json").read_text())
    assert metrics["steps"] == 300 and metrics["test_acc"] > 0.3


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["train", "--lr", "-1", "--dataset", "mnist-5k"], "option --lr '-1'"),
        (["train", "--dataset", "nope"], "nope"),
        (["train", "--model", "logistic", "--dataset", "mnist-5k"], "two different classes"),
        (["train", "--batch", "lots", "--dataset", "mnist-5k"], "option --batch 'lots'"),
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


# ----------------------------------------------------------------- issue 9/10/12 behaviour
def test_argparse_errors_are_one_line_without_usage(capsys):
    assert main(["train", "--bogus"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("digitlab: error: unrecognized arguments: --bogus")
    assert err.count("\n") == 1 and "usage" not in err
    assert main(["gradcheck", "--checks", "-2"]) == 2
    assert "--checks" in capsys.readouterr().err
    assert main([]) == 2 and capsys.readouterr().err.count("\n") == 1


def test_wrong_types_name_the_option(tmp_path, capsys):
    assert main(["train", "--momentum", "x", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (
        "digitlab: error: option --momentum 'x': expected a finite number (>= 0, < 1)\n"
    )
    cfg = tmp_path / "c.toml"
    cfg.write_text("seed = 1.5\n")
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "r")]) == 2
    assert f"seed = 1.5 ({cfg})" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_failed_runs_leave_nothing_on_disk(tmp_path, capsys):
    out = tmp_path / "runs" / "deep"
    diverge = ["train", "--dataset", "mnist-5k", "--l2", "1e6", "--lr", "1e5", "--quiet"]
    assert main([*diverge, "--out", str(out)]) == 2
    assert "loss became inf" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # not even the runs root it would have made
    afile = tmp_path / "afile"
    afile.write_text("")
    assert main(["train", *FAST, "--out", str(afile)]) == 2
    assert "is a file" in capsys.readouterr().err


def test_resume_with_incompatible_optimizer_state_writes_nothing(tmp_path, capsys):
    main(["train", *FAST, "--momentum", "0.9", "--out", str(tmp_path / "a"), "--quiet"])
    ck = _run_folder(tmp_path / "a") / "checkpoint.npz"
    assert main(["resume", str(ck), "--momentum", "0", "--out", str(tmp_path / "b")]) == 2
    assert "momentum" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_metrics_json_is_strict_json(tmp_path):
    from digitlab.runfiles import write_json

    write_json(tmp_path / "m.json", {"a": float("nan"), "b": [float("inf"), 1.5], "c": "x"})
    text = (tmp_path / "m.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"a": None, "b": [None, 1.5], "c": "x"}


def test_run_files_get_the_users_umask(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        assert main(["train", *FAST, "--out", str(tmp_path), "--quiet"]) == 0
    finally:
        os.umask(old)
    folder = _run_folder(tmp_path)
    for name in ("checkpoint.npz", "config.toml", "history.csv", "metrics.json"):
        assert (folder / name).stat().st_mode & 0o777 == 0o644, name


def test_evaluate_and_resume_refuse_other_data(tmp_path, capsys):
    from digitlab.checkpoint import save_checkpoint

    main(["train", *FAST, "--out", str(tmp_path / "a"), "--quiet"])
    ck = _run_folder(tmp_path / "a") / "checkpoint.npz"
    arrays, meta = load_checkpoint(ck)
    assert meta["extra"]["data"]["name"] == "mnist-5k" and meta["extra"]["data"]["n_train"] == 4000
    meta["extra"]["data"] |= {"name": "mnist", "n_train": 60000, "n_test": 10000}  # as if full
    save_checkpoint(ck, arrays, {k: v for k, v in meta.items() if k != "format"})
    capsys.readouterr()
    assert main(["evaluate", str(ck)]) == 2
    err = capsys.readouterr().err
    assert "was trained on mnist (60000 train / 10000 test)" in err and "mnist-5k" in err
    assert main(["resume", str(ck), "--more-steps", "2", "--out", str(tmp_path / "b")]) == 2
    assert not (tmp_path / "b").exists()
    assert main(["evaluate", str(ck), "--dataset", "mnist-5k"]) == 0  # explicit: allowed


def test_progress_lines_when_not_a_terminal_and_quiet(tmp_path, capsys):
    assert main(["train", *FAST, "--out", str(tmp_path / "a")]) == 0
    printed = capsys.readouterr().out
    lines = [ln for ln in printed.splitlines() if ln.startswith("epoch ")]
    assert [ln.split()[1] for ln in lines] == ["1.00/3", "2.00/3", "3.00/3"]
    assert "val loss" in lines[0] and "test loss" in lines[0]
    assert printed.index("data: mnist-5k") < printed.index("epoch 1.00/3")  # source first, once
    assert printed.count("data: ") == 1
    assert main(["train", *FAST, "--out", str(tmp_path / "b"), "--quiet"]) == 0
    assert "epoch 1.00" not in capsys.readouterr().out


def test_history_csv_grows_while_training(tmp_path):
    from digitlab.runner import prepare_data, run
    from digitlab.settings import Settings
    from digitlab.train import Callback

    seen: list[int] = []

    class Probe(Callback):
        def on_evaluate(self, trainer, record):
            path = next(tmp_path.glob("*/*/history.csv"), None)
            seen.append(0 if path is None else len(path.read_text().splitlines()) - 1)

    s = Settings(model="softmax", dataset="mnist-5k", epochs=3, lr=0.5)
    run(s, out=tmp_path, data=prepare_data(s), callbacks=[Probe()])
    assert seen == [0, 1, 2]  # rows written by the earlier evaluations, before the run ends


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_ctrl_c_saves_and_exits_130(tmp_path, sig):
    import os
    import signal
    import time

    env = os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "digitlab.cli", "train", "--dataset", "mnist-5k", "--model", "mlp",
         "--hidden", "16", "--epochs", "100000", "--eval-every", "5", "--out", "runs"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob("runs/*/*/history.csv")) and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(getattr(signal, sig))
    stdout, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert "interrupted: checkpoint saved" in stdout
    assert list(tmp_path.glob("runs/*/*/checkpoint.npz"))


def test_serve_ends_by_sigterm_after_its_graceful_shutdown(tmp_path):
    """Every other command turns SIGTERM into Ctrl-C (exit 130); the server shuts down on it
    (uvicorn) and then ends by the signal itself, as a service manager expects."""
    import os
    import signal
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "digitlab.cli", "serve", "--runs", str(tmp_path), "--port",
         str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline, up = time.monotonic() + 60, False
        while not up and time.monotonic() < deadline and proc.poll() is None:
            with socket.socket() as s:
                up = s.connect_ex(("127.0.0.1", port)) == 0
            time.sleep(0.1)
        assert up, proc.stderr.read() if proc.poll() is not None else "not listening"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGTERM
        assert "digitlab: interrupted" not in err
    finally:
        if proc.poll() is None:
            proc.kill()


def test_experiments_column_is_named_source(capsys):
    assert main(["experiments"]) == 0
    header = capsys.readouterr().out.splitlines()[0].split()
    assert header[:2] == ["experiment", "source"]


def test_gradcheck_samples_entries_by_default(capsys):
    assert main(["gradcheck", "--dataset", "mnist-5k", "--hidden", "8"]) == 0
    assert "30 random entries of each parameter array" in capsys.readouterr().out
    assert main(["gradcheck", "--dataset", "mnist-5k", "--model", "softmax", "--checks", "all",
                 "--n", "3"]) == 0  # fmt: skip
    assert "every entry" in capsys.readouterr().out


def test_resume_help_states_the_lr_semantics(capsys):
    with pytest.raises(SystemExit):
        main(["resume", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--lr sets the schedule's starting rate eta0 again" in text
    assert "(default: logistic 0.1, softmax 0.5, mlp 0.1)" in text


def test_crafted_checkpoint_metadata_is_one_line(tmp_path, capsys):
    from digitlab.checkpoint import save_checkpoint

    main(["train", *FAST, "--out", str(tmp_path / "a"), "--quiet"])
    ck = _run_folder(tmp_path / "a") / "checkpoint.npz"
    arrays, meta = load_checkpoint(ck)
    meta.pop("format")
    for change in ({"progress": []}, {"progress": {"step": -3, "epoch": 0}},
                   {"extra": meta["extra"] | {"settings": {"momentum": "x"}}}):  # fmt: skip
        save_checkpoint(tmp_path / "bad.npz", arrays, meta | change)
        capsys.readouterr()
        for cmd in (["evaluate"], ["resume"]):
            assert main([*cmd, str(tmp_path / "bad.npz"), "--out", str(tmp_path / "r")][
                : 2 if cmd == ["evaluate"] else None]) == 2  # fmt: skip
            err = capsys.readouterr().err
            assert err.startswith("digitlab: error: ") and err.count("\n") == 1, err
    assert not (tmp_path / "r").exists()


def test_tty_progress_bar_counts_epochs(tmp_path, capsys):
    from digitlab.cli import ProgressDisplay
    from digitlab.runner import prepare_data, run
    from digitlab.settings import Settings

    s = Settings(model="softmax", dataset="mnist-5k", epochs=2, lr=0.5)
    display = ProgressDisplay("softmax", tty=True)
    run(s, out=tmp_path, data=prepare_data(s), callbacks=[display])
    captured = capsys.readouterr()
    assert "/2 epochs" in captured.err  # the bar, in epochs, on stderr
    assert [ln.split()[1] for ln in captured.out.splitlines()] == ["1.00/2", "2.00/2"]


@pytest.mark.parametrize("name", ["../escape", "/abs/path", "a/b"])
def test_run_names_cannot_leave_the_runs_root(tmp_path, capsys, name):
    assert main(["train", *FAST, "--out", str(tmp_path / "runs"), "--name", name]) == 2
    assert "plain folder name" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_demo_prints_the_data_source_once_before_training(tmp_path, capsys, monkeypatch):
    import digitlab.cli as cli

    tiny = [("softmax", {"model": "softmax", "epochs": 1}), ("mlp", {"model": "mlp", "hidden": [8],
            "epochs": 1})]  # fmt: skip
    monkeypatch.setattr(cli, "demo_settings", lambda full: tiny)
    monkeypatch.delenv("DIGITLAB_DATA", raising=False)
    assert main(["demo", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("embedded sample") == 1
    assert printed.index("embedded sample") < printed.index("epoch 1.00/1")


def test_elastic_augmentation_from_the_command_line(tmp_path):
    from digitlab.runner import build_run_model, build_trainer, prepare_data
    from digitlab.settings import Settings

    args = ["train", "--model", "softmax", *FAST, "--epochs", "1", "--augment", "--max-shift",
            "0", "--max-rotation", "0", "--elastic-alpha", "34",
            "--out", str(tmp_path)]  # fmt: skip
    assert main(args) == 0
    folder = _run_folder(tmp_path)
    config = tomllib.loads((folder / "config.toml").read_text())
    assert config["elastic_alpha"] == 34.0 and config["elastic_sigma"] == 4.0
    assert json.loads((folder / "metrics.json").read_text())["test_acc"] > 0.5  # chance: 0.1
    # the trainer's batch transform distorts exactly when elastic_alpha > 0
    base = {"dataset": "mnist-5k", "epochs": 1, "augment": True, "max_shift": 0,
            "max_rotation": 0.0}  # fmt: skip
    X = None
    moved = {}
    for alpha in (0.0, 34.0):
        s = Settings.from_dict(base | {"elastic_alpha": alpha})
        data = prepare_data(s)
        X = data.train[0][:16]
        trainer = build_trainer(s, build_run_model(s, X.shape[1], 10), data, [])
        moved[alpha] = trainer.batch_transform(X, np.random.default_rng(0))
    np.testing.assert_allclose(moved[0.0], X, atol=1e-5)
    assert np.abs(moved[34.0] - X).mean() > 0.01
    assert main(["train", "--elastic-alpha", "34", "--dataset", "mnist-5k"]) == 2
