"""Service endpoints: health for operators and load balancers, the OpenAPI document."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from aiohttp import web
from pydantic import BaseModel
from sqlalchemy import text

from control.context import OPENAPI, STORE
from control.endpoints import Access, EndpointGroup
from control.errors import ApiError

group = EndpointGroup("/api/v1", "meta")


def huiyi_version() -> str:
    try:
        return version("huiyi")
    except PackageNotFoundError:
        return "0+unknown"


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
    try:
        async with request.app[STORE].engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    except Exception as exc:
        raise ApiError(503, f"Database unreachable: {type(exc).__name__}") from None
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
