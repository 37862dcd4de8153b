"""Entry point of a job worker process: runs one job and reports progress on a shared queue.

A worker lives only as long as the server that started it: left running after the server was
killed it would burn a core on a job the restarted server runs again."""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing.queues
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from media.compositor import composite
from media.jobs import JOBS, JobFailed

# Every kind of job a worker runs: the file jobs, and the composite of a recording.
KINDS = {**JOBS, "composite": composite}

_progress: multiprocessing.queues.Queue[tuple[str, int, int]] | None = None
PR_SET_PDEATHSIG = 1
PARENT_CHECK_SECONDS = 0.5


def initialise(progress: multiprocessing.queues.Queue[tuple[str, int, int]], parent_pid: int) -> None:
    global _progress
    _progress = progress
    # Reports are best effort: a worker must be able to exit even when another one was killed while
    # holding the queue's lock, which would otherwise hold this one's exit (and the server's) forever.
    progress.cancel_join_thread()
    die_with_parent(parent_pid)


def die_with_parent(parent_pid: int) -> None:
    """Linux kills this process the moment the server goes (the signal is tied to the server's
    thread that started the worker: the event loop's, which lives as long as the server); a
    watchdog thread notices it too, on any system, within PARENT_CHECK_SECONDS."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):  # the watchdog still covers it
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the server died before the signal was armed
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="parent-watch", daemon=True).start()


def _watch_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(PARENT_CHECK_SECONDS)
    os.kill(os.getpid(), signal.SIGKILL)


def run(
    job_id: str, attempt: int, kind: str, params: dict[str, Any], inputs: list[str], scratch: str
) -> list[tuple[str, str]]:
    """Outputs as (path, suggested name); JobFailed travels back to the server as is. Reports
    (job, attempt, percent), -1 for started: the attempt tells a late report of a dead worker."""
    last = -1

    def report(fraction: float) -> None:
        nonlocal last
        percent = max(0, min(99, int(fraction * 100)))
        if percent > last and _progress is not None:
            last = percent
            _progress.put((job_id, attempt, percent))

    if _progress is not None:
        _progress.put((job_id, attempt, -1))  # started
    try:
        outputs = KINDS[kind](inputs, Path(scratch), params, report)
    except JobFailed:
        raise
    except Exception as exc:  # a library error on odd input must fail the job, not the worker
        raise JobFailed(f"processing failed: {exc.__class__.__name__}: {str(exc)[:200]}") from None
    return [(str(path), name) for path, name in outputs]
