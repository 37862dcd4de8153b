"""Service endpoints: liveness and readiness for operators and load balancers, the OpenAPI document."""

from __future__ import annotations

import functools
from importlib.metadata import PackageNotFoundError, version

from aiohttp import web
from pydantic import BaseModel

from control.context import OPENAPI, STORE
from control.endpoints import Access, EndpointGroup
from control.errors import ApiError
from control.readiness import DATABASE_PROBE, Readiness, readiness

group = EndpointGroup("/api/v1", "meta")


@functools.cache
def huiyi_version() -> str:
    """Read once: the installed package's metadata does not change while the process runs."""
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
    problem = await request.app[DATABASE_PROBE].check()
    if problem:
        raise ApiError(503, f"Database unreachable: {problem}")
    return Health(status="ok", version=huiyi_version(), database=request.app[STORE].engine.dialect.name)


@group.route(
    "GET",
    "/health/ready",
    name="ready",
    summary=(
        "Readiness: whether this node should get work (database, Redis when configured, media server, "
        "its AI worker node when it runs one, free disk); 503 naming the checks that failed"
    ),
    access=Access.PUBLIC,
    limit="600/minute",
    response=Readiness,
    errors=(503,),
)
async def ready(request: web.Request) -> Readiness:
    report = await readiness(request.app)
    if report.status != "ready":
        failed = [name for name, check in report.checks.items() if check.status == "failed"]
        raise ApiError(503, f"Not ready: {', '.join(failed)}", data=report.model_dump())
    return report


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
