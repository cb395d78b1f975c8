"""The sweep and experiment endpoints of ``digitlab serve`` (Starlette's TestClient): what a
λ × seed sweep differs in, its seed groups and their numbers, the CSV export, bounds and bad
ids; experiments with the report's own marks, figures served only from under the root."""

from __future__ import annotations

import csv
import io
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest

from sweep_helpers import (
    EPOCHS,
    LAMBDAS,
    SEEDS,
    make_experiment,
    markdown_table,
    run_values,
    write_lambda_sweep,
)

pytest.importorskip("starlette")
pytest.importorskip("httpx")
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from digitlab.serve import create_app  # noqa: E402
from digitlab.serve.runs import RunIndex  # noqa: E402
from digitlab.serve.sweeps import (  # noqa: E402
    MAX_SWEEP_RUNS,
    SweepCache,
    axis_of,
    safe_cell,
    sweep,
)

BASE = "http://127.0.0.1"


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[tuple, str]]:
    root = tmp_path_factory.mktemp("runs")
    return root, write_lambda_sweep(root)


@pytest.fixture
def client(swept) -> TestClient:
    return TestClient(create_app(swept[0]), base_url=BASE)


def error_of(r) -> str:
    body = r.json()
    assert set(body) == {"error"} and "\n" not in body["error"], body
    return body["error"]


# ---------------------------------------------------------------------------------- sweep
def test_sweep_lists_differing_settings_and_groups_runs_by_all_but_seed(client, swept) -> None:
    root, ids = swept
    data = client.get("/api/sweep", params={"prefix": "l2-sweep"}).json()
    assert [r["id"] for r in data["runs"]] == sorted(ids.values())
    assert data["differing"] == ["l2", "seed"]  # lr, batch, model, epochs are common
    assert data["group_keys"] == ["l2"]
    assert data["common"]["lr"] == 0.1 and "l2" not in data["common"]
    assert [g["key"] for g in data["groups"]] == [{"l2": lam} for lam in LAMBDAS]
    for g, lam in zip(data["groups"], LAMBDAS, strict=True):
        assert sorted(g["ids"]) == sorted(ids[(lam, s)] for s in SEEDS)
    for r in data["runs"]:
        assert r["settings"] == {"l2": r["settings"]["l2"], "seed": r["settings"]["seed"]}
        assert data["groups"][r["group"]]["key"]["l2"] == r["settings"]["l2"]
    # the same sweep from ids, in the order given
    picked = [ids[(0.1, 3)], ids[(0.0001, 1)]]
    by_ids = client.get("/api/sweep", params={"ids": ",".join(picked)}).json()
    assert [r["id"] for r in by_ids["runs"]] == picked


def test_group_mean_and_sd_per_lambda_are_the_seeds_sample_statistics(client, swept) -> None:
    data = client.get("/api/sweep", params={"prefix": "l2-sweep"}).json()
    for g, lam in zip(data["groups"], LAMBDAS, strict=True):
        tests = np.array([run_values(lam, s)[0] for s in SEEDS])
        stats = g["stats"]["test_acc"]
        assert stats["n"] == 3
        assert stats["mean"] == pytest.approx(tests.mean(), abs=1e-12)
        assert stats["sd"] == pytest.approx(tests.std(ddof=1), abs=1e-12)
        assert stats["sd"] > 0 and (stats["min"], stats["max"]) == (tests.min(), tests.max())
        vals = np.array([run_values(lam, s)[1][-1] for s in SEEDS])
        assert g["stats"]["val_acc"]["mean"] == pytest.approx(vals.mean(), abs=1e-12)


def test_axes_log_linear_and_ordinal() -> None:
    assert axis_of([0.0001, 0.001, 0.1])["kind"] == "log"  # 3 decades
    assert axis_of([0.01, 0.5])["kind"] == "linear"  # 1.7 decades
    zero = axis_of([0.0, 1e-4, 1e-2, None])
    assert zero == {"kind": "log", "min": 1e-4, "max": 1e-2, "nonpositive": True}
    cat = axis_of(["sgd", "adam", None, "sgd", [64, 32], True])
    assert cat["kind"] == "ordinal"
    assert cat["labels"] == ["[64,32]", "adam", "sgd", "true", "–"]
    shown = [cat["labels"][c] for c in cat["codes"]]
    assert shown == ["sgd", "adam", "–", "sgd", "[64,32]", "true"]
    assert axis_of([2, "10", 1])["labels"] == ["1", "2", "10"]  # numbers in numeric order


def test_sweep_axes_of_the_lambda_sweep(client) -> None:
    data = client.get("/api/sweep", params={"prefix": "l2-sweep"}).json()
    assert data["axes"]["l2"] == {"kind": "log", "min": 0.0001, "max": 0.1, "nonpositive": False}
    assert data["axes"]["seed"] == {"kind": "linear", "min": 1, "max": 3}
    assert set(data["metric_axes"]) == set(data["metrics"]) >= {"test_acc", "val_acc", "val_loss"}
    assert data["metrics"][:2] == ["test_acc", "val_acc"]


def test_curves_are_mean_and_sd_over_seeds_at_each_epoch(client) -> None:
    data = client.get("/api/sweep/curves", params={"prefix": "l2-sweep", "column": "val_acc"})
    data = data.json()
    assert data["x"] == "epoch" and {"val_acc", "val_loss"} <= set(data["columns"])
    for g, lam in zip(data["groups"], LAMBDAS, strict=True):
        curves = np.array([run_values(lam, s)[1] for s in SEEDS])  # (3, EPOCHS)
        assert g["x"] == list(range(1, EPOCHS + 1)) and g["n"] == [3] * EPOCHS
        np.testing.assert_allclose(g["mean"], curves.mean(axis=0), atol=1e-12)
        np.testing.assert_allclose(g["sd"], curves.std(axis=0, ddof=1), atol=1e-12)
    r = client.get("/api/sweep/curves", params={"prefix": "l2-sweep", "column": "../x"})
    assert r.status_code == 400 and "column" in error_of(r)


# ---------------------------------------------------------------------------------- CSV
def test_csv_has_one_row_per_run_and_neutralises_formulas(tmp_path) -> None:
    notes = ["=HYPERLINK(\"http://x\")", "+SUM(A1)", "-2+3", "@cmd", "\tx", "plain, \"quoted\""]
    for i, note in enumerate(notes):
        run = tmp_path / "csv" / f"r{i}"
        run.mkdir(parents=True)
        (run / "config.toml").write_text(f"lr = {-0.5 + i}\nnote = {json.dumps(note)}\nseed = 1\n")
        (run / "metrics.json").write_text(json.dumps({"test_acc": 0.5 + i / 100}))
    c = TestClient(create_app(tmp_path), base_url=BASE)
    r = c.get("/api/sweep.csv", params={"prefix": "csv"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert "attachment" in r.headers["content-disposition"]
    rows = list(csv.reader(io.StringIO(r.text)))
    assert rows[0] == ["id", "lr", "note", "status", "group", "test_acc"]
    assert [row[2] for row in rows[1:]] == ["'" + n if n[0] in "=+-@\t" else n for n in notes]
    assert [row[1] for row in rows[1:]] == [str(-0.5 + i) for i in range(len(notes))]  # numbers
    assert [float(row[5]) for row in rows[1:]] == [0.5 + i / 100 for i in range(len(notes))]
    assert safe_cell("=1") == "'=1" and safe_cell(-1.5) == -1.5 and safe_cell([1, 2]) == "[1,2]"


def test_csv_and_json_hold_the_same_table(client) -> None:
    data = client.get("/api/sweep", params={"prefix": "l2-sweep"}).json()
    rows = list(csv.reader(io.StringIO(client.get("/api/sweep.csv?prefix=l2-sweep").text)))
    assert len(rows) == 1 + 12
    col = rows[0].index("test_acc")
    assert [float(r[col]) for r in rows[1:]] == [r["metrics"]["test_acc"] for r in data["runs"]]


# ---------------------------------------------------------------------------------- bounds
def test_bad_ids_prefixes_and_too_many_runs_are_one_line_errors(client, swept, tmp_path) -> None:
    root, ids = swept
    some = ids[(0.1, 1)]
    cases = [
        ({"ids": f"{some},../outside"}, 403),
        ({"ids": f"{some},/etc"}, 403),
        ({"ids": f"{some},no-such-run"}, 404),
        ({"prefix": "../"}, 403),
        ({"prefix": "l2-sweep/../.."}, 403),
        ({"prefix": "nothing-here"}, 404),
        ({}, 400),
    ]
    for params, status in cases:
        for path in ("/api/sweep", "/api/sweep.csv", "/api/sweep/curves"):
            r = client.get(path, params=params)
            assert r.status_code == status, (path, params, r.text)
            error_of(r)
    too_many = ",".join([some] * 3 + [f"x{i}" for i in range(MAX_SWEEP_RUNS)])
    r = client.get("/api/sweep", params={"ids": too_many})
    assert r.status_code == 400 and str(MAX_SWEEP_RUNS) in error_of(r)
    # exactly the bound is fine (repeated ids count once)
    index = RunIndex(root)
    assert len(sweep(index, SweepCache(), [some] * (MAX_SWEEP_RUNS + 10))["runs"]) == 1
    os.symlink(tmp_path, root / "link-out")
    r = client.get("/api/sweep", params={"ids": "link-out"})
    assert r.status_code == 403 and "outside" in error_of(r)
    os.unlink(root / "link-out")


def test_a_run_with_bad_files_is_its_own_error(tmp_path) -> None:
    root = tmp_path / "runs"
    ids = write_lambda_sweep(root)
    bad_metrics, bad_config = root / ids[(0.1, 1)], root / ids[(0.1, 2)]
    (bad_metrics / "metrics.json").write_text("{not json")
    (bad_config / "config.toml").write_text("lr = = 1")
    data = TestClient(create_app(root), base_url=BASE).get("/api/sweep?prefix=l2-sweep").json()
    listed = {r["id"]: r for r in data["runs"]}
    assert ids[(0.1, 2)] not in listed and [e["id"] for e in data["errors"]] == [ids[(0.1, 2)]]
    no_metrics = listed[ids[(0.1, 1)]]
    assert no_metrics["metrics"] == {} and "metrics.json" in no_metrics["error"]
    assert data["differing"] == ["l2", "seed"]  # the unreadable config adds no fake difference
    assert data["groups"][-1]["stats"]["test_acc"]["n"] == 1  # only seed 3 of λ = 0.1 counts


# ---------------------------------------------------------------------------------- experiments
@pytest.fixture(scope="module")
def reported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from digitlab.report import write_report

    root = tmp_path_factory.mktemp("exp-runs")
    make_experiment(root)
    write_report(root)
    return root


def mark_text(cell) -> str:
    return f"{cell['symbol']} {cell['status']}" if isinstance(cell, dict) else cell


def test_experiment_marks_are_the_reports(reported) -> None:
    c = TestClient(create_app(reported), base_url=BASE)
    listed = c.get("/api/experiments").json()["experiments"]
    assert [e["id"] for e in listed] == ["tiny"]
    assert listed[0]["statuses"] == ["meets", "within", "outside", "missing"]
    md = (reported / "report.md").read_text()
    summary = markdown_table(md, "## Summary")
    assert listed[0]["summary"]["rows"] == summary
    columns = listed[0]["summary"]["header"]
    assert summary[0][columns.index("✓ or ≈")] == "2/4"  # meets and within of four rows
    assert summary[0][columns.index("headline (published → reproduced)")].startswith("50.00% → ")
    page = c.get("/api/experiment", params={"id": "tiny"}).json()
    rows = [[mark_text(x) for x in row] for row in page["published"]["rows"]]
    assert rows == markdown_table(md, "### Published vs reproduced")
    assert page["members_table"]["rows"] == markdown_table(md, "### Settings")
    assert page["member_runs"] == [[f"tiny/{m}"] for m in ("l2-0.0", "l2-0.01", "l2-1.0")]


def test_experiment_figures_are_only_the_listed_files_under_the_root(reported, tmp_path) -> None:
    c = TestClient(create_app(reported), base_url=BASE)
    page = c.get("/api/experiment", params={"id": "tiny"}).json()
    assert [(f["kind"], f["files"]) for f in page["figures"]] == [
        ("curves", ["curves.png", "curves.svg"]),
        ("sweep", ["sweep.png", "sweep.svg"]),
    ]
    png = c.get("/api/experiment/file", params={"id": "tiny", "name": "curves.png"})
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
    assert png.content == (reported / "tiny" / "figures" / "curves.png").read_bytes()
    svg = c.get("/api/experiment/file", params={"id": "tiny", "name": "sweep.svg"})
    assert svg.headers["content-type"].startswith("image/svg+xml") and b"<svg" in svg.content
    for name in ("../experiment.json", "/etc/passwd", "experiment.json", "weights.png", ""):
        r = c.get("/api/experiment/file", params={"id": "tiny", "name": name})
        assert r.status_code == 404, name
        error_of(r)
    for exp_id, status in (("..", 403), ("../tiny", 404), ("nope", 404), (".hidden", 403)):
        assert c.get("/api/experiment", params={"id": exp_id}).status_code == status, exp_id
    # a listed figure that is a link out of the root is refused
    figures = reported / "tiny" / "figures"
    outside = tmp_path / "secret.png"
    outside.write_bytes(b"\x89PNG secret")
    (figures / "curves.svg").rename(tmp_path / "kept.svg")
    os.symlink(outside, figures / "curves.svg")
    try:
        r = c.get("/api/experiment/file", params={"id": "tiny", "name": "curves.svg"})
        assert r.status_code == 403 and b"secret" not in r.content
        page = c.get("/api/experiment", params={"id": "tiny"}).json()
        assert page["figures"][0]["files"] == ["curves.png"]
    finally:
        os.unlink(figures / "curves.svg")
        (tmp_path / "kept.svg").rename(figures / "curves.svg")


def test_a_bad_or_linked_experiment_folder(reported, tmp_path) -> None:
    bad = reported / "broken"
    bad.mkdir()
    (bad / "experiment.json").write_text('{"members": 3}')
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "experiment.json").write_text("{}")
    os.symlink(outside, reported / "linked")
    try:
        c = TestClient(create_app(reported), base_url=BASE)
        listed = {e["id"]: e for e in c.get("/api/experiments").json()["experiments"]}
        assert set(listed) == {"tiny", "broken"}  # the link out is not listed
        assert "members" in listed["broken"]["error"] and listed["tiny"]["error"] is None
        r = c.get("/api/experiment", params={"id": "broken"})
        assert r.status_code == 422 and str(reported) not in error_of(r)
        r = c.get("/api/experiment", params={"id": "linked"})
        assert r.status_code == 403 and "outside" in error_of(r)
    finally:
        os.unlink(reported / "linked")
        (bad / "experiment.json").unlink()
        bad.rmdir()


def test_the_pages_scripts_are_served_offline(client) -> None:
    page = client.get("/").text
    assets = ("chart-options.js", "sweeps.js", "experiments.js", "sweeps.css")
    text = page
    for asset in assets:
        assert f"/static/{asset}" in page
        r = client.get(f"/static/{asset}")
        assert r.status_code == 200
        text += r.text
    assert "http://" not in text.replace("http://www.w3.org", "") and "https://" not in text
    assert "innerHTML = " in text and "${r.id}" not in text  # ids reach the page escaped only
