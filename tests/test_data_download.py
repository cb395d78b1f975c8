"""Verified downloads against a local HTTP server: good, corrupted, truncated and failing files."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from digitlab.data import registry
from digitlab.data.download import fetch, sha256_file
from digitlab.data.idx import write_idx
from digitlab.data.registry import download, load
from digitlab.errors import ConfigError, DownloadError

GOOD = b"digitlab test payload " * 1000
GOOD_SHA = hashlib.sha256(GOOD).hexdigest()


class Server:
    """Routes: path -> (status, body, declared Content-Length or None, delay seconds).

    Paths in ``trickle`` send their body one byte per ``trickle[path]`` seconds (at most as
    many writes as the body has bytes, stopping when the client goes away); paths in
    ``slow_headers`` send their status line that way, then hang up.
    """

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, bytes, int | None, float]] = {}
        self.trickle: dict[str, float] = {}
        self.slow_headers: dict[str, float] = {}
        self.hits: list[str] = []
        routes, hits, trickle, slow = self.routes, self.hits, self.trickle, self.slow_headers

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                hits.append(self.path)
                status, body, length, delay = routes.get(self.path, (404, b"not found", None, 0))
                time.sleep(delay)
                self.close_connection = True
                try:
                    if self.path in slow:
                        for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"x" * 200:
                            self.wfile.write(bytes([byte]))
                            self.wfile.flush()
                            time.sleep(slow[self.path])
                        return
                    self.send_response(status)
                    size = len(body) if length is None else length
                    if length != -1:
                        self.send_header("Content-Length", str(size))
                    self.end_headers()
                    if self.path in trickle:
                        for byte in body:
                            self.wfile.write(bytes([byte]))
                            self.wfile.flush()
                            time.sleep(trickle[self.path])
                    else:
                        self.wfile.write(body)
                        self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def add(self, path: str, body: bytes, status: int = 200, length=None, delay=0.0) -> str:
        self.routes[path] = (status, body, length, delay)
        return self.url + path


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server()
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()
    srv.thread.join(timeout=5)


def test_good_file_lands_with_correct_bytes(server, tmp_path):
    url = server.add("/good.bin", GOOD)
    dest = fetch(url, tmp_path / "cache" / "good.bin", GOOD_SHA.upper())
    assert dest == tmp_path / "cache" / "good.bin"
    assert dest.read_bytes() == GOOD
    assert sorted(p.name for p in dest.parent.iterdir()) == ["good.bin"]  # no temp left


def test_good_file_replaces_an_old_one(server, tmp_path):
    dest = tmp_path / "f.bin"
    dest.write_bytes(b"old")
    fetch(server.add("/good.bin", GOOD), dest, GOOD_SHA)
    assert dest.read_bytes() == GOOD


@pytest.mark.parametrize(
    ("route", "fragment"),
    [
        (("/corrupt.bin", GOOD[:-1] + b"X", 200, None), "SHA-256 mismatch"),
        (("/truncated.bin", GOOD[:5000], 200, len(GOOD)), "truncated"),
        (("/error.bin", b"boom", 500, None), "HTTP 500"),
        (("/missing.bin", b"", 404, None), "HTTP 404"),
    ],
    ids=["corrupt", "truncated", "http500", "http404"],
)
def test_bad_download_raises_and_leaves_nothing(server, tmp_path, route, fragment):
    path, body, status, length = route
    url = server.add(path, body, status=status, length=length)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "keep.bin").write_bytes(b"previous version")
    with pytest.raises(DownloadError) as info:
        fetch(url, cache / "keep.bin", GOOD_SHA)
    msg = str(info.value)
    assert url in msg and fragment in msg and "\n" not in msg
    assert [p.name for p in cache.iterdir()] == ["keep.bin"]  # no temp file
    assert (cache / "keep.bin").read_bytes() == b"previous version"  # not clobbered


def test_connection_refused(tmp_path):
    srv = Server()  # bound but never served: take its port, then close it
    url = srv.url + "/x"
    srv.httpd.server_close()
    with pytest.raises(DownloadError, match="cannot connect"):
        fetch(url, tmp_path / "x", GOOD_SHA, timeout=5)
    assert list(tmp_path.iterdir()) == []


def test_timeout(server, tmp_path):
    url = server.add("/slow.bin", GOOD, delay=2.0)
    with pytest.raises(DownloadError, match="slow.bin"):
        fetch(url, tmp_path / "slow.bin", GOOD_SHA, timeout=0.3)
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments(tmp_path):
    with pytest.raises(ConfigError, match="64 hex"):
        fetch("http://127.0.0.1:1/x", tmp_path / "x", "abc")
    with pytest.raises(ConfigError, match="http"):
        fetch("file:///etc/passwd", tmp_path / "x", GOOD_SHA)
    assert list(tmp_path.iterdir()) == []


# -- the registry's download path, end to end -------------------------------------------------


def _serve_fake_mnist(
    server: Server, tmp_path: Path, prefix: str
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Write four tiny IDX files, serve them under ``prefix``; return arrays and digests."""
    rng = np.random.default_rng(1)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (8, 5, 5), dtype=np.uint8),
        "train-labels-idx1-ubyte.gz": np.arange(8, dtype=np.uint8),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (3, 5, 5), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": np.array([9, 0, 4], dtype=np.uint8),
    }
    src = tmp_path / "served"
    src.mkdir()
    digests = {}
    for name, arr in arrays.items():
        body = write_idx(src / name, arr).read_bytes()
        server.add(f"{prefix}{name}", body)
        digests[name] = hashlib.sha256(body).hexdigest()
    return arrays, digests


@pytest.fixture
def fake_mnist(server, tmp_path, monkeypatch):
    """Registry 'mnist' pointed at a failing mirror, then the local server."""
    arrays, digests = _serve_fake_mnist(server, tmp_path, "/good/")
    server.add("/bad/train-images-idx3-ubyte.gz", b"", status=500)
    spec = dataclasses.replace(
        registry.DATASETS["mnist"],
        mirrors=(server.url + "/bad/", server.url + "/good/"),
        sha256=digests,
    )
    monkeypatch.setitem(registry.DATASETS, "mnist", spec)
    monkeypatch.delenv("DIGITLAB_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(registry, "SYSTEM_DIRS", ())
    return arrays


def test_load_with_download_into_root(server, tmp_path, fake_mnist):
    ds = load("mnist", root=tmp_path / "data", download=True)
    np.testing.assert_array_equal(ds.x_train, fake_mnist["train-images-idx3-ubyte.gz"])
    np.testing.assert_array_equal(ds.y_test, [9, 0, 4])
    assert not ds.is_sample and "downloaded" in ds.source
    folder = tmp_path / "data" / "mnist"
    assert sorted(p.name for p in folder.iterdir()) == sorted(fake_mnist)  # no temp files
    # the failing mirror was tried first for the first file, the good one next
    assert server.hits[:2] == [
        "/bad/train-images-idx3-ubyte.gz",
        "/good/train-images-idx3-ubyte.gz",
    ]
    n_hits = len(server.hits)
    again = load("mnist", root=tmp_path / "data", download=True)  # found locally now
    assert len(server.hits) == n_hits and again.source.startswith(str(folder))


def test_download_into_cache_and_skip_verified_files(server, tmp_path, fake_mnist):
    folder = download("mnist")
    assert folder == tmp_path / "xdg" / "digitlab" / "mnist"
    assert (
        sha256_file(folder / "t10k-labels-idx1-ubyte.gz")
        == registry.DATASETS["mnist"].sha256["t10k-labels-idx1-ubyte.gz"]
    )
    n_hits = len(server.hits)
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(b"tampered")
    download("mnist")
    assert server.hits[n_hits:] == [
        "/bad/t10k-labels-idx1-ubyte.gz",
        "/good/t10k-labels-idx1-ubyte.gz",
    ]
    assert load("mnist").y_test.tolist() == [9, 0, 4]


def test_without_download_flag_no_request_is_made(server, tmp_path, fake_mnist):
    ds = load("mnist")  # falls back to the embedded sample instead
    assert ds.is_sample and server.hits == []


def test_all_mirrors_failing(server, tmp_path, monkeypatch, fake_mnist):
    spec = registry.DATASETS["mnist"]
    monkeypatch.setitem(
        registry.DATASETS, "mnist", dataclasses.replace(spec, mirrors=(server.url + "/bad/",))
    )
    with pytest.raises(DownloadError, match="every mirror failed for train-images.*HTTP 500"):
        load("mnist", root=tmp_path / "data", download=True)
    assert not (tmp_path / "data").exists()  # no empty dataset folder left behind


def test_unwritable_destination(server, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    with pytest.raises(DownloadError, match="cannot write"):
        fetch(server.add("/good.bin", GOOD), blocker / "sub" / "good.bin", GOOD_SHA)
    assert server.hits == []


def test_short_body_is_caught_even_without_incomplete_read(tmp_path, monkeypatch):
    """A response that just ends early (no IncompleteRead from http.client) is still refused."""
    import io
    import sys

    download_module = sys.modules["digitlab.data.download"]  # the package shadows the name

    class ShortResponse(io.BytesIO):
        headers = {"Content-Length": str(len(GOOD))}

    monkeypatch.setattr(download_module, "_open", lambda *a, **k: ShortResponse(GOOD[:100]))
    short_sha = hashlib.sha256(GOOD[:100]).hexdigest()  # digest would match the short body
    with pytest.raises(DownloadError, match="truncated body: got 100 bytes"):
        fetch("http://example.invalid/f", tmp_path / "f", short_sha)
    assert list(tmp_path.iterdir()) == []


# -- bounded downloads: deadline, size cap, signals, leftovers ---------------------------------


def test_trickling_body_fails_at_the_deadline(server, tmp_path):
    url = server.add("/trickle.bin", GOOD)  # 22,000 bytes at 1 byte / 0.05 s: ~18 minutes
    server.trickle["/trickle.bin"] = 0.05
    start = time.monotonic()
    with pytest.raises(DownloadError, match="trickle.bin.*deadline of 1 s"):
        fetch(url, tmp_path / "d" / "t.bin", GOOD_SHA, timeout=5, deadline=1)
    assert time.monotonic() - start < 4
    assert not (tmp_path / "d").exists()  # neither the .part file nor the folder made for it


def test_trickling_headers_fail_at_the_deadline(server, tmp_path):
    url = server.add("/headers.bin", GOOD)
    server.slow_headers["/headers.bin"] = 0.05
    start = time.monotonic()
    with pytest.raises(DownloadError, match="deadline"):
        fetch(url, tmp_path / "h.bin", GOOD_SHA, timeout=5, deadline=1)
    assert time.monotonic() - start < 4
    assert list(tmp_path.iterdir()) == []


def test_deadline_from_environment(server, tmp_path, monkeypatch):
    url = server.add("/trickle.bin", GOOD)
    server.trickle["/trickle.bin"] = 0.05
    monkeypatch.setenv("DIGITLAB_DOWNLOAD_DEADLINE", "0.5")
    with pytest.raises(DownloadError, match="deadline of 0.5 s"):
        fetch(url, tmp_path / "t.bin", GOOD_SHA, timeout=5)
    monkeypatch.setenv("DIGITLAB_DOWNLOAD_DEADLINE", "soon")
    with pytest.raises(ConfigError, match="DIGITLAB_DOWNLOAD_DEADLINE"):
        fetch(url, tmp_path / "t.bin", GOOD_SHA, timeout=5)
    assert list(tmp_path.iterdir()) == []


def test_declared_length_over_the_cap_is_refused_before_reading(server, tmp_path):
    url = server.add("/big.bin", GOOD)
    with pytest.raises(DownloadError, match="Content-Length 22000 is more than the 1000 bytes"):
        fetch(url, tmp_path / "big.bin", GOOD_SHA, max_bytes=1000)
    assert list(tmp_path.iterdir()) == []


def test_undeclared_long_body_stops_at_the_cap(server, tmp_path):
    body = GOOD * 50  # 1.1 MB, no Content-Length
    url = server.add("/long.bin", body, length=-1)
    with pytest.raises(DownloadError, match="longer than the 30000 bytes expected"):
        fetch(url, tmp_path / "long.bin", GOOD_SHA, max_bytes=30_000)
    assert list(tmp_path.iterdir()) == []
    # the exact size passes the cap
    dest = fetch(server.add("/ok.bin", GOOD, length=-1), tmp_path / "ok.bin", GOOD_SHA,
                 max_bytes=len(GOOD))  # fmt: skip
    assert dest.read_bytes() == GOOD


def test_registry_sizes_cap_the_download(server, tmp_path, monkeypatch, fake_mnist):
    spec = registry.DATASETS["mnist"]
    sizes = dict.fromkeys(spec.files, 10)  # far below the real (served) sizes
    monkeypatch.setitem(registry.DATASETS, "mnist", dataclasses.replace(spec, sizes=sizes))
    with pytest.raises(DownloadError, match="more than the 10 bytes expected"):
        download("mnist", root=tmp_path / "data")
    assert not (tmp_path / "data").exists()


def test_registry_sizes_match_the_real_files():
    """The caps are the published sizes (the local MNIST copy, when there is one, agrees)."""
    import os

    for name in ("mnist", "fashion-mnist"):
        spec = registry.DATASETS[name]
        assert set(spec.sizes) == set(spec.files) == set(spec.sha256)
    folder = Path(os.environ.get("DIGITLAB_DATA", "/nonexistent")) / "mnist"
    if not folder.is_dir():
        pytest.skip("DIGITLAB_DATA does not hold mnist/")
    for fname, size in registry.DATASETS["mnist"].sizes.items():
        assert (folder / fname).stat().st_size == size


def test_signal_handlers_are_restored(server, tmp_path):
    import signal

    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    fetch(server.add("/good.bin", GOOD), tmp_path / "g.bin", GOOD_SHA)
    with pytest.raises(DownloadError):
        fetch(server.add("/bad.bin", b"x"), tmp_path / "b.bin", GOOD_SHA)
    assert {s: signal.getsignal(s) for s in before} == before


@pytest.mark.parametrize(
    ("signame", "ignored"), [("SIGTERM", False), ("SIGHUP", False), ("SIGHUP", True)]
)
def test_signal_during_download_removes_the_part_file(server, tmp_path, signame, ignored):
    """SIGTERM/SIGHUP: the .part file removed, then the process dies of the signal; a signal
    the process ignored when the download began (SIGHUP under nohup) is still ignored."""
    import os
    import signal
    import subprocess
    import sys

    url = server.add("/trickle.bin", GOOD)
    server.trickle["/trickle.bin"] = 0.05
    dest = tmp_path / "sub" / "t.bin"
    disposition = "SIG_IGN" if ignored else "SIG_DFL"  # the tests may run under nohup
    code = (
        f"import signal; signal.signal(signal.{signame}, signal.{disposition}); "
        "from digitlab.data.download import fetch; "
        f"fetch({url!r}, {str(dest)!r}, {GOOD_SHA!r}, deadline=60)"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE)
    try:
        for _ in range(400):  # wait (bounded) until the transfer has started
            if dest.parent.is_dir() and any(dest.parent.glob("*.part")):
                break
            time.sleep(0.025)
        else:
            pytest.fail("the download never started")
        time.sleep(0.2)
        proc.send_signal(getattr(signal, signame))
        if ignored:  # the download goes on
            time.sleep(0.5)
            assert proc.poll() is None and any(dest.parent.glob("*.part"))
            return
        proc.wait(timeout=20)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -getattr(signal, signame)  # died of the signal, as without us
    assert not dest.parent.exists()  # no .part file, no empty folder


def test_stale_part_files_are_removed(server, tmp_path):
    import os
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".g.bin.{dead_pid}.abc123.part"
    live = tmp_path / f".g.bin.{os.getppid()}.def456.part"  # a running process: kept
    old = tmp_path / ".g.bin.xyz.part"  # no process id, untouched for two days
    other = tmp_path / ".other.bin.1.abc.part"  # another file's: not ours to judge
    for p in (stale, live, old, other):
        p.write_bytes(b"partial")
    os.utime(old, (time.time() - 2 * 86400,) * 2)
    fetch(server.add("/good.bin", GOOD), tmp_path / "g.bin", GOOD_SHA)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["g.bin", live.name, other.name])
