"""The response envelope shared by every JSON answer, success or error."""

from __future__ import annotations

import json
import os
import re
import time
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
    """ISO 8601 in UTC with a Z suffix; naive datetimes from SQLite are UTC by construction.
    Written out directly: every time in every listed row goes through here."""
    if moment.tzinfo is not None and moment.utcoffset():
        moment = moment.astimezone(UTC)
    return (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T"
        f"{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}Z"
    )


def request_id_from(header: str | None) -> str:
    """Keep a caller's X-Request-ID only as far as it is safe to log and echo."""
    if header:
        cleaned = _REQUEST_ID_UNSAFE.sub("", header)[:_REQUEST_ID_MAX]
        if cleaned:
            return cleaned
    return os.urandom(16).hex()


_stamp: tuple[int, str] = (0, "")


def timestamp_now() -> str:
    """The envelope's timestamp: whole seconds, so formatted once a second, not per answer."""
    global _stamp
    second = int(time.time())
    if _stamp[0] != second:
        _stamp = (second, iso_utc(datetime.fromtimestamp(second, UTC)))
    return _stamp[1]


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
        "timestamp": timestamp_now(),
        "request_id": request.get(REQUEST_ID_KEY) or request_id_from(None),
    }
    try:
        encoded = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    except UnicodeEncodeError:
        # Text that is not valid Unicode (half a surrogate pair, e.g. from a file's name) cannot be
        # sent as UTF-8; as \u escapes it is still valid JSON.
        encoded = json.dumps(body, separators=(",", ":")).encode()
    return web.Response(status=status, body=encoded, content_type="application/json", charset="utf-8", headers=headers)
