"""Fan-out between the nodes of a deployment: in-process by default, Redis pub/sub across nodes.

Channels carry JSON objects. A node subscribes to the channels of the rooms it has sockets in, so
a message published by any node reaches every socket of the room wherever it is connected."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

Listener = Callable[[str, dict[str, Any]], Awaitable[None]]
# Called when messages may have been lost (the connection to Redis dropped and came back).
GapListener = Callable[[], Awaitable[None]]


class Bus(Protocol):
    async def start(self, listener: Listener, on_gap: GapListener | None = None) -> None: ...

    async def publish(self, channel: str, message: dict[str, Any]) -> None: ...

    async def publish_confirmed(self, channel: str, message: dict[str, Any], timeout: float) -> int:
        """Publish, then wait until every node listening on the channel has handled the message
        (or ``timeout`` seconds passed); answers how many nodes confirmed."""
        ...

    async def subscribe(self, channel: str) -> None: ...

    async def unsubscribe(self, channel: str) -> None: ...

    async def close(self) -> None: ...


def open_bus(redis_url: str, key_prefix: str, node_id: str) -> Bus:
    if redis_url:
        from control.bus.redis import RedisBus

        return RedisBus(redis_url, key_prefix, node_id)
    from control.bus.memory import MemoryBus

    return MemoryBus()
