"""Live captions: each meeting's switch and its transcript, the only module that reads or writes
those two tables."""

from __future__ import annotations

import enum
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from control.envelope import utc_now
from control.store.meetings import ACTIVE_STATUSES, lock_meeting
from control.store.schema import meeting_captions, transcript_lines, users


@dataclass(frozen=True)
class CaptionState:
    meeting_id: int
    enabled: bool
    language: str
    model_id: str
    changed_by: int
    changed_at: datetime


@dataclass(frozen=True)
class TranscriptLine:
    id: int
    meeting_id: int
    user_id: int
    text: str
    language: str
    model_id: str
    started_at: datetime
    ended_at: datetime
    created_at: datetime
    username: str
    nickname: str


assert [column.name for column in meeting_captions.c] == [f.name for f in fields(CaptionState)]
_LINE_COLUMNS = (*transcript_lines.c, users.c.username, users.c.nickname)
assert [column.name for column in _LINE_COLUMNS] == [f.name for f in fields(TranscriptLine)]


class SwitchRefusal(enum.Enum):
    GONE = "gone"
    OVER = "over"


class SwitchRefused(Exception):
    def __init__(self, reason: SwitchRefusal) -> None:
        super().__init__(reason.value)
        self.reason = reason


class CaptionStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def state(self, meeting_id: int) -> CaptionState | None:
        async with self._engine.connect() as connection:
            row = (
                await connection.execute(select(meeting_captions).where(meeting_captions.c.meeting_id == meeting_id))
            ).first()
        return CaptionState(*row) if row is not None else None

    async def switch(
        self, meeting_id: int, *, enabled: bool, language: str, model_id: str, changed_by: int
    ) -> CaptionState:
        """Captions on or off, under the meeting's lock: switching on needs a meeting that is not
        over (so it cannot slip in after the meeting ended and switched them off)."""
        values: dict[str, Any] = {
            "enabled": enabled,
            "language": language,
            "model_id": model_id,
            "changed_by": changed_by,
            "changed_at": utc_now(),
        }
        async with self._engine.begin() as connection:
            locked = await lock_meeting(connection, meeting_id)
            if locked is None:
                raise SwitchRefused(SwitchRefusal.GONE)
            if enabled and locked.status not in ACTIVE_STATUSES:
                raise SwitchRefused(SwitchRefusal.OVER)
            changed = await connection.execute(
                update(meeting_captions).where(meeting_captions.c.meeting_id == meeting_id).values(**values)
            )
            if changed.rowcount == 0:
                await connection.execute(meeting_captions.insert().values(meeting_id=meeting_id, **values))
        return CaptionState(meeting_id=meeting_id, **values)

    async def switch_off(self, meeting_id: int) -> CaptionState | None:
        """Captions off as the meeting ends, keeping the rest; None when they were not on."""
        async with self._engine.begin() as connection:
            row = (
                await connection.execute(
                    update(meeting_captions)
                    .where(meeting_captions.c.meeting_id == meeting_id, meeting_captions.c.enabled)
                    .values(enabled=False, changed_at=utc_now())
                    .returning(*meeting_captions.c)
                )
            ).first()
        return CaptionState(*row) if row is not None else None

    async def enabled(self) -> list[CaptionState]:
        """The meetings captioned now, everywhere."""
        async with self._engine.connect() as connection:
            rows = (await connection.execute(select(meeting_captions).where(meeting_captions.c.enabled))).all()
        return [CaptionState(*row) for row in rows]

    async def add_line(
        self,
        *,
        meeting_id: int,
        user_id: int,
        text: str,
        language: str,
        model_id: str,
        started_at: datetime,
        ended_at: datetime,
    ) -> TranscriptLine:
        async with self._engine.begin() as connection:
            new_id = (
                await connection.execute(
                    transcript_lines.insert()
                    .values(
                        meeting_id=meeting_id,
                        user_id=user_id,
                        text=text,
                        language=language,
                        model_id=model_id,
                        started_at=started_at,
                        ended_at=ended_at,
                        created_at=utc_now(),
                    )
                    .returning(transcript_lines.c.id)
                )
            ).scalar_one()
            row = (
                await connection.execute(
                    select(*_LINE_COLUMNS)
                    .join(users, users.c.id == transcript_lines.c.user_id)
                    .where(transcript_lines.c.id == new_id)
                )
            ).one()
        return TranscriptLine(*row)

    async def lines(
        self, meeting_id: int, *, after: int | None = None, limit: int | None = None
    ) -> list[TranscriptLine]:
        """The meeting's transcript in the order it was recognised, from after line ``after``."""
        query = (
            select(*_LINE_COLUMNS)
            .join(users, users.c.id == transcript_lines.c.user_id)
            .where(transcript_lines.c.meeting_id == meeting_id)
        )
        if after is not None:
            query = query.where(transcript_lines.c.id > after)
        query = query.order_by(transcript_lines.c.id)
        if limit is not None:
            query = query.limit(limit)
        async with self._engine.connect() as connection:
            rows = (await connection.execute(query)).all()
        return [TranscriptLine(*row) for row in rows]
