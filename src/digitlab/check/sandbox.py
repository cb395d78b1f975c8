"""Run a learner's file in a child process, one call at a time, with time and memory limits.

The child (:mod:`digitlab.check.child`, run as a script) imports the file and answers JSON
requests. Arrays go both ways as ``.npy`` files in a private temporary folder, loaded with
``allow_pickle=False``. A call that does not answer within its time limit has its child
killed; the next call starts a fresh child, so one function that never returns does not stop
the others from being judged.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

CHILD = Path(__file__).with_name("child.py")
#: Seconds allowed for importing the file, and the memory cap of the child (MiB).
IMPORT_TIMEOUT = 30.0
DEFAULT_MEMORY_MB = 3072


def import_timeout_for(timeout: float) -> float:
    """Seconds allowed for starting a child and importing the file (a first matplotlib import
    may build its font cache), given the per-call limit."""
    return max(IMPORT_TIMEOUT, 4 * timeout)


@dataclass
class Outcome:
    """What one request gave: a result and attributes (arrays, numbers, None or a type name),
    or an error record (``type``, ``message``, ``line``, ``function``, ``text``), or a
    timeout."""

    ok: bool
    result: Any = None
    attrs: dict[str, Any] = field(default_factory=dict)
    error: dict[str, Any] | None = None
    phase: str = "call"
    seconds: float = 0.0
    timed_out: bool = False
    output_tail: str = ""


class ValueDescription(str):
    """A returned value that is not numeric (its Python type name)."""


class Sandbox:
    """A learner's file behind a child process.

    Parameters
    ----------
    path : Path
        The ``.py`` file.
    timeout : float
        Seconds allowed per call.
    import_timeout : float
        Seconds allowed for starting the child and importing the file.
    memory_mb : int
        Address-space cap of the child.
    """

    def __init__(
        self,
        path: Path,
        timeout: float = 5.0,
        memory_mb: int = DEFAULT_MEMORY_MB,
        import_timeout: float = IMPORT_TIMEOUT,
    ) -> None:
        self.path = Path(path).resolve()
        self.timeout = float(timeout)
        self.import_timeout = float(import_timeout)
        self.memory_mb = int(memory_mb)
        self._tmp = tempfile.TemporaryDirectory(prefix="digitlab-check-")
        self.workdir = Path(self._tmp.name)
        self.proc: subprocess.Popen | None = None
        self.reader: Any = None
        self.log: Any = None
        self.count = 0
        self.names: dict[str, Any] | None = None

    # ------------------------------------------------------------------ child lifetime
    def start(self) -> Outcome:
        """Start a child and import the file; the outcome's ``result`` is the names found."""
        self.stop()
        read_fd, write_fd = os.pipe()
        self.log = tempfile.TemporaryFile(dir=self.workdir)
        env = dict(
            os.environ,
            OPENBLAS_NUM_THREADS="1",
            OMP_NUM_THREADS="1",
            MKL_NUM_THREADS="1",
            MPLBACKEND="Agg",
            PYTHONDONTWRITEBYTECODE="1",
        )
        cmd = [
            sys.executable,
            str(CHILD),
            str(self.workdir),
            str(self.path),
            str(write_fd),
            str(self.memory_mb),
        ]
        src = str(Path(__file__).resolve().parents[2])  # digitlab importable in the child
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            pass_fds=(write_fd,),
            cwd=self.path.parent,
            env=env,
            start_new_session=True,
        )
        os.close(write_fd)
        self.reader = os.fdopen(read_fd, "r", encoding="utf-8")
        hello = self._receive(self.import_timeout)
        if hello.ok:
            self.names = hello.result
        else:
            self.stop()
        return hello

    def stop(self) -> None:
        """Kill the child (its whole process group) and close the pipes."""
        if self.proc is not None:
            if self.proc.poll() is None:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.proc.wait()
            if self.proc.stdin is not None:
                try:
                    self.proc.stdin.close()
                except BrokenPipeError:
                    pass
        if self.reader is not None:
            self.reader.close()
        if self.log is not None:
            self.log.close()
        self.proc = self.reader = self.log = None

    def close(self) -> None:
        self.stop()
        self._tmp.cleanup()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ requests
    def put(self, value: Any) -> dict[str, Any]:
        """A request argument: arrays are written to the work folder, the rest sent as JSON."""
        if isinstance(value, np.ndarray):
            self.count += 1
            name = f"in_{self.count}.npy"
            np.save(self.workdir / name, value, allow_pickle=False)
            return {"npy": name}
        if isinstance(value, dict) and "model" in value:
            return {"model": {"kind": value["model"], "w": self.put(value["w"])}}
        return {"value": value}

    def request(self, payload: dict[str, Any], timeout: float | None = None) -> Outcome:
        """Send one request (a fresh child if the last one died or timed out) and wait."""
        if self.proc is None or self.proc.poll() is not None:
            hello = self.start()
            if not hello.ok:
                return hello
        self.count += 1
        payload = dict(payload, id=self.count)
        try:
            self.proc.stdin.write((json.dumps(payload) + "\n").encode())  # type: ignore[union-attr]
            self.proc.stdin.flush()  # type: ignore[union-attr]
        except BrokenPipeError:
            return self._dead(time.perf_counter())
        return self._receive(self.timeout if timeout is None else timeout)

    def call(
        self,
        target: str,
        args: list[Any] = (),
        *,
        ctor: list[Any] = (),
        set_attrs: dict[str, Any] | None = None,
        read: list[str] = (),
        timeout: float | None = None,
    ) -> Outcome:
        """Call ``target`` (``"func"``, ``"Class.method"`` or ``"Class"`` to construct only)."""
        payload = {
            "kind": "call",
            "target": target,
            "args": [self.put(a) for a in args],
            "ctor": [self.put(a) for a in ctor],
            "read": list(read),
            "set": {k: self.put(v) for k, v in (set_attrs or {}).items()},
        }
        return self.request(payload, timeout)

    def procedure(
        self,
        name: str,
        model: str,
        data: dict[str, Any],
        *,
        ctor: list[Any] = (),
        options: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Outcome:
        """Run a combined check inside the child (see ``child.PROCEDURES``)."""
        payload = {
            "kind": "procedure",
            "name": name,
            "model": model,
            "data": {k: self.put(v) for k, v in data.items()},
            "ctor": [self.put(a) for a in ctor],
            "options": options or {},
        }
        return self.request(payload, timeout)

    # ------------------------------------------------------------------ answers
    def _receive(self, timeout: float) -> Outcome:
        start = time.perf_counter()
        ready, _, _ = select.select([self.reader], [], [], timeout)
        if not ready:
            return self._interrupt(start)
        line = self.reader.readline()
        if not line:
            return self._dead(start)
        answer = json.loads(line)
        if not answer["ok"]:
            return Outcome(
                False,
                error=answer.get("error"),
                phase=answer.get("phase", "call"),
                seconds=answer.get("seconds", 0.0),
                output_tail=self.output_tail(),
            )
        if "names" in answer:
            return Outcome(True, result=answer["names"])
        if "result" in answer:
            attrs = {k: self._value(v) for k, v in answer["attrs"].items()}
            return Outcome(True, self._value(answer["result"]), attrs, seconds=answer["seconds"])
        values = {k: self._value(v) for k, v in answer.items() if isinstance(v, dict)}
        return Outcome(True, values, seconds=answer["seconds"])

    def _interrupt(self, start: float) -> Outcome:
        """The time is up: ask the child where the learner's code is (``SIGUSR1`` raises in
        it), and kill the child if it does not answer within a second."""
        error = None
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGUSR1)
            ready, _, _ = select.select([self.reader], [], [], 1.0)
            line = self.reader.readline() if ready else ""
            error = json.loads(line).get("error") if line else None
        tail = self.output_tail()
        self.stop()  # a fresh child for the next call: the interrupted one may hold any state
        seconds = time.perf_counter() - start
        return Outcome(False, error=error, timed_out=True, seconds=seconds, output_tail=tail)

    def _dead(self, start: float) -> Outcome:
        """The child ended without answering (a crash, ``os._exit``, the memory cap)."""
        proc = self.proc
        code = proc.wait() if proc is not None else None
        tail = self.output_tail()
        self.stop()
        how = (
            f"killed by signal {-code}"
            if code is not None and code < 0
            else f"exited with status {code}"
        )
        return Outcome(
            False,
            error={"type": "Crash", "message": f"the process {how}"},
            seconds=time.perf_counter() - start,
            output_tail=tail,
        )

    def _value(self, desc: dict[str, Any]) -> Any:
        kind = desc["type"]
        if kind == "array":
            arr = np.load(self.workdir / desc["npy"], allow_pickle=False)
            (self.workdir / desc["npy"]).unlink()
            return arr if desc.get("pytype") == "ndarray" or arr.ndim else arr[()]
        if kind == "none":
            return None
        if kind == "missing":
            return ValueDescription("no such attribute")
        return ValueDescription(desc.get("pytype", "?"))

    def output_tail(self, chars: int = 800) -> str:
        """The end of what the learner's code printed."""
        if self.log is None:
            return ""
        self.log.flush()
        self.log.seek(0, os.SEEK_END)
        size = self.log.tell()
        self.log.seek(max(0, size - chars))
        return self.log.read().decode("utf-8", "replace")
