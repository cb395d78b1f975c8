"""The Starlette application of ``digitlab serve``: routes, limits and security headers.

Endpoints (all GET unless noted; ``id`` is a run id, its path under the runs root):

- ``/api/runs``: every run with its summary (see :func:`digitlab.serve.runs.build_summary`);
- ``/api/run?id=``: one run's summary, full settings, metrics and weight-image titles;
- ``/api/run/history?id=``: the columns of its ``history.csv`` (poll it to follow a run);
- ``/api/run/weights.png?id=&unit=``: weight image ``unit``;
- ``/api/run/confusion?id=``: test-split confusion matrix and misclassified examples;
- ``/api/run/examples.png?id=&true=&pred=``: those examples as one image;
- ``/api/compare?ids=a,b``: settings of several runs and which of them differ;
- ``POST /api/predict?ids=a,b``: body = image file bytes (PNG, JPEG, ...); probabilities.

The server only reads: files under the runs root (resolved, symlinks out refused) and its
own static files. Uploads above :data:`~digitlab.serve.api.MAX_UPLOAD_BYTES` are refused
while the body is read.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from digitlab.errors import DigitlabError, ServeError
from digitlab.runfiles import json_safe
from digitlab.serve import api
from digitlab.serve.runs import RunIndex

STATIC = Path(__file__).parent / "static"
#: Host names accepted when the server listens on the loopback interface (DNS rebinding guard).
LOCAL_HOSTS = ["127.0.0.1", "localhost"]


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


class _Handlers:
    """The route handlers over one runs index and its caches."""

    def __init__(self, runs: str | Path) -> None:
        self.index = RunIndex(runs)
        self.models = api.ModelCache()
        self.data = api.DataCache()
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
        ids = _ids(request)
        body = await read_body(request, api.MAX_UPLOAD_BYTES)
        return JSON(await run_in_threadpool(api.predict, self.index, self.models, ids, body))


async def _serve_error(request: Request, exc: Exception) -> Response:
    status = exc.status if isinstance(exc, ServeError) else 422
    return JSON({"error": str(exc)}, status_code=status)


def create_app(runs: str | Path = "runs", allowed_hosts: list[str] | None = None) -> Starlette:
    """The ``digitlab serve`` application over the runs root ``runs``.

    Parameters
    ----------
    runs : path-like
        Runs root; it is rescanned on every ``/api/runs`` request.
    allowed_hosts : list of str, optional
        Accepted ``Host`` headers (default: 127.0.0.1 and localhost); ``["*"]`` for any.

    Returns
    -------
    Starlette
    """
    h = _Handlers(runs)
    index, models = h.index, h.models
    routes = [
        Route("/", h.home),
        Route("/api/runs", h.runs_list),
        Route("/api/run", h.run_one),
        Route("/api/run/history", h.history),
        Route("/api/run/weights.png", h.weights),
        Route("/api/run/confusion", h.conf),
        Route("/api/run/examples.png", h.examples),
        Route("/api/compare", h.comp),
        Route("/api/predict", h.predict, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    middleware = [
        Middleware(SecurityHeaders),
        Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts or LOCAL_HOSTS),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # the first scan reads every run's files: start it before a page asks for it
        threading.Thread(target=index.scan, name="digitlab-serve-scan", daemon=True).start()
        yield

    app = Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={DigitlabError: _serve_error},
        lifespan=lifespan,
    )
    app.state.index = index
    app.state.models = models
    return app


@contextlib.contextmanager
def serve_in_thread(runs: str | Path, *, timeout: float = 20.0) -> Iterator[str]:
    """Serve ``runs`` with uvicorn on a free 127.0.0.1 port in a background thread.

    For notebooks, tests and benchmarks; ``digitlab serve`` runs in the foreground instead.

    Parameters
    ----------
    runs : path-like
        Runs root.
    timeout : float
        Seconds to wait for the server to start.

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
        uvicorn.Config(create_app(runs), host="127.0.0.1", port=port, log_level="warning")
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
