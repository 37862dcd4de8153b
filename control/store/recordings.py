"""Recordings and their tracks: the only module that reads or writes those two tables."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, exists, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from control.envelope import utc_now
from control.store.media import MeetingGone, insert_files
from control.store.meetings import lock_meeting
from control.store.schema import media_files, meetings, participants, recording_tracks, recordings

# A recording in one of these holds its meeting: no second one starts until it is over.
RUNNING = ("recording", "stopping")


@dataclass(frozen=True)
class RecordingRecord:
    id: int
    meeting_id: int
    started_by: int
    status: str
    error: str | None
    layout: str
    composite: bool
    node_id: str
    directory: str
    started_at: datetime
    stopped_at: datetime | None
    duration: float | None
    size: int
    composite_file_id: str | None
    composite_job_id: str | None
    stop_reason: str | None


@dataclass(frozen=True)
class TrackRecord:
    id: int
    recording_id: int
    node_id: str
    file_name: str
    user_id: int
    peer_id: str
    track_id: str
    kind: str
    codec: str
    media_file_id: str | None
    started_at: datetime | None
    ended_at: datetime | None
    frames: int | None
    dropped_frames: int | None
    width: int | None
    height: int | None
    reason: str
    size: int | None  # of its media file, while that exists
    duration: float | None


assert [column.name for column in recordings.c] == [f.name for f in fields(RecordingRecord)]
_TRACK_COLUMNS = (*recording_tracks.c, media_files.c.size, media_files.c.duration)
assert [column.name for column in _TRACK_COLUMNS] == [f.name for f in fields(TrackRecord)]


class StartRefusal(enum.Enum):
    """Why a recording could not start, decided under the meeting's lock."""

    GONE = "gone"
    NOT_STARTED = "not started"
    OVER = "over"
    DISABLED = "disabled"
    RUNNING = "running"


class StartRefused(Exception):
    def __init__(self, reason: StartRefusal) -> None:
        super().__init__(reason.value)
        self.reason = reason


def _record(row: Any) -> RecordingRecord:
    return RecordingRecord(*row)


def visible_to(user_id: int) -> Any:
    """The user takes part in the recording's meeting (neither removed nor waiting), correlated
    with ``recordings``: the same rule as for seeing the meeting itself."""
    return exists().where(
        participants.c.meeting_id == recordings.c.meeting_id,
        participants.c.user_id == user_id,
        participants.c.removed.is_(False),
        participants.c.status != "waiting",
    )


class RecordingStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def create(
        self, *, meeting_id: int, started_by: int, layout: str, composite: bool, node_id: str, root: str
    ) -> RecordingRecord:
        """A new recording of an ongoing meeting that allows recording and records nothing yet,
        decided under the meeting's lock (raises StartRefused); its directory is ``root/<id>``."""
        async with self._engine.begin() as connection:
            locked = await lock_meeting(connection, meeting_id)
            if locked is None:
                raise StartRefused(StartRefusal.GONE)
            if locked.status == "scheduled":
                raise StartRefused(StartRefusal.NOT_STARTED)
            if locked.status != "ongoing":
                raise StartRefused(StartRefusal.OVER)
            settings = (await connection.execute(select(meetings.c.settings).where(meetings.c.id == meeting_id))).one()
            if not settings.settings.get("enable_recording", False):
                raise StartRefused(StartRefusal.DISABLED)
            running = select(recordings.c.id).where(
                recordings.c.meeting_id == meeting_id, recordings.c.status.in_(RUNNING)
            )
            if (await connection.execute(running)).first() is not None:
                raise StartRefused(StartRefusal.RUNNING)
            recording_id = (
                await connection.execute(
                    recordings.insert()
                    .values(
                        meeting_id=meeting_id,
                        started_by=started_by,
                        status="recording",
                        layout=layout,
                        composite=composite,
                        node_id=node_id,
                        directory="",
                        started_at=utc_now(),
                        size=0,
                    )
                    .returning(recordings.c.id)
                )
            ).scalar_one()
            row = (
                await connection.execute(
                    update(recordings)
                    .where(recordings.c.id == recording_id)
                    .values(directory=f"{root}/{recording_id}")
                    .returning(*recordings.c)
                )
            ).one()
        return _record(row)

    async def get(self, recording_id: int) -> RecordingRecord | None:
        async with self._engine.connect() as connection:
            row = (await connection.execute(select(recordings).where(recordings.c.id == recording_id))).first()
        return _record(row) if row else None

    async def running_in(self, meeting_id: int) -> RecordingRecord | None:
        """The meeting's recording that is recording or stopping, if any."""
        query = select(recordings).where(recordings.c.meeting_id == meeting_id, recordings.c.status.in_(RUNNING))
        async with self._engine.connect() as connection:
            row = (await connection.execute(query)).first()
        return _record(row) if row else None

    async def with_status(self, statuses: Iterable[str], node_id: str | None = None) -> list[RecordingRecord]:
        conditions = [recordings.c.status.in_(list(statuses))]
        if node_id is not None:
            conditions.append(recordings.c.node_id == node_id)
        async with self._engine.connect() as connection:
            rows = (await connection.execute(select(recordings).where(*conditions).order_by(recordings.c.id))).all()
        return [_record(row) for row in rows]

    async def by_job(self, job_id: str) -> RecordingRecord | None:
        async with self._engine.connect() as connection:
            row = (await connection.execute(select(recordings).where(recordings.c.composite_job_id == job_id))).first()
        return _record(row) if row else None

    async def transition(self, recording_id: int, allowed_from: Iterable[str], **values: Any) -> RecordingRecord | None:
        """Change the recording only if its status is still one of ``allowed_from``, so of two
        concurrent stops (or a stop and a crash recovery) one alone goes through."""
        statement = (
            update(recordings)
            .where(recordings.c.id == recording_id, recordings.c.status.in_(list(allowed_from)))
            .values(**values)
            .returning(*recordings.c)
        )
        async with self._engine.begin() as connection:
            row = (await connection.execute(statement)).first()
        return _record(row) if row else None

    async def search(
        self,
        *,
        viewer_id: int | None,
        page: int,
        page_size: int,
        meeting_id: int | None = None,
        status: str | None = None,
    ) -> tuple[list[RecordingRecord], int]:
        """Recordings of the meetings ``viewer_id`` takes part in (every one when None), newest first."""
        conditions = []
        if viewer_id is not None:
            conditions.append(visible_to(viewer_id))
        if meeting_id is not None:
            conditions.append(recordings.c.meeting_id == meeting_id)
        if status is not None:
            conditions.append(recordings.c.status == status)
        where = and_(True, *conditions)
        rows_query = (
            select(recordings)
            .where(where)
            .order_by(recordings.c.started_at.desc(), recordings.c.id.desc())
            .limit(page_size)
            .offset((page - 1) * page_size)
        )
        count_query = select(func.count()).select_from(recordings).where(where)
        async with self._engine.connect() as connection:
            rows = (await connection.execute(rows_query)).all()
            total = int((await connection.execute(count_query)).scalar_one())
        return [_record(row) for row in rows], total

    async def tracks(self, recording_ids: Iterable[int]) -> dict[int, list[TrackRecord]]:
        ids = list(recording_ids)
        found: dict[int, list[TrackRecord]] = {recording_id: [] for recording_id in ids}
        if not ids:
            return found
        query = (
            select(*_TRACK_COLUMNS)
            .select_from(recording_tracks.outerjoin(media_files, media_files.c.id == recording_tracks.c.media_file_id))
            .where(recording_tracks.c.recording_id.in_(ids))
            .order_by(recording_tracks.c.id)
        )
        async with self._engine.connect() as connection:
            for row in (await connection.execute(query)).all():
                found[row.recording_id].append(TrackRecord(*row))
        return found

    async def add_track(self, track: dict[str, Any], file: dict[str, Any] | None) -> bool:
        """Keep a track, with its media file when it has one, all or nothing. False when nothing
        was kept: the recording or its meeting is gone, or this track is kept already."""
        try:
            async with self._engine.begin() as connection:
                if file is not None:
                    await insert_files(connection, [file])
                await connection.execute(
                    recording_tracks.insert().values(media_file_id=file["id"] if file else None, **track)
                )
        except (IntegrityError, MeetingGone):
            return False
        return True

    async def refresh_size(self, recording_id: int) -> None:
        """The recording's size: the bytes of its files (tracks and composite) that still exist."""
        composite = select(recordings.c.composite_file_id).where(recordings.c.id == recording_id)
        tracks = select(recording_tracks.c.media_file_id).where(recording_tracks.c.recording_id == recording_id)
        total = (
            select(func.coalesce(func.sum(media_files.c.size), 0))
            .where(media_files.c.id.in_(tracks) | media_files.c.id.in_(composite))
            .scalar_subquery()
        )
        async with self._engine.begin() as connection:
            await connection.execute(update(recordings).where(recordings.c.id == recording_id).values(size=total))

    async def delete(self, recording_id: int, *, unless: Iterable[str]) -> list[str] | None:
        """Remove the recording, unless its status is one of ``unless`` (None then), with its
        tracks and the media files it made; the storage keys of those files, whose bytes the
        caller removes."""
        tracks = select(recording_tracks.c.media_file_id).where(
            recording_tracks.c.recording_id == recording_id, recording_tracks.c.media_file_id.is_not(None)
        )
        async with self._engine.begin() as connection:
            made = list((await connection.execute(tracks)).scalars())
            removed = (
                await connection.execute(
                    delete(recordings)
                    .where(recordings.c.id == recording_id, recordings.c.status.not_in(list(unless)))
                    .returning(recordings.c.composite_file_id)
                )
            ).first()
            if removed is None:
                return None
            if removed.composite_file_id is not None:
                made.append(removed.composite_file_id)
            stored = select(media_files.c.storage_key).where(media_files.c.id.in_(made))
            keys = list((await connection.execute(stored)).scalars())
            await connection.execute(delete(media_files).where(media_files.c.id.in_(made)))
        return keys
