"""The embedded bus: one process is the whole deployment, so publishing is a direct call."""

from __future__ import annotations

from typing import Any

from control.bus import GapListener, Listener


class MemoryBus:
    def __init__(self) -> None:
        self._listener: Listener | None = None
        self._channels: set[str] = set()

    async def start(self, listener: Listener, on_gap: GapListener | None = None) -> None:
        self._listener = listener

    async def publish(self, channel: str, message: dict[str, Any]) -> None:
        if self._listener is not None and channel in self._channels:
            await self._listener(channel, message)

    async def publish_confirmed(self, channel: str, message: dict[str, Any], timeout: float) -> int:
        """The only node handles the message before ``publish`` returns."""
        if self._listener is None or channel not in self._channels:
            return 0
        await self._listener(channel, message)
        return 1

    async def subscribe(self, channel: str) -> None:
        self._channels.add(channel)

    async def unsubscribe(self, channel: str) -> None:
        self._channels.discard(channel)

    async def close(self) -> None:
        self._listener = None
