"""Which media server a signaling session talks to, and keeping that true while nodes come and go.

On the embedded defaults (no Redis) every session's media runs in this process, as on one node it
always has. With Redis, each meeting's media runs on one node (``control.placement``): a session
whose room runs here talks to the local media server, any other to the owner's through
``control.remote_sfu``. Every heartbeat the node writes its presence and renews its rooms' leases,
and checks that the owners its sessions depend on still live. When one is gone, each of its
sessions is told ``reconnect`` (docs/sfu.md) and joined again wherever the room is placed now, so
the client only has to build its two connections anew. SIGTERM drains the node (``drain``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from config.settings import ClusterSettings
from control.placement import NodeLoad, Placement
from control.remote_sfu import RemoteSfu, Route
from sfu.peer import Signal
from sfu.pool import MediaServer
from sfu.server import check_preferences

log = logging.getLogger("huiyi.media_router")

CLUSTER_CHANNEL = "sfu-cluster"  # every node listens: nodes (re)starting


class MediaSession:
    """One signaling socket's media, wherever it runs."""

    def __init__(self, router: MediaRouter, route: Route) -> None:
        self.router = router
        self.route = route

    async def join(self) -> None:
        """Join the room's media (subscribing to what it already publishes); placed if need be."""
        await self.router.ensure(self.route)

    async def handle(self, kind: str, data: dict[str, Any]) -> None:
        """An ``offer``, ``answer`` or ``ice-candidate`` for the server; raises SignalError here,
        a remote owner answers with an ``error`` message."""
        router, route = self.router, self.route
        if await router.ensure(route):
            await router.media.handle(route.session_id, kind, data)
        elif router.remote is not None and route.owner is not None:
            await router.remote.handle(route, kind, data)

    async def set_preferences(self, data: dict[str, Any]) -> None:
        """What the client wants to receive; raises SignalError for values no media server takes."""
        router, route = self.router, self.route
        check_preferences(data)
        if await router.ensure(route):
            await router.media.set_preferences(route.session_id, data)
        elif router.remote is not None and route.owner is not None:
            await router.remote.set_preferences(route, data)

    async def leave(self) -> None:
        await self.router.leave(self.route)


class MediaRouter:
    def __init__(
        self,
        media: MediaServer,
        remote: RemoteSfu | None,
        placement: Placement | None,
        node_id: str,
        settings: ClusterSettings,
        url: str = "",
    ) -> None:
        self.media = media
        self.url = url  # this node's API, as the other nodes reach it
        self.remote = remote
        self.placement = placement
        self.node_id = node_id
        self.settings = settings
        self.draining = False
        self.sessions: dict[str, Route] = {}
        self._beat: asyncio.Task[None] | None = None
        self._counted = (time.monotonic(), 0)  # (when, packets forwarded by then) at the last beat
        self._workers: dict[int, int] = {}  # the media worker each room here was last recorded on

    async def start(self) -> None:
        if self.placement is None or self.remote is None:
            return
        await self.remote.start()
        await self.placement.beat(self._load())
        # Peers this node ran before a restart, and peers others ran for its sockets, are gone:
        # nodes that counted on them hear it now, not only if the restart outlasted the timeout.
        await self.remote.hub.listen(CLUSTER_CHANNEL, self._on_cluster)
        await self.remote.hub.bus.publish(CLUSTER_CHANNEL, {"event": "started", "node": self.node_id})
        self._beat = asyncio.get_running_loop().create_task(self._beat_forever())

    async def _on_cluster(self, event: dict[str, Any]) -> None:
        node = event.get("node")
        if event.get("event") != "started" or node == self.node_id or self.remote is None:
            return
        await self.remote.drop_origins({node})
        for route in [r for r in self.sessions.values() if r.owner == node]:
            await self.move(route, "media server restarted")

    async def close(self) -> None:
        if self._beat is not None:
            self._beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._beat
        if self.placement is not None:
            with contextlib.suppress(Exception):
                await self.placement.leave(self.media.meetings())
            await self.placement.close()
        if self.remote is not None:
            await self.remote.close()

    def session(self, meeting_id: int, session_id: str, user_id: int, signal: Signal) -> MediaSession:
        return MediaSession(self, Route(session_id, meeting_id, user_id, signal))

    async def ensure(self, route: Route) -> bool:
        """Place the session's room and join its media if not done yet; whether it runs here.
        A session that left (its socket closed) joins nothing, even if it left while being placed."""
        if route.left:
            return False
        if route.owner is None:
            if self.placement is None:
                route.owner = self.node_id
            else:
                owner = await self.placement.place(route.meeting_id, self.node_id)
                if route.left:
                    return False
                route.owner = owner
            self.sessions[route.session_id] = route
            if route.owner != self.node_id:
                assert self.remote is not None
                await self.remote.join(route)
        if route.owner == self.node_id:
            await self.media.join(route.meeting_id, route.session_id, route.user_id, route.signal)
            return True
        return False

    async def meeting_node_url(self, meeting_id: int) -> str | None:
        """The API of the node that runs the meeting's media, when that is another live node."""
        if self.placement is None:
            return None
        owner = await self.placement.owner(meeting_id)
        if owner is None or owner == self.node_id:
            return None
        presence = await self.placement.presence(owner)
        return presence.url if presence is not None and presence.url else None

    async def leave(self, route: Route) -> None:
        route.left = True
        self.sessions.pop(route.session_id, None)
        if route.owner is None or route.owner == self.node_id:
            await self.media.leave(route.session_id)
        elif self.remote is not None:
            await self.remote.remove(route)
        route.owner = None

    # heartbeat ----------------------------------------------------------------------------------

    def _load(self) -> NodeLoad:
        now, forwarded = time.monotonic(), self.media.totals().forwarded_packets
        then, before = self._counted
        self._counted = (now, forwarded)
        rate = (forwarded - before) / (now - then) if now > then else 0.0
        addresses = list(self.media.settings.announce_addresses or self.media.settings.bind_addresses)
        peers = sum(load.peers for load in self.media.loads())
        return NodeLoad(self.node_id, addresses, peers, round(rate, 1), self.draining, self.url)

    async def _beat_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_seconds)
            try:
                await self._beat_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("cluster heartbeat failed")

    async def _beat_once(self) -> None:
        assert self.placement is not None and self.remote is not None
        await self.placement.beat(self._load())
        meetings = self.media.meetings()
        await self.placement.renew(meetings)
        await self._record_workers(meetings)
        others = {r.owner for r in self.sessions.values() if r.owner not in (None, self.node_id)}
        others |= set(self.remote.served.values())
        gone = {node for node in others if node is not None and not await self.placement.alive(node)}
        if gone:
            log.warning("node(s) %s stopped answering; their rooms are placed again", ", ".join(sorted(gone)))
            await self.remote.drop_origins(gone)
        # A session whose room is placed elsewhere now (its node died, or this node was taken for
        # dead while Redis was out of its reach) follows the room; peers run here for such a room
        # are left over from before, their sessions gone elsewhere.
        rooms = {r.meeting_id for r in self.sessions.values()} | set(self.media.meetings())
        placed = await self.placement.owners(sorted(rooms))
        await self.remote.drop_rooms({m for m, owner in placed.items() if owner not in (None, self.node_id)})
        for route in list(self.sessions.values()):
            if route.owner in gone:
                await self.move(route, "media server lost")
            elif route.owner is not None and placed.get(route.meeting_id) not in (None, route.owner):
                await self.move(route, "meeting moved to another media server")

    async def _record_workers(self, meetings: list[int]) -> None:
        """The placements of this node's rooms name the media worker running each (docs/sfu.md#workers)."""
        assert self.placement is not None
        workers = {m: w for m in meetings if (w := self.media.worker_of(m)) is not None}
        for meeting_id, worker in workers.items():
            if self._workers.get(meeting_id) != worker:
                await self.placement.record_worker(meeting_id, worker)
        self._workers = workers

    async def move(self, route: Route, reason: str) -> None:
        """The session's media server is gone, or no longer runs its room: the client is told to
        build its connections anew, and the session joins the room wherever it is placed now."""
        assert self.remote is not None
        if route.owner == self.node_id:
            await self.media.leave(route.session_id)
        else:
            await self.remote.remove(route)  # in case that node still runs a peer for it
        route.owner = None
        route.signal("reconnect", {"reason": reason})
        await self.ensure(route)

    # draining -----------------------------------------------------------------------------------

    async def drain(self) -> None:
        """No new rooms come here; returns once the rooms running here have ended, or after
        ``cluster.drain_seconds``."""
        self.draining = True
        if self.placement is not None:
            await self.placement.beat(self._load())
        deadline = time.monotonic() + self.settings.drain_seconds
        rooms, seconds = len(self.media.meetings()), self.settings.drain_seconds
        log.info("draining: %d rooms run here; stopping within %.0f s", rooms, seconds)
        while self.media.meetings() and time.monotonic() < deadline:
            await asyncio.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
        log.info("drained: %d rooms still running", len(self.media.meetings()))
