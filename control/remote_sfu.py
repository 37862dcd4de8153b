"""The media server of another node, reached over the bus: the same four operations the signaling
socket uses on the local one (join a room's media, hand it a client's SFU message, set what the
client receives, leave), and, on the node that runs the room, the serving of those operations.

Requests go to the owner's channel ``sfu:<node>``; the owner's peer signals (answers, offers,
errors, active speaker) go back to ``sfu:<origin>`` and on to the client's socket there. The bus
delivers one node's messages in order; the owner works through each session's requests in the
order they came, off the bus reader, so one slow negotiation never holds up the others."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from control.signaling.hub import Hub
from sfu.peer import Signal
from sfu.pool import MediaServer
from sfu.server import SignalError

log = logging.getLogger("huiyi.remote_sfu")


def node_channel(node_id: str) -> str:
    return f"sfu:{node_id}"


@dataclass
class Route:
    """One signaling session's media: which node runs it (None until placed) and how its signals
    reach the client."""

    session_id: str
    meeting_id: int
    user_id: int
    signal: Signal
    owner: str | None = None
    left: bool = False  # the socket is gone: the session joins no media any more


class RemoteSfu:
    def __init__(self, hub: Hub, media: MediaServer, node_id: str) -> None:
        self.hub = hub
        self.media = media
        self.node_id = node_id
        self.routes: dict[str, Route] = {}  # this node's sockets whose media runs elsewhere
        self.served: dict[str, str] = {}  # session -> origin node, for peers run here for other nodes
        self._chains: dict[str, asyncio.Task[None]] = {}
        self._outbox: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        self._sender: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._sender = asyncio.get_running_loop().create_task(self._send_forever())
        await self.hub.listen(node_channel(self.node_id), self._on_event)

    async def close(self) -> None:
        for task in list(self._chains.values()):
            task.cancel()
        if self._sender is not None:
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sender

    # the client's node ---------------------------------------------------------------------------

    async def _request(self, route: Route, op: str, **fields: Any) -> None:
        assert route.owner is not None
        if op != "leave":
            self.routes[route.session_id] = route  # the owner's signals for it are let through
        event = {
            "op": op,
            "session": route.session_id,
            "meeting_id": route.meeting_id,
            "user_id": route.user_id,
            "origin": self.node_id,
            **fields,
        }
        await self.hub.bus.publish(node_channel(route.owner), event)

    async def join(self, route: Route) -> None:
        await self._request(route, "join")

    async def handle(self, route: Route, kind: str, data: dict[str, Any]) -> None:
        await self._request(route, "signal", kind=kind, data=data)

    async def set_preferences(self, route: Route, data: dict[str, Any]) -> None:
        await self._request(route, "preferences", data=data)

    async def remove(self, route: Route) -> None:
        if self.routes.pop(route.session_id, None) is not None:
            await self._request(route, "leave")

    # the room's node ----------------------------------------------------------------------------

    async def _on_event(self, event: dict[str, Any]) -> None:
        if event.get("op") == "out":
            route = self.routes.get(event["session"])
            if route is not None:
                route.signal(event["kind"], event["data"])
            return
        self._in_order(event["session"], self._serve(event))

    def _in_order(self, session_id: str, work: Coroutine[Any, Any, None]) -> None:
        previous = self._chains.get(session_id)

        async def run() -> None:
            if previous is not None:
                await asyncio.gather(previous, return_exceptions=True)
            await work

        task = asyncio.get_running_loop().create_task(run())
        self._chains[session_id] = task
        task.add_done_callback(
            lambda done: self._chains.pop(session_id, None) if self._chains.get(session_id) is done else None
        )

    async def _serve(self, event: dict[str, Any]) -> None:
        session, origin, op = event["session"], event["origin"], event["op"]
        if op == "leave":
            self.served.pop(session, None)
            await self.media.leave(session)
            return
        self.served[session] = origin

        def signal(kind: str, data: dict[str, Any]) -> None:
            self._outbox.put_nowait((origin, {"op": "out", "session": session, "kind": kind, "data": data}))

        try:
            await self.media.join(event["meeting_id"], session, event["user_id"], signal)
            if op == "signal":
                await self.media.handle(session, event["kind"], event["data"])
            elif op == "preferences":
                await self.media.set_preferences(session, event["data"])
        except SignalError as exc:
            signal("error", {"code": exc.code, "message": exc.text})
        except Exception:
            log.exception("session %s: %s from node %s failed", session, op, origin)
            signal("error", {"code": 500, "message": "internal error handling that message"})

    async def drop_origins(self, gone: set[str]) -> None:
        """Peers run here for sockets on nodes that died are gone with them."""
        for session, origin in list(self.served.items()):
            if origin in gone:
                self.served.pop(session, None)
                await self.media.leave(session)

    async def drop_rooms(self, meeting_ids: set[int]) -> None:
        """Peers run here for other nodes in rooms that now run elsewhere are gone."""
        for session in list(self.served):
            peer = self.media.peer_info(session)
            if peer is None or peer.meeting_id in meeting_ids:
                self.served.pop(session, None)
                await self.media.leave(session)

    async def _send_forever(self) -> None:
        """One sender, so a peer's signals reach its client in the order the peer gave them."""
        while True:
            origin, event = await self._outbox.get()
            try:
                await self.hub.bus.publish(node_channel(origin), event)
            except Exception:
                log.exception("could not send a media signal to node %s", origin)
