"""``/ws/signaling``: one socket per participant and meeting. The server sets every message's
``from``; bad frames get an ``error`` message and the socket stays open, a flood closes it."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import Any

from aiohttp import WSMsgType, web

from control.auth.guard import authenticate, bearer_token
from control.auth.tokens import TokenClaims
from control.captions import state_announcement
from control.context import ACCOUNTS, HUB, MEDIA, SETTINGS, SFU, STORE, run_in_background
from control.endpoints import NotJson, load_json, unstorable_text
from control.errors import ApiError, BusinessCode
from control.ice import ice_servers_for
from control.logcontext import MEETING_ID, PEER_ID, USER_ID
from control.noise_suppression import announce, current_states, participant_state
from control.rooms import CHAT_MAX_LENGTH, leave, media_state, participant_view, post_chat, went_offline
from control.signaling.hub import (
    CLOSE_BAD_REQUEST,
    CLOSE_FLOOD,
    CLOSE_FORBIDDEN,
    CLOSE_NOT_FOUND,
    CLOSE_TOO_MANY,
    CLOSE_UNAUTHORIZED,
    SERVER,
    Connection,
    message,
)
from control.store.meetings import MeetingRecord
from sfu.server import SignalError

log = logging.getLogger("huiyi.signaling")

MESSAGE_MAX_BYTES = 64 * 1024  # larger messages are refused with an error, the socket kept
FRAME_HARD_LIMIT = 1024 * 1024  # larger frames close the socket (protects memory)
FLOOD_RATE = 20.0  # messages per second, sustained
FLOOD_BURST = 40.0
FLOOD_STRIKES = 20  # refused messages before the socket is cut off
MEDIA_KEYS = {"audio": "audio", "video": "video", "screen_share": "screen"}
# media-state keys for the SFU: what this peer receives, and whether its microphone is cleaned
RECEIVE_KEYS = ("layer", "max_bitrate", "noise_suppression")


class Refused(Exception):
    """The socket cannot be admitted: told why with an ``error`` message, then closed."""

    def __init__(self, close_code: int, code: int, text: str) -> None:
        super().__init__(text)
        self.close_code = close_code
        self.code = code
        self.text = text


class FloodGate:
    """Token bucket per socket: a client may burst, not stream messages at the server."""

    def __init__(self) -> None:
        self.tokens = FLOOD_BURST
        self.stamp = time.monotonic()
        self.strikes = 0

    def allow(self) -> bool:
        now = time.monotonic()
        self.tokens = min(FLOOD_BURST, self.tokens + (now - self.stamp) * FLOOD_RATE)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        self.strikes += 1
        return False


def _query_int(request: web.Request, name: str) -> int:
    try:
        value = int(request.query[name])
    except (KeyError, ValueError):
        raise Refused(CLOSE_BAD_REQUEST, 400, f"query parameter {name} (an integer) is required") from None
    if not 0 < value < 2**63:
        raise Refused(CLOSE_NOT_FOUND, 404, f"no such {name}")
    return value


async def _admit(request: web.Request, socket: web.WebSocketResponse) -> tuple[Connection, MeetingRecord, TokenClaims]:
    meeting_id = _query_int(request, "meeting_id")
    user_id = _query_int(request, "user_id")
    token = bearer_token(request) or request.query.get("token")
    if not token:
        raise Refused(CLOSE_UNAUTHORIZED, 401, "a token is required (Authorization header or token parameter)")
    try:
        user, claims = await authenticate(request.app, token, "access")
    except ApiError as exc:
        raise Refused(CLOSE_FORBIDDEN if exc.status == 403 else CLOSE_UNAUTHORIZED, exc.code, exc.message) from None
    if user.id != user_id:
        raise Refused(CLOSE_FORBIDDEN, 403, "user_id does not match the token")
    store = request.app[STORE]

    meeting = await store.meetings.get(meeting_id)
    if meeting is None:
        raise Refused(CLOSE_NOT_FOUND, BusinessCode.MEETING_NOT_FOUND, "meeting not found")
    if meeting.is_over:
        raise Refused(CLOSE_BAD_REQUEST, BusinessCode.MEETING_ENDED, f"meeting has already {meeting.status}")
    participant = await store.participants.get(meeting_id, user_id)
    if participant is None or participant.removed or participant.status == "offline":
        raise Refused(CLOSE_FORBIDDEN, 403, "join the meeting first: POST /api/v1/meetings/{id}/join")
    most = request.app[SETTINGS].signaling.max_sockets_per_user
    if not request.app[HUB].claim(user_id, most):
        raise Refused(CLOSE_TOO_MANY, 429, f"at most {most} signaling sockets per user on this server; close one")
    connection = Connection(
        session_id=secrets.token_hex(16),
        meeting_id=meeting_id,
        user_id=user_id,
        socket=socket,
        admitted=participant.status == "online",
        token_version=claims.version,
        transport=request.transport,
    )
    return connection, meeting, claims


class Session:
    """The conversation on one admitted socket."""

    def __init__(
        self, request: web.Request, connection: Connection, meeting: MeetingRecord, claims: TokenClaims
    ) -> None:
        self.app = request.app
        self.request = request
        self.connection = connection
        self.meeting = meeting
        self.gate = FloodGate()

        def signal(kind: str, data: dict[str, Any]) -> None:
            connection.send(message(kind, meeting.id, SERVER, data))

        # This socket's media, on whichever node runs the meeting's room; joined with the room.
        self.media = request.app[MEDIA].session(meeting.id, connection.session_id, connection.user_id, signal)
        self.expiry: asyncio.TimerHandle | None = None
        connection.on_admit = self.enter_room
        connection.on_close = self.drop_media
        self.expire_with(claims)

    def expire_with(self, claims: TokenClaims) -> None:
        """The socket lives as long as the token it was opened (or last renewed) with."""
        if self.expiry is not None:
            self.expiry.cancel()
        loop = asyncio.get_running_loop()
        delay = claims.expires_at.timestamp() - time.time()
        self.expiry = loop.call_at(loop.time() + max(0.0, delay), self.token_expired)

    def token_expired(self) -> None:
        text = "token expired; open a new socket with a fresh token, or renew it in time with an auth message"
        self.connection.send(
            message("error", self.meeting.id, SERVER, {"code": BusinessCode.TOKEN_EXPIRED, "message": text})
        )
        self.connection.close(CLOSE_UNAUTHORIZED, "token expired")
        run_in_background(self.app, self.drop_media())

    async def recheck_account(self) -> None:
        """A ban or revocation that landed while this socket was being admitted found it not yet
        registered: look again now that it is."""
        user = await self.app[ACCOUNTS].get(self.connection.user_id)
        if user is None or user.status != "active" or user.token_version != self.connection.token_version:
            self.connection.close(CLOSE_UNAUTHORIZED, "token revoked; log in again")

    async def drop_media(self) -> None:
        await self.media.leave()

    async def error(self, text: str, code: int = 400) -> None:
        self.connection.send(message("error", self.meeting.id, SERVER, {"code": code, "message": text}))

    async def enter_room(self) -> None:
        """Answer ``join`` with the room's state and tell the others this user is here."""
        store = self.app[STORE]
        members = [p for p in await store.participants.list(self.meeting.id) if p.status == "online"]
        me = next((p for p in members if p.user_id == self.connection.user_id), None)
        if me is None:
            await self.error("you are no longer in this meeting; join it again", 403)
            return
        self.connection.joined_room = True
        await self.media.join()  # subscribes to what the room already publishes
        self.connection.send(
            message(
                "join",
                self.meeting.id,
                SERVER,
                {
                    "session_id": self.connection.session_id,
                    "self": participant_view(me),
                    "participants": [participant_view(p) for p in members],
                    "ice_servers": ice_servers_for(self.request, me.user_id).model_dump()["ice_servers"],
                },
            )
        )
        recording = await store.recordings.running_in(self.meeting.id)
        if recording is not None and recording.status == "recording":
            state = {"recording": True, "recording_id": recording.id}
            self.connection.send(message("media-state", self.meeting.id, SERVER, state))
        streams = await store.streams.running(meeting_id=self.meeting.id)
        if streams:
            state = {"streaming": True, "stream_id": streams[0].id}
            self.connection.send(message("media-state", self.meeting.id, SERVER, state))
        captions = await store.captions.state(self.meeting.id)
        if captions is not None and captions.enabled:
            self.connection.send(message("media-state", self.meeting.id, SERVER, state_announcement(captions)))
        for state in await current_states(self.app[SFU], self.meeting.id):
            self.connection.send(message("media-state", self.meeting.id, SERVER, state))
        await self.app[HUB].broadcast(
            message("user-joined", self.meeting.id, me.user_id, participant_view(me)),
            skip_session=self.connection.session_id,
        )

    async def handle(self, raw: str) -> None:
        if not self.gate.allow():
            if self.gate.strikes > FLOOD_STRIKES:
                await self.error("message flood; closing", 429)
                self.connection.close(CLOSE_FLOOD, "message flood")
            else:
                await self.error("too many messages; slow down", 429)
            return
        if len(raw.encode()) > MESSAGE_MAX_BYTES:
            await self.error(f"message larger than {MESSAGE_MAX_BYTES} bytes", 413)
            return
        try:
            incoming = load_json(raw)
        except NotJson as exc:
            await self.error(f"message {exc}")
            return
        problem = unstorable_text(incoming)
        if problem:
            await self.error(problem)
            return
        if not isinstance(incoming, dict) or not isinstance(incoming.get("type"), str):
            await self.error("message must be an object with a string type")
            return
        data = incoming.get("data", {})
        if not isinstance(data, dict):
            await self.error("data must be an object")
            return
        kind = incoming["type"]
        if not self.connection.admitted and kind not in ("leave", "auth"):
            await self.error("waiting for a host or moderator to admit you", 403)
            return
        handler = getattr(self, "on_" + kind.replace("-", "_"), None) if kind in CLIENT_TYPES else None
        if handler is None:
            await self.error(f"unknown message type: {kind[:40]}")
            return
        await handler(incoming, data)

    async def on_join(self, incoming: dict[str, Any], data: dict[str, Any]) -> None:
        await self.enter_room()

    async def on_auth(self, incoming: dict[str, Any], data: dict[str, Any]) -> None:
        """A fresh access token of the same user extends the socket's life to that token's."""
        token = data.get("token")
        if not isinstance(token, str) or not token:
            await self.error("auth needs data.token, a fresh access token")
            return
        try:
            user, claims = await authenticate(self.app, token, "access")
        except ApiError as exc:
            await self.error(f"auth refused: {exc.message}", exc.code)
            return
        if user.id != self.connection.user_id:
            await self.error("auth refused: the token is another user's", 403)
            return
        self.connection.token_version = claims.version
        self.expire_with(claims)
        self.connection.send(
            message(
                "auth", self.meeting.id, SERVER, {"expires_at": claims.expires_at.isoformat().replace("+00:00", "Z")}
            )
        )

    async def on_leave(self, incoming: dict[str, Any], data: dict[str, Any]) -> None:
        self.connection.joined_room = False
        await self.media.leave()
        await leave(self.app, self.meeting.id, self.connection.user_id, "left the meeting")

    async def relay(self, incoming: dict[str, Any], data: dict[str, Any]) -> None:
        target = incoming.get("to")
        if target is None:
            try:
                await self.media.handle(incoming["type"], data)
            except SignalError as exc:
                await self.error(exc.text, exc.code)
            return
        if not isinstance(target, int) or isinstance(target, bool) or not 0 < target < 2**63:
            await self.error("to must be a user id")
            return
        peer = await self.app[STORE].participants.get(self.meeting.id, target)
        if peer is None or not peer.is_member or peer.status != "online":
            await self.error(f"user {target} is not in this meeting", 404)
            return
        if self.connection.closing:
            return
        await self.app[HUB].broadcast(
            message(incoming["type"], self.meeting.id, self.connection.user_id, data, to=target), to_user=target
        )

    on_offer = on_answer = on_ice_candidate = relay

    async def on_chat(self, incoming: dict[str, Any], data: dict[str, Any]) -> None:
        text = data.get("text")
        if not isinstance(text, str) or not 0 < len(text) <= CHAT_MAX_LENGTH:
            await self.error(f"chat needs data.text, 1 to {CHAT_MAX_LENGTH} characters")
            return
        meeting = await self.app[STORE].meetings.get(self.meeting.id)
        if meeting is None or not meeting.settings.get("enable_chat", True):
            await self.error("chat is disabled in this meeting", 403)
            return
        if self.connection.closing:
            return  # removed, revoked or the meeting ended while the meeting was looked up
        await post_chat(self.app, meeting, self.connection.user_id, text, "socket")

    async def on_media_state(self, incoming: dict[str, Any], data: dict[str, Any]) -> None:
        if any(key in data for key in RECEIVE_KEYS):
            try:
                await self.media.set_preferences(data)
            except SignalError as exc:
                await self.error(exc.text, exc.code)
                return
            if "noise_suppression" in data:
                user_id = self.connection.user_id
                await announce(
                    self.app, self.meeting.id, participant_state(user_id, data["noise_suppression"], user_id)
                )
            if not any(key in data for key in MEDIA_KEYS):
                return
        changes = {}
        for key, column in MEDIA_KEYS.items():
            if key in data:
                if not isinstance(data[key], bool):
                    await self.error(f"data.{key} must be true or false")
                    return
                changes[column] = data[key]
        if not changes:
            await self.error("media-state needs data.audio, data.video or data.screen_share")
            return
        meeting = await self.app[STORE].meetings.get(self.meeting.id)
        if changes.get("screen") and meeting is not None and not meeting.settings.get("enable_screen_share", True):
            await self.error("screen sharing is disabled in this meeting", 403)
            return
        if self.connection.closing:
            return
        updated = await self.app[STORE].participants.update(self.meeting.id, self.connection.user_id, **changes)
        if updated is None:
            return
        await self.app[HUB].broadcast(
            message(
                "media-state",
                self.meeting.id,
                self.connection.user_id,
                {"user_id": updated.user_id, "media_state": media_state(updated)},
            )
        )

    async def finish(self, writer: asyncio.Task[None]) -> None:
        """The socket is gone: if it was the user's last one in the room, they left it."""
        app, connection = self.app, self.connection
        if self.expiry is not None:
            self.expiry.cancel()
        connection.close(1000, connection.close_reason)  # no-op when a close is already queued
        await writer
        log.info("socket %s closed: %s", connection.session_id, connection.close_reason)
        try:
            await self.media.leave()
            await app[HUB].remove(connection)
        finally:
            app[HUB].release(connection.user_id)  # the user's slot comes back whatever failed above
        store = app[STORE]
        await store.sessions.close(
            connection.session_id, connection.close_reason, connection.messages_in, connection.messages_out
        )
        await went_offline(
            app, self.meeting.id, connection.user_id, connection.close_reason, tell_room=connection.joined_room
        )


CLIENT_TYPES = {"join", "leave", "offer", "answer", "ice-candidate", "chat", "media-state", "auth"}


async def signaling_socket(request: web.Request) -> web.StreamResponse:
    socket = web.WebSocketResponse(
        heartbeat=request.app[SETTINGS].signaling.heartbeat_seconds, max_msg_size=FRAME_HARD_LIMIT
    )
    if not socket.can_prepare(request).ok:
        raise ApiError(400, "This endpoint expects a WebSocket upgrade")
    await socket.prepare(request)
    try:
        connection, meeting, claims = await _admit(request, socket)
    except Refused as refused:
        meeting_id = request.query.get("meeting_id", "")
        await socket.send_json(
            message(
                "error",
                int(meeting_id) if meeting_id.isdigit() and len(meeting_id) < 19 else 0,
                SERVER,
                {"code": refused.code, "message": refused.text},
            )
        )
        await socket.close(code=refused.close_code, message=refused.text.encode()[:120])
        return socket

    # Records of this socket, and of the media peer and tasks it starts, say whose they are.
    MEETING_ID.set(meeting.id)
    USER_ID.set(connection.user_id)
    PEER_ID.set(connection.session_id)
    session = Session(request, connection, meeting, claims)
    store, hub = request.app[STORE], request.app[HUB]
    writer = asyncio.get_running_loop().create_task(connection.write())
    try:
        opened = await store.sessions.open(
            session_id=connection.session_id,
            meeting_id=meeting.id,
            user_id=connection.user_id,
            node_id=request.app[SETTINGS].node_id,
            client_address=request.remote or "",
        )
        if not opened:
            # Their previous socket closed while this one was admitted, and that left the meeting.
            await session.error("join the meeting first: POST /api/v1/meetings/{id}/join", 403)
            connection.close(CLOSE_FORBIDDEN, "no longer in the meeting")
            return socket
        await hub.add(connection)
        log.info("socket %s opened: user %s in meeting %s", connection.session_id, connection.user_id, meeting.id)
        await session.recheck_account()
        async for frame in socket:
            if connection.closing:
                break  # closed by the server (revoked, removed, expired): nothing more is acted on
            connection.messages_in += 1
            if frame.type == WSMsgType.TEXT:
                try:
                    await session.handle(frame.data)
                except Exception:
                    log.exception("socket %s: message handling failed", connection.session_id)
                    await session.error("internal error handling that message", 500)
                if connection.closing:
                    break
            elif frame.type == WSMsgType.BINARY:
                await session.error("binary frames are not accepted; send JSON text")
            elif frame.type == WSMsgType.ERROR:
                connection.close_reason = f"socket error: {socket.exception()}"
                break
    finally:
        # aiohttp cancels this handler when the peer vanishes; the room must hear of it anyway.
        await asyncio.shield(run_in_background(request.app, session.finish(writer)))
    return socket
