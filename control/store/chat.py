"""Chat messages of a meeting, written by REST and by the signaling socket alike."""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from control.envelope import utc_now
from control.store.schema import chat_messages, users


@dataclass(frozen=True)
class ChatRecord:
    id: int
    meeting_id: int
    user_id: int
    username: str
    text: str
    source: str
    created_at: datetime


_COLUMNS = (
    chat_messages.c.id,
    chat_messages.c.meeting_id,
    chat_messages.c.user_id,
    users.c.username,
    chat_messages.c.text,
    chat_messages.c.source,
    chat_messages.c.created_at,
)


# Rows of _COLUMNS are built by position (chat history is read per poll): the columns are the
# record's fields, in order.
assert [column.name for column in _COLUMNS] == [f.name for f in fields(ChatRecord)]


def _record(row: Any) -> ChatRecord:
    return ChatRecord(*row)


class ChatStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def add(self, *, meeting_id: int, user_id: int, text: str, source: str) -> ChatRecord:
        async with self._engine.begin() as connection:
            new_id = (
                await connection.execute(
                    chat_messages.insert()
                    .values(meeting_id=meeting_id, user_id=user_id, text=text, source=source, created_at=utc_now())
                    .returning(chat_messages.c.id)
                )
            ).scalar_one()
            row = (
                await connection.execute(
                    select(*_COLUMNS)
                    .join(users, users.c.id == chat_messages.c.user_id)
                    .where(chat_messages.c.id == new_id)
                )
            ).one()
        return _record(row)

    async def page(
        self,
        meeting_id: int,
        *,
        limit: int,
        before: int | None = None,
        after: int | None = None,
        source: str | None = None,
    ) -> list[ChatRecord]:
        """Newest first; ``before``/``after`` are message ids bounding the page."""
        query = (
            select(*_COLUMNS)
            .join(users, users.c.id == chat_messages.c.user_id)
            .where(chat_messages.c.meeting_id == meeting_id)
        )
        if before is not None:
            query = query.where(chat_messages.c.id < before)
        if after is not None:
            query = query.where(chat_messages.c.id > after)
        if source is not None:
            query = query.where(chat_messages.c.source == source)
        query = query.order_by(chat_messages.c.id.desc()).limit(limit)
        async with self._engine.connect() as connection:
            rows = (await connection.execute(query)).all()
        return [_record(row) for row in rows]

    async def count(self, meeting_id: int | None = None, since: timedelta | None = None) -> int:
        query = select(func.count()).select_from(chat_messages)
        if meeting_id is not None:
            query = query.where(chat_messages.c.meeting_id == meeting_id)
        if since is not None:
            query = query.where(chat_messages.c.created_at >= utc_now() - since)
        async with self._engine.connect() as connection:
            return int((await connection.execute(query)).scalar_one())
