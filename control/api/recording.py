"""/api/v1/recording, and a meeting's recordings under /api/v1/meetings/:id (docs/recording.md).

The host or a moderator of a meeting starts, stops and deletes its recordings; its participants
see them, admins see every one. To anyone else a recording does not exist."""

from __future__ import annotations

from typing import Literal

from aiohttp import web
from pydantic import BaseModel, Field

from control.api.media import group as media_group
from control.api.schemas import Page, RequestModel
from control.context import RECORDINGS, STORE, current_user
from control.endpoints import Access, EndpointGroup, path_int
from control.envelope import iso_utc
from control.errors import forbidden
from control.recordings import not_running, recording_not_found
from control.rooms import load_meeting, meeting_not_found, require_member, require_moderator
from control.store.recordings import RecordingRecord, TrackRecord
from control.store.users import UserRecord

group = EndpointGroup("/api/v1/recording", "recording")
# A meeting's recordings are reached from the meeting too, as the contract lists them there.
meeting_group = EndpointGroup("/api/v1/meetings", "meetings")
RECORDING_ID = r"{recording_id:\d+}"
MEETING_ID = r"{meeting_id:\d+}"
MAX_ID = 2**63 - 1
Status = Literal["recording", "stopping", "processing", "ready", "failed", "interrupted"]
Layout = Literal["grid", "speaker"]


class RecordingOptions(RequestModel):
    layout: Layout = Field("grid", description="of the composite: grid, or the active speaker large")
    composite: bool = Field(True, description="also make one MP4 of the whole room once stopped")


class RecordingStartIn(RecordingOptions):
    meeting_id: int = Field(ge=1, le=MAX_ID)


class RecordingStopIn(RequestModel):
    recording_id: int = Field(ge=1, le=MAX_ID)


class RecordingListQuery(RequestModel):
    page: int = Field(1, ge=1, le=1_000_000)
    page_size: int = Field(20, ge=1, le=100)
    meeting_id: int | None = Field(None, ge=1, le=MAX_ID)
    status: Status | None = None


class MeetingRecordingsQuery(RequestModel):
    page: int = Field(1, ge=1, le=1_000_000)
    page_size: int = Field(20, ge=1, le=100)
    status: Status | None = None


class RecordingTrackOut(BaseModel):
    user_id: int
    kind: Literal["audio", "video"]
    codec: str
    file_id: str | None = Field(description="its media file; null when nothing was recorded or the file was deleted")
    file_url: str | None
    started_at: str | None = Field(description="first frame written, ISO 8601 UTC")
    ended_at: str | None = Field(description="last frame written")
    duration: float | None = Field(description="seconds")
    size: int | None = Field(description="bytes")
    frames: int | None
    dropped_frames: int | None
    width: int | None
    height: int | None
    reason: str = Field(description="why its file ended: stopped, left, unpublished, disk, interrupted, error: ...")

    @classmethod
    def of(cls, track: TrackRecord) -> RecordingTrackOut:
        return cls(
            user_id=track.user_id,
            kind=track.kind,  # type: ignore[arg-type]
            codec=track.codec,
            file_id=track.media_file_id,
            file_url=f"{media_group.prefix}/download/{track.media_file_id}" if track.media_file_id else None,
            started_at=iso_utc(track.started_at) if track.started_at else None,
            ended_at=iso_utc(track.ended_at) if track.ended_at else None,
            duration=round(track.duration, 3) if track.duration is not None else None,
            size=track.size,
            frames=track.frames,
            dropped_frames=track.dropped_frames,
            width=track.width,
            height=track.height,
            reason=track.reason,
        )


class RecordingOut(BaseModel):
    recording_id: int
    meeting_id: int
    started_by: int
    status: Status
    error: str | None
    layout: Layout
    composite: bool
    started_at: str
    stopped_at: str | None
    stop_reason: str | None = Field(description="stopped, meeting ended, disk, server shutdown, ...")
    duration: float | None = Field(description="seconds from start to stop")
    size: int = Field(description="bytes of its files (tracks and composite)")
    tracks: list[RecordingTrackOut]
    composite_file_id: str | None
    progress: int | None = Field(description="of the composite, 0-100, while processing")

    @classmethod
    def of(cls, recording: RecordingRecord, tracks: list[TrackRecord], progress: int | None) -> RecordingOut:
        return cls(
            recording_id=recording.id,
            meeting_id=recording.meeting_id,
            started_by=recording.started_by,
            status=recording.status,  # type: ignore[arg-type]
            error=recording.error,
            layout=recording.layout,  # type: ignore[arg-type]
            composite=recording.composite,
            started_at=iso_utc(recording.started_at),
            stopped_at=iso_utc(recording.stopped_at) if recording.stopped_at else None,
            stop_reason=recording.stop_reason,
            duration=round(recording.duration, 3) if recording.duration is not None else None,
            size=recording.size,
            tracks=[RecordingTrackOut.of(track) for track in tracks],
            composite_file_id=recording.composite_file_id,
            progress=progress,
        )


async def _views(request: web.Request, recordings: list[RecordingRecord]) -> list[RecordingOut]:
    store = request.app[STORE]
    tracks = await store.recordings.tracks(recording.id for recording in recordings)
    views = []
    for recording in recordings:
        progress = None
        if recording.status == "processing" and recording.composite_job_id:
            job = await store.jobs.get(recording.composite_job_id)
            progress = job.progress if job is not None else None
        views.append(RecordingOut.of(recording, tracks[recording.id], progress))
    return views


async def _view(request: web.Request, recording: RecordingRecord) -> RecordingOut:
    return (await _views(request, [recording]))[0]


async def _visible(request: web.Request, recording_id: int) -> tuple[RecordingRecord, UserRecord]:
    """A recording the caller may see; to anyone else it is unknown, so ids cannot be probed."""
    user = current_user(request)
    recording = await request.app[STORE].recordings.get(recording_id)
    if recording is None:
        raise recording_not_found()
    if not user.is_admin:
        participant = await request.app[STORE].participants.get(recording.meeting_id, user.id)
        if participant is None or not participant.is_member:
            raise recording_not_found()
    return recording, user


async def _controlled(request: web.Request, recording_id: int) -> RecordingRecord:
    """A recording the caller may stop or delete: the host's or a moderator's of its meeting."""
    recording, user = await _visible(request, recording_id)
    participant = await request.app[STORE].participants.get(recording.meeting_id, user.id)
    if participant is None or not participant.can_moderate:
        raise forbidden("Only the meeting's host or a moderator may do this")
    return recording


async def _start(request: web.Request, meeting_id: int, options: RecordingOptions) -> RecordingOut:
    user = current_user(request)
    meeting = await load_meeting(request.app, meeting_id)
    await require_moderator(request.app, meeting, user)
    recording = await request.app[RECORDINGS].begin(meeting, user.id, options.layout, options.composite)
    return await _view(request, recording)


async def _stop(request: web.Request, recording: RecordingRecord) -> RecordingOut:
    return await _view(request, await request.app[RECORDINGS].stop(recording, "stopped"))


START_SUMMARY = (
    "Start recording a meeting (host or moderator; the meeting ongoing, settings.enable_recording on; "
    "5002, 5004, 5005, 5007, 2002)"
)


@group.route(
    "POST",
    "/start",
    name="start",
    summary=START_SUMMARY,
    access=Access.USER,
    limit="20/minute",
    body=RecordingStartIn,
    response=RecordingOut,
    status=201,
    errors=(503,),
)
async def start(request: web.Request, body: RecordingStartIn) -> RecordingOut:
    return await _start(request, body.meeting_id, body)


@group.route(
    "POST",
    "/stop",
    name="stop",
    summary="Stop a recording (host or moderator; 5003 when it is not running); answers once its files are kept",
    access=Access.USER,
    limit="20/minute",
    body=RecordingStopIn,
    response=RecordingOut,
)
async def stop(request: web.Request, body: RecordingStopIn) -> RecordingOut:
    return await _stop(request, await _controlled(request, body.recording_id))


@group.route(
    "GET",
    "/list",
    name="list",
    summary="Recordings of the meetings the caller takes part in (admins: all), newest first",
    access=Access.USER,
    limit="50/minute",
    query=RecordingListQuery,
    response=Page[RecordingOut],
)
async def list_recordings(request: web.Request, query: RecordingListQuery) -> Page[RecordingOut]:
    user = current_user(request)
    items, total = await request.app[STORE].recordings.search(
        viewer_id=None if user.is_admin else user.id,
        meeting_id=query.meeting_id,
        status=query.status,
        page=query.page,
        page_size=query.page_size,
    )
    return Page[RecordingOut](
        items=await _views(request, items), total=total, page=query.page, page_size=query.page_size
    )


@group.route(
    "GET",
    "/" + RECORDING_ID,
    name="get",
    summary="A recording, its tracks and files (the meeting's participants, admins; 5001)",
    access=Access.USER,
    limit="100/minute",
    response=RecordingOut,
)
async def get_recording(request: web.Request) -> RecordingOut:
    recording, _ = await _visible(request, path_int(request, "recording_id", recording_not_found()))
    return await _view(request, recording)


@group.route(
    "DELETE",
    "/" + RECORDING_ID,
    name="delete",
    summary="Delete a finished recording and its files (host or moderator; 5006 while it runs or is processing)",
    access=Access.USER,
    limit="20/minute",
)
async def delete_recording(request: web.Request) -> None:
    recording = await _controlled(request, path_int(request, "recording_id", recording_not_found()))
    await request.app[RECORDINGS].delete(recording)


@meeting_group.route(
    "POST",
    "/" + MEETING_ID + "/recording/start",
    name="start_recording",
    summary=START_SUMMARY,
    access=Access.USER,
    limit="20/minute",
    body=RecordingOptions,
    response=RecordingOut,
    status=201,
    errors=(503,),
)
async def start_meeting_recording(request: web.Request, body: RecordingOptions) -> RecordingOut:
    return await _start(request, path_int(request, "meeting_id", meeting_not_found()), body)


@meeting_group.route(
    "POST",
    "/" + MEETING_ID + "/recording/stop",
    name="stop_recording",
    summary="Stop the meeting's recording (host or moderator; 5003 when none is running)",
    access=Access.USER,
    limit="20/minute",
    response=RecordingOut,
)
async def stop_meeting_recording(request: web.Request) -> RecordingOut:
    meeting = await load_meeting(request.app, path_int(request, "meeting_id", meeting_not_found()))
    await require_moderator(request.app, meeting, current_user(request))
    recording = await request.app[STORE].recordings.running_in(meeting.id)
    if recording is None:
        raise not_running()
    return await _stop(request, recording)


@meeting_group.route(
    "GET",
    "/" + MEETING_ID + "/recordings",
    name="recordings",
    summary="The meeting's recordings, newest first (participants and admins)",
    access=Access.USER,
    limit="50/minute",
    query=MeetingRecordingsQuery,
    response=Page[RecordingOut],
)
async def meeting_recordings(request: web.Request, query: MeetingRecordingsQuery) -> Page[RecordingOut]:
    meeting = await load_meeting(request.app, path_int(request, "meeting_id", meeting_not_found()))
    await require_member(request.app, meeting, current_user(request))
    items, total = await request.app[STORE].recordings.search(
        viewer_id=None, meeting_id=meeting.id, status=query.status, page=query.page, page_size=query.page_size
    )
    return Page[RecordingOut](
        items=await _views(request, items), total=total, page=query.page, page_size=query.page_size
    )
