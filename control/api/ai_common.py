"""What the speech, models and nodes areas share: the AI service of the app and its errors in the
envelope (4001 when no model or node can do the work, with what to install)."""

from __future__ import annotations

from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import TypeVar

from aiohttp import web

from ai.registry import Unavailable
from ai.service import AiService, NotFound
from control.context import AI
from control.envelope import iso_utc
from control.errors import ApiError, BusinessCode, not_found

T = TypeVar("T")


def iso_time(stamp: float | None) -> str | None:
    """A node's epoch seconds as the API writes times."""
    return iso_utc(datetime.fromtimestamp(stamp, UTC)) if stamp else None


def ai_unavailable(message: str) -> ApiError:
    return ApiError(503, message, code=BusinessCode.AI_UNAVAILABLE)


def service(request: web.Request) -> AiService:
    return request.app[AI]


async def answer(work: Awaitable[T]) -> T:
    """The service's result, its refusals as envelope errors."""
    try:
        return await work
    except Unavailable as exc:
        raise ai_unavailable(str(exc)) from None
    except NotFound as exc:
        raise not_found(str(exc)[:1].upper() + str(exc)[1:]) from None
