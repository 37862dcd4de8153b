"""What a log record is about: the request, meeting, user and media peer of the code that wrote it.

Set where they become known (the request middleware, the guard, the signaling socket) in context
variables, which asyncio copies into every task started from there, so a record written by the SFU
for a peer, or by a job a request queued, carries them without being handed them."""

from __future__ import annotations

import logging
from contextvars import ContextVar
from typing import Any

REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)
MEETING_ID: ContextVar[int | None] = ContextVar("meeting_id", default=None)
USER_ID: ContextVar[int | None] = ContextVar("user_id", default=None)
PEER_ID: ContextVar[str | None] = ContextVar("peer_id", default=None)

_FIELDS: tuple[tuple[str, ContextVar[Any]], ...] = (
    ("request_id", REQUEST_ID),
    ("meeting_id", MEETING_ID),
    ("user_id", USER_ID),
    ("peer_id", PEER_ID),
)


class ContextFilter(logging.Filter):
    """Puts the context onto each record (a value given with ``extra=`` wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, variable in _FIELDS:
            if getattr(record, name, None) is None:
                value = variable.get()
                if value is not None:
                    setattr(record, name, value)
        return True
