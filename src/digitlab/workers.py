"""Child processes that end with the process that started them.

The experiment engine's loky workers, the report's figure workers, the checker's learner
process and the app's training commands are child processes. When their parent is killed
outright (SIGKILL, the kernel out of memory), a child would go on: a loky worker trains to the
end of its task, writing into the output folder after the command has gone, an idle one holds
the command's output pipes until its idle timeout, a learner's endless loop spins forever and
a training started from the browser trains on. Each watches its parent from a daemon thread:
a worker (:func:`end_with_parent`, its initializer) stops its :func:`task` as Ctrl-C would and
ends; a whole command run as a child (:func:`stop_with_parent`) gets SIGINT.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator

#: Seconds between a worker's checks that the process that started it is still there.
PARENT_POLL_SECONDS = 0.5
#: Seconds a worker whose parent is gone gives its task to stop as after Ctrl-C before it ends.
ORPHAN_GRACE_SECONDS = 10.0
#: Exit status of a worker that ended because its parent was gone (as after Ctrl-C).
EXIT_ORPHANED = 130
#: Set while this process runs a task (read by the parent watch, to end once it is over).
_task_running = threading.Event()
#: Set by the parent watch once the parent is gone: the worker runs no further task.
_orphaned = threading.Event()
_watching: list[int] = []  # the parent this worker process watches (at most one)


def _watch(parent: int, gone: Callable[[], None]) -> None:
    """Call ``gone()`` in a daemon thread once ``parent`` (a pid) is no longer this process's
    parent; nothing in the parent itself, when ``parent`` is not this process's parent or
    when a watch runs."""
    if _watching or os.getpid() == parent or os.getppid() != parent:
        return
    _watching.append(parent)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_SECONDS)
        gone()

    threading.Thread(target=watch, name="digitlab-parent-watch", daemon=True).start()


def end_with_parent(parent: int) -> None:
    """Start watching, in a worker process (its initializer), the process ``parent`` (a pid)
    that started it: once that is gone, raise KeyboardInterrupt in the main thread's running
    :func:`task` (its clean-up runs as after Ctrl-C) and end the worker when the task is over,
    at once when none runs, and at the latest :data:`ORPHAN_GRACE_SECONDS` later."""
    main = threading.main_thread().ident

    def gone() -> None:
        _orphaned.set()  # the task, once stopped, ends the process (task)
        if main is not None and _task_running.is_set():
            set_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc
            set_exc(ctypes.c_ulong(main), ctypes.py_object(KeyboardInterrupt))
            time.sleep(ORPHAN_GRACE_SECONDS)  # a C call may hold the main thread that long
        os._exit(EXIT_ORPHANED)

    _watch(parent, gone)


def stop_with_parent(parent: int) -> None:
    """For a whole command run as a child (the app's trainings, :mod:`digitlab.serve`): once
    ``parent`` is gone, send this process SIGINT, so that the command stops as after Ctrl-C (a
    training after its current step, with its checkpoint saved; a reproduction with its
    workers)."""
    _watch(parent, lambda: os.kill(os.getpid(), signal.SIGINT))


def quiet_worker(parent: int) -> None:
    """Initializer of a worker the parent stops itself: Ctrl-C, which reaches the whole
    process group, is left to the parent (no traceback per worker), and the worker ends with
    its parent (:func:`end_with_parent`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    end_with_parent(parent)


@contextlib.contextmanager
def task() -> Iterator[None]:
    """A worker's task: refused (KeyboardInterrupt) once the parent is gone, and the process
    ended as soon as it is over then, before it takes another."""
    _task_running.set()
    try:
        if _orphaned.is_set():  # a task the parent sent before it went
            raise KeyboardInterrupt
        yield
    finally:
        try:
            _task_running.clear()
        finally:  # runs even when the watch's KeyboardInterrupt lands in the line above
            if _orphaned.is_set():
                os._exit(EXIT_ORPHANED)
