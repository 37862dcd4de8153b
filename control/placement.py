"""Where each meeting's media runs when several nodes share Redis (docs/operations.md#scale-out).

Every node writes its presence (load, its media server's addresses, whether it drains) under a key
that expires unless renewed, so a node that dies simply vanishes. A room's placement is a key too
(the node and, when it runs media in worker processes, the worker: docs/sfu.md#workers), leased by
the node that runs the room and renewed while the room has peers there; the first node to
need a room's media places it on the least loaded live node. A placement whose node vanished is
replaced atomically, so nodes racing to place a room again all agree on one answer."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

log = logging.getLogger("huiyi.placement")

# Replaces the room's placement only if it still names the node the caller saw (gone by now), or
# none: whoever comes second reads the first one's choice.
_REPLACE = """
local current = redis.call('HGET', KEYS[1], 'node')
if current == false or current == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'node', ARGV[2], 'address', ARGV[3])
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  return ARGV[2]
end
return current
"""
# Extends the lease of rooms still placed on this node (ARGV[1]), and places again here those whose
# lease ran out meanwhile (Redis was out of reach); a room placed elsewhere meanwhile (this node was
# taken for dead) is left to its new owner, whose node the sessions move to.
_RENEW = """
for _, key in ipairs(KEYS) do
  local current = redis.call('HGET', key, 'node')
  if current == false then redis.call('HSET', key, 'node', ARGV[1], 'address', ARGV[3]) end
  if current == false or current == ARGV[1] then redis.call('PEXPIRE', key, ARGV[2]) end
end
return 0
"""
# Notes which of this node's (ARGV[1]) media workers runs the room (ARGV[2]), if it is still placed here.
_WORKER = """
if redis.call('HGET', KEYS[1], 'node') == ARGV[1] then redis.call('HSET', KEYS[1], 'worker', ARGV[2]) end
return 0
"""
_RELEASE = """
for _, key in ipairs(KEYS) do
  if redis.call('HGET', key, 'node') == ARGV[1] then redis.call('DEL', key) end
end
return 0
"""


@dataclass(frozen=True)
class NodeLoad:
    """What a node's heartbeat says about it."""

    node_id: str
    addresses: list[str]
    peers: int
    packets_per_second: float
    draining: bool
    url: str = ""  # its API, for the other nodes

    @classmethod
    def parse(cls, raw: bytes) -> NodeLoad:
        data: dict[str, Any] = json.loads(raw)
        return cls(
            data["node"], data["addresses"], data["peers"], data["packets_per_second"], data["draining"], data["url"]
        )


class Placement:
    def __init__(self, url: str, key_prefix: str, node_id: str, timeout_seconds: float) -> None:
        self.client = aioredis.from_url(url)
        self.node_id = node_id
        self.prefix = f"{key_prefix}:cluster:"
        self.lease_ms = int(timeout_seconds * 1000)
        self._replace = self.client.register_script(_REPLACE)
        self._renew = self.client.register_script(_RENEW)
        self._release = self.client.register_script(_RELEASE)
        self._worker = self.client.register_script(_WORKER)
        self.addresses: list[str] = []  # this node's media server, as its presence gives it

    def _node_key(self, node_id: str) -> str:
        return f"{self.prefix}node:{node_id}"

    def _room_key(self, meeting_id: int) -> str:
        return f"{self.prefix}room:{meeting_id}"

    async def beat(self, load: NodeLoad) -> None:
        """Write this node's presence; it lapses unless written again within the timeout."""
        self.addresses = load.addresses
        text = json.dumps(
            {
                "node": load.node_id,
                "addresses": load.addresses,
                "peers": load.peers,
                "packets_per_second": load.packets_per_second,
                "draining": load.draining,
                "url": load.url,
            }
        )
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.set(self._node_key(self.node_id), text, px=self.lease_ms)
            pipe.sadd(self.prefix + "nodes", self.node_id)
            await pipe.execute()

    async def alive(self, node_id: str) -> bool:
        return bool(await self.client.exists(self._node_key(node_id)))

    async def presence(self, node_id: str) -> NodeLoad | None:
        raw = await self.client.get(self._node_key(node_id))
        return NodeLoad.parse(raw) if raw is not None else None

    async def nodes(self) -> list[NodeLoad]:
        """The live nodes; those whose presence lapsed are forgotten."""
        ids = sorted(member.decode() for member in await self.client.smembers(self.prefix + "nodes"))
        if not ids:
            return []
        found = []
        for node_id, raw in zip(ids, await self.client.mget([self._node_key(i) for i in ids]), strict=True):
            if raw is None:
                await self.client.srem(self.prefix + "nodes", node_id)
            else:
                found.append(NodeLoad.parse(raw))
        return found

    async def owner(self, meeting_id: int) -> str | None:
        raw = await self.client.hget(self._room_key(meeting_id), "node")
        return raw.decode() if raw is not None else None

    async def place(self, meeting_id: int, via: str) -> str:
        """The node that runs the meeting's media: where it runs now if that node lives, otherwise
        the least loaded live node that is not draining (by forwarded packets, then peers; on a tie
        ``via``, the node the participant came through)."""
        current = await self.owner(meeting_id)
        if current is not None and await self.alive(current):
            return current
        live = await self.nodes()
        open_nodes = [node for node in live if not node.draining] or [n for n in live if n.node_id == via]
        if open_nodes:
            chosen = min(open_nodes, key=lambda n: (n.packets_per_second, n.peers, n.node_id != via))
        else:
            chosen = NodeLoad(via, self.addresses, 0, 0.0, False)
        owner = await self._replace(
            keys=[self._room_key(meeting_id)],
            args=[current or "", chosen.node_id, ",".join(chosen.addresses), self.lease_ms],
        )
        owner = owner.decode() if isinstance(owner, bytes) else str(owner)
        if owner == chosen.node_id:
            log.info("meeting %s placed on node %s (was %s)", meeting_id, owner, current or "nowhere")
        return owner

    async def record_worker(self, meeting_id: int, worker: int) -> None:
        """The room runs on this node's media worker ``worker`` (docs/sfu.md#workers)."""
        await self._worker(keys=[self._room_key(meeting_id)], args=[self.node_id, worker])

    async def where(self, meeting_id: int) -> tuple[str | None, int | None]:
        """The node that runs the meeting's media and, when it has workers, which of them."""
        node, worker = await self.client.hmget(self._room_key(meeting_id), ["node", "worker"])
        return (node.decode() if node is not None else None, int(worker) if worker is not None else None)

    async def owners(self, meeting_ids: list[int]) -> dict[int, str | None]:
        """Where each meeting is placed now (None: nowhere)."""
        if not meeting_ids:
            return {}
        async with self.client.pipeline(transaction=False) as pipe:
            for meeting_id in meeting_ids:
                pipe.hget(self._room_key(meeting_id), "node")
            found = await pipe.execute()
        return {m: raw.decode() if raw is not None else None for m, raw in zip(meeting_ids, found, strict=True)}

    async def renew(self, meeting_ids: list[int]) -> None:
        if meeting_ids:
            keys = [self._room_key(m) for m in meeting_ids]
            await self._renew(keys=keys, args=[self.node_id, self.lease_ms, ",".join(self.addresses)])

    async def leave(self, meeting_ids: list[int]) -> None:
        """Going away: the presence goes at once, and so do the rooms placed here, so the other
        nodes place them again without waiting for the leases to run out."""
        await self.client.delete(self._node_key(self.node_id))
        await self.client.srem(self.prefix + "nodes", self.node_id)
        if meeting_ids:
            await self._release(keys=[self._room_key(m) for m in meeting_ids], args=[self.node_id])

    async def close(self) -> None:
        await self.client.aclose()
