"""Training from the browser: ``digitlab serve --allow-train``.

Endpoints (``POST`` ones change state and need the session token):

- ``GET /api/train/schema``: every setting's declaration (name, kind, default, choices, range,
  help, group, whether a resumed run may change it), generated from :mod:`digitlab.settings`;
- ``GET /api/train/status``: whether training is allowed and the current job (run id, state
  ``running``/``stopping``/``stopped``/``finished``/``failed``, last error line);
- ``POST /api/train/start``: ``{"name": ..., "settings": {...}}`` starts ``digitlab train``;
- ``POST /api/train/stop``: SIGINT to the training process, as Ctrl-C (checkpoint saved);
- ``POST /api/train/resume``: ``{"id": ..., "settings": {...}, "more_epochs": n}`` starts
  ``digitlab resume`` on that run's checkpoint.

Settings arrive as on the command line (text such as ``"0.5"`` or ``"256,128"``, or JSON
values) and are validated by :meth:`Settings.merge` / :func:`~digitlab.runner.plan_resume`
exactly as ``digitlab train``/``resume`` options are, with the same one-line errors, before
anything is written. The run itself is the command line in a child process
(``python -m digitlab train --config <root>/<name>/.train-request.toml``), one at a time.

Every ``POST`` is refused (403) unless the server was started with ``--allow-train``; then it
must come from the server's own origin and host and carry the token the server printed at
start in the ``X-Digitlab-Token`` header (compared in constant time). Names are plain folder
names under the runs root; the ``data_root`` of a run is the server's, never the browser's.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from digitlab.errors import DigitlabError, ServeError
from digitlab.runfiles import CHECKPOINT, CONFIG, check_run_name, write_toml
from digitlab.serve.app import JSON, check_origin, read_body
from digitlab.serve.runs import RunIndex
from digitlab.settings import COMMAND_LINE, SPECS, Settings

#: The request header carrying the session token.
TOKEN_HEADER = "X-Digitlab-Token"
#: Largest request body of a training endpoint.
MAX_TRAIN_BODY = 64 * 1024
#: The settings file handed to the child, in ``<root>/<name>/`` (dot: not listed as a run).
REQUEST_FILE = ".train-request.toml"
#: Settings the server decides (a browser may not point the server at other folders).
SERVER_SETTINGS = ("data_root",)
#: The child's program: the command line, with SIGINT handled even when the server was started
#: with it ignored (a background job of a shell without job control passes SIG_IGN on to its
#: children, and a stop would then go unheard), and stopped as by Ctrl-C when the server is
#: gone (killed outright: the child runs in its own session and would train on).
CHILD = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "from digitlab.workers import stop_with_parent; stop_with_parent(os.getppid()); "
    "from digitlab.cli import main; sys.exit(main(sys.argv[1:]))"
)
#: Exit status of a command stopped by Ctrl-C/SIGINT (:data:`digitlab.cli.EXIT_INTERRUPTED`).
EXIT_INTERRUPTED = 130
OFF = "training from the browser is off: start the server with digitlab serve --allow-train"


# ------------------------------------------------------------------------------ schema
def schema() -> dict[str, Any]:
    """The declaration of every setting a browser may give, for a generated form."""
    fields = []
    for spec in SPECS.values():
        if spec.name in SERVER_SETTINGS:
            continue
        plain = spec.by_model is None and not spec.per_optimizer
        fields.append({
            "name": spec.name, "kind": spec.kind, "group": spec.group, "help": spec.help,
            "default": spec.default if plain else None, "default_text": spec.default_text(),
            "choices": spec.choice_names() or None, "low": spec.low, "high": spec.high,
            "open_low": spec.open_low, "open_high": spec.open_high, "optional": spec.optional,
            "max_len": spec.max_len, "fixed": spec.fixed, "flag": spec.flag,
        })  # fmt: skip
    return {"settings": fields, "server_settings": list(SERVER_SETTINGS)}


# ------------------------------------------------------------------------------ requests
def check_token(request: Request, token: str) -> None:
    """Refuse (403) a request without the session token in :data:`TOKEN_HEADER`."""
    given = request.headers.get(TOKEN_HEADER)
    if not given:
        raise ServeError(
            f"missing {TOKEN_HEADER} header: open the URL with ?token= that digitlab serve "
            "printed", 403,
        )  # fmt: skip
    if not hmac.compare_digest(given.encode(), token.encode()):
        raise ServeError("wrong session token: open the URL digitlab serve printed", 403)


async def read_request(request: Request) -> dict[str, Any]:
    """The JSON object of a request body (at most :data:`MAX_TRAIN_BODY` bytes)."""
    body = await read_body(request, MAX_TRAIN_BODY)
    try:
        value = json.loads(body or b"{}")
    except (ValueError, RecursionError):
        raise ServeError("request body: not valid JSON", 400) from None
    if not isinstance(value, dict):
        raise ServeError("request body: expected a JSON object", 400)
    return value


def _fields(body: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = sorted(str(k)[:40] for k in body if k not in allowed)
    if unknown:
        raise ServeError(f"request body: unknown field(s) {', '.join(unknown)}", 400)


def _settings_of(body: Mapping[str, Any]) -> dict[str, Any]:
    """The ``settings`` object of a request, without the settings the server decides."""
    values = body.get("settings", {})
    if not isinstance(values, dict):
        raise ServeError("settings: expected a JSON object of setting names and values", 400)
    unknown = sorted(str(k)[:40] for k in values if k not in SPECS)
    if unknown:
        raise ServeError(f"settings: unknown setting(s) {', '.join(unknown)}", 400)
    for name in SERVER_SETTINGS:
        if name in values:
            raise ServeError(
                f"{name} is the server's (digitlab serve --data-root); leave it out", 400
            )
    return dict(values)


def _count(body: Mapping[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ServeError(f"{key}: expected a whole number >= 1, got {str(value)[:40]!r}", 400)
    return value


def option_text(name: str, value: Any) -> str:
    """The command-line option that gives the setting ``name`` the (validated) ``value``."""
    spec = SPECS[name]
    if spec.kind == "bool":
        return spec.flag if value else "--no-" + spec.flag[2:]

    def text(v: Any) -> str:
        if isinstance(v, float) and spec.kind == "eval_every":
            return np.format_float_positional(v)  # "0.00001", not "1e-05" (read as steps)
        return repr(v) if isinstance(v, float) else str(v)

    if value is None:
        shown = "none"
    elif isinstance(value, list):
        shown = ",".join(text(v) for v in value)
    else:
        shown = text(value)
    return f"{spec.flag}={shown}"


# ------------------------------------------------------------------------------ jobs
@dataclass
class Job:
    """One ``digitlab train``/``resume`` child process and what is known of its run."""

    kind: str
    group: Path
    before: frozenset[str]
    proc: subprocess.Popen
    request_file: Path | None = None
    started: float = field(default_factory=time.time)
    run_id: str | None = None
    stop_requested: bool = False
    lines: deque[str] = field(default_factory=lambda: deque(maxlen=40))
    done: threading.Event = field(default_factory=threading.Event)

    def follow(self) -> None:
        """Keep the child's last output lines until it exits, then remove the request file
        (and the name's folder if the run left nothing in it)."""
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.strip():
                self.lines.append(line.rstrip()[:300])
        self.proc.wait()
        self.find_run()
        if self.request_file is not None:
            with contextlib.suppress(OSError):
                self.request_file.unlink()
        with contextlib.suppress(OSError):
            self.group.rmdir()  # only when empty: the run failed before its folder stayed
        self.done.set()

    @property
    def state(self) -> str:
        if not self.done.is_set():  # running, or its output and files not yet settled
            return "stopping" if self.stop_requested else "running"
        rc = self.proc.returncode
        # SIGINT before the command line caught it: -2, or 1 with a KeyboardInterrupt traceback
        early = rc in (-signal.SIGINT, -signal.SIGTERM) or (
            self.stop_requested and bool(self.lines) and self.lines[-1] == "KeyboardInterrupt"
        )
        return "finished" if rc == 0 else "stopped" if rc == EXIT_INTERRUPTED or early else "failed"

    def error(self) -> str | None:
        """The child's last error line when it failed."""
        if self.state != "failed":
            return None
        errors = [ln for ln in self.lines if ln.startswith("digitlab: error:")]
        if errors:
            return errors[-1]
        rc = self.proc.returncode
        why = f"killed by signal {-rc}" if rc < 0 else f"exit status {rc}"
        return f"training ended ({why}){': ' + self.lines[-1] if self.lines else ''}"

    def find_run(self) -> str | None:
        """The id of the run folder the child made (the new one under its name's folder)."""
        if self.run_id is None:
            with contextlib.suppress(OSError):
                new = sorted(
                    p.name for p in self.group.iterdir()
                    if p.name not in self.before and (p / CONFIG).is_file()
                )  # fmt: skip
                if new:
                    self.run_id = f"{self.group.name}/{new[-1]}"
        return self.run_id

    def status(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.group.name, "run_id": self.find_run(),
                "state": self.state, "error": self.error(), "pid": self.proc.pid,
                "started": self.started, "returncode": self.proc.returncode}  # fmt: skip


def _package_path() -> str:
    import digitlab

    return str(Path(digitlab.__file__).resolve().parents[1])


def stop_signal() -> int:
    """SIGINT, as Ctrl-C; SIGTERM (the same clean stop in the child) when this server runs with
    SIGINT ignored: its children inherit that, and a SIGINT sent before the child resets it is
    lost."""
    return signal.SIGTERM if signal.getsignal(signal.SIGINT) is signal.SIG_IGN else signal.SIGINT


class TrainJobs:
    """At most one training child process over a runs root.

    Parameters
    ----------
    index : RunIndex
        The server's runs index (its root is where runs are written).
    data_root : str, optional
        The server's ``--data-root``, given to every run.
    """

    def __init__(self, index: RunIndex, data_root: str | None = None) -> None:
        self.index = index
        self.root = index.root
        self.data_root = data_root
        self.job: Job | None = None
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def _one_at_a_time(self) -> Iterator[None]:
        """Hold the start lock (409 if another start holds it) with no job running."""
        if not self._lock.acquire(blocking=False):
            raise ServeError("another training request is being handled; try again", 409)
        try:
            job = self.job
            if job is not None and not job.done.is_set():
                what = job.find_run() or job.group.name
                raise ServeError(f"a training is already running ({what}); stop it first", 409)
            yield
        finally:
            self._lock.release()

    def _spawn(self, kind: str, group: Path, args: list[str], request: Path | None) -> Job:
        before = frozenset(p.name for p in group.iterdir()) if group.is_dir() else frozenset()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (_package_path(), env.get("PYTHONPATH")) if p
        )  # fmt: skip
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, *args], stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
            env=env, start_new_session=True,  # the server's Ctrl-C reaches it once, via close
        )  # fmt: skip
        job = Job(kind, group, before, proc, request)
        threading.Thread(target=job.follow, name="digitlab-train-log", daemon=True).start()
        self.job = job
        return job

    def start(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Validate a start request as ``digitlab train`` does, then run it in a child."""
        _fields(body, {"name", "settings"})
        values = _settings_of(body)
        if self.data_root is not None:
            values["data_root"] = self.data_root
        with self._one_at_a_time():
            try:
                settings = Settings.merge([(COMMAND_LINE, values)])
            except DigitlabError as exc:
                raise ServeError(str(exc), 400) from None
            name = body.get("name") or datetime.now().strftime(f"{settings.model}-%Y%m%d-%H%M%S")
            group = self._new_group(name)
            request = group / REQUEST_FILE
            try:
                write_toml(request, settings.to_dict())
                args = ["train", "--config", str(request), "--out", str(self.root),
                        "--name", group.name, "--quiet"]  # fmt: skip
                return self._spawn("train", group, args, request).status()
            except BaseException:
                request.unlink(missing_ok=True)
                group.rmdir()
                raise

    def _new_group(self, name: Any) -> Path:
        """``<root>/<name>``, created: a plain folder name that does not exist yet."""
        if not isinstance(name, str):
            raise ServeError("name: expected a plain folder name", 400)
        try:
            check_run_name(name)
        except DigitlabError as exc:
            raise ServeError(str(exc), 400) from None
        group = self.root / name
        if os.path.lexists(group):
            raise ServeError(f"run name {name!r} exists under the runs root; choose another", 400)
        try:
            group.mkdir(parents=True)
        except FileExistsError:
            raise ServeError(f"run name {name!r} exists under the runs root", 400) from None
        return group

    def resume(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Validate a resume request as ``digitlab resume`` does, then run it in a child."""
        from digitlab.runner import plan_resume

        _fields(body, {"id", "name", "settings", "more_epochs", "more_steps"})
        options = _settings_of(body)
        fixed = sorted(k for k in options if k in SPECS and SPECS[k].fixed)
        if fixed:
            raise ServeError(f"cannot change {', '.join(fixed)} when resuming; start a new run")
        more = {k: _count(body, k) for k in ("more_epochs", "more_steps")}
        run = self.index.resolve(body.get("id") if isinstance(body.get("id"), str) else None)
        checkpoint = run.file(CHECKPOINT)
        if checkpoint is None:
            raise ServeError(f"run {run.id!r} has no checkpoint to resume", 409)
        name = body.get("name") or run.folder.parent.name  # as digitlab resume: the same name
        if not isinstance(name, str):
            raise ServeError("name: expected a plain folder name", 400)
        with self._one_at_a_time():
            try:
                check_run_name(name)
                plan = plan_resume(checkpoint, options, **more)
            except DigitlabError as exc:
                raise ServeError(str(exc), 400) from None
            args = ["resume", str(checkpoint), "--out", str(self.root), "--name", name,
                    "--quiet", *(option_text(k, getattr(plan.settings, k)) for k in options)]
            args += [f"--{k.replace('_', '-')}={v}" for k, v in more.items() if v is not None]
            return self._spawn("resume", self.root / name, args, None).status()

    def stop(self) -> dict[str, Any]:
        """SIGINT to the running child, once: it stops after its step and saves a checkpoint
        exactly as on Ctrl-C."""
        job = self.job
        if job is None or job.done.is_set():
            raise ServeError("no training is running", 409)
        if not job.stop_requested:
            job.stop_requested = True
            job.proc.send_signal(stop_signal())
        return job.status()

    def status(self) -> dict[str, Any] | None:
        return None if self.job is None else self.job.status()

    def close(self, wait_s: float = 30.0) -> None:
        """Stop a running child as Ctrl-C does and wait for it (killed after ``wait_s``)."""
        job = self.job
        if job is None:
            return
        if job.proc.poll() is None:
            with contextlib.suppress(ServeError, OSError):
                self.stop()
            try:
                job.proc.wait(wait_s)
            except subprocess.TimeoutExpired:
                job.proc.kill()
        job.done.wait(wait_s)


# ------------------------------------------------------------------------------ routes
def train_routes(jobs: TrainJobs, allow: bool, token: str | None) -> list[Route]:
    """The ``/api/train/*`` routes; every POST is refused unless ``allow``."""

    def guard(request: Request) -> None:
        if not allow or not token:
            raise ServeError(OFF, 403)
        check_origin(request)
        check_token(request, token)

    async def post(request: Request) -> Response:
        guard(request)
        body = await read_request(request)
        action = request.url.path.rsplit("/", 1)[-1]
        if action == "stop":
            return JSON(await run_in_threadpool(jobs.stop))
        handler = jobs.start if action == "start" else jobs.resume
        return JSON(await run_in_threadpool(handler, body))

    async def get_schema(request: Request) -> Response:
        return JSON({"allowed": allow, **schema()})

    async def get_status(request: Request) -> Response:
        return JSON({"allowed": allow, "job": jobs.status() if allow else None})

    return [
        Route("/api/train/schema", get_schema),
        Route("/api/train/status", get_status),
        *(Route(f"/api/train/{a}", post, methods=["POST"]) for a in ("start", "stop", "resume")),
    ]
