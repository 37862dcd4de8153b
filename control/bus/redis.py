"""Redis pub/sub bus: every node publishes to and listens on the same channels."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

import redis.asyncio as aioredis

from control.bus import Listener

log = logging.getLogger("huiyi.bus")


class RedisBus:
    def __init__(self, url: str, key_prefix: str, node_id: str) -> None:
        self._client = aioredis.from_url(url)
        self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        self._prefix = f"{key_prefix}:bus:"
        # Subscribing to the node's own channel keeps the pub/sub connection open even with no room.
        self._node_channel = f"{self._prefix}node:{node_id}"
        self._reader: asyncio.Task[None] | None = None

    async def start(self, listener: Listener) -> None:
        await self._client.ping()
        await self._pubsub.subscribe(self._node_channel)
        self._reader = asyncio.get_running_loop().create_task(self._read(listener))

    async def _read(self, listener: Listener) -> None:
        while True:
            try:
                message = await self._pubsub.get_message(timeout=1.0)
            except (aioredis.ConnectionError, aioredis.TimeoutError):
                log.warning("lost the Redis bus connection; retrying in 1 s")
                await asyncio.sleep(1)
                continue
            if message is None or message.get("type") != "message":
                continue
            channel = message["channel"].decode()
            try:
                payload = json.loads(message["data"])
                await listener(channel[len(self._prefix) :], payload)
            except Exception:
                log.exception("bus message on %s could not be handled", channel)

    async def publish(self, channel: str, message: dict[str, Any]) -> None:
        await self._client.publish(self._prefix + channel, json.dumps(message, separators=(",", ":")))

    async def subscribe(self, channel: str) -> None:
        await self._pubsub.subscribe(self._prefix + channel)

    async def unsubscribe(self, channel: str) -> None:
        await self._pubsub.unsubscribe(self._prefix + channel)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        await self._pubsub.aclose()
        await self._client.aclose()
