"""Middlewares that make every answer carry a request id and every failure the envelope."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from sqlalchemy.exc import DBAPIError
from yarl import URL

from control.envelope import REQUEST_ID_KEY, envelope, request_id_from
from control.errors import ApiError
from control.logcontext import MEETING_ID, REQUEST_ID

log = logging.getLogger("huiyi.http")

_HTTP_MESSAGES = {
    400: "Bad request",
    404: "Not found",
    405: "Method not allowed",
    413: "Request body too large",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = request_id_from(request.headers.get("X-Request-ID"))
    request[REQUEST_ID_KEY] = request_id
    # Each request runs in a task of its own: what is set here holds for its log records only.
    REQUEST_ID.set(request_id)
    meeting = request.match_info.get("meeting_id") or request.match_info.get("room_id")
    if meeting is not None and meeting.isdigit() and len(meeting) < 19:
        MEETING_ID.set(int(meeting))
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        exc.headers["X-Request-ID"] = request_id
        raise
    response.headers["X-Request-ID"] = request_id
    return response


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await _answer_or_envelope(request, handler)
    except web.HTTPException:
        raise  # redirects and the like: answers, not failures
    except Exception:
        log.exception(
            "unhandled error on %s %s [request_id=%s]", request.method, request.path, request.get(REQUEST_ID_KEY)
        )
        return envelope(request, None, status=500, message="Internal server error")


async def _answer_or_envelope(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Failures the client can act on, in the envelope; anything else propagates (a 500)."""
    try:
        return await handler(request)
    except ApiError as exc:
        return envelope(request, exc.data, status=exc.status, code=exc.code, message=exc.message, headers=exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        message = _HTTP_MESSAGES.get(exc.status, exc.reason)
        return envelope(request, None, status=exc.status, message=message, headers=headers)
    except DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
        # The database went away (a restart, a failover): the pool drops the dead connections,
        # and the client is told to try again rather than that the server failed.
        log.warning("database unreachable on %s %s: %s", request.method, request.path, type(exc.orig).__name__)
        return envelope(
            request, None, status=503, message="The database is unreachable; try again", headers={"Retry-After": "1"}
        )


# Query parameters that grant access: a socket's token, a meeting's invite code (invite links).
SECRET_PARAMETERS = {"token", "access_token", "code", "invite_code"}


def loggable_url(url: URL) -> str:
    """The URL as logged: tokens passed in the query (browsers' sockets do) are masked."""
    if not SECRET_PARAMETERS & set(url.query):
        return str(url)
    masked = [(key, "***" if key in SECRET_PARAMETERS else value) for key, value in url.query.items()]
    return str(url.with_query(masked))


class AccessLogger(AbstractAccessLogger):
    """One line per request with the request id, so an operator can follow a client's report."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            '%s "%s %s" %s %s %.1fms request_id=%s',
            request.remote,
            request.method,
            loggable_url(request.rel_url),
            response.status,
            response.body_length,
            time * 1000,
            response.headers.get("X-Request-ID", "-"),
        )
