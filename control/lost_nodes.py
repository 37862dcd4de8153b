"""The sockets of a node that died and has not come back, closed for it by the nodes still alive.

A node closes the sessions it left open when it starts again (``control.rooms.close_node_sessions``);
one that never comes back would keep its users online in their meetings for good, and their rooms
would never hear that they left. With Redis, every node looks every ``REAP_SECONDS`` for nodes that
still hold open sessions but no longer write their presence (``control.placement``); once such a
node has stayed away ``[cluster] lost_seconds``, its sessions are closed as the node itself would
close them on its return: a user left with no socket on any node goes offline and the room hears
``user-left``. Several nodes doing it at once is harmless: a session closes once and a user goes
offline once (``ParticipantStore.went_offline``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from control.context import MEDIA, SETTINGS, STORE
from control.placement import Placement
from control.rooms import close_node_sessions

log = logging.getLogger("huiyi.lost_nodes")

REAP_SECONDS = 5.0


class LostNodes:
    """Which nodes holding open sessions are missing, since when, and closing them once lost."""

    def __init__(
        self,
        node_id: str,
        placement: Placement,
        open_nodes: Callable[[], Awaitable[set[str]]],
        close: Callable[[str], Awaitable[None]],
        lost_seconds: float,
    ) -> None:
        self.node_id = node_id
        self.placement = placement
        self.open_nodes = open_nodes
        self.close = close
        self.lost_seconds = lost_seconds
        self.missing_since: dict[str, float] = {}

    async def look(self, now: float) -> set[str]:
        """Close the sessions of every node missing ``lost_seconds`` by now; those nodes."""
        missing = set()
        for node in await self.open_nodes() - {self.node_id}:
            if not await self.placement.alive(node):
                missing.add(node)
        self.missing_since = {node: self.missing_since.get(node, now) for node in missing}
        lost = {node for node, since in self.missing_since.items() if now - since >= self.lost_seconds}
        for node in sorted(lost):
            log.warning("node %s has been gone %.0f s: its sockets are closed for it", node, self.lost_seconds)
            await self.close(node)
            del self.missing_since[node]
        return lost


async def _look_forever(lost: LostNodes) -> None:
    while True:
        await asyncio.sleep(REAP_SECONDS)
        try:
            await lost.look(time.monotonic())
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("looking for lost nodes failed")


async def lost_nodes_context(app: web.Application) -> AsyncIterator[None]:
    """Runs where nodes share Redis (the media router then has a placement)."""
    placement, settings = app[MEDIA].placement, app[SETTINGS]
    task = None
    if placement is not None:
        lost = LostNodes(
            settings.node_id,
            placement,
            app[STORE].sessions.open_nodes,
            lambda node: close_node_sessions(app, node, "node lost"),
            settings.cluster.lost_seconds,
        )
        task = asyncio.get_running_loop().create_task(_look_forever(lost))
    yield
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
