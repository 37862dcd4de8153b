"""Redis pub/sub bus: every node publishes to and listens on the same channels."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from typing import Any

import redis.asyncio as aioredis

from control.bus import GapListener, Listener

log = logging.getLogger("huiyi.bus")


class RedisBus:
    def __init__(self, url: str, key_prefix: str, node_id: str) -> None:
        self._client = aioredis.from_url(url)
        self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        self._prefix = f"{key_prefix}:bus:"
        # Subscribing to the node's own channel keeps the pub/sub connection open even with no room.
        self._node_channel = f"{self._prefix}node:{node_id}"
        self._node_id = node_id
        self._reader: asyncio.Task[None] | None = None

    async def start(self, listener: Listener, on_gap: GapListener | None = None) -> None:
        await self._client.ping()
        await self._pubsub.subscribe(self._node_channel)
        self._reader = asyncio.get_running_loop().create_task(self._read(listener, on_gap))

    async def _read(self, listener: Listener, on_gap: GapListener | None) -> None:
        lost = False
        while True:
            try:
                message = await self._pubsub.get_message(timeout=1.0)
            except (aioredis.ConnectionError, aioredis.TimeoutError):
                log.warning("lost the Redis bus connection; retrying in 1 s")
                lost = True
                await asyncio.sleep(1)
                continue
            if lost:
                # redis-py subscribed again on reconnecting; what was published meanwhile is gone.
                lost = False
                log.info("Redis bus connection is back")
                if on_gap is not None:
                    await on_gap()
            if message is None or message.get("type") != "message":
                continue
            channel = message["channel"].decode()
            payload: dict[str, Any] = {}
            try:
                payload = json.loads(message["data"])
                await listener(channel[len(self._prefix) :], payload)
            except Exception:
                log.exception("bus message on %s could not be handled", channel)
            finally:
                # Confirmed even when handling failed (and logged): the sender must not stall.
                if "ack" in payload:
                    await self._confirm(payload["ack"])

    async def _confirm(self, ack: str) -> None:
        try:
            await self._client.rpush(ack, self._node_id)
            await self._client.expire(ack, 60)
        except (aioredis.ConnectionError, aioredis.TimeoutError):
            log.warning("could not confirm a bus message; its sender waits until its deadline")

    async def publish(self, channel: str, message: dict[str, Any]) -> None:
        await self._client.publish(self._prefix + channel, json.dumps(message, separators=(",", ":")))

    async def publish_confirmed(self, channel: str, message: dict[str, Any], timeout: float) -> int:
        """Each receiving node pushes its id onto a list named in the message once it handled it;
        PUBLISH says how many nodes received it, so the list tells when all of them are done."""
        ack = f"{self._prefix}ack:{uuid.uuid4().hex}"
        text = json.dumps({**message, "ack": ack}, separators=(",", ":"))
        receivers = int(await self._client.publish(self._prefix + channel, text))
        deadline = time.monotonic() + timeout
        confirmed = 0
        try:
            while confirmed < receivers:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or await self._client.blpop([ack], timeout=remaining) is None:
                    log.warning("%d of %d nodes confirmed a message on %s in time", confirmed, receivers, channel)
                    break
                confirmed += 1
        finally:
            await self._client.delete(ack)
        return confirmed

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
