"""``digitlab serve`` against hostile run folders, pages of other origins and heavy uploads
(issue 25): one bad run is that run's error, data only from the server's own roots, values
escaped, foreign origins refused, uploads bounded."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest

from serve_helpers import draw_digit, write_synthetic_runs

pytest.importorskip("starlette")
pytest.importorskip("httpx")
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from digitlab.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from digitlab.cli import main  # noqa: E402
from digitlab.data import write_idx  # noqa: E402
from digitlab.errors import ServeError  # noqa: E402
from digitlab.serve import create_app  # noqa: E402
from digitlab.serve.app import STATIC, ClientLocks, host_names  # noqa: E402

BASE = "http://127.0.0.1"


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A softmax run folder trained on the embedded MNIST sample (mnist-5k)."""
    from digitlab.data import load
    from digitlab.runner import Settings, prepare_data, run

    settings = Settings.from_dict({"model": "softmax", "lr": 0.5, "epochs": 1, "holdout": 0.1})
    data = prepare_data(settings, dataset=load("mnist-5k"))
    root = tmp_path_factory.mktemp("runs")
    return run(settings, out=root, name="s", data=data).folder


@pytest.fixture(scope="module")
def other_mnist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root whose ``mnist`` is not the sample: 600 train / 300 test noise images."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    (root / "mnist").mkdir()
    for n, prefix in ((600, "train"), (300, "t10k")):
        x = rng.integers(0, 255, (n, 28, 28), dtype=np.uint8)
        write_idx(root / "mnist" / f"{prefix}-images-idx3-ubyte", x)
        y = (np.arange(n) % 10).astype(np.uint8)
        write_idx(root / "mnist" / f"{prefix}-labels-idx1-ubyte", y)
    return root


def client_of(root: Path, **kw) -> TestClient:
    return TestClient(create_app(root, **kw), base_url=BASE, raise_server_exceptions=False)


# ---------------------------------------------------------------------------------- bad runs
def plant_bad_runs(root: Path) -> dict[str, str]:
    ids = write_synthetic_runs(root, 7)
    bad = {
        "deep metrics": ids[0], "train = 5": ids[1], "NUL in history": ids[2],
        "history link loop": ids[3], "deep config": ids[4],
    }  # fmt: skip
    (root / ids[0] / "metrics.json").write_text("[" * 100_000 + "]" * 100_000)
    (root / ids[1] / "config.toml").write_text("train = 5\n")
    (root / ids[2] / "history.csv").write_bytes(b"step,val_acc\n1,0.5\x00\n2,\x00\n")
    (root / ids[3] / "history.csv").unlink()
    os.symlink("history.csv", root / ids[3] / "history.csv")
    (root / ids[4] / "config.toml").write_text("a = " + "[" * 50_000 + "]" * 50_000 + "\n")
    bad["fine"] = ids[5]
    return bad


def test_one_bad_run_is_that_runs_error_and_the_rest_keep_working(tmp_path) -> None:
    root = tmp_path / "runs"
    bad = plant_bad_runs(root)
    c = client_of(root)
    r = c.get("/api/runs")
    assert r.status_code == 200
    runs = {x["id"]: x for x in r.json()["runs"]}
    assert len(runs) == 7
    for what, rid in bad.items():
        if what == "fine":
            assert runs[rid]["error"] is None and runs[rid]["test_acc"] is not None
        elif what not in ("NUL in history", "train = 5", "history link loop"):
            # (a flat config.toml with a "train" key and a history.csv that loops are read
            # as a config of unknown settings and a run without history: not errors)
            assert runs[rid]["error"] and rid in runs[rid]["error"], what
        for endpoint in ("/api/run", "/api/run/history"):
            resp = c.get(endpoint, params={"id": rid})
            assert resp.status_code in (200, 422), (what, endpoint, resp.text[:200])
            assert "error" in resp.json() or "summary" in resp.json()
    assert c.get("/api/compare", params={"ids": ",".join(bad.values())}).status_code in (200, 422)


def test_a_string_where_a_number_belongs_is_not_sent_and_the_page_escapes_values(tmp_path):
    root = tmp_path / "runs"
    rid = write_synthetic_runs(root, 1)[0]
    markup = "<img src=x onerror=alert(1)>"
    (root / rid / "metrics.json").write_text(json.dumps({"steps": markup, "seconds": "abc",
                                                         "stop_reason": 5}))  # fmt: skip
    s = client_of(root).get("/api/runs").json()["runs"][0]
    # a metrics.json of the wrong types is refused as a whole (the row says so); the numbers
    # shown come from the history, and no string reaches the page where a number belongs
    assert s["error"] and "metrics.json" in s["error"]
    for key in ("steps", "seconds"):
        assert s[key] is None or isinstance(s[key], int | float)
    assert s["stop_reason"] is None
    js = (STATIC / "app.js").read_text()
    stat = re.search(r"const stat = \(label, value\) => `(.*)`;", js)
    assert stat and "${esc(value)}" in stat.group(1) and "${value}" not in stat.group(1)
    assert "${esc(c.show ? c.show(v) : fmt.value(v))}" in js  # every table cell escaped


# ---------------------------------------------------------------------------------- data
def test_a_data_root_written_in_a_checkpoint_is_never_read(
    sample_run, other_mnist, tmp_path, monkeypatch
) -> None:
    monkeypatch.delenv("DIGITLAB_DATA", raising=False)  # the server's data: the sample
    root = tmp_path / "runs"
    shutil.copytree(sample_run, root / "r")
    arrays, meta = load_checkpoint(root / "r" / "checkpoint.npz")
    meta["extra"]["settings"]["data_root"] = str(other_mnist)  # "/tmp/private"
    meta.pop("format"), meta.pop("format_version")
    save_checkpoint(root / "r" / "checkpoint.npz", arrays, meta)
    c = client_of(root)
    conf = c.get("/api/run/confusion", params={"id": "r"}).json()
    assert conf["error"] is None and "1000 test images (mnist-5k)" in conf["source"]
    assert sum(map(sum, conf["matrix"])) == 1000  # not the 300 private images


def test_a_run_on_the_sample_is_labelled_so_and_not_recomputed_on_other_data(
    sample_run, other_mnist, tmp_path
) -> None:
    root = tmp_path / "runs"
    shutil.copytree(sample_run, root / "r")
    c = client_of(root, data_root=str(other_mnist))  # like DIGITLAB_DATA with full MNIST
    assert c.get("/api/runs").json()["runs"][0]["settings"]["dataset"] == "mnist-5k"
    conf = c.get("/api/run/confusion", params={"id": "r"}).json()
    assert "trained on mnist-5k" in conf["error"]
    saved = json.loads((root / "r" / "metrics.json").read_text())["confusion_test"]
    assert conf["matrix"] == saved and conf["examples"] == {}
    r = c.get("/api/run/examples.png", params={"id": "r", "true": 3, "pred": 5})
    assert r.status_code == 404


def test_a_huge_image_shape_in_a_checkpoint_is_refused_before_allocating(sample_run, tmp_path):
    root = tmp_path / "runs"
    shutil.copytree(sample_run, root / "r")
    arrays, meta = load_checkpoint(root / "r" / "checkpoint.npz")
    meta["extra"]["image_shape"] = [20000, 20000]
    meta.pop("format"), meta.pop("format_version")
    save_checkpoint(root / "r" / "checkpoint.npz", arrays, meta)
    r = client_of(root).post("/api/predict", params={"ids": "r"}, content=draw_digit(1))
    assert r.status_code == 422 and "image_shape" in r.json()["error"]


# ---------------------------------------------------------------------------------- origins
def test_posts_from_another_origin_are_refused(sample_run, tmp_path) -> None:
    root = tmp_path / "runs"
    shutil.copytree(sample_run, root / "r")
    c = client_of(root)
    post = lambda **h: c.post("/api/predict", params={"ids": "r"}, content=draw_digit(1),  # noqa: E731
                              headers=h)  # fmt: skip
    assert post(origin="http://evil.example").status_code == 403
    assert post(origin="null").status_code == 403
    assert post(**{"sec-fetch-site": "cross-site"}).status_code == 403
    assert post(origin="http://127.0.0.1").status_code == 200  # the page's own origin
    assert post().status_code == 200  # curl, scripts


@pytest.mark.parametrize("host", ["127.0.0.2", "192.0.2.7", "0.0.0.0"])
def test_the_host_check_holds_for_any_interface(tmp_path, host) -> None:
    names = host_names(host)
    assert "*" not in names and "attacker.example" not in names
    c = TestClient(create_app(tmp_path, allowed_hosts=names), base_url=f"http://{names[0]}")
    assert c.get("/api/runs").status_code == 200
    assert c.get("/api/runs", headers={"host": "attacker.example"}).status_code == 400
    if host != "0.0.0.0":
        assert host in names


# ---------------------------------------------------------------------------------- uploads
def rgba_bomb(side: int = 6000) -> bytes:
    """A small, very compressible RGBA PNG of side x side pixels with a stroke in it."""
    from PIL import Image, ImageDraw

    im = Image.new("RGBA", (side, side), (255, 255, 255, 0))
    ImageDraw.Draw(im).line([(side // 2, side // 8), (side // 2, side * 7 // 8)],
                            fill=(0, 0, 0, 255), width=side // 14)  # fmt: skip
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def test_a_large_upload_is_reduced_while_still_8_bit(monkeypatch) -> None:
    from digitlab.serve.api import decode_upload

    body = rgba_bomb()
    assert len(body) < 300_000
    x = decode_upload(body)  # 36 MP RGBA: 576 MB as float32 channels before
    assert x.dtype == np.uint8 and max(x.shape[:2]) < 1024 and x.shape[2] == 4


def test_uploads_obey_digitlab_max_pixels(sample_run, tmp_path, monkeypatch) -> None:
    root = tmp_path / "runs"
    shutil.copytree(sample_run, root / "r")
    c = client_of(root)
    monkeypatch.setenv("DIGITLAB_MAX_PIXELS", "10000")  # 100 x 100
    r = c.post("/api/predict", params={"ids": "r"}, content=draw_digit(1, size=280))
    assert r.status_code == 422 and "10,000 accepted" in r.json()["error"]
    monkeypatch.setenv("DIGITLAB_MAX_PIXELS", "abc")
    with pytest.raises(Exception, match="DIGITLAB_MAX_PIXELS"):
        create_app(root)


def test_a_clients_uploads_are_decoded_one_at_a_time() -> None:
    locks = ClientLocks(wait_s=0.05)
    entered = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with locks.hold("10.0.0.1"):
            entered.set()
            release.wait(5)

    t = threading.Thread(target=hold)
    t.start()
    entered.wait(5)
    with pytest.raises(ServeError) as exc, locks.hold("10.0.0.1"):
        pass
    assert exc.value.status == 429
    with locks.hold("10.0.0.2"):  # another client is not held up
        pass
    release.set()
    t.join(5)
    with locks.hold("10.0.0.1"):
        pass


# ---------------------------------------------------------------------------------- CLI
@pytest.mark.parametrize("port", ["70000", "-1", "99999", "0", "x"])
def test_serve_port_out_of_range_is_one_line(capsys, port) -> None:
    assert main(["serve", "--port", port]) == 2
    err = capsys.readouterr().err.strip()
    assert "1..65535" in err and "\n" not in err


def test_serve_on_a_privileged_port_says_why(monkeypatch, capsys, tmp_path) -> None:
    import socket

    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(socket, "create_server", refuse)
    assert main(["serve", "--port", "80", "--runs", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "ports below 1024" in err and "--port 8000" in err and "\n" not in err
