"""``digitlab serve`` shows inside the network: per-layer statistics of a run (history columns
and the histogram range), hidden-layer activations and input-gradient saliency of a drawing."""

from __future__ import annotations

import io
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from serve_helpers import draw_digit, train_dead_relu_run, train_runs

pytest.importorskip("starlette")
pytest.importorskip("httpx")
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from digitlab.models.inspect import HIST_BINS, input_saliency  # noqa: E402
from digitlab.runfiles import load_run_checkpoint  # noqa: E402
from digitlab.serve import create_app  # noqa: E402

BASE = "http://127.0.0.1"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """Trained mlp/softmax/logistic runs and a ReLU run whose units were dead from the start."""
    root = tmp_path_factory.mktemp("runs")
    ids = train_runs(root)
    ids["dead"] = train_dead_relu_run(root)
    return root, ids


@pytest.fixture
def client(trained: tuple[Path, dict[str, str]]) -> TestClient:
    return TestClient(create_app(trained[0]), base_url=BASE)


def _image(png: bytes) -> np.ndarray:
    from digitlab.data.images import read_image, to_model_input

    return np.rint(to_model_input(read_image(io.BytesIO(png))) * 255).astype(np.uint8)


def test_history_carries_the_per_layer_statistics_of_a_dead_relu_run(client, trained) -> None:
    _, ids = trained
    cols = client.get("/api/run/history", params={"id": ids["dead"]}).json()["columns"]
    assert cols["a1_dead"] == [1.0, 1.0]  # planted: b1 = -10, every unit dead, nothing learns
    assert cols["W1_update_ratio"] == [0.0, 0.0] and cols["W1_grad_norm"] == [0.0, 0.0]
    assert len([k for k in cols if k.startswith("a1_hist")]) == HIST_BINS
    live = client.get("/api/run/history", params={"id": ids["mlp"]}).json()["columns"]
    assert max(live["a1_dead"]) < 0.5
    assert all(1e-4 < r < 1e-1 for r in live["W1_update_ratio"])
    for rid, lo_hi in ((ids["dead"], [0.0, 4.0]), (ids["softmax"], [-1.0, 1.0])):
        d = client.get("/api/run", params={"id": rid}).json()
        assert d["hist_range"] == lo_hi  # relu [0, 4]; the settings' default activation tanh


def test_predict_shows_the_mlp_hidden_layer_and_its_top_units(client, trained) -> None:
    root, ids = trained
    png = draw_digit(1)
    m = client.post("/api/predict", params={"ids": ids["mlp"]}, content=png).json()["models"][0]
    model, prep, _ = load_run_checkpoint(root / ids["mlp"] / "checkpoint.npz")
    X = prep.transform(_image(png)[None])
    (a,) = model.hidden_activations(X)
    (layer,) = m["hidden"]
    assert (layer["layer"], layer["units"], layer["activation"]) == (1, 64, "relu")
    assert np.allclose(np.array(layer["values"]) * layer["scale"], a[0], atol=2e-3 * a.max())
    top = [u["unit"] for u in layer["top"]]
    assert len(top) == 12 and top == list(np.argsort(-a[0], kind="stable")[:12])
    assert layer["active"] == pytest.approx((a[0] > 0).mean(), abs=1e-5)
    w = model.params["W1"][:, top[0]]
    assert np.allclose(layer["top"][0]["weights"], w / np.abs(w).max(), atol=1e-3)


def test_saliency_of_a_drawn_one_lies_on_its_stroke(client, trained) -> None:
    root, ids = trained
    png = draw_digit(1)
    r = client.post("/api/predict", params={"ids": ids["mlp"], "cls": "7"}, content=png)
    m = r.json()["models"][0]
    assert m["label"] == "1" and [s["class"] for s in m["saliency"]] == [1, 7]
    x = _image(png).reshape(-1) / 255.0
    model, prep, _ = load_run_checkpoint(root / ids["mlp"] / "checkpoint.npz")
    X = prep.transform(_image(png)[None])
    for s in m["saliency"]:
        grad = np.array(s["gradient"]) * s["gradient_scale"]
        # scale01: d feature / d intensity = 1, so the map is the model's input gradient
        want = input_saliency(model, X[0], s["class"])
        assert np.allclose(grad, want, atol=2e-3 * np.abs(want).max())
        attribution = np.abs(np.array(s["times_input"]) * s["times_input_scale"])
        assert np.allclose(attribution, np.abs(want * x), atol=2e-3 * np.abs(want * x).max())
        strongest = np.argsort(-attribution)[:30]
        assert (x[strongest] > 0.3).all()  # the strongest pixels are on the drawn stroke
    # the predicted class's evidence on the stroke is positive overall, the other class's less
    on = x > 0.3
    pred_share, other_share = (
        (np.array(s["times_input"]) * s["times_input_scale"])[on].sum() for s in m["saliency"]
    )
    assert pred_share > other_share


def test_linear_models_keep_their_evidence_and_get_a_saliency_map(client, trained) -> None:
    root, ids = trained
    run_ids = [ids["softmax"], ids["logistic"]]
    r = client.post("/api/predict", params={"ids": ",".join(run_ids), "cls": "3"},
                    content=draw_digit(0))  # fmt: skip
    soft, logi = r.json()["models"]
    assert soft["hidden"] == [] and len(soft["evidence"]) == 10
    model, _, _ = load_run_checkpoint(root / ids["softmax"] / "checkpoint.npz")
    for s in soft["saliency"]:  # a linear model's logit gradient is its weight column
        W = model.params["W"][:784, s["class"]]
        got = np.array(s["gradient"]) * s["gradient_scale"]
        assert np.allclose(got, W, atol=2e-3 * abs(W).max())
    three = logi["classes"].index("3")
    want = [logi["pred"]] + ([three] if three != logi["pred"] else [])
    assert [s["class"] for s in logi["saliency"]] == want
    assert logi["evidence"] is not None and logi["hidden"] == []


def test_predict_refuses_a_bad_class_parameter_and_ignores_unknown_classes(client, trained):
    rid = trained[1]["mlp"]
    r = client.post("/api/predict", params={"ids": rid, "cls": "x" * 65}, content=draw_digit(1))
    assert r.status_code == 400
    r = client.post("/api/predict", params={"ids": rid, "cls": "<b>"}, content=draw_digit(1))
    m = r.json()["models"][0]
    assert r.status_code == 200 and [s["class"] for s in m["saliency"]] == [m["pred"]]


def test_the_inside_views_write_nothing(trained, tmp_path) -> None:
    root, ids = trained
    shutil.copytree(root / ids["mlp"], tmp_path / "runs" / "a")
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("*")}
    client = TestClient(create_app(tmp_path / "runs"), base_url=BASE)
    assert client.get("/api/run", params={"id": "a"}).status_code == 200
    r = client.post("/api/predict", params={"ids": "a"}, content=draw_digit(0))
    assert r.status_code == 200
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("*")} == before


def test_hidden_layers_of_a_deeper_tanh_net() -> None:
    from digitlab.models import MLPModel
    from digitlab.serve.inside import MAX_LAYER_VALUES, TOP_UNITS, hidden_layers

    model = MLPModel(20, 3, (1500, 8), "tanh", rng=0)
    X = np.random.default_rng(0).random((1, 20)).astype(np.float32)
    first, second = hidden_layers(model, X, model.params["W1"])
    acts = model.hidden_activations(X)
    assert (first["units"], second["units"]) == (1500, 8)
    assert len(first["values"]) == MAX_LAYER_VALUES and len(second["values"]) == 8
    assert first["active"] is None  # "active" is a rectifier's notion
    values = [u["value"] for u in first["top"]]
    assert len(values) == TOP_UNITS and values == sorted(values, reverse=True)
    assert values[0] == pytest.approx(float(acts[0].max()), abs=1e-5)
    assert len(first["top"][0]["weights"]) == 20 and second["top"][0]["weights"] is None
    assert [u["unit"] for u in second["top"]] == list(np.argsort(-acts[1][0], kind="stable"))


def test_the_pages_ratio_band_is_the_library_one():
    import re
    from pathlib import Path

    from digitlab.models.inspect import RATIO_BAND

    js = (Path(__file__).parents[1] / "src/digitlab/serve/static/app.js").read_text()
    band = re.search(r"const RATIO_RANGE = \[([^\]]+)\];", js).group(1)
    assert tuple(float(v) for v in band.split(",")) == RATIO_BAND
