"""Meeting-room operations shared by the REST API and the signaling socket, so both paths apply
the same checks and tell the room the same way."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from control.avatars import avatar_url
from control.context import CAPTIONS, HUB, RECORDINGS, STORE, STREAMS, WEBHOOKS
from control.envelope import iso_utc
from control.errors import ApiError, BusinessCode, forbidden, not_found
from control.signaling.hub import CLOSE_LEFT, CLOSE_MEETING_ENDED, message
from control.store.chat import ChatRecord
from control.store.meetings import MeetingRecord, ParticipantRecord
from control.store.users import UserRecord
from control.webhooks.events import PARTICIPANT_JOINED, PARTICIPANT_LEFT

CHAT_MAX_LENGTH = 2000


def meeting_not_found() -> ApiError:
    return not_found("Meeting not found", BusinessCode.MEETING_NOT_FOUND)


async def load_meeting(app: web.Application, meeting_id: int) -> MeetingRecord:
    meeting = await app[STORE].meetings.get(meeting_id)
    if meeting is None:
        raise meeting_not_found()
    return meeting


async def require_member(app: web.Application, meeting: MeetingRecord, user: UserRecord) -> ParticipantRecord | None:
    """The caller's participation; admins may look in without one, anyone else gets 403."""
    participant = await app[STORE].participants.get(meeting.id, user.id)
    if participant is not None and participant.is_member:
        return participant
    if user.is_admin:
        return None
    raise forbidden("Only the meeting's participants may do this")


async def require_moderator(app: web.Application, meeting: MeetingRecord, user: UserRecord) -> ParticipantRecord:
    participant = await app[STORE].participants.get(meeting.id, user.id)
    if participant is None or not participant.can_moderate:
        raise forbidden("Only the meeting's host or a moderator may do this")
    return participant


async def require_host(app: web.Application, meeting: MeetingRecord, user: UserRecord) -> ParticipantRecord:
    """The meeting's host, by the participant row alone: the creator holds the role through the
    host row made with the meeting, and loses it on handing it over or being removed."""
    participant = await app[STORE].participants.get(meeting.id, user.id)
    if participant is None or not participant.is_host:
        raise forbidden("Only the meeting's host may do this")
    return participant


def media_state(participant: ParticipantRecord) -> dict[str, bool]:
    return {"audio": participant.audio, "video": participant.video, "screen_share": participant.screen}


def participant_view(participant: ParticipantRecord) -> dict[str, Any]:
    return {
        "participant_id": participant.id,
        "meeting_id": participant.meeting_id,
        "user_id": participant.user_id,
        "username": participant.username,
        "nickname": participant.nickname,
        "role": participant.role,
        "status": participant.status,
        "joined_at": iso_utc(participant.joined_at) if participant.joined_at else None,
        "media_state": media_state(participant),
        "avatar_url": avatar_url(participant.avatar_file),
    }


def chat_view(record: ChatRecord) -> dict[str, Any]:
    return {
        "message_id": record.id,
        "meeting_id": record.meeting_id,
        "user_id": record.user_id,
        "username": record.username,
        "text": record.text,
        "created_at": iso_utc(record.created_at),
    }


def participant_joined(app: web.Application, participant: ParticipantRecord) -> None:
    """Tell webhook receivers the participant went online in the meeting."""
    data = {"meeting_id": participant.meeting_id, "user_id": participant.user_id, "role": participant.role}
    app[WEBHOOKS].emit(PARTICIPANT_JOINED, data)


def participant_left(app: web.Application, meeting_id: int, user_id: int, reason: str) -> None:
    """Tell webhook receivers the participant went offline (left, lost their connection, removed)."""
    app[WEBHOOKS].emit(PARTICIPANT_LEFT, {"meeting_id": meeting_id, "user_id": user_id, "reason": reason})


async def post_chat(app: web.Application, meeting: MeetingRecord, user_id: int, text: str, source: str) -> ChatRecord:
    record = await app[STORE].chat.add(meeting_id=meeting.id, user_id=user_id, text=text, source=source)
    await app[HUB].broadcast(message("chat", meeting.id, user_id, chat_view(record)))
    return record


async def leave(app: web.Application, meeting_id: int, user_id: int, reason: str) -> None:
    """The user is out of the room: offline, the others told, their sockets closed."""
    before = await app[STORE].participants.get(meeting_id, user_id)
    await app[STORE].participants.update(meeting_id, user_id, status="offline")
    if before is not None and before.status == "online":
        participant_left(app, meeting_id, user_id, reason)
    await app[HUB].broadcast(message("user-left", meeting_id, user_id, {"user_id": user_id, "reason": reason}))
    await app[HUB].close_user(meeting_id, user_id, CLOSE_LEFT, reason)


async def close_room(app: web.Application, meeting_id: int, reason: str) -> None:
    """The meeting is over: its recording and its live streams stop (to the last moment) and its
    captions go off, then every socket of the room hears it and is closed."""
    await app[RECORDINGS].stop_in(meeting_id, reason)
    await app[STREAMS].stop_in(meeting_id, reason)
    await app[CAPTIONS].stop_in(meeting_id)
    await app[HUB].close_user(meeting_id, None, CLOSE_MEETING_ENDED, reason)


async def went_offline(
    app: web.Application, meeting_id: int, user_id: int, reason: str, *, tell_room: bool = True
) -> bool:
    """A socket of the user's in the meeting is gone. Unless another of theirs is open on some node
    at this very moment (a reconnect), they turn offline and, with ``tell_room``, the room hears
    ``user-left`` once, however many of their sockets went at the same time. Whether they did."""
    if not await app[STORE].participants.went_offline(meeting_id, user_id):
        return False
    participant_left(app, meeting_id, user_id, reason)
    if tell_room:
        await app[HUB].broadcast(message("user-left", meeting_id, user_id, {"user_id": user_id, "reason": reason}))
    return True


async def close_node_sessions(app: web.Application, node_id: str, reason: str = "node restarted") -> None:
    """A node starts again after it stopped or crashed, or is gone for good (``control.lost_nodes``):
    the sockets it held are gone. Their sessions close, and users left with no socket on any node
    turn offline and their rooms hear it."""
    for meeting_id, user_id in await app[STORE].sessions.close_node(node_id, reason):
        await went_offline(app, meeting_id, user_id, "connection lost")
