"""/api/v1/meetings: meetings, joining, participants and chat (behaviour: docs/meetings.md)."""

from __future__ import annotations

import logging
import secrets
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import AfterValidator, AwareDatetime, BaseModel, Field, NaiveDatetime, model_validator

from control.api.schemas import Page, RequestModel
from control.auth.passwords import hash_password, verify_password
from control.context import HUB, STORE, WEBHOOKS, current_user
from control.endpoints import Access, EndpointGroup, path_int
from control.envelope import iso_utc, utc_now
from control.errors import ApiError, BusinessCode, bad_request, forbidden, not_found, user_not_found
from control.ice import IceServer, ice_servers_for
from control.rooms import (
    CHAT_MAX_LENGTH,
    chat_view,
    close_room,
    leave,
    load_meeting,
    media_state,
    meeting_not_found,
    participant_joined,
    participant_left,
    participant_view,
    post_chat,
    require_host,
    require_member,
    require_moderator,
)
from control.signaling.hub import CLOSE_REMOVED, message
from control.store.meetings import (
    JoinRefusal,
    JoinRefused,
    MeetingRecord,
    ParticipantRecord,
    new_invite_code,
)
from control.webhooks.events import MEETING_ENDED, MEETING_STARTED

log = logging.getLogger("huiyi.meetings")
group = EndpointGroup("/api/v1/meetings", "meetings")
MEETING_ID = r"{meeting_id:\d+}"
USER_ID = r"{user_id:\d+}"


def _in_utc(moment: datetime) -> datetime:
    """Times without a zone are taken as UTC; all are stored in UTC."""
    try:
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    except OverflowError:
        raise ValueError("date is out of range once converted to UTC") from None


Moment = Annotated[AwareDatetime | NaiveDatetime, AfterValidator(_in_utc)]
Role = Literal["host", "moderator", "participant"]
DEFAULT_SETTINGS = {
    "enable_recording": False,
    "enable_chat": True,
    "enable_screen_share": True,
    "enable_waiting_room": False,
    "mute_on_join": False,
}


class SettingsPatch(RequestModel):
    enable_recording: bool | None = None
    enable_chat: bool | None = None
    enable_screen_share: bool | None = None
    enable_waiting_room: bool | None = None
    mute_on_join: bool | None = None


class MeetingSettings(BaseModel):
    enable_recording: bool
    enable_chat: bool
    enable_screen_share: bool
    enable_waiting_room: bool
    mute_on_join: bool


class MeetingFields(RequestModel):
    description: str | None = Field(None, max_length=2000)
    start_time: Moment | None = None
    end_time: Moment | None = None
    max_participants: int | None = Field(None, ge=2, le=1000)
    meeting_type: Literal["video", "audio"] | None = None
    settings: SettingsPatch | None = None
    password: str | None = Field(None, min_length=4, max_length=64)

    @model_validator(mode="after")
    def _ends_after_start(self) -> MeetingFields:
        if self.start_time is not None and self.end_time is not None and self.end_time <= self.start_time:
            raise ValueError("end_time must be after start_time")
        return self


class MeetingCreate(MeetingFields):
    title: str = Field(min_length=1, max_length=200)


class MeetingUpdate(MeetingFields):
    title: str | None = Field(None, min_length=1, max_length=200)


class MeetingOut(BaseModel):
    meeting_id: int
    title: str
    description: str
    start_time: str
    end_time: str | None
    max_participants: int
    meeting_type: Literal["video", "audio"]
    status: Literal["scheduled", "ongoing", "ended", "cancelled"]
    creator_id: int
    settings: MeetingSettings
    has_password: bool
    invite_code: str | None = Field(
        description="Joins the meeting without an invitation or the password; shown to its members only, "
        "null for anyone else"
    )
    created_at: str
    updated_at: str

    @classmethod
    def of(cls, meeting: MeetingRecord, *, member: bool) -> MeetingOut:
        """``member``: the viewer takes part in the meeting and may see (and pass on) its invite code."""
        return cls(
            meeting_id=meeting.id,
            title=meeting.title,
            description=meeting.description,
            start_time=iso_utc(meeting.start_time),
            end_time=iso_utc(meeting.end_time) if meeting.end_time else None,
            max_participants=meeting.max_participants,
            meeting_type=meeting.meeting_type,  # type: ignore[arg-type]
            status=meeting.status,  # type: ignore[arg-type]
            creator_id=meeting.creator_id,
            settings=MeetingSettings(**{**DEFAULT_SETTINGS, **meeting.settings}),
            has_password=meeting.password_hash is not None,
            invite_code=meeting.invite_code if member else None,
            created_at=iso_utc(meeting.created_at),
            updated_at=iso_utc(meeting.updated_at),
        )


class MeetingListQuery(RequestModel):
    page: int = Field(1, ge=1, le=1_000_000)
    page_size: int = Field(20, ge=1, le=100)
    status: Literal["scheduled", "ongoing", "ended", "cancelled"] | None = None
    start_from: Moment | None = None
    start_to: Moment | None = None


class MediaState(BaseModel):
    audio: bool
    video: bool
    screen_share: bool


class ParticipantOut(BaseModel):
    participant_id: int
    meeting_id: int
    user_id: int
    username: str
    nickname: str
    role: Role
    status: Literal["online", "offline", "waiting"]
    joined_at: str | None
    media_state: MediaState
    avatar_url: str | None = Field(None, description="the user's avatar thumbnail, if they uploaded one")

    @classmethod
    def of(cls, participant: ParticipantRecord) -> ParticipantOut:
        return cls(**participant_view(participant))


class JoinIn(RequestModel):
    password: str | None = Field(None, max_length=64)
    invite_code: str | None = Field(None, max_length=64, description="The meeting's invite code (from its link)")


class JoinOut(BaseModel):
    meeting: MeetingOut
    participant: ParticipantOut
    media_state: MediaState
    ice_servers: list[IceServer] = Field(
        description="STUN/TURN servers with credentials of the caller's own, for RTCConfiguration.iceServers"
    )


class AddParticipantIn(RequestModel):
    user_id: int = Field(ge=1, le=2**63 - 1)
    role: Role = "participant"


class RoleIn(RequestModel):
    role: Role


class ChatIn(RequestModel):
    text: str = Field(min_length=1, max_length=CHAT_MAX_LENGTH)


class ChatOut(BaseModel):
    message_id: int
    meeting_id: int
    user_id: int
    username: str
    text: str
    created_at: str


class ChatQuery(RequestModel):
    limit: int = Field(50, ge=1, le=100)
    before: int | None = Field(None, ge=1, le=2**63 - 1)
    after: int | None = Field(None, ge=0, le=2**63 - 1)


async def _meeting(request: web.Request) -> MeetingRecord:
    return await load_meeting(request.app, path_int(request, "meeting_id", meeting_not_found()))


def _refuse_if_over(meeting: MeetingRecord) -> None:
    if meeting.is_over:
        raise ApiError(400, f"Meeting has already {meeting.status}", code=BusinessCode.MEETING_ENDED)


def _settings_merged(current: dict[str, Any], patch: SettingsPatch | None) -> dict[str, bool]:
    merged = {**DEFAULT_SETTINGS, **current}
    if patch is not None:
        merged.update(patch.model_dump(exclude_none=True))
    return merged


@group.route(
    "POST",
    "",
    name="create",
    summary="Create a meeting; the creator becomes its host",
    access=Access.USER,
    limit="50/minute",
    body=MeetingCreate,
    response=MeetingOut,
    status=201,
)
async def create_meeting(request: web.Request, body: MeetingCreate) -> MeetingOut:
    user = current_user(request)
    meeting = await request.app[STORE].meetings.create(
        creator_id=user.id,
        title=body.title,
        description=body.description or "",
        start_time=body.start_time or utc_now(),
        end_time=body.end_time,
        max_participants=body.max_participants or 100,
        meeting_type=body.meeting_type or "video",
        settings=_settings_merged({}, body.settings),
        password_hash=await hash_password(body.password) if body.password else None,
    )
    log.info("user %s created meeting %s", user.id, meeting.id)
    return MeetingOut.of(meeting, member=True)


@group.route(
    "GET",
    "",
    name="list",
    summary="Meetings the caller takes part in (admins: all); not while waiting to be admitted",
    access=Access.USER,
    limit="100/minute",
    query=MeetingListQuery,
    response=Page[MeetingOut],
)
async def list_meetings(request: web.Request, query: MeetingListQuery) -> Page[MeetingOut]:
    user = current_user(request)
    items, total = await request.app[STORE].meetings.search(
        viewer_id=None if user.is_admin else user.id,
        page=query.page,
        page_size=query.page_size,
        statuses=[query.status] if query.status else (),
        start_from=query.start_from,
        start_to=query.start_to,
    )
    # Anyone but an admin sees only meetings they take part in; an admin's list is everyone's.
    if user.is_admin:
        member = await request.app[STORE].meetings.member_of(user.id, [m.id for m in items])
    else:
        member = {m.id for m in items}
    return Page[MeetingOut](
        items=[MeetingOut.of(m, member=m.id in member) for m in items],
        total=total,
        page=query.page,
        page_size=query.page_size,
    )


@group.route(
    "GET",
    "/" + MEETING_ID,
    name="get",
    summary="Meeting details (participants and admins)",
    access=Access.USER,
    limit="100/minute",
    response=MeetingOut,
)
async def get_meeting(request: web.Request) -> MeetingOut:
    meeting = await _meeting(request)
    participant = await require_member(request.app, meeting, current_user(request))
    return MeetingOut.of(meeting, member=participant is not None)


@group.route(
    "PUT",
    "/" + MEETING_ID,
    name="update",
    summary="Update a meeting (host; not once it is over)",
    access=Access.USER,
    limit="50/minute",
    body=MeetingUpdate,
    response=MeetingOut,
)
async def update_meeting(request: web.Request, body: MeetingUpdate) -> MeetingOut:
    meeting = await _meeting(request)
    await require_host(request.app, meeting, current_user(request))
    _refuse_if_over(meeting)
    changes: dict[str, Any] = body.model_dump(exclude_unset=True, exclude={"settings", "password"})
    if "start_time" in changes and changes["start_time"] is None:
        raise bad_request("start_time cannot be removed")
    for key in ("title", "max_participants", "meeting_type"):
        if key in changes and changes[key] is None:
            raise bad_request(f"{key} cannot be null")
    if "description" in changes and changes["description"] is None:
        changes["description"] = ""
    if body.settings is not None:
        changes["settings"] = _settings_merged(meeting.settings, body.settings)
    if "password" in body.model_fields_set:
        changes["password_hash"] = await hash_password(body.password) if body.password else None
    start = changes.get("start_time", meeting.start_time)
    end = changes.get("end_time", meeting.end_time)
    if end is not None and end <= start:
        raise bad_request("end_time must be after start_time")
    updated = await request.app[STORE].meetings.update(meeting.id, **changes)
    if updated is None:
        raise meeting_not_found()
    return MeetingOut.of(updated, member=True)


@group.route(
    "DELETE",
    "/" + MEETING_ID,
    name="delete",
    summary="Delete a meeting (host; an ongoing one is ended)",
    access=Access.USER,
    limit="50/minute",
)
async def delete_meeting(request: web.Request) -> None:
    meeting = await _meeting(request)
    await require_host(request.app, meeting, current_user(request))
    if meeting.status == "ongoing":
        online = await _online(request, meeting)
        ended = await request.app[STORE].meetings.transition(
            meeting.id, ["ongoing"], status="ended", ended_at=utc_now()
        )
        if ended is not None:
            _tell_ended(request, meeting, online, "deleted")
    await close_room(request.app, meeting.id, "meeting deleted")
    await request.app[STORE].meetings.delete(meeting.id)
    log.info("meeting %s deleted by its host", meeting.id)


async def _online(request: web.Request, meeting: MeetingRecord) -> list[int]:
    """Who is online in the meeting: ending it takes them all offline at once."""
    return [p.user_id for p in await request.app[STORE].participants.list(meeting.id) if p.status == "online"]


def _tell_ended(request: web.Request, meeting: MeetingRecord, online: list[int], reason: str) -> None:
    """Webhook receivers hear everyone online leave, then (for a meeting that ran) that it ended."""
    for user_id in online:
        participant_left(request.app, meeting.id, user_id, f"meeting {reason}")
    if reason != "cancelled":
        request.app[WEBHOOKS].emit(MEETING_ENDED, {"meeting_id": meeting.id, "reason": reason})


@group.route(
    "POST",
    "/" + MEETING_ID + "/start",
    name="start",
    summary="Start a scheduled meeting (host)",
    access=Access.USER,
    limit="50/minute",
    response=MeetingOut,
)
async def start_meeting(request: web.Request) -> MeetingOut:
    meeting = await _meeting(request)
    await require_host(request.app, meeting, current_user(request))
    started = await request.app[STORE].meetings.transition(
        meeting.id, ["scheduled"], status="ongoing", started_at=utc_now()
    )
    if started is None:
        raise bad_request(f"Only a scheduled meeting can start; this one is {meeting.status}")
    data = {"meeting_id": started.id, "title": started.title, "creator_id": started.creator_id}
    request.app[WEBHOOKS].emit(MEETING_STARTED, data)
    return MeetingOut.of(started, member=True)


@group.route(
    "POST",
    "/" + MEETING_ID + "/end",
    name="end",
    summary="End an ongoing meeting (host); a scheduled one that never started is cancelled",
    access=Access.USER,
    limit="50/minute",
    response=MeetingOut,
)
async def end_meeting(request: web.Request) -> MeetingOut:
    meeting = await _meeting(request)
    await require_host(request.app, meeting, current_user(request))
    target = {"ongoing": "ended", "scheduled": "cancelled"}.get(meeting.status)
    if target is None:
        raise bad_request(f"Meeting has already {meeting.status}")
    online = await _online(request, meeting)
    now = utc_now()
    # A meeting that ran ends now, whatever end was planned; one cancelled keeps its planned times.
    times = {"ended_at": now, "end_time": now} if target == "ended" else {"ended_at": now}
    ended = await request.app[STORE].meetings.transition(meeting.id, [meeting.status], status=target, **times)
    if ended is None:
        raise bad_request("Meeting changed state meanwhile; fetch it again")
    _tell_ended(request, meeting, online, target)
    await close_room(request.app, meeting.id, f"meeting {target}")
    return MeetingOut.of(ended, member=True)


@group.route(
    "POST",
    "/" + MEETING_ID + "/join",
    name="join",
    summary="Join a meeting (2001, 2002, 2003, 2004)",
    access=Access.USER,
    limit="100/minute",
    body=JoinIn,
    response=JoinOut,
)
async def join_meeting(request: web.Request, body: JoinIn) -> JoinOut:
    app = request.app
    user = current_user(request)
    meeting = await _meeting(request)
    _refuse_if_over(meeting)
    # Read early only to skip the password check for invited users; role, status and removal are
    # decided again by the store under the meeting's lock, after the (slow) check.
    existing = await app[STORE].participants.get(meeting.id, user.id)
    if existing is not None and existing.removed:
        raise _join_refused(JoinRefusal.REMOVED)
    if existing is None or not (existing.invited or existing.role != "participant"):
        await _check_entry(meeting, body)
    settings = _settings_merged(meeting.settings, None)
    media = {"audio": not settings["mute_on_join"], "video": meeting.meeting_type == "video", "screen": False}
    try:
        participant = await app[STORE].participants.join(
            meeting.id, user.id, waiting_room=settings["enable_waiting_room"], media=media
        )
    except JoinRefused as refused:
        raise _join_refused(refused.reason) from None
    if participant.status == "online" and (existing is None or existing.status != "online"):
        participant_joined(app, participant)
    return JoinOut(
        meeting=MeetingOut.of(meeting, member=participant.is_member),
        participant=ParticipantOut.of(participant),
        media_state=MediaState(**media_state(participant)),
        ice_servers=ice_servers_for(request, user.id).ice_servers,
    )


async def _check_entry(meeting: MeetingRecord, body: JoinIn) -> None:
    """Someone not invited gets in with the meeting's current invite code or its password; a
    meeting's number alone is never enough, since numbers are easy to guess."""
    if body.invite_code is not None and secrets.compare_digest(body.invite_code.encode(), meeting.invite_code.encode()):
        return
    if meeting.password_hash:
        if body.password and await verify_password(meeting.password_hash, body.password):
            return
        raise ApiError(400, "Wrong or missing meeting password", code=BusinessCode.WRONG_MEETING_PASSWORD)
    raise forbidden("Joining needs an invitation or the meeting's invite code; ask a host for the invite link")


def _join_refused(reason: JoinRefusal) -> ApiError:
    if reason is JoinRefusal.GONE:
        return meeting_not_found()
    if reason is JoinRefusal.OVER:
        return ApiError(400, "Meeting is already over", code=BusinessCode.MEETING_ENDED)
    if reason is JoinRefusal.REMOVED:
        return forbidden("You were removed from this meeting; a host or moderator must add you again")
    return ApiError(400, "Meeting is full", code=BusinessCode.MEETING_FULL)


@group.route(
    "POST",
    "/" + MEETING_ID + "/invite-code",
    name="rotate_invite_code",
    summary="Give the meeting a new invite code (host); links with the old one stop admitting anyone",
    access=Access.USER,
    limit="50/minute",
    response=MeetingOut,
)
async def rotate_invite_code(request: web.Request) -> MeetingOut:
    meeting = await _meeting(request)
    await require_host(request.app, meeting, current_user(request))
    _refuse_if_over(meeting)
    updated = await request.app[STORE].meetings.update(meeting.id, invite_code=new_invite_code())
    if updated is None:
        raise meeting_not_found()
    log.info("meeting %s has a new invite code", meeting.id)
    return MeetingOut.of(updated, member=True)


@group.route(
    "POST",
    "/" + MEETING_ID + "/leave",
    name="leave",
    summary="Leave a meeting",
    access=Access.USER,
    limit="100/minute",
)
async def leave_meeting(request: web.Request) -> None:
    meeting = await _meeting(request)
    user = current_user(request)
    participant = await request.app[STORE].participants.get(meeting.id, user.id)
    if participant is None or participant.removed:
        raise forbidden("You are not in this meeting")
    await leave(request.app, meeting.id, user.id, "left the meeting")


@group.route(
    "GET",
    "/" + MEETING_ID + "/participants",
    name="participants",
    summary="List participants",
    access=Access.USER,
    limit="100/minute",
    response=list[ParticipantOut],
)
async def list_participants(request: web.Request) -> list[dict[str, Any]]:
    """Polled by every page in a meeting: answered with the views as they are (the shape of
    ParticipantOut, which the socket's messages share), not validated again field by field."""
    meeting = await _meeting(request)
    await require_member(request.app, meeting, current_user(request))
    return [participant_view(p) for p in await request.app[STORE].participants.list(meeting.id)]


@group.route(
    "POST",
    "/" + MEETING_ID + "/participants",
    name="add_participant",
    summary="Add (invite), re-admit or admit from the waiting room (host or moderator)",
    access=Access.USER,
    limit="50/minute",
    body=AddParticipantIn,
    response=ParticipantOut,
    status=201,
)
async def add_participant(request: web.Request, body: AddParticipantIn) -> ParticipantOut:
    app = request.app
    meeting = await _meeting(request)
    caller = await require_moderator(app, meeting, current_user(request))
    _refuse_if_over(meeting)
    if body.role != "participant" and caller.role != "host":
        raise forbidden("Only the host may add hosts or moderators")
    target = await app[STORE].users.get(body.user_id)
    if target is None or target.status != "active":
        raise user_not_found()
    try:
        participant, admitted = await app[STORE].participants.add(meeting.id, target.id)
    except JoinRefused as refused:
        raise _join_refused(refused.reason) from None
    if admitted:
        await app[HUB].admit(meeting.id, target.id)
        if participant is not None:
            participant_joined(app, participant)
    if body.role == "host":
        return await _change_role(request, meeting, target.id, "host", participant)
    if body.role == "moderator" and participant is not None and participant.role == "participant":
        await app[STORE].participants.set_role(meeting.id, target.id, "moderator")  # never demotes a host
        participant = await app[STORE].participants.get(meeting.id, target.id)
    if participant is None:
        raise meeting_not_found()  # deleted meanwhile, with its participants
    return ParticipantOut.of(participant)


@group.route(
    "DELETE",
    "/" + MEETING_ID + "/participants/" + USER_ID,
    name="remove_participant",
    summary="Remove a participant; their sockets are closed and they cannot rejoin until added again",
    access=Access.USER,
    limit="50/minute",
)
async def remove_participant(request: web.Request) -> None:
    app = request.app
    meeting = await _meeting(request)
    caller = await require_moderator(app, meeting, current_user(request))
    user_id = path_int(request, "user_id", user_not_found())
    target = await app[STORE].participants.get(meeting.id, user_id)
    if target is None or target.removed:
        raise _not_a_participant()
    if target.user_id == caller.user_id:
        raise bad_request("Use leave to leave a meeting")
    refusal = forbidden("Only the host may remove moderators, and the host cannot be removed")
    if target.role == "host" or (target.role == "moderator" and caller.role != "host"):
        raise refusal
    # Checked again in the removal itself: a hand-over to the target may have landed meanwhile.
    if not await app[STORE].participants.remove(meeting.id, user_id, by_user=caller.user_id):
        now = await app[STORE].participants.get(meeting.id, user_id)
        raise _not_a_participant() if now is None or now.removed else refusal
    if target.status == "online":
        participant_left(app, meeting.id, user_id, "removed")
    await app[HUB].broadcast(message("user-left", meeting.id, user_id, {"user_id": user_id, "reason": "removed"}))
    await app[HUB].close_user(meeting.id, user_id, CLOSE_REMOVED, "removed from the meeting")


def _not_a_participant() -> ApiError:
    return not_found("Not a participant of this meeting", BusinessCode.USER_NOT_FOUND)


async def _change_role(
    request: web.Request,
    meeting: MeetingRecord,
    user_id: int,
    role: str,
    target: ParticipantRecord | None,
) -> ParticipantOut:
    app = request.app
    if target is None or target.removed:
        raise _not_a_participant()
    if target.status == "waiting":
        # Seated first: a full meeting refuses them before their role changes.
        try:
            await app[STORE].participants.admit(meeting.id, user_id)
        except JoinRefused as refused:
            raise _join_refused(refused.reason) from None
    caller_id = current_user(request).id
    refusal: ApiError | None = None
    if role == "host":
        if user_id != caller_id and not await app[STORE].participants.hand_over_host(meeting.id, caller_id, user_id):
            now = await app[STORE].participants.get(meeting.id, user_id)
            refusal = (
                _not_a_participant() if now is None or now.removed else forbidden("Only the meeting's host may do this")
            )
    elif not await app[STORE].participants.set_role(meeting.id, user_id, role):
        refusal = bad_request("Hand the host role to someone else instead; a meeting keeps exactly one host")
    if target.status == "waiting":
        await app[HUB].admit(meeting.id, user_id)  # seated above, whatever became of the role
        seated = await app[STORE].participants.get(meeting.id, user_id)
        if seated is not None and seated.status == "online":
            participant_joined(app, seated)
    if refusal is not None:
        raise refusal
    updated = await app[STORE].participants.get(meeting.id, user_id)
    assert updated is not None
    return ParticipantOut.of(updated)


@group.route(
    "PUT",
    "/" + MEETING_ID + "/participants/" + USER_ID + "/role",
    name="set_role",
    summary="Change a participant's role (host only); making someone host hands the role over",
    access=Access.USER,
    limit="50/minute",
    body=RoleIn,
    response=ParticipantOut,
)
async def set_role(request: web.Request, body: RoleIn) -> ParticipantOut:
    app = request.app
    meeting = await _meeting(request)
    await require_host(app, meeting, current_user(request))
    _refuse_if_over(meeting)
    user_id = path_int(request, "user_id", user_not_found())
    target = await app[STORE].participants.get(meeting.id, user_id)
    return await _change_role(request, meeting, user_id, body.role, target)


async def _chat_room(request: web.Request) -> MeetingRecord:
    meeting = await _meeting(request)
    user = current_user(request)
    participant = await request.app[STORE].participants.get(meeting.id, user.id)
    if participant is None or not participant.is_member:
        raise forbidden("Only the meeting's participants may use its chat")
    if not _settings_merged(meeting.settings, None)["enable_chat"]:
        raise forbidden("Chat is disabled in this meeting")
    return meeting


@group.route(
    "GET",
    "/" + MEETING_ID + "/messages",
    name="messages",
    summary="Chat history, newest first",
    access=Access.USER,
    limit="100/minute",
    query=ChatQuery,
    response=list[ChatOut],
)
async def list_messages(request: web.Request, query: ChatQuery) -> list[dict[str, Any]]:
    """Polled like the participant list: the views as they are, in the shape of ChatOut."""
    meeting = await _chat_room(request)
    records = await request.app[STORE].chat.page(meeting.id, limit=query.limit, before=query.before, after=query.after)
    return [chat_view(record) for record in records]


@group.route(
    "POST",
    "/" + MEETING_ID + "/messages",
    name="send_message",
    summary="Send a chat message to the room",
    access=Access.USER,
    limit="100/minute",
    body=ChatIn,
    response=ChatOut,
    status=201,
)
async def send_message(request: web.Request, body: ChatIn) -> ChatOut:
    meeting = await _chat_room(request)
    _refuse_if_over(meeting)
    record = await post_chat(request.app, meeting, current_user(request).id, body.text, "rest")
    return ChatOut(**chat_view(record))
