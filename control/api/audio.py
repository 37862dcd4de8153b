"""/api/v1/audio: noise reduction of a media file of the caller's, or of an ``audio_url``. The work
runs on a worker node as a job whose output is a new media file of the caller's (same container
family, a video stream copied untouched); a job done within ``[ai] wait_seconds`` is answered
finished, a longer one to be polled at ``GET /audio/job/:id/status`` (docs/enhancement.md)."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, Field, model_validator

from ai.fetch import UrlRefused, parse_networks, precheck
from control.api.ai_common import answer, service
from control.api.enhancement_jobs import EnhancementJobOut, owned_job, settled, succeeded_result
from control.api.ffmpeg import readable_file
from control.api.schemas import RequestModel
from control.context import JOBS, STORAGE, current_user
from control.endpoints import Access, EndpointGroup
from control.enhancement import DENOISING
from control.errors import bad_request
from control.store.media import JobRecord
from media.probe import stream_kinds

group = EndpointGroup("/api/v1/audio", "audio")
MODEL_ID = r"^[a-z0-9][a-z0-9._-]{0,63}$"


class DenoisingIn(RequestModel):
    file_id: str | None = Field(None, pattern=r"^[0-9a-f]{32}$", description="a media file (audio or video) of yours")
    audio_url: str | None = Field(None, min_length=8, max_length=2048, description="http(s) URL of audio or video")
    model: str | None = Field(
        None, pattern=MODEL_ID, description="a denoising model of GET /models; default: deepfilternet3 (or chosen)"
    )
    attenuation_limit_db: float | None = Field(
        None, ge=0, le=100, description="take the noise down by at most this much (dB); default: as far as it goes"
    )

    @model_validator(mode="after")
    def _one_source(self) -> DenoisingIn:
        if (self.audio_url is None) == (self.file_id is None):
            raise ValueError("give either audio_url or file_id")
        return self


class Levels(BaseModel):
    rms_dbfs: float = Field(description="loudness over the whole track, dB below full scale")
    peak_dbfs: float
    noise_floor_dbfs: float = Field(description="level of the quiet 10% of 50 ms blocks: the noise between words")


class DenoisingResult(BaseModel):
    file_id: str | None = Field(description="the new media file")
    model: str
    duration: float = Field(description="seconds of audio")
    sample_rate: int
    channels: int
    video_copied: bool = Field(description="the input's video stream is in the new file, untouched")
    input_levels: Levels
    output_levels: Levels
    noise_reduction_db: float = Field(description="how far the noise floor went down")
    processing_seconds: float
    realtime_factor: float | None = Field(description="processing time over the audio's duration")
    node_id: str | None = Field(description="the worker node that did the work")


class DenoisingJobOut(EnhancementJobOut):
    kind: Literal["audio-denoising"]  # type: ignore[assignment]
    model: str
    result: DenoisingResult | None

    @classmethod
    def of(cls, job: JobRecord) -> DenoisingJobOut:
        return cls(**cls.fields_of(job), model=job.params["model"], result=succeeded_result(job))


DEFAULT_MODEL = "deepfilternet3"


async def _source(request: web.Request, body: DenoisingIn) -> tuple[dict[str, Any], list[str], int | None]:
    """Where the audio is, the input file (if any) and its meeting; refusals as 400."""
    if body.file_id is None:
        assert body.audio_url is not None
        try:
            await precheck(body.audio_url, parse_networks(service(request).settings.ai.url_allow_networks))
        except UrlRefused as exc:
            raise bad_request(str(exc)) from None
        name = body.audio_url.rsplit("/", 1)[-1].split("?", 1)[0] or "audio"
        return {"url": body.audio_url, "file_name": name}, [], None
    record = await readable_file(request, body.file_id)
    if record.file_type not in {"audio", "video"}:
        raise bad_request(f"file {record.id} is {record.file_type}; denoising needs an audio or video file")
    path = request.app[STORAGE].local_path(record.storage_key)
    if "audio" not in await asyncio.to_thread(stream_kinds, path):
        raise bad_request(f"file {record.id} has no audio track to denoise")
    source = {"storage_key": record.storage_key, "file_id": record.id, "file_name": record.file_name}
    return source, [record.id], record.meeting_id


async def _model(request: web.Request, asked: str | None) -> str:
    ai = service(request)
    if asked is not None:
        return await answer(ai.model_for("denoising", None, asked))
    models = await answer(ai.models())
    if any(m["model_id"] == DEFAULT_MODEL and m["status"] != "error" for m in models):
        return DEFAULT_MODEL
    return await answer(ai.model_for("denoising", None, None))


@group.route(
    "POST",
    "/denoising",
    name="denoising",
    summary="Take the noise out of a recording's sound: a new file, and the levels before and after",
    access=Access.USER,
    limit="10/minute",
    body=DenoisingIn,
    response=DenoisingJobOut,
    errors=(503,),
)
async def denoising(request: web.Request, body: DenoisingIn) -> DenoisingJobOut:
    source, inputs, meeting_id = await _source(request, body)
    model = await _model(request, body.model)
    options = {"attenuation_limit_db": body.attenuation_limit_db} if body.attenuation_limit_db is not None else {}
    job = await request.app[JOBS].enqueue(
        job_id=secrets.token_hex(16),
        user_id=current_user(request).id,
        kind=DENOISING,
        params={"inputs": inputs, "meeting_id": meeting_id, "source": source, "model": model, "options": options},
    )
    return DenoisingJobOut.of(await settled(request, job))


@group.route(
    "GET",
    "/job/{job_id:[0-9a-f]+}/status",
    name="job_status",
    summary="A denoising job's status, progress and result",
    access=Access.USER,
    limit="100/minute",
    response=DenoisingJobOut,
)
async def job_status(request: web.Request) -> DenoisingJobOut:
    return DenoisingJobOut.of(await owned_job(request, DENOISING))
