"""What the audio denoising and video enhancement areas share: their jobs as the API shows them,
waiting a little for one to finish, and reading one back."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, Field

from control.api.ai_common import service
from control.context import STORE, current_user
from control.envelope import iso_utc
from control.errors import ApiError, BusinessCode, bad_request, not_found
from control.store.media import JobRecord

FINISHED = ("succeeded", "failed", "cancelled")


class EnhancementJobOut(BaseModel):
    job_id: str
    kind: Literal["audio-denoising", "video-enhancement"]
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    progress: int = Field(description="percent")
    error: str | None
    file_id: str | None = Field(description="the input file (null for an audio_url)")
    result_file_ids: list[str] = Field(description="the new file, once done")
    attempts: int
    created_at: str
    started_at: str | None
    finished_at: str | None

    @classmethod
    def fields_of(cls, job: JobRecord) -> dict[str, Any]:
        inputs = job.params.get("inputs") or [None]
        return {
            "job_id": job.id,
            "kind": job.kind,
            "status": job.status,
            "progress": job.progress,
            "error": job.error,
            "file_id": inputs[0],
            "result_file_ids": job.result_file_ids,
            "attempts": job.attempts,
            "created_at": iso_utc(job.created_at),
            "started_at": iso_utc(job.started_at) if job.started_at else None,
            "finished_at": iso_utc(job.finished_at) if job.finished_at else None,
        }


def succeeded_result(job: JobRecord) -> dict[str, Any] | None:
    """The measured result of a finished job, with the new file's id."""
    if job.status != "succeeded" or not job.result:
        return None
    return job.result | {"file_id": job.result_file_ids[0] if job.result_file_ids else None}


async def settled(request: web.Request, job: JobRecord) -> JobRecord:
    """The job once finished, or as it is after ``[ai] wait_seconds``. A job that failed within
    that time answers as an error: 400 for its input, 503/4001 when nothing could run it."""
    deadline = time.monotonic() + service(request).settings.ai.wait_seconds
    pause = 0.05
    current: JobRecord | None = job
    while current is not None and current.status not in FINISHED and time.monotonic() < deadline:
        await asyncio.sleep(pause)
        pause = min(pause * 1.5, 0.25)
        current = await request.app[STORE].jobs.get(job.id)
    if current is None:
        raise not_found("Job not found")
    if current.status == "failed":
        details = {"job_id": current.id}
        if (current.result or {}).get("error_kind") == "unavailable":
            message = current.error or "the AI service could not run the job"
            raise ApiError(503, message, code=BusinessCode.AI_UNAVAILABLE, data=details)
        raise bad_request(current.error or "the job failed", details)
    return current


async def owned_job(request: web.Request, kind: str) -> JobRecord:
    job = await request.app[STORE].jobs.get(request.match_info["job_id"])
    user = current_user(request)
    if job is None or job.kind != kind or (job.user_id != user.id and not user.is_admin):
        raise not_found("Job not found")
    return job
