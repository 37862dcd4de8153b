"""A webhook receiver for the tests: a real HTTP server on loopback that keeps what it is sent, and
can be slow, refuse, or be down (not listening) and come back on the same port."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from control.webhooks.signing import HEADER, verify
from tests.server_process import free_port


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float  # monotonic time the request arrived

    @property
    def event(self) -> dict[str, Any]:
        return json.loads(self.body)


class Receiver:
    def __init__(self, secret: str = "", delay: float = 0.0, status: int = 204) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.secret = secret
        self.delay = delay
        self.status = status
        self.received: list[Received] = []
        self.answered: list[float] = []  # monotonic times its answers went out
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        self.received.append(Received(dict(request.headers), await request.read(), time.monotonic()))
        if self.delay:
            await asyncio.sleep(self.delay)
        self.answered.append(time.monotonic())
        return web.Response(status=self.status)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def events(self) -> list[dict[str, Any]]:
        """The events received, in order, each checked for a valid signature and its headers."""
        found = []
        for item in self.received:
            assert verify(self.secret, item.body, item.headers[HEADER]), f"bad signature: {item.headers}"
            event = item.event
            assert item.headers["Huiyi-Event"] == event["type"]
            assert item.headers["Huiyi-Event-Id"] == event["id"]
            assert item.headers["Content-Type"] == "application/json"
            found.append(event)
        return found

    def types(self) -> list[str]:
        return [event["type"] for event in self.events()]
