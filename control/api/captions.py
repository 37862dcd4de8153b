"""A meeting's live captions under /api/v1/meetings/:id (docs/ai.md#live-captions): the host or a
moderator switches them on or off; its participants read the transcript, as JSON or WebVTT."""

from __future__ import annotations

from datetime import datetime

from aiohttp import web
from pydantic import BaseModel, Field

from control.api.schemas import RequestModel
from control.api.speech import LANGUAGE, MODEL_ID
from control.captions import iso_ms, line_view
from control.context import CAPTIONS, STORE, current_user
from control.endpoints import Access, EndpointGroup, path_int
from control.errors import forbidden
from control.rooms import load_meeting, meeting_not_found, require_moderator
from control.store.captions import CaptionState, TranscriptLine
from control.store.meetings import MeetingRecord

meeting_group = EndpointGroup("/api/v1/meetings", "meetings")
MEETING_ID = r"{meeting_id:\d+}"
MAX_ID = 2**63 - 1


class CaptionsIn(RequestModel):
    enabled: bool = Field(description="captions on or off")
    language: str = Field("en", pattern=LANGUAGE, description="BCP 47 tag of what is spoken, such as en or zh-CN")
    model_id: str | None = Field(
        None, pattern=MODEL_ID, description="a recognition model of GET /models; default: chosen for the language"
    )


class CaptionsOut(BaseModel):
    meeting_id: int
    enabled: bool
    language: str
    model_id: str | None = Field(description="the recognition model captioning the meeting; null if never on")
    changed_by: int
    changed_at: str

    @classmethod
    def of(cls, state: CaptionState) -> CaptionsOut:
        return cls(
            meeting_id=state.meeting_id,
            enabled=state.enabled,
            language=state.language,
            model_id=state.model_id or None,
            changed_by=state.changed_by,
            changed_at=iso_ms(state.changed_at),
        )


class TranscriptQuery(RequestModel):
    after: int | None = Field(None, ge=0, le=MAX_ID, description="only lines after this line_id")
    limit: int = Field(500, ge=1, le=1000)


class TranscriptLineOut(BaseModel):
    line_id: int
    user_id: int = Field(description="whose speech it is")
    username: str
    nickname: str
    text: str
    language: str
    model_id: str
    started_at: str = Field(description="when the utterance began, ISO 8601 UTC to the millisecond")
    ended_at: str = Field(description="when its speech ended")


class TranscriptOut(BaseModel):
    meeting_id: int
    lines: list[TranscriptLineOut] = Field(description="in the order they were recognised")
    next_after: int | None = Field(description="pass as after for the next page; null on the last page")


async def _member_meeting(request: web.Request) -> MeetingRecord:
    """The transcript is what people said in the meeting: for its participants only."""
    meeting = await load_meeting(request.app, path_int(request, "meeting_id", meeting_not_found()))
    participant = await request.app[STORE].participants.get(meeting.id, current_user(request).id)
    if participant is None or not participant.is_member:
        raise forbidden("Only the meeting's participants may read its transcript")
    return meeting


@meeting_group.route(
    "POST",
    "/" + MEETING_ID + "/captions",
    name="captions",
    summary="Switch live captions on or off (host or moderator; 2002 when the meeting is over, 4001 without a model)",
    access=Access.USER,
    limit="20/minute",
    body=CaptionsIn,
    response=CaptionsOut,
    errors=(503,),
)
async def switch_captions(request: web.Request, body: CaptionsIn) -> CaptionsOut:
    user = current_user(request)
    meeting = await load_meeting(request.app, path_int(request, "meeting_id", meeting_not_found()))
    await require_moderator(request.app, meeting, user)
    state = await request.app[CAPTIONS].switch(meeting, user.id, body.enabled, body.language, body.model_id)
    return CaptionsOut.of(state)


@meeting_group.route(
    "GET",
    "/" + MEETING_ID + "/transcript",
    name="transcript",
    summary="The meeting's transcript from its live captions (participants)",
    access=Access.USER,
    limit="50/minute",
    query=TranscriptQuery,
    response=TranscriptOut,
)
async def transcript(request: web.Request, query: TranscriptQuery) -> TranscriptOut:
    meeting = await _member_meeting(request)
    lines = await request.app[STORE].captions.lines(meeting.id, after=query.after, limit=query.limit)
    return TranscriptOut(
        meeting_id=meeting.id,
        lines=[TranscriptLineOut(**line_view(line)) for line in lines],
        next_after=lines[-1].id if len(lines) == query.limit else None,
    )


@meeting_group.route(
    "GET",
    "/" + MEETING_ID + "/transcript.vtt",
    name="transcript_vtt",
    summary="The meeting's whole transcript as WebVTT subtitles (participants)",
    access=Access.USER,
    limit="50/minute",
    raw_response=("text/vtt", {"type": "string"}),
)
async def transcript_vtt(request: web.Request) -> web.Response:
    meeting = await _member_meeting(request)
    lines = await request.app[STORE].captions.lines(meeting.id)
    return web.Response(
        text=webvtt(meeting, lines),
        content_type="text/vtt",
        charset="utf-8",
        headers={"Cache-Control": "private, max-age=0", "X-Content-Type-Options": "nosniff"},
    )


def webvtt(meeting: MeetingRecord, lines: list[TranscriptLine]) -> str:
    """Cues timed from the meeting's start (from the first line when captions ran before it
    started), each with its speaker as the cue's voice."""
    first = min((line.started_at for line in lines), default=None)
    origin = meeting.started_at or first
    if origin is None or (first is not None and first < origin):
        origin = first
    blocks = ["WEBVTT"]
    if origin is not None:
        blocks.append(f"NOTE cue times count from {iso_ms(origin)}")
    for number, line in enumerate(sorted(lines, key=lambda line: line.started_at), start=1):
        assert origin is not None
        start, end = _offset(line.started_at, origin), _offset(max(line.ended_at, line.started_at), origin)
        speaker = _escape(line.nickname or line.username)
        blocks.append(f"{number}\n{start} --> {end}\n<v {speaker}>{_escape(line.text)}")
    return "\n\n".join(blocks) + "\n"


def _offset(moment: datetime, origin: datetime) -> str:
    millis = max(0, round((moment - origin).total_seconds() * 1000))
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}.{millis:03d}"


def _escape(text: str) -> str:
    """Cue text is markup: its specials escaped, no line breaks, no arrow that would end the cue."""
    text = " ".join(text.split()).replace("-->", "->")
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
