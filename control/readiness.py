"""Readiness: whether this node should be sent work now, for load balancers and orchestrators.

Liveness (``GET /api/v1/health``) only says the process answers and its database does. Readiness
also asks Redis when one is configured, the media server's clock, the AI worker node this server
runs beside itself when it runs one, and the free space in the data directory. Each answer is
bounded in time, and the database and Redis are asked at most once a second however many
balancers poll."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Literal

import redis.asyncio as aioredis
from aiohttp import web
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from control.context import AI, MEDIA, SETTINGS, SFU

CHECK_SECONDS = 2.0  # a check that has not answered by then has failed
SFU_STALL_SECONDS = 2.0  # the media clock ticks four times a second


class Probe:
    """A check asked at most once per ``interval`` seconds: concurrent callers share one in-flight
    attempt and its answer (None, or the name of the error it met). ``timeout`` bounds an attempt
    (None: the attempt's own timeouts, as the liveness check of the database has always had)."""

    def __init__(
        self, attempt: Callable[[], Awaitable[None]], interval: float = 1.0, timeout: float | None = CHECK_SECONDS
    ) -> None:
        self._attempt = attempt
        self._interval = interval
        self._timeout = timeout
        self._checked_at = -interval
        self._problem: str | None = None
        self._pending: asyncio.Future[str | None] | None = None

    async def check(self) -> str | None:
        if time.monotonic() - self._checked_at < self._interval:
            return self._problem
        if self._pending is None:
            self._pending = asyncio.ensure_future(self._run())
        return await asyncio.shield(self._pending)

    async def _run(self) -> str | None:
        try:
            await asyncio.wait_for(self._attempt(), self._timeout)
        except Exception as exc:
            self._problem = type(exc).__name__
        else:
            self._problem = None
        self._checked_at = time.monotonic()
        self._pending = None
        return self._problem


class DatabaseProbe(Probe):
    """Whether the database answers a ``SELECT 1``."""

    def __init__(self, engine: AsyncEngine, interval: float = 1.0) -> None:
        async def query() -> None:
            async with engine.connect() as connection:
                await connection.execute(text("SELECT 1"))

        super().__init__(query, interval, timeout=None)


DATABASE_PROBE = web.AppKey("database_probe", DatabaseProbe)
REDIS_PROBE = web.AppKey("redis_probe", Probe)


class Check(BaseModel):
    status: Literal["ok", "failed"]
    detail: str | None = None


class Readiness(BaseModel):
    status: Literal["ready", "unready"]
    checks: dict[str, Check]


async def redis_context(app: web.Application) -> AsyncIterator[None]:
    """A client of its own for the Redis check, with short timeouts, when Redis is configured."""
    url = app[SETTINGS].redis.url
    if not url:
        yield
        return
    client = aioredis.from_url(url, socket_connect_timeout=CHECK_SECONDS, socket_timeout=CHECK_SECONDS)

    async def ping() -> None:
        await client.ping()

    app[REDIS_PROBE] = Probe(ping)
    yield
    await client.aclose()


def _sfu_problem(app: web.Application) -> str | None:
    sfu = app[SFU]
    if MEDIA in app and app[MEDIA].draining:
        return "draining: the node takes no new meetings and stops once its own have ended"
    for load in sfu.loads():
        name = "the media clock" if load.worker is None else f"media worker {load.worker}'s clock"
        if not load.ticking:
            return f"{name} is not running"
        if load.tick_age > SFU_STALL_SECONDS:
            return f"{name} last ticked {load.tick_age:.1f} s ago"
    return None


def _disk_problem(app: web.Application) -> str | None:
    settings = app[SETTINGS]
    needed = settings.health.min_free_disk_mb
    free = shutil.disk_usage(settings.server.data_dir).free // (1024 * 1024)
    return f"{free} MiB free in the data directory, {needed} MiB needed" if free < needed else None


async def readiness(app: web.Application) -> Readiness:
    async def ai_problem() -> str | None:
        return await asyncio.wait_for(app[AI].local_node_problem(), CHECK_SECONDS)

    problems: dict[str, Awaitable[str | None]] = {
        "database": asyncio.wait_for(app[DATABASE_PROBE].check(), CHECK_SECONDS)
    }
    if REDIS_PROBE in app:
        problems["redis"] = app[REDIS_PROBE].check()
    if app[AI].started:
        problems["ai_node"] = ai_problem()
    names = list(problems)
    answers = await asyncio.gather(*problems.values(), return_exceptions=True)
    found: dict[str, str | None] = {
        name: (f"{type(answer).__name__}" if isinstance(answer, BaseException) else answer)
        for name, answer in zip(names, answers, strict=True)
    }
    found["sfu"] = _sfu_problem(app)
    found["disk"] = _disk_problem(app)
    checks = {name: Check(status="failed" if problem else "ok", detail=problem) for name, problem in found.items()}
    failed = any(check.status == "failed" for check in checks.values())
    return Readiness(status="unready" if failed else "ready", checks=checks)
