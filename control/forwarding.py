"""Requests about a meeting's media (its peers, statistics, a peer's server-side mute, noise
suppression) are answered by the node that runs it (docs/operations.md#rooms-across-nodes): any
other node hands the request on to that node's API as it came (the caller's own token is checked
and counted again there) and returns its answer. A handed-on request is answered where it lands, so
requests never go round between nodes."""

from __future__ import annotations

import logging

import aiohttp
from aiohttp import web

from control.context import MEDIA, SETTINGS
from control.errors import ApiError

log = logging.getLogger("huiyi.forwarding")

FORWARDED_HEADER = "X-Huiyi-Forwarded-By"  # the node that handed the request on
FORWARD_TIMEOUT_SECONDS = 10.0
PASSED_HEADERS = ("Authorization", "Content-Type", "X-Request-ID", "Accept")


async def on_meeting_node(request: web.Request, meeting_id: int) -> web.StreamResponse | None:
    """The answer of the node that runs the meeting's media, or None to answer here (this node runs
    it, the meeting runs nowhere yet, or the request was handed on already)."""
    if FORWARDED_HEADER in request.headers:
        return None
    url = await request.app[MEDIA].meeting_node_url(meeting_id)
    if url is None:
        return None
    headers = {name: request.headers[name] for name in PASSED_HEADERS if name in request.headers}
    headers[FORWARDED_HEADER] = request.app[SETTINGS].node_id
    body = await request.read() if request.body_exists else None  # cached when already parsed
    timeout = aiohttp.ClientTimeout(total=FORWARD_TIMEOUT_SECONDS)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as http,
            http.request(request.method, url + request.path_qs, data=body, headers=headers) as answer,
        ):
            return web.Response(status=answer.status, body=await answer.read(), content_type="application/json")
    except (aiohttp.ClientError, TimeoutError) as exc:
        log.warning("could not reach %s, which runs meeting %s: %r", url, meeting_id, exc)
        raise ApiError(503, "The node running this meeting's media does not answer; try again shortly") from None
