"""The node's signaling hub: which sockets this node holds in which room, and delivery of room
events published by any node (through the bus) to the matching local sockets."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from control.auth.accounts import AccountCache
from control.bus import Bus
from control.store.users import UserRecord

log = logging.getLogger("huiyi.signaling")

SERVER = 0  # the ``from`` of messages the server itself sends

# Close codes (4000-4999 are the application's): the client learns why without parsing text.
CLOSE_MEETING_ENDED = 4000
CLOSE_BAD_REQUEST = 4400
CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404
CLOSE_FLOOD = 4429
CLOSE_TOO_MANY = 4408  # the user already holds as many sockets as allowed
CLOSE_REMOVED = 4003
CLOSE_LEFT = 1000


OUTBOX_LIMIT = 256  # messages queued for one socket before it counts as too slow to keep
SLOW_CLOSE_GRACE_SECONDS = 2.0  # then a socket too slow to take its closing frame is cut off
ACCOUNTS_CHANNEL = "accounts"  # every node listens: account changes, revocations among them
CONFIRM_SECONDS = 2.0  # how long a change to an account waits for every node to apply it


@dataclass(eq=False)
class Connection:
    """One socket of one user in one meeting (a user may hold several, e.g. two tabs).

    Sending only queues: a writer task per socket drains the queue, so a slow or stalled client
    never holds up the node delivering a room event to everyone else."""

    session_id: str
    meeting_id: int
    user_id: int
    socket: web.WebSocketResponse
    admitted: bool
    # The token version the socket was authenticated with: bumping the account's revokes it.
    token_version: int = 0
    # The connection under the socket, to cut it off when the client stops reading altogether.
    transport: asyncio.BaseTransport | None = None
    messages_in: int = 0
    messages_out: int = 0
    joined_room: bool = False
    close_reason: str = field(default="disconnected")
    # Called when a host admits this (waiting) user, to hand them the room state.
    on_admit: Callable[[], Awaitable[None]] | None = None
    # Called when the server closes the socket, to drop the user's media at once rather than
    # when the closing handshake completes.
    on_close: Callable[[], Awaitable[None]] | None = None
    outbox: asyncio.Queue[dict[str, Any] | tuple[int, str]] = field(default_factory=lambda: asyncio.Queue(OUTBOX_LIMIT))
    _closing: bool = False

    def send(self, message: dict[str, Any]) -> None:
        if self._closing:
            return
        try:
            self.outbox.put_nowait(message)
        except asyncio.QueueFull:
            self._drop_slow_consumer()

    @property
    def closing(self) -> bool:
        return self._closing

    def close(self, code: int, reason: str) -> None:
        if self._closing:
            return
        self._closing = True
        self.close_reason = reason
        try:
            self.outbox.put_nowait((code, reason))
        except asyncio.QueueFull:
            self._drop_slow_consumer()

    def _drop_slow_consumer(self) -> None:
        self._closing = True
        self.close_reason = "too slow to keep up"
        while not self.outbox.empty():
            self.outbox.get_nowait()
        self.outbox.put_nowait((1013, self.close_reason))
        # A client that reads nothing at all leaves the writer blocked on a full network buffer,
        # where the closing frame never gets out: cut the connection off if it is still open then.
        asyncio.get_running_loop().call_later(SLOW_CLOSE_GRACE_SECONDS, self._cut_off)

    def _cut_off(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()

    async def write(self) -> None:
        """The socket's writer: runs until a close is queued or the socket goes away."""
        while True:
            item = await self.outbox.get()
            if isinstance(item, tuple):
                code, reason = item
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await self.socket.close(code=code, message=reason.encode()[:120])
                return
            if self.socket.closed:
                return
            try:
                await self.socket.send_json(item)
            except (ConnectionError, RuntimeError):
                return
            self.messages_out += 1


def room_channel(meeting_id: int) -> str:
    return f"room:{meeting_id}"


def message(kind: str, meeting_id: int, sender: int, data: Any, to: int | None = None) -> dict[str, Any]:
    """The socket message shape of the contract; ``from`` is always the server's word."""
    body: dict[str, Any] = {"type": kind, "from": sender, "meeting_id": meeting_id, "data": data}
    if to is not None:
        body["to"] = to
    return body


class Hub:
    def __init__(self, bus: Bus, node_id: str, accounts: AccountCache) -> None:
        self.bus = bus
        self.node_id = node_id
        self.accounts = accounts
        self.rooms: dict[int, set[Connection]] = defaultdict(set)
        self._sockets_per_user: Counter[int] = Counter()
        self._channels: dict[str, Callable[[dict[str, Any]], Awaitable[None]]] = {}

    def claim(self, user_id: int, most: int) -> bool:
        """Take one of the user's socket slots on this node (False when all are taken); taken and
        checked without a pause, so concurrent connects cannot both take the last one."""
        if self._sockets_per_user[user_id] >= most:
            return False
        self._sockets_per_user[user_id] += 1
        return True

    def release(self, user_id: int) -> None:
        self._sockets_per_user[user_id] -= 1
        if self._sockets_per_user[user_id] <= 0:
            del self._sockets_per_user[user_id]

    async def start(self) -> None:
        await self.bus.start(self._on_bus, self._on_gap)
        await self.bus.subscribe(ACCOUNTS_CHANNEL)

    async def listen(self, channel: str, handler: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        """Hand every event published on ``channel`` (by any node) to ``handler``, which other
        parts of the node use to act together across nodes (e.g. recordings)."""
        self._channels[channel] = handler
        await self.bus.subscribe(channel)

    async def add(self, connection: Connection) -> None:
        room = self.rooms[connection.meeting_id]
        if not room:
            await self.bus.subscribe(room_channel(connection.meeting_id))
        room.add(connection)

    async def remove(self, connection: Connection) -> None:
        room = self.rooms.get(connection.meeting_id)
        if room is None:
            return
        room.discard(connection)
        if not room:
            del self.rooms[connection.meeting_id]
            await self.bus.unsubscribe(room_channel(connection.meeting_id))

    def local(self, meeting_id: int) -> Iterable[Connection]:
        return list(self.rooms.get(meeting_id, ()))

    # Publishing: every node, this one included, receives the event through the bus.

    async def broadcast(
        self, payload: dict[str, Any], *, to_user: int | None = None, skip_session: str | None = None
    ) -> None:
        """Deliver a socket message to the room's admitted sockets (or one user's) on every node."""
        event = {"event": "message", "payload": payload, "to_user": to_user, "skip_session": skip_session}
        await self.bus.publish(room_channel(payload["meeting_id"]), event)

    async def close_user(self, meeting_id: int, user_id: int | None, code: int, reason: str) -> None:
        """Close a user's sockets in a room (every socket when ``user_id`` is None), on every node."""
        event = {"event": "close", "user_id": user_id, "code": code, "reason": reason}
        await self.bus.publish(room_channel(meeting_id), event)

    async def announce_account(self, user: UserRecord) -> None:
        """An account was written: every node drops its cached copy and closes the sockets the
        change revokes before this returns, so the change holds on the caller's next request."""
        event = {"event": "account", "user_id": user.id, "status": user.status, "token_version": user.token_version}
        try:
            await self.bus.publish_confirmed(ACCOUNTS_CHANNEL, event, CONFIRM_SECONDS)
        except Exception:
            # The change is stored: it holds here at once, and elsewhere once cached copies expire.
            log.exception("could not tell the other nodes about account %s; applying it here only", user.id)
            await self._on_account(event)

    async def admit(self, meeting_id: int, user_id: int) -> None:
        """A waiting user was let in: their sockets leave the lobby and get the room state."""
        await self.bus.publish(room_channel(meeting_id), {"event": "admit", "user_id": user_id})

    async def _on_gap(self) -> None:
        log.warning("account changes may have been missed while the bus was down; cached accounts dropped")
        self.accounts.clear()

    async def _on_account(self, event: dict[str, Any]) -> None:
        user_id = event["user_id"]
        self.accounts.forget(user_id)
        for connection in [c for room in self.rooms.values() for c in room if c.user_id == user_id]:
            if event["status"] == "banned":
                await self._shut(connection, CLOSE_FORBIDDEN, "account banned")
            elif event["status"] == "deleted":
                await self._shut(connection, CLOSE_UNAUTHORIZED, "account deleted")
            elif event["token_version"] != connection.token_version:
                await self._shut(connection, CLOSE_UNAUTHORIZED, "token revoked; log in again")

    async def _shut(self, connection: Connection, code: int, reason: str) -> None:
        """Close a socket for a reason the server has: told first, media dropped at once."""
        if connection.closing:
            return
        if code == CLOSE_MEETING_ENDED:
            farewell = {"user_id": connection.user_id, "reason": reason}
            connection.send(message("user-left", connection.meeting_id, SERVER, farewell))
        else:
            connection.send(message("error", connection.meeting_id, SERVER, {"code": code, "message": reason}))
        connection.close(code, reason)
        if connection.on_close is not None:
            await connection.on_close()

    async def _on_bus(self, channel: str, event: dict[str, Any]) -> None:
        if channel == ACCOUNTS_CHANNEL:
            await self._on_account(event)
            return
        handler = self._channels.get(channel)
        if handler is not None:
            await handler(event)
            return
        if not channel.startswith("room:"):
            return
        meeting_id = int(channel.split(":", 1)[1])
        kind = event.get("event")
        for connection in self.local(meeting_id):
            if kind == "message":
                if event.get("skip_session") == connection.session_id or not connection.admitted:
                    continue
                if event.get("to_user") is not None and event["to_user"] != connection.user_id:
                    continue
                connection.send(event["payload"])
            elif kind == "close" and event.get("user_id") in (None, connection.user_id):
                await self._shut(connection, event["code"], event["reason"])
            elif kind == "admit" and event.get("user_id") == connection.user_id and not connection.admitted:
                connection.admitted = True
                if connection.on_admit is not None:
                    await connection.on_admit()

    def disconnect_all(self) -> None:
        """Going away: every socket is told (1001) so clients reconnect elsewhere."""
        for connection in [c for room in self.rooms.values() for c in room]:
            connection.close(1001, "server shutting down")

    async def close(self) -> None:
        self.disconnect_all()
        await self.bus.close()
