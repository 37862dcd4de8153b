"""Media files and processing jobs: rows only; the bytes are in storage, the work in workers."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from control.envelope import utc_now
from control.store.schema import jobs, media_files, participants


@dataclass(frozen=True)
class MediaRecord:
    id: str
    user_id: int
    meeting_id: int | None
    file_name: str
    storage_key: str
    file_type: str
    mime_type: str
    size: int
    duration: float | None
    created_at: datetime


@dataclass(frozen=True)
class JobRecord:
    id: str
    user_id: int
    kind: str
    params: dict[str, Any]
    status: str
    progress: int
    error: str | None
    result_file_ids: list[str]
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class MediaStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def add(self, **values: Any) -> MediaRecord:
        async with self._engine.begin() as connection:
            row = (
                await connection.execute(
                    media_files.insert().values(created_at=utc_now(), **values).returning(*media_files.c)
                )
            ).one()
        return MediaRecord(**row._mapping)

    async def get(self, file_id: str) -> MediaRecord | None:
        async with self._engine.connect() as connection:
            row = (await connection.execute(select(media_files).where(media_files.c.id == file_id))).first()
        return MediaRecord(**row._mapping) if row else None

    async def delete(self, file_id: str) -> None:
        async with self._engine.begin() as connection:
            await connection.execute(delete(media_files).where(media_files.c.id == file_id))

    async def search(
        self,
        *,
        page: int,
        page_size: int,
        owner_id: int | None = None,
        meeting_id: int | None = None,
        file_type: str | None = None,
    ) -> tuple[list[MediaRecord], int]:
        conditions = []
        if owner_id is not None:
            conditions.append(media_files.c.user_id == owner_id)
        if meeting_id is not None:
            conditions.append(media_files.c.meeting_id == meeting_id)
        if file_type is not None:
            conditions.append(media_files.c.file_type == file_type)
        rows_query = (
            select(media_files)
            .where(*conditions)
            .order_by(media_files.c.created_at.desc(), media_files.c.id)
            .limit(page_size)
            .offset((page - 1) * page_size)
        )
        count_query = select(func.count()).select_from(media_files).where(*conditions)
        async with self._engine.connect() as connection:
            rows = (await connection.execute(rows_query)).all()
            total = int((await connection.execute(count_query)).scalar_one())
        return [MediaRecord(**row._mapping) for row in rows], total

    async def readable_by(self, record: MediaRecord, user_id: int) -> bool:
        """The owner, or a participant of the file's meeting (not removed, not waiting)."""
        if record.user_id == user_id:
            return True
        if record.meeting_id is None:
            return False
        query = select(participants.c.id).where(
            participants.c.meeting_id == record.meeting_id,
            participants.c.user_id == user_id,
            participants.c.removed.is_(False),
            participants.c.status != "waiting",
        )
        async with self._engine.connect() as connection:
            return (await connection.execute(query)).first() is not None


class JobStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def add(self, *, job_id: str, user_id: int, kind: str, params: dict[str, Any]) -> JobRecord:
        async with self._engine.begin() as connection:
            row = (
                await connection.execute(
                    jobs.insert()
                    .values(
                        id=job_id,
                        user_id=user_id,
                        kind=kind,
                        params=params,
                        status="queued",
                        progress=0,
                        result_file_ids=[],
                        attempts=0,
                        created_at=utc_now(),
                    )
                    .returning(*jobs.c)
                )
            ).one()
        return JobRecord(**row._mapping)

    async def get(self, job_id: str) -> JobRecord | None:
        async with self._engine.connect() as connection:
            row = (await connection.execute(select(jobs).where(jobs.c.id == job_id))).first()
        return JobRecord(**row._mapping) if row else None

    async def update(self, job_id: str, *, only_if: Iterable[str] = (), **values: Any) -> bool:
        statement = update(jobs).where(jobs.c.id == job_id)
        allowed = list(only_if)
        if allowed:
            statement = statement.where(jobs.c.status.in_(allowed))
        async with self._engine.begin() as connection:
            return (await connection.execute(statement.values(**values))).rowcount == 1

    async def unfinished(self) -> list[JobRecord]:
        query = (
            select(jobs).where(or_(jobs.c.status == "queued", jobs.c.status == "running")).order_by(jobs.c.created_at)
        )
        async with self._engine.connect() as connection:
            rows = (await connection.execute(query)).all()
        return [JobRecord(**row._mapping) for row in rows]
