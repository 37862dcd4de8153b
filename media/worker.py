"""Entry point of a job worker process: runs one job and reports progress on a shared queue."""

from __future__ import annotations

import multiprocessing.queues
from pathlib import Path
from typing import Any

from media.jobs import JOBS, JobFailed

_progress: multiprocessing.queues.Queue[tuple[str, int]] | None = None


def initialise(progress: multiprocessing.queues.Queue[tuple[str, int]]) -> None:
    global _progress
    _progress = progress


def run(job_id: str, kind: str, params: dict[str, Any], inputs: list[str], scratch: str) -> list[tuple[str, str]]:
    """Outputs as (path, suggested name); JobFailed travels back to the server as is."""
    last = -1

    def report(fraction: float) -> None:
        nonlocal last
        percent = max(0, min(99, int(fraction * 100)))
        if percent > last and _progress is not None:
            last = percent
            _progress.put((job_id, percent))

    if _progress is not None:
        _progress.put((job_id, -1))  # started
    try:
        outputs = JOBS[kind](inputs, Path(scratch), params, report)
    except JobFailed:
        raise
    except Exception as exc:  # a library error on odd input must fail the job, not the worker
        raise JobFailed(f"processing failed: {exc.__class__.__name__}: {str(exc)[:200]}") from None
    return [(str(path), name) for path, name in outputs]
