"""/api/v1/ffmpeg: asynchronous media jobs on files the caller may read; outputs become the
caller's files. Poll ``GET /job/:id/status`` for progress and results."""

from __future__ import annotations

import secrets
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, Field, model_validator

from control.api.schemas import RequestModel
from control.context import JOBS, STORE, current_user
from control.endpoints import Access, EndpointGroup
from control.envelope import iso_utc
from control.errors import ApiError, BusinessCode, bad_request, forbidden, not_found
from control.store.media import JobRecord, MediaRecord

group = EndpointGroup("/api/v1/ffmpeg", "ffmpeg")

FileId = Field(min_length=32, max_length=32, pattern=r"^[0-9a-f]{32}$")
Dimension = Field(None, ge=16, le=3840)
Bitrate = Field(None, ge=8_000, le=50_000_000)


class TranscodeIn(RequestModel):
    file_id: str = FileId
    format: Literal["mp4", "webm"] = Field(description="mp4: H.264 + AAC; webm: VP8 or VP9 + Opus")
    video_codec: Literal["h264", "vp8", "vp9"] | None = Field(None, description="default: h264 (mp4), vp8 (webm)")
    width: int | None = Dimension
    height: int | None = Dimension
    video_bitrate: int | None = Bitrate
    audio_bitrate: int | None = Bitrate

    @model_validator(mode="after")
    def _codec_fits_format(self) -> TranscodeIn:
        allowed = {"mp4": {"h264"}, "webm": {"vp8", "vp9"}}[self.format]
        if self.video_codec is not None and self.video_codec not in allowed:
            raise ValueError(f"{self.format} takes video_codec {' or '.join(sorted(allowed))}")
        return self


class ExtractAudioIn(RequestModel):
    file_id: str = FileId
    format: Literal["opus", "aac", "wav"] = Field("opus", description="opus in Ogg, AAC in M4A, or 16-bit WAV")
    audio_bitrate: int | None = Bitrate


class ExtractVideoIn(RequestModel):
    file_id: str = FileId


class MergeIn(RequestModel):
    file_ids: list[str] = Field(min_length=2, max_length=10)
    mode: Literal["concat", "mux"] = Field(
        "concat", description="concat: one after another (re-encoded); mux: [video, audio] in one file (copied)"
    )
    format: Literal["mp4", "webm"] = Field("mp4", description="output of concat")

    @model_validator(mode="after")
    def _shape(self) -> MergeIn:
        for file_id in self.file_ids:
            if len(file_id) != 32 or any(char not in "0123456789abcdef" for char in file_id):
                raise ValueError("file_ids must be media file ids")
        if self.mode == "mux" and len(self.file_ids) != 2:
            raise ValueError("mux takes exactly [video file, audio file]")
        return self


class ThumbnailIn(RequestModel):
    file_id: str = FileId
    time: float = Field(0.0, ge=0, le=86_400, description="seconds into the video")
    format: Literal["jpeg", "png"] = "jpeg"
    width: int | None = Dimension
    height: int | None = Dimension


class JobOut(BaseModel):
    job_id: str
    kind: str
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    progress: int
    error: str | None
    result_file_ids: list[str]
    params: dict[str, Any]
    created_at: str
    started_at: str | None
    finished_at: str | None

    @classmethod
    def of(cls, job: JobRecord) -> JobOut:
        return cls(
            job_id=job.id,
            kind=job.kind,
            status=job.status,  # type: ignore[arg-type]
            progress=job.progress,
            error=job.error,
            result_file_ids=job.result_file_ids,
            params=job.params,
            created_at=iso_utc(job.created_at),
            started_at=iso_utc(job.started_at) if job.started_at else None,
            finished_at=iso_utc(job.finished_at) if job.finished_at else None,
        )


def file_not_found() -> ApiError:
    return not_found("File not found", BusinessCode.FILE_NOT_FOUND)


async def readable_file(request: web.Request, file_id: str) -> MediaRecord:
    """A file the caller may read; others' files answer as unknown, so ids cannot be probed."""
    user = current_user(request)
    record = await request.app[STORE].media.get(file_id)
    if record is None:
        raise file_not_found()
    if not user.is_admin and not await request.app[STORE].media.readable_by(record, user.id):
        raise forbidden("You may not use this file")
    return record


async def start_job(request: web.Request, kind: str, file_ids: list[str], params: dict[str, Any]) -> JobOut:
    inputs = [await readable_file(request, file_id) for file_id in file_ids]
    wanted = {"thumbnail": "video", "extract-video": "video"}.get(kind)
    for record in inputs:
        if record.file_type not in {"video", "audio"} or (wanted and record.file_type != wanted):
            raise bad_request(f"file {record.id} is {record.file_type}; this job needs {wanted or 'audio or video'}")
    job = await request.app[JOBS].enqueue(
        job_id=secrets.token_hex(16),
        user_id=current_user(request).id,
        kind=kind,
        params={**params, "inputs": file_ids, "meeting_id": inputs[0].meeting_id},
    )
    return JobOut.of(job)


def _params(body: RequestModel, *exclude: str) -> dict[str, Any]:
    return body.model_dump(exclude={"file_id", "file_ids", *exclude}, exclude_none=True)


@group.route(
    "POST",
    "/transcode",
    name="transcode",
    summary="Transcode to MP4 (H.264+AAC) or WebM (VP8/VP9+Opus)",
    access=Access.USER,
    limit="10/minute",
    body=TranscodeIn,
    response=JobOut,
    status=201,
)
async def transcode(request: web.Request, body: TranscodeIn) -> JobOut:
    return await start_job(request, "transcode", [body.file_id], _params(body))


@group.route(
    "POST",
    "/extract-audio",
    name="extract_audio",
    summary="Extract the audio as Opus, AAC or WAV",
    access=Access.USER,
    limit="10/minute",
    body=ExtractAudioIn,
    response=JobOut,
    status=201,
)
async def extract_audio(request: web.Request, body: ExtractAudioIn) -> JobOut:
    return await start_job(request, "extract-audio", [body.file_id], _params(body))


@group.route(
    "POST",
    "/extract-video",
    name="extract_video",
    summary="Extract the video stream alone (copied, not re-encoded)",
    access=Access.USER,
    limit="10/minute",
    body=ExtractVideoIn,
    response=JobOut,
    status=201,
)
async def extract_video(request: web.Request, body: ExtractVideoIn) -> JobOut:
    return await start_job(request, "extract-video", [body.file_id], {})


@group.route(
    "POST",
    "/merge",
    name="merge",
    summary="Concatenate files, or mux one video with one audio",
    access=Access.USER,
    limit="10/minute",
    body=MergeIn,
    response=JobOut,
    status=201,
)
async def merge(request: web.Request, body: MergeIn) -> JobOut:
    return await start_job(request, "merge", body.file_ids, _params(body))


@group.route(
    "POST",
    "/thumbnail",
    name="thumbnail",
    summary="A JPEG or PNG frame at a given time, optionally resized",
    access=Access.USER,
    limit="20/minute",
    body=ThumbnailIn,
    response=JobOut,
    status=201,
)
async def thumbnail(request: web.Request, body: ThumbnailIn) -> JobOut:
    return await start_job(request, "thumbnail", [body.file_id], _params(body))


@group.route(
    "GET",
    "/job/{job_id:[0-9a-f]+}/status",
    name="job_status",
    summary="A job's status, progress and results",
    access=Access.USER,
    limit="100/minute",
    response=JobOut,
)
async def job_status(request: web.Request) -> JobOut:
    job = await request.app[STORE].jobs.get(request.match_info["job_id"])
    user = current_user(request)
    if job is None or (job.user_id != user.id and not user.is_admin):
        raise not_found("Job not found")
    return JobOut.of(job)
