"""Training from the browser (``digitlab serve --allow-train``) through its API: off by default,
token, origin and host checked, settings validated as the command line does before anything
is written, one run at a time, and a run stopped and resumed from the API bit-identical to
``digitlab train`` + ``digitlab resume``."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from process_helpers import gone_within, start_parent
from train_helpers import (
    LONG_RUN,
    MORE_EPOCHS,
    RESUME,
    TOKEN,
    assert_same_arrays,
    cli_reference,
    progress,
    wait_for,
)

pytest.importorskip("starlette")
pytest.importorskip("httpx")
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from digitlab.cli import main  # noqa: E402
from digitlab.serve import create_app  # noqa: E402
from digitlab.serve.training import OFF, schema  # noqa: E402
from digitlab.settings import SPECS  # noqa: E402

BASE = "http://127.0.0.1"
AUTH = {"X-Digitlab-Token": TOKEN}
POSTS = ("start", "stop", "resume")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "runs"


@pytest.fixture
def client(root: Path) -> Iterator[TestClient]:
    app = create_app(root, allow_train=True, token=TOKEN)
    yield TestClient(app, base_url=BASE)
    app.state.train_jobs.close(wait_s=30)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A runs root holding one finished softmax run (1 epoch on the sample); its id."""
    from digitlab.runner import Settings, run

    root = tmp_path_factory.mktemp("runs")
    settings = Settings.from_dict({"dataset": "mnist-5k", "model": "softmax", "epochs": 1})
    result = run(settings, out=root, name="done")
    return root, result.folder.relative_to(root).as_posix()


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def one_line_error(r, status: int) -> str:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error and "\n" not in error
    return error


def job(client: TestClient) -> dict | None:
    return client.get("/api/train/status").json()["job"]


def start(client: TestClient, name: str, settings: dict, **headers: str):
    return client.post("/api/train/start", json={"name": name, "settings": settings},
                       headers={**AUTH, **headers})  # fmt: skip


def wait_done(client: TestClient) -> dict:
    return wait_for(lambda: (j := job(client)) and j["state"] not in ("running", "stopping") and j,
                    "the training child to exit")  # fmt: skip


def history_rows(client: TestClient) -> int:
    j = job(client)
    if not j or not j["run_id"]:
        return 0
    r = client.get("/api/run/history", params={"id": j["run_id"]})
    return len(r.json()["columns"].get("step", [])) if r.status_code == 200 else 0


# ---------------------------------------------------------------------------------- off
def test_without_allow_train_every_post_is_refused_and_nothing_written(root: Path) -> None:
    c = TestClient(create_app(root, token=TOKEN), base_url=BASE)
    bodies = {"start": {"name": "x", "settings": {"dataset": "mnist-5k"}}, "stop": {},
              "resume": {"id": "x/y"}}  # fmt: skip
    for action in POSTS:
        r = c.post(f"/api/train/{action}", json=bodies[action], headers=AUTH)
        assert one_line_error(r, 403) == OFF
    assert c.get("/api/train/status").json() == {"allowed": False, "job": None}
    assert c.get("/api/train/schema").json()["allowed"] is False
    assert files_under(root) == []


# ---------------------------------------------------------------------------------- schema
def test_the_schema_is_generated_from_the_settings_declarations(client: TestClient) -> None:
    data = client.get("/api/train/schema").json()
    assert data["allowed"] is True and data == {"allowed": True, **schema()}
    fields = {f["name"]: f for f in data["settings"]}
    assert list(fields) == [n for n in SPECS if n != "data_root"]  # the server's, not the page's
    for name, f in fields.items():
        spec = SPECS[name]
        assert (f["kind"], f["help"], f["low"], f["high"], f["fixed"]) == (
            spec.kind, spec.help, spec.low, spec.high, spec.fixed)  # fmt: skip
        assert f["choices"] == (spec.choice_names() or None)
    assert fields["lr"]["open_low"] is True and fields["lr"]["default"] is None  # per model
    assert "softmax 0.5" in fields["lr"]["default_text"]
    assert fields["optimizer"]["choices"][0] == "sgd" and fields["epochs"]["default"] == 5


# ---------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize(
    ("headers", "status", "says"),
    [
        ({"X-Digitlab-Token": ""}, 403, "missing X-Digitlab-Token"),
        ({"X-Digitlab-Token": TOKEN + "x"}, 403, "wrong session token"),
        ({"X-Digitlab-Token": TOKEN[:-1]}, 403, "wrong session token"),
        ({"Origin": "http://evil.example"}, 403, "origin"),
        ({"Origin": "null"}, 403, "origin"),
        ({"Sec-Fetch-Site": "cross-site"}, 403, "cross-site"),
        ({"Host": "attacker.example"}, 400, "Host"),
    ],
)
def test_posts_without_the_token_or_from_elsewhere_are_refused(
    client: TestClient, root: Path, headers: dict, status: int, says: str
) -> None:
    for action in POSTS:
        r = client.post(f"/api/train/{action}", json={"name": "x", "settings": {}},
                        headers={**AUTH, **headers})  # fmt: skip
        assert says in one_line_error(r, status)
    assert job(client) is None and files_under(root) == []


@pytest.mark.parametrize(
    ("settings", "argv"),
    [
        ({"lr": "-1"}, ["--lr", "-1"]),
        ({"epochs": "0"}, ["--epochs", "0"]),
        ({"model": "cnn"}, ["--model", "cnn"]),
        ({"hidden": "64,x"}, ["--hidden", "64,x"]),
        ({"batch": "0.0"}, ["--batch", "0.0"]),
        ({"model": "logistic"}, ["--model", "logistic"]),
        ({"schedule": "cosine", "eta_min": "1"}, ["--schedule", "cosine", "--eta-min", "1"]),
    ],
)
def test_invalid_settings_get_the_command_lines_error_and_nothing_starts(
    client: TestClient, root: Path, capsys, settings: dict, argv: list[str]
) -> None:
    error = one_line_error(start(client, "bad", settings), 400)
    assert main(["train", *argv, "--out", str(root)]) == 2
    assert capsys.readouterr().err.strip() == f"digitlab: error: {error}"
    assert job(client) is None and files_under(root) == []


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"settings": {"lr": True}}, "option --lr True: expected a finite number"),
        ({"settings": {"lr": 0.1, "colour": "red"}}, "unknown setting(s) colour"),
        ({"settings": {"data_root": "/etc"}}, "data_root is the server's"),
        ({"settings": [1, 2]}, "settings: expected a JSON object"),
        ({"settings": {}, "extra": 1}, "unknown field(s) extra"),
    ],
)
def test_malformed_start_requests_are_one_line_errors(
    client: TestClient, root: Path, body: dict, says: str
) -> None:
    r = client.post("/api/train/start", json={"name": "x", **body}, headers=AUTH)
    assert says in one_line_error(r, 400)
    r = client.post("/api/train/start", content=b"[" * 70_000, headers=AUTH)
    assert "larger than" in one_line_error(r, 413)
    r = client.post("/api/train/start", content=b"{nope", headers=AUTH)
    assert "not valid JSON" in one_line_error(r, 400)
    assert job(client) is None and files_under(root) == []


@pytest.mark.parametrize("name", ["..", "../up", "/tmp/abs", "a/b", ".hidden", "taken", 7])
def test_run_names_must_be_new_plain_folder_names(client: TestClient, root: Path, name) -> None:
    (root / "taken").mkdir(parents=True)
    before = files_under(root)
    r = start(client, name, {"dataset": "mnist-5k"})
    assert one_line_error(r, 400)
    assert job(client) is None and files_under(root) == before
    assert not (root.parent / "up").exists() and not Path("/tmp/abs").exists()


def test_resume_requests_are_checked_as_digitlab_resume_does(
    finished_run: tuple[Path, str], capsys
) -> None:
    root, rid = finished_run
    before = files_under(root)
    c = TestClient(create_app(root, allow_train=True, token=TOKEN), base_url=BASE)
    post = lambda body: c.post("/api/train/resume", json=body, headers=AUTH)  # noqa: E731
    assert "not a path inside" in one_line_error(post({"id": "../x"}), 403)
    assert "no run" in one_line_error(post({"id": "nope/nope"}), 404)
    fixed = post({"id": rid, "settings": {"model": "mlp"}})
    assert "cannot change model" in one_line_error(fixed, 400)
    assert "more_epochs" in one_line_error(post({"id": rid, "more_epochs": 0}), 400)
    assert "plain folder name" in one_line_error(post({"id": rid, "name": "a/b"}), 400)
    error = one_line_error(post({"id": rid, "settings": {"lr": "-1"}}), 400)
    assert main(["resume", str(root / rid), "--lr", "-1", "--out", str(root)]) == 2
    assert capsys.readouterr().err.strip() == f"digitlab: error: {error}"
    assert "no training is running" in one_line_error(c.post("/api/train/stop", headers=AUTH), 409)
    assert files_under(root) == before and c.get("/api/train/status").json()["job"] is None


@pytest.mark.parametrize(
    ("name", "value"),
    [("eval_every", 1e-05), ("eval_every", 1.0), ("eval_every", 3), ("eval_every", "epoch"),
     ("lr", 1e-07), ("lr", 0.1 + 0.2), ("dropout", [0.2, 0.5]), ("anneal_T", None),
     ("augment", False), ("layer_stats", True), ("schedule", "cosine"), ("steps", None)],
)  # fmt: skip
def test_resume_options_reach_the_child_as_text_that_parses_back_exactly(name, value) -> None:
    from digitlab.cli import build_parser
    from digitlab.serve.training import option_text
    from digitlab.settings import COMMAND_LINE, check_value, options_given

    args = build_parser().parse_args(["resume", "run/checkpoint.npz", option_text(name, value)])
    parsed = check_value(SPECS[name], options_given(args)[name], COMMAND_LINE, text=True)
    assert parsed == value and type(parsed) is type(value)


# ---------------------------------------------------------------------------------- one at a time
def test_two_concurrent_starts_give_one_run_and_one_refusal(client: TestClient, root: Path):
    barrier = threading.Barrier(2)
    answers: dict[str, object] = {}

    def go(name: str) -> None:
        barrier.wait()
        answers[name] = start(client, name, LONG_RUN)

    threads = [threading.Thread(target=go, args=(n,)) for n in ("p", "q")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    codes = sorted(r.status_code for r in answers.values())
    assert codes == [200, 409]
    (refused,) = [r for r in answers.values() if r.status_code == 409]
    assert "training" in one_line_error(refused, 409)
    (started,) = [n for n, r in answers.items() if r.status_code == 200]
    assert sorted(p.name for p in root.iterdir()) == [started]
    assert job(client)["state"] == "running"
    assert "already running" in one_line_error(start(client, "r", LONG_RUN), 409)
    client.post("/api/train/stop", headers=AUTH)
    assert wait_done(client)["state"] == "stopped"


# ---------------------------------------------------------------------------------- bit identity
def test_stopped_and_resumed_from_the_api_equals_the_command_line(
    client: TestClient, root: Path, tmp_path: Path
) -> None:
    r = start(client, "web", LONG_RUN)
    assert r.status_code == 200 and r.json()["state"] == "running"
    wait_for(lambda: history_rows(client) >= 3, "three evaluations in history.csv")
    assert client.post("/api/train/stop", headers=AUTH).json()["state"] in ("stopping", "stopped")
    first = wait_done(client)
    assert first["state"] == "stopped" and first["error"] is None and first["returncode"] == 130
    stopped = root / first["run_id"] / "checkpoint.npz"
    at = progress(stopped)
    assert 0 < at["step"] < 400 * 71  # stopped while it trained, checkpoint saved as on Ctrl-C
    assert (root / "web" / ".train-request.toml").exists() is False

    r = client.post("/api/train/resume", headers=AUTH, json={
        "id": first["run_id"], "settings": RESUME, "more_epochs": MORE_EPOCHS})  # fmt: skip
    assert r.status_code == 200, r.text
    second = wait_done(client)
    assert second["state"] == "finished" and second["run_id"] != first["run_id"]
    final = root / second["run_id"] / "checkpoint.npz"
    assert progress(final)["epoch"] == at["epoch"] + MORE_EPOCHS
    listed = {run["id"]: run for run in client.get("/api/runs").json()["runs"]}
    assert listed[second["run_id"]]["settings"]["lr"] == 0.05  # the run list shows both runs
    assert first["run_id"] in listed

    reference, reference_stopped = cli_reference(tmp_path / "cli", at["step"])
    assert_same_arrays(stopped, reference_stopped)
    assert assert_same_arrays(final, reference) >= 3


def test_a_stop_right_after_start_is_stopped_and_leaves_nothing(client: TestClient, root):
    assert start(client, "brief", LONG_RUN).status_code == 200
    assert client.post("/api/train/stop", headers=AUTH).status_code == 200  # still starting up
    assert wait_done(client)["state"] == "stopped"
    assert files_under(root) == []  # no checkpoint yet: Ctrl-C leaves no run folder either


def test_a_failing_run_is_failed_with_its_error_line(client: TestClient, root: Path) -> None:
    assert start(client, "nodata", {"dataset": "no-such-set", "epochs": "1"}).status_code == 200
    done = wait_done(client)
    assert done["state"] == "failed" and done["error"].startswith("digitlab: error:")
    assert "no-such-set" in done["error"] and "\n" not in done["error"]
    assert files_under(root) == []  # the request file and the empty folder are gone


# ---------------------------------------------------------------------------------- CLI
def test_serve_prints_the_token_url_only_with_allow_train(monkeypatch, capsys, tmp_path) -> None:
    import uvicorn

    apps = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: apps.append(app))
    assert main(["serve", "--runs", str(tmp_path), "--port", "8765"]) == 0
    out = capsys.readouterr().out
    assert "?token=" not in out and apps[-1].state.train_token is None
    assert main(["serve", "--runs", str(tmp_path), "--port", "8765", "--allow-train"]) == 0
    out = capsys.readouterr().out
    token = apps[-1].state.train_token
    assert len(token) >= 32 and f"http://127.0.0.1:8765/?token={token}" in out
    c = TestClient(apps[-1], base_url=BASE)
    r = c.post("/api/train/stop", headers={"X-Digitlab-Token": token})
    assert "no training is running" in one_line_error(r, 409)  # the printed token is the one


def test_stopping_the_server_stops_its_training_as_ctrl_c_does(root: Path) -> None:
    import httpx

    from digitlab.serve import serve_in_thread

    with serve_in_thread(root, allow_train=True, token=TOKEN) as url:
        r = httpx.post(f"{url}/api/train/start", headers=AUTH,
                       json={"name": "bye", "settings": LONG_RUN})  # fmt: skip
        assert r.status_code == 200, r.text
        status = lambda: httpx.get(f"{url}/api/train/status").json()["job"]  # noqa: E731
        rid = wait_for(lambda: status()["run_id"], "the run folder")
        wait_for(lambda: (root / rid / "history.csv").is_file(), "a first evaluation")
        pid = status()["pid"]
    with pytest.raises(ProcessLookupError):  # the child ended (and was reaped) with the server
        os.kill(pid, 0)
    metrics = json.loads((root / rid / "metrics.json").read_text())
    assert metrics["interrupted"] is True and (root / rid / "checkpoint.npz").is_file()


def test_a_training_child_stops_as_by_ctrl_c_when_the_server_is_killed(tmp_path: Path) -> None:
    """The child runs in its own session (the server's Ctrl-C reaches it once, through the
    server): when the server is killed outright (SIGKILL, out of memory) the child stops as
    after Ctrl-C, its checkpoint saved, instead of training on. A stand-in server starts the
    child with the real bootstrap (``CHILD``) and is killed."""
    import signal
    import time

    from digitlab.serve.training import CHILD

    args = ["train", "--dataset", "mnist-5k", "--model", "mlp", "--hidden", "16",
            "--epochs", "100000", "--eval-every", "5", "--out", str(tmp_path / "runs")]  # fmt: skip
    server = (
        "import subprocess, sys, time\n"
        f"child = subprocess.Popen([sys.executable, '-c', {CHILD!r}, *{args!r}],\n"
        "                         start_new_session=True, stdout=subprocess.DEVNULL,\n"
        "                         stderr=subprocess.DEVNULL)\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    proc, child = start_parent(server)
    try:
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob("runs/*/*/history.csv")) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert list(tmp_path.glob("runs/*/*/history.csv")), "the training never evaluated"
        proc.kill()
        proc.wait(timeout=30)

        assert gone_within([child], 20) == []
        (run,) = tmp_path.glob("runs/*/*")
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["interrupted"] is True and (run / "checkpoint.npz").is_file()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
