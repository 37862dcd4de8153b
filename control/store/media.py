"""Media files and processing jobs: rows only; the bytes are in storage, the work in workers."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from control.envelope import utc_now
from control.store.schema import jobs, media_files, meetings, participants

UNFINISHED = ("queued", "running")


class MeetingGone(Exception):
    """The meeting a file was meant for was deleted meanwhile; the file must not be kept for it."""


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
    result: dict[str, Any] | None
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    node_id: str | None
    lease_expires_at: datetime | None


async def insert_files(connection: AsyncConnection, files: list[dict[str, Any]]) -> list[MediaRecord]:
    """Insert ``files`` within the caller's transaction, after checking their meetings still exist
    (ids are never reused, so an id that still exists is the same meeting); one that was deleted
    raises MeetingGone before anything is written, and the caller's rollback undoes the rest.

    On PostgreSQL the meeting rows stay locked against deletion until the transaction ends; on
    SQLite a deletion waits for the write lock, held from the transaction's first write (a caller
    that has not written yet is covered by ``_refused``)."""
    for meeting_id in {values["meeting_id"] for values in files if values.get("meeting_id") is not None}:
        found = select(meetings.c.id).where(meetings.c.id == meeting_id).with_for_update(key_share=True)
        if (await connection.execute(found)).first() is None:
            raise MeetingGone(meeting_id)
    records = []
    for values in files:
        row = (
            await connection.execute(
                media_files.insert().values(created_at=utc_now(), **values).returning(*media_files.c)
            )
        ).one()
        records.append(MediaRecord(**row._mapping))
    return records


async def _refused(engine: AsyncEngine, files: list[dict[str, Any]], error: IntegrityError) -> Exception:
    """What a rolled-back insert refused by the database means: MeetingGone when a meeting was
    deleted between the check and the insert, else the error itself."""
    async with engine.connect() as connection:
        for meeting_id in {values["meeting_id"] for values in files if values.get("meeting_id") is not None}:
            found = await connection.execute(select(meetings.c.id).where(meetings.c.id == meeting_id))
            if found.first() is None:
                return MeetingGone(meeting_id)
    return error


class MediaStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def add(self, **values: Any) -> MediaRecord:
        """Raises MeetingGone when ``meeting_id`` names a meeting that no longer exists."""
        try:
            async with self._engine.begin() as connection:
                (record,) = await insert_files(connection, [values])
        except IntegrityError as exc:
            raise await _refused(self._engine, [values], exc) from None
        return record

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
    """Jobs, each owned by one node while unfinished: every write of a running job's state is
    conditional on the writer still owning it, so a node that lost a job cannot overwrite the
    state the new owner writes."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def counts(self) -> list[tuple[str, str, int]]:
        """How many jobs there are of each kind in each state: (kind, state, count)."""
        async with self._engine.connect() as connection:
            rows = await connection.execute(
                select(jobs.c.kind, jobs.c.status, func.count()).group_by(jobs.c.kind, jobs.c.status)
            )
            return [(kind, status, int(count)) for kind, status, count in rows]

    async def add(
        self, *, job_id: str, user_id: int, kind: str, params: dict[str, Any], node_id: str, lease_until: datetime
    ) -> JobRecord:
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
                        node_id=node_id,
                        lease_expires_at=lease_until,
                    )
                    .returning(*jobs.c)
                )
            ).one()
        return JobRecord(**row._mapping)

    async def get(self, job_id: str) -> JobRecord | None:
        async with self._engine.connect() as connection:
            row = (await connection.execute(select(jobs).where(jobs.c.id == job_id))).first()
        return JobRecord(**row._mapping) if row else None

    async def update(
        self,
        job_id: str,
        *,
        node_id: str,
        only_if: Iterable[str] = UNFINISHED,
        attempt: int | None = None,
        **values: Any,
    ) -> bool:
        """Change a job this node owns and that is still in one of ``only_if`` (and, given
        ``attempt``, still in that attempt: a late report of an earlier one changes nothing)."""
        conditions = [jobs.c.id == job_id, jobs.c.node_id == node_id, jobs.c.status.in_(list(only_if))]
        if attempt is not None:
            conditions.append(jobs.c.attempts == attempt)
        async with self._engine.begin() as connection:
            return (await connection.execute(update(jobs).where(*conditions).values(**values))).rowcount == 1

    async def begin_attempt(self, job_id: str, node_id: str) -> int | None:
        """Count one more attempt of a queued job this node owns, before a worker gets it (so a
        worker that dies at once still used it up); its number, None when the job is not ours."""
        statement = (
            update(jobs)
            .where(jobs.c.id == job_id, jobs.c.node_id == node_id, jobs.c.status == "queued")
            .values(attempts=jobs.c.attempts + 1)
            .returning(jobs.c.attempts)
        )
        async with self._engine.begin() as connection:
            row = (await connection.execute(statement)).first()
        return None if row is None else int(row.attempts)

    async def mark_started(self, job_id: str, node_id: str, attempt: int) -> bool:
        """A worker picked attempt ``attempt`` of the job up."""
        return await self.update(
            job_id, node_id=node_id, only_if=["queued"], attempt=attempt, status="running", started_at=utc_now()
        )

    async def renew(self, job_ids: Iterable[str], node_id: str, lease_until: datetime) -> None:
        ids = list(job_ids)
        if not ids:
            return
        statement = (
            update(jobs)
            .where(jobs.c.id.in_(ids), jobs.c.node_id == node_id, jobs.c.status.in_(UNFINISHED))
            .values(lease_expires_at=lease_until)
        )
        async with self._engine.begin() as connection:
            await connection.execute(statement)

    async def claimable(self, node_id: str) -> list[JobRecord]:
        """Unfinished jobs this node may run: its own (left by its previous run), and those whose
        owner let the lease lapse or that never had one."""
        query = (
            select(jobs)
            .where(
                jobs.c.status.in_(UNFINISHED),
                or_(
                    jobs.c.node_id == node_id,
                    jobs.c.node_id.is_(None),
                    jobs.c.lease_expires_at.is_(None),
                    jobs.c.lease_expires_at < utc_now(),
                ),
            )
            .order_by(jobs.c.created_at)
        )
        async with self._engine.connect() as connection:
            rows = (await connection.execute(query)).all()
        return [JobRecord(**row._mapping) for row in rows]

    async def claim(self, job: JobRecord, node_id: str, lease_until: datetime) -> bool:
        """Take ``job`` over, unless its owner renewed it or another node took it since it was read."""
        owner = jobs.c.node_id.is_(None) if job.node_id is None else jobs.c.node_id == job.node_id
        statement = (
            update(jobs)
            .where(
                jobs.c.id == job.id,
                jobs.c.status == job.status,
                jobs.c.attempts == job.attempts,
                owner,
                or_(
                    jobs.c.node_id == node_id,
                    jobs.c.node_id.is_(None),
                    jobs.c.lease_expires_at.is_(None),
                    jobs.c.lease_expires_at < utc_now(),
                ),
            )
            .values(node_id=node_id, lease_expires_at=lease_until)
        )
        async with self._engine.begin() as connection:
            return (await connection.execute(statement)).rowcount == 1

    async def succeed(
        self, job_id: str, node_id: str, files: list[dict[str, Any]], result: dict[str, Any] | None = None
    ) -> list[str] | None:
        """Keep the outputs as media files and mark the job done, all or nothing; None when this
        node no longer owns the job. Raises MeetingGone when the job's meeting was deleted.

        The job is marked first: on SQLite that write takes the database's write lock, so that
        nothing changes the job or the meetings between these checks and the file rows."""
        file_ids = [values["id"] for values in files]
        try:
            async with self._engine.begin() as connection:
                done = await connection.execute(
                    update(jobs)
                    .where(jobs.c.id == job_id, jobs.c.node_id == node_id, jobs.c.status.in_(UNFINISHED))
                    .values(
                        status="succeeded", progress=100, result_file_ids=file_ids, result=result, finished_at=utc_now()
                    )
                )
                if done.rowcount != 1:
                    raise _Lost
                await insert_files(connection, files)
        except _Lost:
            return None
        except IntegrityError as exc:
            raise await _refused(self._engine, files, exc) from None
        return file_ids


class _Lost(Exception):
    """Rolls back a completion for a job this node no longer owns."""
