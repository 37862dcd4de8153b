"""/api/v1/speech: recognition, emotion and synthetic-speech detection of an ``audio_url`` or of a
media file of the caller's (its audio track, for a video). The work runs on a worker node as a
job; a job done within ``[ai] wait_seconds`` is answered with its result, a longer one with its
status, to poll at ``GET /speech/job/:id/status`` (docs/ai.md)."""

from __future__ import annotations

from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, Field, model_validator

from ai.fetch import UrlRefused, parse_networks, precheck
from control.api.ai_common import ai_unavailable, answer, iso_time, service
from control.api.ffmpeg import readable_file
from control.api.schemas import RequestModel
from control.context import current_user
from control.endpoints import Access, EndpointGroup
from control.errors import bad_request, not_found

group = EndpointGroup("/api/v1/speech", "speech")
Kind = Literal["recognition", "emotion", "synthesis-detection"]
LANGUAGE = r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8}){0,3}$"
MODEL_ID = r"^[a-z0-9][a-z0-9._-]{0,63}$"


class SpeechOptions(RequestModel):
    model_id: str | None = Field(None, pattern=MODEL_ID, description="a model of GET /models; default: chosen")


class SynthesisOptions(SpeechOptions):
    threshold: float = Field(0.5, ge=0, le=1, description="probability from which the decision is 'synthetic'")


class SpeechIn(RequestModel):
    audio_url: str | None = Field(None, min_length=8, max_length=2048, description="http(s) URL of audio or video")
    file_id: str | None = Field(None, pattern=r"^[0-9a-f]{32}$", description="a media file (audio or video) of yours")
    language: str | None = Field(None, pattern=LANGUAGE, description="BCP 47 tag such as en, en-US, zh-CN")
    options: SpeechOptions = Field(default_factory=SpeechOptions)

    @model_validator(mode="after")
    def _one_source(self) -> SpeechIn:
        if (self.audio_url is None) == (self.file_id is None):
            raise ValueError("give either audio_url or file_id")
        return self


class SynthesisIn(SpeechIn):
    options: SynthesisOptions = Field(default_factory=SynthesisOptions)  # type: ignore[assignment]


class RecognizedSegment(BaseModel):
    start: float = Field(description="seconds into the audio")
    end: float
    text: str
    confidence: float | None = Field(description="the engine's confidence in the text; null when it gives none")
    speech_probability: float = Field(description="the voice-activity detector's, over the segment")


class RecognitionResult(BaseModel):
    text: str
    language: str = Field(description="as asked; else as the engine detected it, or und")
    duration: float = Field(description="seconds of audio")
    model_id: str
    segments: list[RecognizedSegment]


class EmotionSegment(BaseModel):
    start: float
    end: float
    label: str
    scores: dict[str, float]


class EmotionResult(BaseModel):
    label: str
    scores: dict[str, float] = Field(description="per class, over all the speech")
    duration: float
    model_id: str
    segments: list[EmotionSegment]


class SynthesisSegment(BaseModel):
    start: float
    end: float
    probability: float


class SynthesisResult(BaseModel):
    probability: float = Field(description="that the speech is synthetic, over all of it")
    threshold: float
    decision: Literal["synthetic", "genuine"]
    duration: float
    model_id: str
    segments: list[SynthesisSegment]


class SpeechJobOut(BaseModel):
    job_id: str
    kind: Kind
    status: Literal["queued", "running", "succeeded", "failed"]
    progress: int = Field(description="percent")
    model_id: str
    language: str | None
    node_id: str | None = Field(description="the worker node running or having run it")
    attempts: int = Field(description="starts; more than one when a node stopped while running it")
    error: str | None
    result: RecognitionResult | EmotionResult | SynthesisResult | None
    created_at: str
    started_at: str | None
    finished_at: str | None

    @classmethod
    def of(cls, job: dict[str, Any]) -> SpeechJobOut:
        return cls(
            **{key: job[key] for key in ("job_id", "kind", "status", "progress", "model_id", "language")},
            node_id=job["node_id"],
            attempts=job["attempts"],
            error=job["error"],
            result=job["result"],
            created_at=iso_time(job["created_at"]) or "",
            started_at=iso_time(job["started_at"]),
            finished_at=iso_time(job["finished_at"]),
        )


class RecognitionJobOut(SpeechJobOut):
    result: RecognitionResult | None


class EmotionJobOut(SpeechJobOut):
    result: EmotionResult | None


class SynthesisJobOut(SpeechJobOut):
    result: SynthesisResult | None


async def _submit(request: web.Request, kind: str, body: SpeechIn) -> dict[str, Any]:
    ai = service(request)
    if body.file_id is not None:
        record = await readable_file(request, body.file_id)
        if record.file_type not in {"audio", "video"}:
            raise bad_request(f"file {record.id} is {record.file_type}; speech needs an audio or video file")
        source: dict[str, Any] = {"storage_key": record.storage_key, "file_id": record.id}
    else:
        assert body.audio_url is not None
        try:
            await precheck(body.audio_url, parse_networks(ai.settings.ai.url_allow_networks))
        except UrlRefused as exc:
            raise bad_request(str(exc)) from None
        source = {"url": body.audio_url}
    options = body.options.model_dump(exclude_none=True)
    job = await answer(ai.submit(current_user(request).id, kind, source, body.language, options))
    if job["status"] == "failed" and job["error_kind"] == "input":
        raise bad_request(job["error"], {"job_id": job["job_id"]})
    if job["status"] == "failed" and job["error_kind"] == "unavailable":
        raise ai_unavailable(job["error"])
    return job


@group.route(
    "POST",
    "/recognition",
    name="recognition",
    summary="Speech to text, with timed segments",
    access=Access.USER,
    limit="10/minute",
    body=SpeechIn,
    response=RecognitionJobOut,
    errors=(503,),
)
async def recognition(request: web.Request, body: SpeechIn) -> RecognitionJobOut:
    return RecognitionJobOut.of(await _submit(request, "recognition", body))


@group.route(
    "POST",
    "/emotion",
    name="emotion",
    summary="The emotion in the speech, overall and per segment",
    access=Access.USER,
    limit="10/minute",
    body=SpeechIn,
    response=EmotionJobOut,
    errors=(503,),
)
async def emotion(request: web.Request, body: SpeechIn) -> EmotionJobOut:
    return EmotionJobOut.of(await _submit(request, "emotion", body))


@group.route(
    "POST",
    "/synthesis-detection",
    name="synthesis_detection",
    summary="How likely the speech is synthetic (deep-fake), overall and per segment",
    access=Access.USER,
    limit="10/minute",
    body=SynthesisIn,
    response=SynthesisJobOut,
    errors=(503,),
)
async def synthesis_detection(request: web.Request, body: SynthesisIn) -> SynthesisJobOut:
    return SynthesisJobOut.of(await _submit(request, "synthesis-detection", body))


@group.route(
    "GET",
    "/job/{job_id:[0-9a-f]+}/status",
    name="job_status",
    summary="A speech job's status, progress and result",
    access=Access.USER,
    limit="100/minute",
    response=SpeechJobOut,
    errors=(503,),
)
async def job_status(request: web.Request) -> SpeechJobOut:
    job = await answer(service(request).job(request.match_info["job_id"]))
    user = current_user(request)
    if job is None or (job["user_id"] != user.id and not user.is_admin):
        raise not_found("Job not found")
    return SpeechJobOut.of(job)
