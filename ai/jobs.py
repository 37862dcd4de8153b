"""An AI job as the API shows it, kept by whichever queue carries the work (in the server's memory
on the embedded default, in Redis otherwise), in the status style of the media jobs."""

from __future__ import annotations

import time
from typing import Any

FINISHED = {"succeeded", "failed"}


def new_job(
    job_id: str,
    user_id: int,
    kind: str,
    model_id: str | None,
    language: str | None,
    options: dict[str, Any],
    source: dict[str, Any],
) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "user_id": user_id,
        "kind": kind,
        "model_id": model_id,
        "language": language,
        "options": options,
        "source": source,
        "status": "queued",
        "progress": 0,
        "node_id": None,
        "attempts": 0,
        "error": None,
        "error_kind": None,
        "result": None,
        "created_at": time.time(),
        "started_at": None,
        "finished_at": None,
    }


def apply_started(job: dict[str, Any], node_id: str) -> int:
    job.update(status="running", node_id=node_id, progress=0, started_at=time.time(), attempts=job["attempts"] + 1)
    return int(job["attempts"])


def apply_finished(job: dict[str, Any], result: Any, error: str | None, error_kind: str | None) -> None:
    job.update(
        status="failed" if error else "succeeded",
        progress=job["progress"] if error else 100,
        result=result,
        error=error,
        error_kind=error_kind,
        finished_at=time.time(),
    )
