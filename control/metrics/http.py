"""Counting HTTP requests by the route they matched, never by the raw path (whose ids would make a
series per meeting), with their latency."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from control.context import METRICS

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"  # a path no route serves (404, or refused before routing)
SOCKET_ROUTES = frozenset({"/ws/signaling"})  # open for a whole meeting: counted, not timed


def route_of(request: web.Request) -> str:
    """The template of the route the request matched, e.g. ``/api/v1/meetings/{meeting_id}``."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else UNMATCHED


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        metrics = request.app[METRICS]
        method = request.method if request.method in METHODS else "OTHER"
        route = route_of(request)
        metrics.http_requests.labels(method, route, str(status)).inc()
        if route not in SOCKET_ROUTES:
            metrics.http_duration.labels(method, route).observe(time.perf_counter() - started)
