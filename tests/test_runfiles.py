"""Run files: one writer and one reader per file, declared columns and figure kinds, and
hostile run folders (links, FIFOs, deep nesting, huge declared arrays) refused in one line."""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("httpx")
from starlette.testclient import TestClient  # noqa: E402

from digitlab import runfiles  # noqa: E402
from digitlab.data import load  # noqa: E402
from digitlab.errors import ConfigError, FileReadError, OutputError, ReportError  # noqa: E402
from digitlab.experiments import parse_experiment  # noqa: E402
from digitlab.fileio import atomic_write_bytes  # noqa: E402
from digitlab.report import ExperimentRecord, MemberRecord, kinds, write_report  # noqa: E402
from digitlab.report.rundata import load_experiment, load_run  # noqa: E402
from digitlab.report.runs import write_run_report  # noqa: E402
from digitlab.runfiles import (  # noqa: E402
    CHECKPOINT,
    Column,
    HistoryWriter,
    load_run_checkpoint,
    read_config,
    read_history,
    read_history_tail,
    read_metrics,
    register_column,
)
from digitlab.runner import Settings, prepare_data, run  # noqa: E402
from digitlab.serve import create_app  # noqa: E402

BASE_URL = "http://127.0.0.1"
SMALL = {"model": "softmax", "dataset": "mnist-5k", "n_train": 600, "n_test": 200,
         "holdout": 0.2, "batch": 100, "lr": 0.5, "epochs": 2}  # fmt: skip


def _train(root: Path, name: str) -> Path:
    settings = Settings.from_dict(SMALL)
    data = prepare_data(settings, dataset=load("mnist-5k"))
    return run(settings, out=root, name=name, data=data).folder


def _largest_weight(model: Any) -> float:
    return float(np.abs(model.params["W"]).max())


def _returns_within(seconds: float, call: Callable[[], Any]) -> Any:
    """``call()`` run in a thread that must finish within ``seconds`` (no hang)."""
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["value"] = call()
        except BaseException as exc:  # noqa: BLE001 (handed to the test)
            out["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "the call blocked"
    if "error" in out:
        raise out["error"]
    return out["value"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("runfiles") / "runs"
    _train(root, "plain")
    return root


# ---------------------------------------------------------------------------------- columns
def test_a_new_history_column_is_one_record(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(runfiles, "COLUMNS", dict(runfiles.COLUMNS))
    register_column(Column("w_max", "largest absolute weight", _largest_weight))
    folder = _train(tmp_path / "runs", "col")
    header = (folder / "history.csv").read_text().splitlines()[0].split(",")
    assert header[:6] == ["step", "epoch", "lr", "weight_norm", "time", "w_max"]
    assert header[6:9] == ["train_loss", "train_objective", "train_acc"]
    history = read_history(folder / "history.csv")
    model, _, _ = load_run_checkpoint(folder / CHECKPOINT)
    assert history["w_max"][-1] == _largest_weight(model) and np.isfinite(history["w_max"]).all()
    assert len(history["w_max"]) == len(history["step"]) >= 2
    np.testing.assert_array_equal(load_run(folder).history["w_max"], history["w_max"])
    html, _ = write_run_report([folder])
    assert html.is_file()
    client = TestClient(create_app(tmp_path / "runs"), base_url=BASE_URL)
    rid = folder.relative_to(tmp_path / "runs").as_posix()
    cols = client.get("/api/run/history", params={"id": rid}).json()["columns"]
    assert cols["w_max"] == history["w_max"].tolist()
    with pytest.raises(ConfigError):
        register_column(Column("w_max", "again", _largest_weight))


def test_history_writer_appends_flushes_and_rewrites(tmp_path) -> None:
    writer = HistoryWriter(tmp_path / "history.csv")
    writer.append({"step": 1, "epoch": 0.5, "val_acc": 0.25})
    assert (tmp_path / "history.csv").read_text() == "step,epoch,val_acc\n1,0.5,0.25\n"
    writer.rewrite([{"step": 1, "epoch": 0.5, "val_acc": 0.5}])
    writer.append({"step": 2, "epoch": 1.0, "val_acc": float("nan"), "other": 3.0})
    writer.close()
    text = (tmp_path / "history.csv").read_text()
    assert text == "step,epoch,val_acc\n1,0.5,0.5\n2,1.0,nan\n"
    cols = read_history(tmp_path / "history.csv")
    assert cols["step"].tolist() == [1.0, 2.0] and np.isnan(cols["val_acc"][1])
    tail = read_history_tail(tmp_path / "history.csv")
    assert tail.rows == 2 and tail.best == {"val_acc": 0.5} and tail.last["step"] == 2.0


def test_a_long_history_is_read_in_bounded_rows(tmp_path) -> None:
    path = tmp_path / "history.csv"
    n = 300_001
    steps = np.arange(n)
    lines = "\n".join(f"{s},{s / 10},0.5" for s in steps)
    path.write_text("step,epoch,val_acc\n" + lines + "\n")
    cols = read_history(path, max_rows=1000)
    kept = cols["step"]
    assert len(kept) <= 1001 and kept[0] == 0 and kept[-1] == n - 1
    gaps = np.diff(kept[:-1])
    assert (gaps == gaps[0]).all() and gaps[0] == 512  # every 512th row, evenly spread
    assert read_history_tail(path).rows == n


# ---------------------------------------------------------------------------------- figures
def _draw_largest_weights(exp: ExperimentRecord) -> Any:
    from matplotlib.figure import Figure

    images = exp.member("chosen").weight_images().images
    fig = Figure(figsize=(4, 3))
    fig.subplots().bar(range(len(images)), np.abs(images).reshape(len(images), -1).max(axis=1))
    return fig


def test_a_new_figure_kind_is_one_record(trained, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(kinds, "FIGURE_KINDS", dict(kinds.FIGURE_KINDS))
    kinds.register_figure(
        kinds.FigureKind("largest", _draw_largest_weights,
                         "Largest absolute weight of each class of {chosen}.",
                         member_files=(CHECKPOINT,))
    )  # fmt: skip
    spec = {"name": "tiny", "source": "000", "section": "s", "title": "t", "protocol": "p",
            "figures": ["curves", "largest", "table"],
            "settings": {"model": "softmax", "dataset": "mnist-5k"}}  # fmt: skip
    assert parse_experiment(spec, "tiny.toml").figures == ("curves", "largest", "table")
    with pytest.raises(ConfigError, match="unknown figure"):
        parse_experiment(spec | {"figures": ["smallest"]}, "tiny.toml")
    root = tmp_path / "runs"
    member_dir = next((trained / "plain").iterdir())
    exp_dir = root / "exp"
    shutil.copytree(member_dir, exp_dir / "one")
    metrics = read_metrics(exp_dir / "one" / "metrics.json")
    member = MemberRecord("one", exp_dir / "one", {}, Settings.from_dict(SMALL).to_dict(), metrics)
    record = ExperimentRecord(name="exp", source="000", section="", title="Toy", protocol="",
                              choices="", folder=exp_dir, figures=["curves", "largest"], data={},
                              members=[member], chosen="one", published=[], seconds=1.0)
    (exp_dir / "experiment.json").write_text(json.dumps(record.to_json()))
    html, _ = write_report(root)
    text = html.read_text()
    assert 'data-figure="exp/largest"' in text
    assert "Largest absolute weight of each class of the chosen setting (one)." in text
    assert (exp_dir / "figures" / "largest.png").is_file()
    (exp_dir / "one" / CHECKPOINT).unlink()
    assert kinds.is_stale(load_experiment(exp_dir), "largest")


# ---------------------------------------------------------------------------------- writes
def test_a_link_at_the_target_or_a_folder_on_the_way_is_never_written_through(tmp_path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "report.html").symlink_to(victim)
    with pytest.raises(OutputError, match="symbolic link") as info:
        atomic_write_bytes(tmp_path / "out" / "report.html", lambda f: f.write(b"x"))
    assert "\n" not in str(info.value) and victim.read_text() == "keep"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "out" / "figures").symlink_to(elsewhere)
    with pytest.raises(OutputError, match="symbolic link"):
        atomic_write_bytes(
            tmp_path / "out" / "figures" / "a.png", lambda f: f.write(b"x"), inside=tmp_path / "out"
        )
    assert list(elsewhere.iterdir()) == []


def test_a_report_never_writes_through_planted_links(trained, tmp_path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(next((trained / "plain").iterdir()), run_dir)
    victim, elsewhere = tmp_path / "victim", tmp_path / "elsewhere"
    victim.write_text("keep")
    elsewhere.mkdir()
    for name in (".report.html.tmp", ".report.md.tmp"):
        (run_dir / name).symlink_to(victim)
    (run_dir / "figures").symlink_to(elsewhere)
    html, md = write_run_report([run_dir])
    assert victim.read_text() == "keep" and list(elsewhere.iterdir()) == []
    assert html.is_file() and not html.is_symlink() and "could not be drawn" in html.read_text()


# ---------------------------------------------------------------------------------- reads
def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("how", ["fifo", "link to fifo", "link loop", "nul byte"])
def test_a_history_that_is_not_a_plain_csv_is_one_line(tmp_path, how) -> None:
    path = tmp_path / "history.csv"
    if how == "fifo":
        _fifo(path)
    elif how == "link to fifo":
        path.symlink_to(_fifo(tmp_path / "pipe"))
    elif how == "link loop":
        path.symlink_to(path)
    else:
        path.write_bytes(b"step,val_acc\n1,0.5\n2,0.\x006\n")
    for reader in (read_history, read_history_tail):
        with pytest.raises(FileReadError) as info:
            _returns_within(10, lambda r=reader: r(path))
        assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_deep_nesting_and_wrong_types_are_one_line(tmp_path) -> None:
    deep = tmp_path / "metrics.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(FileReadError, match="nested"):
        read_metrics(deep)
    config = tmp_path / "config.toml"
    config.write_text("a = " + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(FileReadError, match="nested"):
        read_config(config)
    config.write_text('train = 5\nmodel = "mlp"\n')
    assert read_config(config) == {"train": 5, "model": "mlp"}
    for bad, what in (({"seconds": "abc"}, "'seconds' must be a number"),
                      ({"steps": "<b>9</b>"}, "'steps' must be a whole number"),
                      ({"test_acc": [1]}, "'test_acc' must be a number")):  # fmt: skip
        deep.write_text(json.dumps(bad))
        with pytest.raises(FileReadError, match=what):
            read_metrics(deep)


def test_a_confusion_matrix_larger_than_the_run_is_refused_before_use(trained, tmp_path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(next((trained / "plain").iterdir()), run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics["confusion_test"] = np.zeros((300, 300), int).tolist()
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(FileReadError, match="300 rows, the run 10 classes"):
        read_metrics(run_dir / "metrics.json", n_classes=10)
    with pytest.raises(FileReadError, match="300 rows, at most 64"):
        read_metrics(run_dir / "metrics.json")
    with pytest.raises(ReportError, match="confusion_test") as info:
        _returns_within(30, lambda: write_run_report([run_dir]))
    assert "\n" not in str(info.value) and not (run_dir / "report.html").exists()


def test_the_app_lists_every_run_when_some_are_hostile(trained, tmp_path) -> None:
    root = tmp_path / "runs"
    good = next((trained / "plain").iterdir())
    shutil.copytree(good, root / "good")
    for name in ("nul", "deep", "loop", "fifo", "train5", "huge"):
        shutil.copytree(good, root / "exp" / name)
    exp = root / "exp"
    _fifo(exp / "experiment.json")
    with open(exp / "nul" / "history.csv", "ab") as f:
        f.write(b"1,\x00\n")
    (exp / "deep" / "metrics.json").write_text('{"a":' * 100_000 + "1" + "}" * 100_000)
    (exp / "loop" / "history.csv").unlink()
    (exp / "loop" / "history.csv").symlink_to(exp / "loop" / "history.csv")
    (exp / "fifo" / "history.csv").unlink()
    _fifo(exp / "fifo" / "history.csv")
    (exp / "train5" / "config.toml").write_text("train = 5\n" + (good / "config.toml").read_text())
    metrics = json.loads((good / "metrics.json").read_text())
    metrics["confusion_test"] = np.zeros((300, 300), int).tolist()
    (exp / "huge" / "metrics.json").write_text(json.dumps(metrics))
    client = TestClient(create_app(root), base_url=BASE_URL)
    r = _returns_within(30, lambda: client.get("/api/runs"))
    assert r.status_code == 200
    rows = {row["id"]: row for row in r.json()["runs"]}
    assert rows["good"]["error"] is None and rows["good"]["status"] == "finished"
    assert rows["exp/train5"]["error"] is None
    for name, fragment in (("nul", "NUL"), ("deep", "nested"), ("huge", "confusion_test")):
        assert fragment in rows[f"exp/{name}"]["error"], name
    for name in ("nul", "deep", "loop", "fifo", "huge"):
        for url in ("/api/run", "/api/run/history"):
            got = _returns_within(
                30, lambda u=url, n=name: client.get(u, params={"id": f"exp/{n}"})
            )
            assert got.status_code in (200, 422), (name, url, got.status_code)
