"""The Starlette application of ``digitlab serve``: routes, limits and security headers.

Endpoints (all GET unless noted; ``id`` is a run id, its path under the runs root):

- ``/api/runs``: every run with its summary (see :func:`digitlab.serve.runs.build_summary`);
- ``/api/run?id=``: one run's summary, full settings, metrics and weight-image titles;
- ``/api/run/history?id=``: the columns of its ``history.csv`` (poll it to follow a run);
- ``/api/run/weights.png?id=&unit=``: weight image ``unit``;
- ``/api/run/confusion?id=``: test-split confusion matrix and misclassified examples;
- ``/api/run/examples.png?id=&true=&pred=``: those examples as one image;
- ``/api/compare?ids=a,b``: settings of several runs and which of them differ;
- ``/api/sweep``, ``/api/sweep.csv``, ``/api/sweep/curves``, ``/api/experiments``,
  ``/api/experiment``, ``/api/experiment/file``: sweeps and experiments (see
  :mod:`digitlab.serve.views`);
- ``POST /api/predict?ids=a,b[&cls=name]``: body = image file bytes (PNG, JPEG, ...);
  probabilities, hidden-layer activations and input-gradient saliency (of the predicted
  class and of class ``cls``);
- ``/api/train/*``: training from the browser, refused unless ``allow_train`` (see
  :mod:`digitlab.serve.training`: the only endpoints that write, and only with the token).

The server only reads: files under the runs root (resolved, symlinks out refused), its
own static files and the datasets of the data roots it was started with. Uploads above
:data:`~digitlab.serve.api.MAX_UPLOAD_BYTES` are refused while the body is read, POSTs from
another origin are refused, and each client's uploads are decoded one at a time. Whatever
one run folder holds, an error reading it is that run's error (a JSON error, never a 500).
"""

from __future__ import annotations

import contextlib
import functools
import json
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from digitlab.errors import DigitlabError, ServeError
from digitlab.runfiles import json_safe
from digitlab.serve import api, views
from digitlab.serve.runs import RunIndex, run_error

STATIC = Path(__file__).parent / "static"
#: Host names accepted when the server listens on the loopback interface (DNS rebinding guard).
LOCAL_HOSTS = ["127.0.0.1", "localhost"]


def host_names(host: str) -> list[str]:
    """The ``Host`` header names accepted by a server listening on ``host``.

    Loopback: 127.0.0.1 and localhost (and ``host`` itself, e.g. 127.0.0.2); a named
    interface: that name or address only; all interfaces (``0.0.0.0``, ``::``, ``""``): this
    machine's names and addresses. A page served from any other name (DNS rebinding) is
    refused whatever the interface.
    """
    import socket

    names = {host.lower().strip("[]")} | (set(LOCAL_HOSTS) if host.startswith("127.") else set())
    if host in ("localhost", "::1"):
        names |= set(LOCAL_HOSTS)
    if host in ("0.0.0.0", "::", ""):
        names = set(LOCAL_HOSTS) | {socket.gethostname().lower(), socket.getfqdn().lower()}
        with contextlib.suppress(OSError):
            names |= {a[4][0] for a in socket.getaddrinfo(socket.gethostname(), None)}
    return sorted(n for n in names if n)


class JSON(JSONResponse):
    """Strict JSON (no NaN tokens: browsers' JSON.parse refuses them), compact."""

    @staticmethod
    def dumps(content: Any) -> bytes:
        try:
            text = json.dumps(content, allow_nan=False, separators=(",", ":"))
        except ValueError:
            text = json.dumps(json_safe(content), allow_nan=False, separators=(",", ":"))
        return text.encode()

    def render(self, content: Any) -> bytes:
        return self.dumps(content)


class SecurityHeaders:
    """Adds a strict content security policy and no-sniff / no-referrer headers."""

    CSP = (
        "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
        "script-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; "
        "frame-ancestors 'none'"
    )

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["Content-Security-Policy"] = self.CSP
                headers["X-Content-Type-Options"] = "nosniff"
                headers["Referrer-Policy"] = "no-referrer"
                headers.setdefault("Cache-Control", "no-store")
            await send(message)

        await self.app(scope, receive, send_with_headers)


class TrustedHosts(TrustedHostMiddleware):
    """Starlette's Host check (DNS rebinding guard) answering a one-line JSON error."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.allow_any and scope["type"] == "http":
            raw = Headers(scope=scope).get("host", "").lower()
            host = raw[1 : raw.find("]")] if raw.startswith("[") else raw.rsplit(":", 1)[0]
            if not any(
                host == p or (p.startswith("*") and host.endswith(p[1:]))
                for p in self.allowed_hosts
            ):
                await JSON({"error": "invalid Host header"}, status_code=400)(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) more than ``limit`` bytes before reading them all."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise ServeError(f"upload larger than {limit} bytes", 413)
        except ValueError:
            raise ServeError("bad Content-Length header", 400) from None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ServeError(f"upload larger than {limit} bytes", 413)
        chunks.append(chunk)
    return b"".join(chunks)


def _ids(request: Request) -> list[str]:
    return [i for i in request.query_params.get("ids", "").split(",") if i]


def _int(request: Request, name: str) -> int:
    try:
        return int(request.query_params.get(name, ""))
    except ValueError:
        raise ServeError(f"query parameter {name} must be a whole number", 400) from None


def _png(content: bytes) -> Response:
    return Response(content, media_type="image/png", headers={"Cache-Control": "no-cache"})


def _guarded(handler: Callable[[Request], Response]) -> Callable[[Request], Response]:
    """``handler`` with any exception other than a DigitlabError turned into a 422 naming the
    run: a run folder's files may hold anything (deep nesting, wrong types, link loops)."""

    @functools.wraps(handler)
    def wrapper(request: Request) -> Response:
        try:
            return handler(request)
        except DigitlabError:
            raise
        except Exception as exc:  # noqa: BLE001 - one run's bad files are that run's error
            rid = request.query_params.get("id") or request.query_params.get("ids") or "?"
            raise ServeError(run_error(rid, exc), 422) from None

    return wrapper


def check_origin(request: Request) -> None:
    """Refuse (403) a request sent by a page of another origin: its ``Origin`` (or, without
    one, ``Sec-Fetch-Site: cross-site``) must name this server's own host and port."""
    origin = request.headers.get("origin")
    if origin is None:
        if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
            raise ServeError("cross-site requests are refused", 403)
        return
    host = request.headers.get("host", "")
    if origin == "null" or urlsplit(origin).netloc.lower() != host.lower():
        raise ServeError(f"requests from origin {origin[:100]!r} are refused", 403)


class ClientLocks:
    """One lock per client address: a client's uploads are decoded one at a time."""

    def __init__(self, wait_s: float = 30.0) -> None:
        self.wait_s = wait_s
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def hold(self, client: str) -> Iterator[None]:
        with self._lock:
            if len(self._locks) > 1024:  # forget idle clients
                self._locks = {k: v for k, v in self._locks.items() if v.locked()}
            lock = self._locks.setdefault(client, threading.Lock())
        if not lock.acquire(timeout=self.wait_s):
            raise ServeError("another upload of this client is still being decoded", 429)
        try:
            yield
        finally:
            lock.release()


class _Handlers:
    """The route handlers over one runs index and its caches."""

    def __init__(self, runs: str | Path, data_root: str | None = None) -> None:
        self.index = RunIndex(runs)
        self.models = api.ModelCache()
        self.data = api.DataCache(data_root)
        self.decoding = ClientLocks()
        self.last: list[Any] = [None, b""]  # the runs list last sent and its JSON body

    async def home(self, request: Request) -> Response:
        return FileResponse(STATIC / "index.html")

    def runs_list(self, request: Request) -> Response:
        t0 = time.perf_counter()
        runs = self.index.scan()
        if runs is not self.last[0]:  # the index returns the same list when nothing changed
            self.last[:] = [runs, JSON.dumps(runs)]
        scan_ms = (time.perf_counter() - t0) * 1e3
        root = JSON.dumps(str(self.index.root))
        body = b'{"root":%s,"scan_ms":%.3f,"runs":%s}' % (root, scan_ms, self.last[1])
        return Response(body, media_type="application/json")

    def run_one(self, request: Request) -> Response:
        return JSON(api.run_detail(self.index, self.models, request.query_params.get("id")))

    def history(self, request: Request) -> Response:
        return JSON(api.run_history(self.index, request.query_params.get("id")))

    def weights(self, request: Request) -> Response:
        rid = request.query_params.get("id")
        return _png(api.weights_png(self.index, self.models, rid, _int(request, "unit")))

    def conf(self, request: Request) -> Response:
        rid = request.query_params.get("id")
        return JSON(api.confusion(self.index, self.models, self.data, rid))

    def examples(self, request: Request) -> Response:
        rid = request.query_params.get("id")
        true, pred = _int(request, "true"), _int(request, "pred")
        return _png(api.examples_png(self.index, self.models, self.data, rid, true, pred))

    def comp(self, request: Request) -> Response:
        return JSON(api.compare(self.index, _ids(request)))

    async def predict(self, request: Request) -> Response:
        check_origin(request)
        ids = _ids(request)
        cls = request.query_params.get("cls") or None
        if cls is not None and len(cls) > 64:
            raise ServeError("query parameter cls must be a class name", 400)
        body = await read_body(request, api.MAX_UPLOAD_BYTES)
        client = request.client.host if request.client else "?"
        return JSON(await run_in_threadpool(self.predict_one, client, ids, body, cls))

    def predict_one(
        self, client: str, ids: list[str], body: bytes, cls: str | None = None
    ) -> dict[str, Any]:
        with self.decoding.hold(client):
            try:
                return api.predict(self.index, self.models, ids, body, cls)
            except DigitlabError:
                raise
            except Exception as exc:  # noqa: BLE001 - see _guarded
                raise ServeError(run_error(",".join(ids) or "?", exc), 422) from None


async def _serve_error(request: Request, exc: Exception) -> Response:
    status = exc.status if isinstance(exc, ServeError) else 422
    return JSON({"error": str(exc)}, status_code=status)


def create_app(
    runs: str | Path = "runs",
    allowed_hosts: list[str] | None = None,
    data_root: str | None = None,
    allow_train: bool = False,
    token: str | None = None,
) -> Starlette:
    """The ``digitlab serve`` application over the runs root ``runs``.

    Parameters
    ----------
    runs : path-like
        Runs root; it is rescanned on every ``/api/runs`` request.
    allowed_hosts : list of str, optional
        Accepted ``Host`` headers (default: 127.0.0.1 and localhost); ``["*"]`` for any.
    data_root : str, optional
        Folder of the datasets for confusion matrices and examples (default: the usual
        sources, ``$DIGITLAB_DATA``, the cache, the embedded sample); a ``data_root``
        written in a checkpoint is never used.
    allow_train : bool
        Serve training from the browser (:mod:`digitlab.serve.training`); off, its POSTs
        answer 403 and nothing is written.
    token : str, optional
        The session token those POSTs must carry (default: a new random one, in
        ``app.state.train_token``).

    Returns
    -------
    Starlette
    """
    from digitlab import limits
    from digitlab.serve.training import TrainJobs, train_routes

    limits.check()  # the caps the uploads are decoded under, validated at start-up
    h = _Handlers(runs, data_root)
    index, models = h.index, h.models
    token = (token or secrets.token_urlsafe(32)) if allow_train else None
    jobs = TrainJobs(index, data_root)
    routes = [
        Route("/", h.home),
        Route("/api/runs", _guarded(h.runs_list)),
        Route("/api/run", _guarded(h.run_one)),
        Route("/api/run/history", _guarded(h.history)),
        Route("/api/run/weights.png", _guarded(h.weights)),
        Route("/api/run/confusion", _guarded(h.conf)),
        Route("/api/run/examples.png", _guarded(h.examples)),
        Route("/api/compare", _guarded(h.comp)),
        Route("/api/predict", h.predict, methods=["POST"]),
        *train_routes(jobs, allow_train, token),
        *views.routes(index, _guarded, JSON),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    middleware = [
        Middleware(SecurityHeaders),
        Middleware(TrustedHosts, allowed_hosts=allowed_hosts or LOCAL_HOSTS),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # the first scan reads every run's files: start it before a page asks for it
        threading.Thread(target=index.scan, name="digitlab-serve-scan", daemon=True).start()
        yield
        await run_in_threadpool(jobs.close)  # a training child stops as on Ctrl-C

    app = Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={DigitlabError: _serve_error},
        lifespan=lifespan,
    )
    app.state.index = index
    app.state.models = models
    app.state.train_jobs, app.state.train_token = jobs, token
    return app


@contextlib.contextmanager
def serve_in_thread(
    runs: str | Path, *, timeout: float = 20.0, allow_train: bool = False,
    token: str | None = None, data_root: str | None = None,
) -> Iterator[str]:  # fmt: skip
    """Serve ``runs`` with uvicorn on a free 127.0.0.1 port in a background thread.

    For notebooks, tests and benchmarks; ``digitlab serve`` runs in the foreground instead.

    Parameters
    ----------
    runs : path-like
        Runs root.
    timeout : float
        Seconds to wait for the server to start.
    allow_train, token, data_root
        As :func:`create_app`.

    Yields
    ------
    str
        The base URL, e.g. ``http://127.0.0.1:54321``; the server stops when the block ends.
    """
    import socket

    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(runs, data_root=data_root, allow_train=allow_train, token=token),
            host="127.0.0.1", port=port, log_level="warning",
        )  # fmt: skip
    )
    thread = threading.Thread(target=server.run, name="digitlab-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            server.should_exit = True
            raise ServeError(f"the server did not start within {timeout:g} s", 500)
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
