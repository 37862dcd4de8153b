"""The node's signaling hub: which sockets this node holds in which room, and delivery of room
events published by any node (through the bus) to the matching local sockets."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from control.bus import Bus

log = logging.getLogger("huiyi.signaling")

SERVER = 0  # the ``from`` of messages the server itself sends

# Close codes (4000-4999 are the application's): the client learns why without parsing text.
CLOSE_MEETING_ENDED = 4000
CLOSE_BAD_REQUEST = 4400
CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404
CLOSE_FLOOD = 4429
CLOSE_REMOVED = 4003
CLOSE_LEFT = 1000


OUTBOX_LIMIT = 256  # messages queued for one socket before it counts as too slow to keep


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
    messages_in: int = 0
    messages_out: int = 0
    joined_room: bool = False
    close_reason: str = field(default="disconnected")
    # Called when a host admits this (waiting) user, to hand them the room state.
    on_admit: Callable[[], Awaitable[None]] | None = None
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
    def __init__(self, bus: Bus, node_id: str) -> None:
        self.bus = bus
        self.node_id = node_id
        self.rooms: dict[int, set[Connection]] = defaultdict(set)

    async def start(self) -> None:
        await self.bus.start(self._on_bus)

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

    async def admit(self, meeting_id: int, user_id: int) -> None:
        """A waiting user was let in: their sockets leave the lobby and get the room state."""
        await self.bus.publish(room_channel(meeting_id), {"event": "admit", "user_id": user_id})

    async def _on_bus(self, channel: str, event: dict[str, Any]) -> None:
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
                if event["code"] == CLOSE_MEETING_ENDED:
                    farewell = {"user_id": connection.user_id, "reason": event["reason"]}
                    connection.send(message("user-left", meeting_id, SERVER, farewell))
                else:
                    connection.send(
                        message("error", meeting_id, SERVER, {"code": event["code"], "message": event["reason"]})
                    )
                connection.close(event["code"], event["reason"])
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
