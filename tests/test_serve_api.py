"""HTTP tests of ``digitlab serve``'s JSON/PNG endpoints (Starlette's TestClient)."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from serve_helpers import draw_digit, train_runs, write_synthetic_runs

pytest.importorskip("starlette")
pytest.importorskip("httpx")
with warnings.catch_warnings():  # starlette's notice about httpx vs httpx2
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from digitlab.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from digitlab.cli import main  # noqa: E402
from digitlab.runfiles import read_history  # noqa: E402
from digitlab.serve import create_app  # noqa: E402
from digitlab.serve.api import MAX_UPLOAD_BYTES  # noqa: E402
from digitlab.serve.png import encode_png  # noqa: E402

BASE = "http://127.0.0.1"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A runs root with trained mlp/softmax/logistic runs and an experiment member."""
    root = tmp_path_factory.mktemp("runs")
    ids = train_runs(root)
    exp = root / "my-exp"
    shutil.copytree(root / ids["softmax"], exp / "lr-0.5")
    (exp / "experiment.json").write_text(
        json.dumps({"name": "my-exp", "members": [{"folder": "lr-0.5", "label": "lr 0.5"}]})
    )
    ids["member"] = "my-exp/lr-0.5"
    return root, ids


@pytest.fixture
def client(trained: tuple[Path, dict[str, str]]) -> TestClient:
    return TestClient(create_app(trained[0]), base_url=BASE)


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.lstat().st_mtime_ns, p.lstat().st_size) for p in sorted(root.rglob("*"))}


# ---------------------------------------------------------------------------------- runs
def test_runs_lists_every_run_with_status_and_experiment_member(client, trained) -> None:
    root, ids = trained
    runs = {r["id"]: r for r in client.get("/api/runs").json()["runs"]}
    assert set(runs) == set(ids.values())
    mlp = runs[ids["mlp"]]
    metrics = json.loads((root / ids["mlp"] / "metrics.json").read_text())
    assert mlp["status"] == "finished" and mlp["has_checkpoint"]
    assert mlp["test_acc"] == metrics["test_acc"]
    assert mlp["settings"]["model"] == "mlp" and mlp["settings"]["hidden"] == [64]
    history = read_history(root / ids["mlp"] / "history.csv")
    assert mlp["best_val_acc"] == max(history["val_acc"])
    assert mlp["n_evals"] == 6
    member = runs["my-exp/lr-0.5"]
    assert (member["experiment"], member["member"]) == ("my-exp", "lr 0.5")


def test_new_running_failed_and_early_stopped_runs_are_picked_up(trained, tmp_path) -> None:
    root = tmp_path / "runs"
    shutil.copytree(trained[0] / trained[1]["softmax"], root / "a" / "done")
    client = TestClient(create_app(root), base_url=BASE)
    assert [r["id"] for r in client.get("/api/runs").json()["runs"]] == ["a/done"]
    src = trained[0] / trained[1]["softmax"]
    for name in ("running", "failed", "early"):
        (root / "a" / name).mkdir()
        shutil.copy(src / "config.toml", root / "a" / name)
        shutil.copy(src / "history.csv", root / "a" / name)
    old = time.time() - 86400
    for f in (root / "a" / "failed").iterdir():
        os.utime(f, (old, old))
    metrics = json.loads((src / "metrics.json").read_text()) | {"early_stopped": True}
    (root / "a" / "early" / "metrics.json").write_text(json.dumps(metrics))
    runs = {r["id"]: r["status"] for r in client.get("/api/runs").json()["runs"]}
    assert runs == {
        "a/done": "finished",
        "a/running": "running",
        "a/failed": "failed",
        "a/early": "stopped early",
    }


def test_scan_returns_the_same_list_until_a_run_changes(trained, tmp_path) -> None:
    from digitlab.serve.runs import RunIndex

    src = trained[0] / trained[1]["softmax"]
    shutil.copytree(src, tmp_path / "runs" / "a")
    index = RunIndex(tmp_path / "runs")
    first = index.scan()
    assert index.scan() is first
    lines = (src / "history.csv").read_text().splitlines(keepends=True)
    with open(tmp_path / "runs" / "a" / "history.csv", "a") as f:
        f.write(lines[-1])
    second = index.scan()
    assert second is not first and second[0]["n_evals"] == first[0]["n_evals"] + 1
    shutil.copytree(src, tmp_path / "runs" / "b")
    assert [r["id"] for r in index.scan()] == ["a", "b"]


def test_history_follows_a_growing_file_and_skips_a_half_written_row(trained, tmp_path) -> None:
    src = trained[0] / trained[1]["softmax"]
    run = tmp_path / "runs" / "live"
    run.mkdir(parents=True)
    shutil.copy(src / "config.toml", run)
    lines = (src / "history.csv").read_text().splitlines(keepends=True)
    (run / "history.csv").write_text("".join(lines[:2]))
    client = TestClient(create_app(tmp_path / "runs"), base_url=BASE)
    first = client.get("/api/run/history", params={"id": "live"}).json()
    assert first["status"] == "running" and len(first["columns"]["step"]) == 1
    with open(run / "history.csv", "a") as f:
        f.write(lines[2] + lines[3][:10])  # one full row, one being written
    cols = client.get("/api/run/history", params={"id": "live"}).json()["columns"]
    assert cols["step"] == [float(lines[i].split(",")[0]) for i in (1, 2)]


def test_run_detail_has_settings_metrics_and_weight_titles(client, trained) -> None:
    root, ids = trained
    d = client.get("/api/run", params={"id": ids["softmax"]}).json()
    assert d["config"]["lr"] == 0.5 and d["metrics"]["test_acc"] == d["test_acc"]
    assert d["weights"] == [str(i) for i in range(10)]
    assert client.get("/api/run", params={"id": ids["logistic"]}).json()["weights"] == ["2 vs 3"]
    assert len(client.get("/api/run", params={"id": ids["mlp"]}).json()["weights"]) == 25


def test_weights_png_is_the_weight_image(client, trained) -> None:
    from PIL import Image

    from digitlab.runfiles import load_run_checkpoint

    root, ids = trained
    r = client.get("/api/run/weights.png", params={"id": ids["softmax"], "unit": 7})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    img = np.asarray(Image.open(io.BytesIO(r.content)))
    assert img.shape == (28, 28, 3)
    model, _, _ = load_run_checkpoint(root / ids["softmax"] / "checkpoint.npz")
    w = model.params["W"][:, 7].reshape(28, 28)
    red = (img[..., 0].astype(int) - img[..., 2]) > 0  # reddish pixels = positive weights
    strong = np.abs(w) > 0.2 * np.abs(w).max()
    assert np.array_equal(red[strong], (w > 0)[strong])
    for unit, status in ((10, 404), (-1, 404), ("x", 400)):
        r = client.get("/api/run/weights.png", params={"id": ids["softmax"], "unit": unit})
        assert r.status_code == status


def test_png_encoder_round_trips() -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for shape in ((5, 7), (3, 4, 3)):
        img = rng.integers(0, 256, shape, dtype=np.uint8)
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(encode_png(img)))), img)


def test_confusion_matches_metrics_and_lists_misclassified_examples(client, trained) -> None:
    from PIL import Image

    root, ids = trained
    c = client.get("/api/run/confusion", params={"id": ids["mlp"]}).json()
    metrics = json.loads((root / ids["mlp"] / "metrics.json").read_text())
    assert c["error"] is None and c["matrix"] == metrics["confusion_test"]
    m = np.array(c["matrix"])
    for key, idx in c["examples"].items():
        t, p = map(int, key.split(","))
        assert t != p and len(idx) == min(m[t, p], 48)
    key = max(c["examples"], key=lambda k: len(c["examples"][k]))
    t, p = key.split(",")
    r = client.get("/api/run/examples.png", params={"id": ids["mlp"], "true": t, "pred": p})
    img = np.asarray(Image.open(io.BytesIO(r.content)))
    n = len(c["examples"][key])
    assert img.shape[1] == min(n, 12) * 30 - 2  # 28-pixel tiles, 2-pixel gaps
    r = client.get("/api/run/examples.png", params={"id": ids["mlp"], "true": 3, "pred": 3})
    assert r.status_code == 404


def test_confusion_says_why_when_the_test_data_cannot_be_loaded(trained, tmp_path) -> None:
    root, ids = trained
    run = tmp_path / "runs" / "elsewhere"
    shutil.copytree(root / ids["softmax"], run)
    arrays, meta = load_checkpoint(run / "checkpoint.npz")
    meta["extra"]["settings"] |= {"dataset": "mnist", "data_root": str(tmp_path / "nowhere")}
    meta.pop("format"), meta.pop("format_version")
    save_checkpoint(run / "checkpoint.npz", arrays, meta)
    # the data is looked for where the server was told, never where a checkpoint says
    app = create_app(tmp_path / "runs", data_root=str(tmp_path / "server-data"))
    c = TestClient(app, base_url=BASE).get("/api/run/confusion", params={"id": "elsewhere"})
    c = c.json()
    assert "cannot load the test split" in c["error"] and "server-data" in c["error"]
    assert "nowhere" not in c["error"]
    assert c["matrix"] == json.loads((run / "metrics.json").read_text())["confusion_test"]
    assert c["examples"] == {}


def test_compare_lists_the_settings_that_differ(client, trained) -> None:
    ids = trained[1]
    d = client.get("/api/compare", params={"ids": f"{ids['mlp']},{ids['softmax']}"}).json()
    assert {"model", "lr", "momentum", "epochs"} <= set(d["differing"])
    assert "batch" not in d["differing"] and "dataset" not in d["differing"]
    assert [r["id"] for r in d["runs"]] == [ids["mlp"], ids["softmax"]]
    assert client.get("/api/compare").status_code == 400


def test_nan_in_metrics_is_sent_as_null(trained, tmp_path) -> None:
    src = trained[0] / trained[1]["softmax"]
    run = tmp_path / "runs" / "nan"
    shutil.copytree(src, run)
    (run / "metrics.json").write_text('{"val_acc": NaN, "test_acc": 0.5, "val_loss": Infinity}')
    client = TestClient(create_app(tmp_path / "runs"), base_url=BASE)
    r = client.get("/api/run", params={"id": "nan"})
    assert "NaN" not in r.text and "Infinity" not in r.text
    assert r.json()["metrics"]["val_acc"] is None


# ---------------------------------------------------------------------------------- predict
def test_predict_draws_one_and_zero(client, trained) -> None:
    ids = trained[1]
    for digit in (1, 0):
        r = client.post("/api/predict", params={"ids": ids["mlp"]}, content=draw_digit(digit))
        d = r.json()
        assert r.status_code == 200, d
        (m,) = d["models"]
        assert m["label"] == str(digit)
        assert abs(sum(m["probs"]) - 1) < 1e-5 and m["pred"] == int(np.argmax(m["probs"]))
        assert np.array(d["image"]).shape == (28, 28) and d["shape"] == [28, 28]


def test_predict_agrees_with_the_model_on_the_preprocessed_image(client, trained) -> None:
    from digitlab.data.images import read_image, to_model_input
    from digitlab.runfiles import load_run_checkpoint

    root, ids = trained
    png = draw_digit(0)
    run_ids = [ids["softmax"], ids["logistic"], ids["mlp"]]
    d = client.post("/api/predict", params={"ids": ",".join(run_ids)}, content=png).json()
    x = np.rint(to_model_input(read_image(io.BytesIO(png))) * 255).astype(np.uint8)
    assert np.allclose(np.array(d["image"]), x / 255, atol=1e-4)
    for rid, m in zip(run_ids, d["models"], strict=True):
        model, prep, _ = load_run_checkpoint(root / rid / "checkpoint.npz")
        X = prep.transform(x[None])
        assert m["pred"] == int(model.predict(X)[0])
        if model.kind == "mlp":
            assert m["evidence"] is None
            continue
        # evidence maps add up (with the bias) to the logits
        logits = np.atleast_1d(model.logits(X)[0])
        total = np.array(m["evidence"]).sum(axis=1) + np.array(m["evidence_bias"])
        assert np.allclose(total, logits, atol=1e-3)
        assert len(m["evidence"]) == (1 if model.kind == "logistic" else 10)


def test_predict_gives_the_class_of_digitlab_predict(client, trained, tmp_path) -> None:
    root, ids = trained
    folder = tmp_path / "images"
    folder.mkdir()
    for digit in (0, 1):
        (folder / f"{digit}.png").write_bytes(draw_digit(digit))
    out = tmp_path / "pred.csv"
    checkpoint = root / ids["mlp"] / "checkpoint.npz"
    assert main(["predict", str(checkpoint), str(folder), "-o", str(out)]) == 0
    cli = [line.split(",")[1] for line in out.read_text().splitlines()[1:]]
    web = []
    for d in (0, 1):
        r = client.post("/api/predict", params={"ids": ids["mlp"]}, content=draw_digit(d))
        web.append(r.json()["models"][0]["label"])
    assert cli == web == ["0", "1"]


def test_predict_refuses_bad_uploads(client, trained) -> None:
    rid = trained[1]["mlp"]
    big = b"\x89PNG" + b"\0" * MAX_UPLOAD_BYTES
    r = client.post("/api/predict", params={"ids": rid}, content=big)
    assert r.status_code == 413 and "larger than" in r.json()["error"]

    def chunks():  # no Content-Length: the limit holds while reading
        for _ in range(40):
            yield b"\0" * 65536

    r = client.post("/api/predict", params={"ids": rid}, content=chunks())
    assert r.status_code == 413
    r = client.post("/api/predict", params={"ids": rid}, content=b"not an image")
    assert r.status_code == 422 and "cannot read the image" in r.json()["error"]
    r = client.post("/api/predict", params={"ids": rid}, content=b"")
    assert r.status_code == 400
    blank = io.BytesIO()
    from PIL import Image

    Image.new("L", (50, 50), 255).save(blank, "PNG")
    r = client.post("/api/predict", params={"ids": rid}, content=blank.getvalue())
    assert r.status_code == 422 and "no ink" in r.json()["error"]
    assert client.post("/api/predict", content=draw_digit(1)).status_code == 400
    assert client.get("/api/predict").status_code == 405


def test_a_decompression_bomb_is_refused_before_decoding(client, trained) -> None:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("1", (10_000, 10_000), 1).save(buf, "PNG")  # 100 Mpixel, a few kB compressed
    assert len(buf.getvalue()) < MAX_UPLOAD_BYTES
    r = client.post("/api/predict", params={"ids": trained[1]["mlp"]}, content=buf.getvalue())
    assert r.status_code == 422 and "pixels" in r.json()["error"]


# ---------------------------------------------------------------------------------- security
@pytest.mark.parametrize(
    "run_id",
    [
        "..",
        "../runs",
        "/etc",
        "/etc/passwd",
        "a/../../x",
        "mlp/../..",
        "./mlp",
        "mlp//x",
        "a\\..\\b",
        "x\x00y",
    ],  # fmt: skip
)
def test_traversal_ids_are_refused(client, run_id) -> None:
    for url in ("/api/run", "/api/run/history", "/api/run/confusion"):
        r = client.get(url, params={"id": run_id})
        assert r.status_code in (403, 404), (url, run_id)
        assert "error" in r.json()


def test_encoded_traversal_in_the_url_is_refused(client, trained) -> None:
    for raw in (
        "/api/run?id=..%2F..%2Fetc",
        "/api/run?id=%2e%2e/%2e%2e",
        "/api/run?id=%2Fetc",
        "/static/../app.py",
        "/static/%2e%2e/app.py",
        "/static/..%2Fapp.py",
        "/static/%2e%2e%2f%2e%2e%2fpyproject.toml",
    ):
        r = client.get(raw)
        assert r.status_code in (403, 404), raw
        assert "Starlette" not in r.text and "def create_app" not in r.text


def test_symlinks_out_of_the_root_are_refused(trained, tmp_path) -> None:
    root, ids = trained
    runs = tmp_path / "runs"
    runs.mkdir()
    outside = tmp_path / "outside"
    shutil.copytree(root / ids["softmax"], outside)
    (runs / "escape").symlink_to(outside, target_is_directory=True)
    inner = runs / "inner"
    shutil.copytree(root / ids["softmax"], inner)
    (inner / "checkpoint.npz").unlink()
    (inner / "checkpoint.npz").symlink_to(outside / "checkpoint.npz")
    (inner / "history.csv").unlink()
    (inner / "history.csv").symlink_to("/etc/passwd")
    client = TestClient(create_app(runs), base_url=BASE)
    assert [r["id"] for r in client.get("/api/runs").json()["runs"]] == ["inner"]
    assert client.get("/api/run", params={"id": "escape"}).status_code == 403
    assert client.get("/api/run/history", params={"id": "inner"}).status_code == 403
    assert client.get("/api/run/weights.png", params={"id": "inner", "unit": 0}).status_code == 403
    r = client.post("/api/predict", params={"ids": "inner"}, content=draw_digit(1))
    assert r.status_code == 403


def test_only_local_host_names_are_served(client) -> None:
    assert client.get("/api/runs", headers={"host": "attacker.example"}).status_code == 400
    assert client.get("/api/runs", headers={"host": "localhost:8000"}).status_code == 200


def test_pages_and_assets_are_served_with_a_strict_policy(client) -> None:
    r = client.get("/")
    assert r.status_code == 200 and '<script src="/static/app.js">' in r.text
    assert "script-src 'self'" in r.headers["content-security-policy"]
    for asset in ("app.js", "style.css"):
        assert client.get(f"/static/{asset}").status_code == 200
    text = r.text + client.get("/static/app.js").text + client.get("/static/style.css").text
    assert "http://" not in text.replace("http://www.w3.org", "") and "https://" not in text


def test_the_server_writes_nothing(trained) -> None:
    root, ids = trained
    before = snapshot(root)
    client = TestClient(create_app(root), base_url=BASE)
    client.get("/api/runs")
    for rid in ids.values():
        for url in ("/api/run", "/api/run/history", "/api/run/confusion"):
            client.get(url, params={"id": rid})
        client.get("/api/run/weights.png", params={"id": rid, "unit": 0})
        client.post("/api/predict", params={"ids": rid}, content=draw_digit(1))
    assert snapshot(root) == before


def test_a_thousand_runs_are_listed(tmp_path) -> None:
    ids = write_synthetic_runs(tmp_path / "runs", 1000, evals=5)
    client = TestClient(create_app(tmp_path / "runs"), base_url=BASE)
    runs = client.get("/api/runs").json()["runs"]
    assert [r["id"] for r in runs] == sorted(ids)
    assert all(r["status"] == "finished" and r["n_evals"] == 5 for r in runs)
    (tmp_path / "runs" / ids[10] / "metrics.json").unlink()  # picked up on the next request
    again = {r["id"]: r for r in client.get("/api/runs").json()["runs"]}
    assert again[ids[10]]["status"] == "running" and again[ids[11]]["status"] == "finished"


# ---------------------------------------------------------------------------------- CLI
def test_serve_command_errors_are_one_line(tmp_path, capsys) -> None:
    (tmp_path / "file").write_text("x")
    assert main(["serve", "--runs", str(tmp_path / "file")]) == 2
    assert "not a folder" in capsys.readouterr().err
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["serve", "--runs", str(tmp_path), "--port", str(port)]) == 2
    assert "cannot listen on 127.0.0.1" in capsys.readouterr().err
