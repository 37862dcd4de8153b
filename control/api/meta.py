"""Service endpoints: health for operators and load balancers, the OpenAPI document."""

from __future__ import annotations

import asyncio
import functools
import time
from importlib.metadata import PackageNotFoundError, version

from aiohttp import web
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from control.context import OPENAPI, STORE
from control.endpoints import Access, EndpointGroup
from control.errors import ApiError

group = EndpointGroup("/api/v1", "meta")


@functools.cache
def huiyi_version() -> str:
    """Read once: the installed package's metadata does not change while the process runs."""
    try:
        return version("huiyi")
    except PackageNotFoundError:
        return "0+unknown"


class DatabaseProbe:
    """Whether the database answers, asked at most once per ``interval`` seconds however many
    load balancers poll: concurrent health calls share one in-flight query and its answer."""

    def __init__(self, engine: AsyncEngine, interval: float = 1.0) -> None:
        self._engine = engine
        self._interval = interval
        self._checked_at = -interval
        self._problem: str | None = None
        self._pending: asyncio.Future[str | None] | None = None

    async def check(self) -> str | None:
        """None when the database answered, else the name of the error it gave."""
        if time.monotonic() - self._checked_at < self._interval:
            return self._problem
        if self._pending is None:
            self._pending = asyncio.ensure_future(self._query())
        return await asyncio.shield(self._pending)

    async def _query(self) -> str | None:
        try:
            async with self._engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
        except Exception as exc:
            self._problem = type(exc).__name__
        else:
            self._problem = None
        self._checked_at = time.monotonic()
        self._pending = None
        return self._problem


DATABASE_PROBE = web.AppKey("database_probe", DatabaseProbe)


class Health(BaseModel):
    status: str
    version: str
    database: str


@group.route(
    "GET",
    "/health",
    name="health",
    summary="Liveness and database reachability",
    access=Access.PUBLIC,
    limit="600/minute",
    response=Health,
    errors=(503,),
)
async def health(request: web.Request) -> Health:
    problem = await request.app[DATABASE_PROBE].check()
    if problem:
        raise ApiError(503, f"Database unreachable: {problem}")
    return Health(status="ok", version=huiyi_version(), database=request.app[STORE].engine.dialect.name)


@group.route(
    "GET",
    "/openapi.json",
    name="openapi",
    summary="This OpenAPI 3.1 document (served bare, not in the envelope, so tools can read it)",
    access=Access.PUBLIC,
    limit="60/minute",
    raw_response=("application/json", {"type": "object"}),
)
async def openapi(request: web.Request) -> web.Response:
    return web.json_response(request.app[OPENAPI])
