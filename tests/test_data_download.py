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
    """Routes: path -> (status, body, declared Content-Length or None, delay seconds)."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, bytes, int | None, float]] = {}
        self.hits: list[str] = []
        routes, hits = self.routes, self.hits

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                hits.append(self.path)
                status, body, length, delay = routes.get(self.path, (404, b"not found", None, 0))
                time.sleep(delay)
                self.send_response(status)
                self.send_header("Content-Length", str(len(body) if length is None else length))
                self.end_headers()
                self.wfile.write(body)
                self.wfile.flush()
                self.close_connection = True

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
    assert list((tmp_path / "data" / "mnist").iterdir()) == []


def test_unwritable_destination(server, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    with pytest.raises(DownloadError, match="cannot write"):
        fetch(server.add("/good.bin", GOOD), blocker / "sub" / "good.bin", GOOD_SHA)
    assert server.hits == []


def test_short_body_is_caught_even_without_incomplete_read(tmp_path, monkeypatch):
    """A response that just ends early (no IncompleteRead from http.client) is still refused."""
    import io
    import urllib.request

    class ShortResponse(io.BytesIO):
        headers = {"Content-Length": str(len(GOOD))}

    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: ShortResponse(GOOD[:100]))
    short_sha = hashlib.sha256(GOOD[:100]).hexdigest()  # digest would match the short body
    with pytest.raises(DownloadError, match="truncated body: got 100 bytes"):
        fetch("http://example.invalid/f", tmp_path / "f", short_sha)
    assert list(tmp_path.iterdir()) == []
