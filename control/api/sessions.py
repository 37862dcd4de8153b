"""Signaling sessions, the room's message history and statistics (participants and admins)."""

from __future__ import annotations

import time
from datetime import timedelta

from aiohttp import web
from pydantic import BaseModel, Field

from control.api.meetings import MEETING_ID, ChatOut, ChatQuery
from control.context import SETTINGS, STORE, current_user
from control.endpoints import Access, EndpointGroup, path_int
from control.envelope import iso_utc
from control.errors import not_found
from control.rooms import chat_view, load_meeting, meeting_not_found, require_member
from control.store.meetings import ParticipantRecord
from control.store.sessions import SessionRecord
from control.store.users import UserRecord

group = EndpointGroup("/api/v1", "signaling")
STARTED = web.AppKey("started_monotonic", float)


class SessionOut(BaseModel):
    session_id: str
    meeting_id: int
    user_id: int
    node_id: str
    client_address: str | None = Field(
        description="The client's network address: shown to the meeting's host, admins and the session's own user"
    )
    connected_at: str
    disconnected_at: str | None
    close_reason: str | None
    messages_in: int
    messages_out: int

    @classmethod
    def of(cls, record: SessionRecord, *, viewer: UserRecord, host: bool) -> SessionOut:
        """``host``: the viewer hosts the session's meeting."""
        return cls(
            session_id=record.id,
            meeting_id=record.meeting_id,
            user_id=record.user_id,
            node_id=record.node_id,
            client_address=record.client_address if host or viewer.is_admin or record.user_id == viewer.id else None,
            connected_at=iso_utc(record.connected_at),
            disconnected_at=iso_utc(record.disconnected_at) if record.disconnected_at else None,
            close_reason=record.close_reason,
            messages_in=record.messages_in,
            messages_out=record.messages_out,
        )


class Overview(BaseModel):
    rooms: int = Field(description="meetings in progress")
    online_users: int
    sessions: int = Field(description="open signaling sockets, every node")
    messages_per_minute: int = Field(description="chat messages in the last 60 s, every node")
    uptime_seconds: int = Field(description="of the node answering")
    node_id: str


class RoomStats(BaseModel):
    meeting_id: int
    title: str
    status: str
    participants_online: int
    sessions_open: int
    messages: int


def _hosts(participant: ParticipantRecord | None) -> bool:
    """Client addresses are personal data: among participants only the host may read them."""
    return participant is not None and participant.is_host


@group.route(
    "GET",
    "/sessions/{session_id:[0-9a-f]+}",
    name="session",
    summary="One signaling session",
    access=Access.USER,
    limit="100/minute",
    response=SessionOut,
)
async def get_session(request: web.Request) -> SessionOut:
    record = await request.app[STORE].sessions.get(request.match_info["session_id"])
    if record is None:
        raise not_found("Session not found")
    user = current_user(request)
    host = False  # one's own session shows one's own address anyway
    if record.user_id != user.id:
        host = _hosts(await require_member(request.app, await load_meeting(request.app, record.meeting_id), user))
    return SessionOut.of(record, viewer=user, host=host)


@group.route(
    "GET",
    "/sessions/room/" + MEETING_ID,
    name="room_sessions",
    summary="Signaling sessions of a room",
    access=Access.USER,
    limit="100/minute",
    response=list[SessionOut],
)
async def room_sessions(request: web.Request) -> list[SessionOut]:
    meeting = await load_meeting(request.app, path_int(request, "meeting_id", meeting_not_found()))
    user = current_user(request)
    host = _hosts(await require_member(request.app, meeting, user))
    return [
        SessionOut.of(record, viewer=user, host=host)
        for record in await request.app[STORE].sessions.for_meeting(meeting.id)
    ]


@group.route(
    "GET",
    "/messages/history/" + MEETING_ID,
    name="message_history",
    summary="The room's chat history (socket and REST), newest first",
    access=Access.USER,
    limit="100/minute",
    query=ChatQuery,
    response=list[ChatOut],
)
async def message_history(request: web.Request, query: ChatQuery) -> list[ChatOut]:
    meeting = await load_meeting(request.app, path_int(request, "meeting_id", meeting_not_found()))
    await require_member(request.app, meeting, current_user(request))
    records = await request.app[STORE].chat.page(meeting.id, limit=query.limit, before=query.before, after=query.after)
    return [ChatOut(**chat_view(record)) for record in records]


@group.route(
    "GET",
    "/stats/overview",
    name="overview",
    summary="Rooms, users, sessions and message rate, every node",
    access=Access.USER,
    limit="50/minute",
    response=Overview,
)
async def overview(request: web.Request) -> Overview:
    store = request.app[STORE]
    sessions, online_users = await store.sessions.totals()
    return Overview(
        rooms=await store.stats.ongoing_meetings(),
        online_users=online_users,
        sessions=sessions,
        messages_per_minute=await store.chat.count(since=timedelta(minutes=1)),
        uptime_seconds=int(time.monotonic() - request.app[STARTED]),
        node_id=request.app[SETTINGS].node_id,
    )


@group.route(
    "GET",
    "/stats/rooms",
    name="rooms",
    summary="Per-room figures (rooms the caller is in; admins: all)",
    access=Access.USER,
    limit="50/minute",
    response=list[RoomStats],
)
async def rooms(request: web.Request) -> list[RoomStats]:
    user = current_user(request)
    figures = await request.app[STORE].stats.rooms(None if user.is_admin else user.id)
    return [RoomStats(**vars(room)) for room in figures]
