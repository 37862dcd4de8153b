"""/api/v1/video: enhancing a video file of the caller's with a list of operations (denoise,
sharpen, color, auto levels, deinterlace, upscale), run in order as one FFmpeg filter graph on a
worker node; ``upscale`` with ``method: superres`` runs a super-resolution model of the registry on
each frame instead of lanczos. The output is a new media file of the caller's (the picture re-encoded in the input's
container family, the sound copied); polled at ``GET /video/job/:id/status`` (docs/enhancement.md)."""

from __future__ import annotations

import asyncio
import math
import secrets
from typing import Annotated, Literal

from aiohttp import web
from pydantic import BaseModel, Field, model_validator

from ai.enhance import MAX_SIDE, available, usable_denoisers
from control.api.ai_common import answer, service
from control.api.enhancement_jobs import EnhancementJobOut, owned_job, settled, succeeded_result
from control.api.ffmpeg import readable_file
from control.api.schemas import RequestModel
from control.context import JOBS, STORAGE, current_user
from control.endpoints import Access, EndpointGroup
from control.enhancement import ENHANCEMENT
from control.errors import bad_request
from control.store.media import JobRecord
from media.probe import stream_kinds

group = EndpointGroup("/api/v1/video", "video")
SUPER_RESOLUTION = "super-resolution"


class Denoise(RequestModel):
    op: Literal["denoise"]
    method: Literal["nlmeans", "atadenoise", "fftdnoiz", "hqdn3d"] = Field(
        "nlmeans", description="FFmpeg filter; hqdn3d only where the FFmpeg build has it (not PyAV's wheels)"
    )
    strength: float = Field(10.0, ge=1, le=50, description="about the noise's standard deviation, in 8-bit levels")


class Sharpen(RequestModel):
    op: Literal["sharpen"]
    amount: float = Field(1.0, ge=-2, le=5, description="unsharp mask amount; negative blurs")
    size: int = Field(5, ge=3, le=13, description="mask size in pixels, odd (FFmpeg takes up to 13)")

    @model_validator(mode="after")
    def _odd(self) -> Sharpen:
        if self.size % 2 == 0:
            raise ValueError("size must be odd")
        return self


class Color(RequestModel):
    op: Literal["color"]
    brightness: float = Field(0.0, ge=-1, le=1, description="added to the luma, as a share of its range")
    contrast: float = Field(1.0, ge=0, le=4, description="luma multiplied around mid-grey")
    saturation: float = Field(1.0, ge=0, le=4, description="chroma multiplied; 0 is grey")


class AutoLevels(RequestModel):
    op: Literal["auto_levels"]
    strength: float = Field(1.0, ge=0, le=1, description="how far to stretch the levels to full range")
    smoothing: int = Field(25, ge=0, le=250, description="frames the black and white points are averaged over")


class Deinterlace(RequestModel):
    op: Literal["deinterlace"]
    method: Literal["bwdif", "yadif"] = "bwdif"


class Upscale(RequestModel):
    op: Literal["upscale"]
    method: Literal["lanczos", "superres"] = Field(
        "lanczos", description="superres: a super-resolution model on each frame (seconds a frame; for recordings)"
    )
    model: str | None = Field(
        None,
        pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$",
        description="with superres: a super-resolution model of GET /models; default realesr-animevideov3-x<factor>",
    )
    factor: float | None = Field(None, gt=1, le=4, description="scale both sides by this")
    width: int | None = Field(None, ge=16, le=MAX_SIDE, description="or a width (height follows unless given)")
    height: int | None = Field(None, ge=16, le=MAX_SIDE)

    @model_validator(mode="after")
    def _one_size(self) -> Upscale:
        if (self.factor is None) == (self.width is None and self.height is None):
            raise ValueError("give either factor, or width and/or height")
        if self.model is not None and self.method != "superres":
            raise ValueError("model goes with method superres")
        return self


Operation = Annotated[Denoise | Sharpen | Color | AutoLevels | Deinterlace | Upscale, Field(discriminator="op")]


class EnhancementIn(RequestModel):
    file_id: str = Field(pattern=r"^[0-9a-f]{32}$", description="a video file of yours")
    operations: list[Operation] = Field(min_length=1, max_length=10, description="applied in this order")


class EnhancementResult(BaseModel):
    file_id: str | None = Field(description="the new media file")
    operations: list[dict[str, object]]
    width: int
    height: int
    frames: int
    audio_copied: bool
    processing_seconds: float
    node_id: str | None


class VideoJobOut(EnhancementJobOut):
    kind: Literal["video-enhancement"]  # type: ignore[assignment]
    operations: list[dict[str, object]]
    result: EnhancementResult | None

    @classmethod
    def of(cls, job: JobRecord) -> VideoJobOut:
        return cls(**cls.fields_of(job), operations=job.params["options"]["operations"], result=succeeded_result(job))


@group.route(
    "POST",
    "/enhancement",
    name="enhancement",
    summary="Denoise, sharpen, correct, deinterlace or upscale a video: a new file",
    access=Access.USER,
    limit="10/minute",
    body=EnhancementIn,
    response=VideoJobOut,
    errors=(503,),
)
async def enhancement(request: web.Request, body: EnhancementIn) -> VideoJobOut:
    for index, operation in enumerate(body.operations):
        method = getattr(operation, "method", None)
        if isinstance(operation, Denoise | Deinterlace) and method and not available(method):
            choices = usable_denoisers() if isinstance(operation, Denoise) else ["bwdif", "yadif"]
            raise bad_request(
                f"operations.{index}: this server's FFmpeg has no {method} filter; use {' or '.join(choices)}"
            )
    record = await readable_file(request, body.file_id)
    if record.file_type != "video":
        raise bad_request(f"file {record.id} is {record.file_type}; enhancement needs a video file")
    path = request.app[STORAGE].local_path(record.storage_key)
    if "video" not in await asyncio.to_thread(stream_kinds, path):
        raise bad_request(f"file {record.id} has no video track")
    operations = [operation.model_dump() for operation in body.operations]
    superres = [op for op in operations if op["op"] == "upscale" and op["method"] == "superres"]
    if len(superres) > 1:
        raise bad_request("operations: super-resolution can be asked for once per job")
    model = None
    if superres:
        model = superres[0]["model"] = await _upscaler(request, superres[0])
    job = await request.app[JOBS].enqueue(
        job_id=secrets.token_hex(16),
        user_id=current_user(request).id,
        kind=ENHANCEMENT,
        params={
            "inputs": [record.id],
            "meeting_id": record.meeting_id,
            "source": {"storage_key": record.storage_key, "file_id": record.id, "file_name": record.file_name},
            "model": model,
            "options": {"operations": operations},
        },
    )
    return VideoJobOut.of(await settled(request, job))


async def _upscaler(request: web.Request, operation: dict[str, object]) -> str:
    """The model a superres upscale runs: the one asked for, else the packaged video model of the
    factor asked (x4 for a size: its output is scaled to it), else any super-resolution model."""
    ai = service(request)
    if operation["model"] is not None:
        return await answer(ai.model_for(SUPER_RESOLUTION, None, str(operation["model"])))
    factor = operation["factor"]
    native = min(4, max(2, math.ceil(float(factor)))) if isinstance(factor, int | float) else 4
    default = f"realesr-animevideov3-x{native}"
    models = await answer(ai.models())
    if any(m["model_id"] == default and m["status"] != "error" for m in models):
        return default
    return await answer(ai.model_for(SUPER_RESOLUTION, None, None))


@group.route(
    "GET",
    "/job/{job_id:[0-9a-f]+}/status",
    name="job_status",
    summary="A video enhancement job's status, progress and result",
    access=Access.USER,
    limit="100/minute",
    response=VideoJobOut,
)
async def job_status(request: web.Request) -> VideoJobOut:
    return VideoJobOut.of(await owned_job(request, ENHANCEMENT))
