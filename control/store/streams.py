"""Live streams and the push destinations they hold: the only module that reads or writes those tables."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from control.envelope import utc_now
from control.store.meetings import lock_meeting
from control.store.schema import stream_targets, streams

# A stream in one of these is running: its compositor pushes, its destinations are held.
RUNNING = ("starting", "live", "reconnecting")


@dataclass(frozen=True)
class StreamRecord:
    id: int
    meeting_id: int
    started_by: int
    status: str
    error: str | None
    layout: str
    width: int
    height: int
    fps: int
    video_bitrate: int
    audio_bitrate: int
    outputs: list[dict[str, Any]]
    public_token: str | None
    node_id: str
    started_at: datetime
    stopped_at: datetime | None
    stop_reason: str | None
    stats: dict[str, Any]

    @property
    def running(self) -> bool:
        return self.status in RUNNING


assert [column.name for column in streams.c] == [f.name for f in fields(StreamRecord)]


class StartRefusal(enum.Enum):
    """Why a stream could not start, decided under the meeting's lock."""

    GONE = "gone"
    NOT_STARTED = "not started"
    OVER = "over"
    TARGET_BUSY = "target busy"


class StartRefused(Exception):
    def __init__(self, reason: StartRefusal) -> None:
        super().__init__(reason.value)
        self.reason = reason


def _record(row: Any) -> StreamRecord:
    return StreamRecord(*row)


class StreamStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def create(self, *, targets: list[str], **values: Any) -> StreamRecord:
        """A new ``starting`` stream of an ongoing meeting holding the push destinations whose
        digests are ``targets``, decided under the meeting's lock (raises StartRefused)."""
        try:
            async with self._engine.begin() as connection:
                locked = await lock_meeting(connection, values["meeting_id"])
                if locked is None:
                    raise StartRefused(StartRefusal.GONE)
                if locked.status == "scheduled":
                    raise StartRefused(StartRefusal.NOT_STARTED)
                if locked.status != "ongoing":
                    raise StartRefused(StartRefusal.OVER)
                row = (
                    await connection.execute(
                        streams.insert()
                        .values(status="starting", started_at=utc_now(), stats={}, **values)
                        .returning(*streams.c)
                    )
                ).one()
                if targets:
                    await connection.execute(
                        stream_targets.insert(), [{"digest": digest, "stream_id": row.id} for digest in targets]
                    )
        except IntegrityError:
            raise StartRefused(StartRefusal.TARGET_BUSY) from None
        return _record(row)

    async def get(self, stream_id: int) -> StreamRecord | None:
        async with self._engine.connect() as connection:
            row = (await connection.execute(select(streams).where(streams.c.id == stream_id))).first()
        return _record(row) if row else None

    async def by_public_token(self, token: str) -> StreamRecord | None:
        async with self._engine.connect() as connection:
            row = (await connection.execute(select(streams).where(streams.c.public_token == token))).first()
        return _record(row) if row else None

    async def running(self, *, meeting_id: int | None = None, node_id: str | None = None) -> list[StreamRecord]:
        conditions = [streams.c.status.in_(RUNNING)]
        if meeting_id is not None:
            conditions.append(streams.c.meeting_id == meeting_id)
        if node_id is not None:
            conditions.append(streams.c.node_id == node_id)
        async with self._engine.connect() as connection:
            rows = (await connection.execute(select(streams).where(*conditions).order_by(streams.c.id))).all()
        return [_record(row) for row in rows]

    async def update(self, stream_id: int, allowed_from: Iterable[str], **values: Any) -> StreamRecord | None:
        """Change the stream only if its status is still one of ``allowed_from``; a stream that
        ends lets go of its push destinations in the same transaction."""
        statement = (
            update(streams)
            .where(streams.c.id == stream_id, streams.c.status.in_(list(allowed_from)))
            .values(**values)
            .returning(*streams.c)
        )
        async with self._engine.begin() as connection:
            row = (await connection.execute(statement)).first()
            if row is not None and row.status not in RUNNING:
                await connection.execute(delete(stream_targets).where(stream_targets.c.stream_id == stream_id))
        return _record(row) if row else None
