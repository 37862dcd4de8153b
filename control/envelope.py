"""The response envelope shared by every JSON answer, success or error."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from pydantic import BaseModel

REQUEST_ID_KEY = web.RequestKey("request_id", str)
_REQUEST_ID_UNSAFE = re.compile(r"[^A-Za-z0-9._:-]")
_REQUEST_ID_MAX = 64


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso_utc(moment: datetime) -> str:
    """ISO 8601 in UTC with a Z suffix; naive datetimes from SQLite are UTC by construction."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def request_id_from(header: str | None) -> str:
    """Keep a caller's X-Request-ID only as far as it is safe to log and echo."""
    cleaned = _REQUEST_ID_UNSAFE.sub("", header or "")[:_REQUEST_ID_MAX]
    return cleaned or uuid.uuid4().hex


def _jsonable(data: Any) -> Any:
    if isinstance(data, BaseModel):
        return data.model_dump(mode="json")
    if isinstance(data, list):
        return [_jsonable(item) for item in data]
    return data


def envelope(
    request: web.Request,
    data: Any = None,
    *,
    status: int = 200,
    code: int | None = None,
    message: str = "Success",
    headers: dict[str, str] | None = None,
) -> web.Response:
    body = {
        "code": status if code is None else code,
        "message": message,
        "data": _jsonable(data),
        "timestamp": iso_utc(utc_now()),
        "request_id": request.get(REQUEST_ID_KEY) or request_id_from(None),
    }
    return web.Response(
        status=status,
        text=json.dumps(body, ensure_ascii=False, separators=(",", ":")),
        content_type="application/json",
        headers=headers,
    )
