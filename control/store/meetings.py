"""Meetings and their participants: the only module that reads or writes those two tables."""

from __future__ import annotations

import enum
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, delete, exists, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from control.envelope import utc_now
from control.store.schema import meetings, participants, signaling_sessions, users

ACTIVE_STATUSES = ("scheduled", "ongoing")


@dataclass(frozen=True)
class MeetingRecord:
    id: int
    title: str
    description: str
    start_time: datetime
    end_time: datetime | None
    max_participants: int
    meeting_type: str
    status: str
    creator_id: int
    settings: dict[str, bool]
    password_hash: str | None
    invite_code: str
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    ended_at: datetime | None

    @property
    def is_over(self) -> bool:
        return self.status not in ACTIVE_STATUSES


@dataclass(frozen=True)
class ParticipantRecord:
    id: int
    meeting_id: int
    user_id: int
    username: str
    nickname: str
    role: str
    status: str
    removed: bool
    invited: bool
    audio: bool
    video: bool
    screen: bool
    joined_at: datetime | None
    avatar_file: str | None  # the user's, so pages in the meeting show faces, not only names

    @property
    def can_moderate(self) -> bool:
        return self.role in {"host", "moderator"} and not self.removed

    @property
    def is_member(self) -> bool:
        """In the meeting proper: not removed and not held in the waiting room."""
        return not self.removed and self.status != "waiting"

    @property
    def is_host(self) -> bool:
        return self.role == "host" and not self.removed


class JoinRefusal(enum.Enum):
    """Why the store would not put a user online, decided under the meeting's lock."""

    GONE = "gone"
    OVER = "over"
    FULL = "full"
    REMOVED = "removed"


class JoinRefused(Exception):
    def __init__(self, reason: JoinRefusal) -> None:
        super().__init__(reason.value)
        self.reason = reason


def new_invite_code() -> str:
    """128 random bits: a meeting's id is guessable, its invite code is not."""
    return secrets.token_urlsafe(16)


def member_of_meeting(user_id: int) -> Any:
    """The user takes part in the meeting (correlated with ``meetings``): a participant row that is
    neither removed nor waiting. Every list of "the caller's meetings" filters with this one rule."""
    return exists().where(
        participants.c.meeting_id == meetings.c.id,
        participants.c.user_id == user_id,
        participants.c.removed.is_(False),
        participants.c.status != "waiting",
    )


_PARTICIPANT_COLUMNS = (
    participants.c.id,
    participants.c.meeting_id,
    participants.c.user_id,
    users.c.username,
    users.c.nickname,
    participants.c.role,
    participants.c.status,
    participants.c.removed,
    participants.c.invited,
    participants.c.audio,
    participants.c.video,
    participants.c.screen,
    participants.c.joined_at,
    users.c.avatar_file,
)


def _participant_query() -> Select[Any]:
    return select(*_PARTICIPANT_COLUMNS).join(users, users.c.id == participants.c.user_id)


def _meeting(row: Any) -> MeetingRecord:
    return MeetingRecord(**row._mapping)


# Rows of _participant_query() are built by position (a participant list is read per poll of a
# meeting's page): the columns are the record's fields, in order.
assert [column.name for column in _PARTICIPANT_COLUMNS] == [f.name for f in fields(ParticipantRecord)]


def _participant(row: Any) -> ParticipantRecord:
    return ParticipantRecord(*row)


async def lock_meeting(connection: AsyncConnection, meeting_id: int) -> Any:
    """Hold the meeting's lock for the rest of the transaction and read its cap and status fresh.

    A no-op UPDATE is the one statement that serialises on both backends: PostgreSQL locks the
    row, SQLite takes its database-wide write lock at once (``SELECT ... FOR UPDATE`` is a no-op
    there, so two joins could both count a free seat). None when the meeting is gone."""
    return (
        await connection.execute(
            update(meetings)
            .where(meetings.c.id == meeting_id)
            .values(max_participants=meetings.c.max_participants)
            .returning(meetings.c.max_participants, meetings.c.status)
        )
    ).first()


async def _claim_seat(connection: AsyncConnection, meeting_id: int, user_id: int, capacity: int) -> None:
    """Under the meeting's lock: JoinRefused unless one more user (not already online) fits."""
    online = (
        await connection.execute(
            select(func.count())
            .select_from(participants)
            .where(
                participants.c.meeting_id == meeting_id,
                participants.c.status == "online",
                participants.c.user_id != user_id,
            )
        )
    ).scalar_one()
    if online >= capacity:
        raise JoinRefused(JoinRefusal.FULL)


class MeetingStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def create(self, *, creator_id: int, **fields: Any) -> MeetingRecord:
        now = utc_now()
        async with self._engine.begin() as connection:
            row = (
                await connection.execute(
                    meetings.insert()
                    .values(
                        creator_id=creator_id,
                        status="scheduled",
                        invite_code=new_invite_code(),
                        created_at=now,
                        updated_at=now,
                        **fields,
                    )
                    .returning(*meetings.c)
                )
            ).one()
            await connection.execute(
                participants.insert().values(
                    meeting_id=row.id, user_id=creator_id, role="host", status="offline", invited=True, created_at=now
                )
            )
        return _meeting(row)

    async def get(self, meeting_id: int) -> MeetingRecord | None:
        async with self._engine.connect() as connection:
            row = (await connection.execute(select(meetings).where(meetings.c.id == meeting_id))).first()
        return _meeting(row) if row else None

    async def update(self, meeting_id: int, **fields: Any) -> MeetingRecord | None:
        async with self._engine.begin() as connection:
            row = (
                await connection.execute(
                    update(meetings)
                    .where(meetings.c.id == meeting_id)
                    .values(updated_at=utc_now(), **fields)
                    .returning(*meetings.c)
                )
            ).first()
        return _meeting(row) if row else None

    async def transition(self, meeting_id: int, allowed_from: Iterable[str], **fields: Any) -> MeetingRecord | None:
        """Change status only if it is still one of ``allowed_from`` (a concurrent end wins once)."""
        async with self._engine.begin() as connection:
            row = (
                await connection.execute(
                    update(meetings)
                    .where(meetings.c.id == meeting_id, meetings.c.status.in_(list(allowed_from)))
                    .values(updated_at=utc_now(), **fields)
                    .returning(*meetings.c)
                )
            ).first()
            if row is not None and row.status not in ACTIVE_STATUSES:
                await connection.execute(
                    update(participants)
                    .where(participants.c.meeting_id == meeting_id, participants.c.status != "offline")
                    .values(status="offline", left_at=utc_now())
                )
        return _meeting(row) if row else None

    async def delete(self, meeting_id: int) -> None:
        async with self._engine.begin() as connection:
            await connection.execute(delete(meetings).where(meetings.c.id == meeting_id))

    async def search(
        self,
        *,
        viewer_id: int | None,
        page: int,
        page_size: int,
        statuses: Iterable[str] = (),
        start_from: datetime | None = None,
        start_to: datetime | None = None,
        newest_first: bool = False,
        order_by_end: bool = False,
    ) -> tuple[list[MeetingRecord], int]:
        """Meetings ``viewer_id`` takes part in (every meeting when None). Creating a meeting makes
        one its host participant; removed and still-waiting users do not see it."""
        conditions = []
        if viewer_id is not None:
            conditions.append(member_of_meeting(viewer_id))
        statuses = list(statuses)
        if statuses:
            conditions.append(meetings.c.status.in_(statuses))
        if start_from is not None:
            conditions.append(meetings.c.start_time >= start_from)
        if start_to is not None:
            conditions.append(meetings.c.start_time <= start_to)
        where = and_(True, *conditions)
        key = meetings.c.ended_at if order_by_end else meetings.c.start_time
        order = (key.desc(), meetings.c.id.desc()) if newest_first else (key.asc(), meetings.c.id.asc())
        rows_query = select(meetings).where(where).order_by(*order).limit(page_size).offset((page - 1) * page_size)
        count_query = select(func.count()).select_from(meetings).where(where)
        async with self._engine.connect() as connection:
            rows = (await connection.execute(rows_query)).all()
            total = int((await connection.execute(count_query)).scalar_one())
        return [_meeting(row) for row in rows], total

    async def member_of(self, user_id: int, meeting_ids: Iterable[int]) -> set[int]:
        """Which of these meetings the user takes part in (see ``search``)."""
        ids = list(meeting_ids)
        if not ids:
            return set()
        query = select(meetings.c.id).where(meetings.c.id.in_(ids), member_of_meeting(user_id))
        async with self._engine.connect() as connection:
            return {row.id for row in (await connection.execute(query)).all()}


class ParticipantStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def get(self, meeting_id: int, user_id: int) -> ParticipantRecord | None:
        query = _participant_query().where(participants.c.meeting_id == meeting_id, participants.c.user_id == user_id)
        async with self._engine.connect() as connection:
            row = (await connection.execute(query)).first()
        return _participant(row) if row else None

    async def list(self, meeting_id: int) -> list[ParticipantRecord]:
        query = (
            _participant_query()
            .where(participants.c.meeting_id == meeting_id, participants.c.removed.is_(False))
            .order_by(participants.c.id)
        )
        async with self._engine.connect() as connection:
            rows = (await connection.execute(query)).all()
        return [_participant(row) for row in rows]

    async def _locked_row(self, connection: AsyncConnection, meeting_id: int, user_id: int) -> Any:
        """The participant row as it is now; call under the meeting's lock, so that what is decided
        from it (removed, role, admitted) cannot be changed by a removal, hand-over or admission."""
        return (
            await connection.execute(
                select(
                    participants.c.role, participants.c.status, participants.c.removed, participants.c.invited
                ).where(participants.c.meeting_id == meeting_id, participants.c.user_id == user_id)
            )
        ).first()

    async def _write(
        self, connection: AsyncConnection, meeting_id: int, user_id: int, present: bool, **values: Any
    ) -> None:
        """Update the row, or insert it (as a ``participant``) when there is none yet."""
        if present:
            await connection.execute(
                update(participants)
                .where(participants.c.meeting_id == meeting_id, participants.c.user_id == user_id)
                .values(**values)
            )
        else:
            await connection.execute(
                participants.insert().values(
                    meeting_id=meeting_id, user_id=user_id, role="participant", created_at=utc_now(), **values
                )
            )

    async def join(
        self, meeting_id: int, user_id: int, *, waiting_room: bool, media: dict[str, bool]
    ) -> ParticipantRecord:
        """Enter the meeting; raises JoinRefused when it is gone, over, the user was removed, or
        (going online) it is full. Decided under the meeting's lock from the row as it is then: a
        participant keeps their role and an admitted one stays admitted; with ``waiting_room`` a
        participant who was neither invited nor given a role waits to be admitted."""
        async with self._engine.begin() as connection:
            locked = await lock_meeting(connection, meeting_id)
            if locked is None:
                raise JoinRefused(JoinRefusal.GONE)
            if locked.status not in ACTIVE_STATUSES:
                raise JoinRefused(JoinRefusal.OVER)
            row = await self._locked_row(connection, meeting_id, user_id)
            if row is not None and row.removed:
                raise JoinRefused(JoinRefusal.REMOVED)
            invited = row is not None and (row.invited or row.role != "participant")
            if row is not None and row.status in {"online", "waiting"}:
                status = row.status
            else:
                status = "waiting" if waiting_room and not invited else "online"
            values: dict[str, Any] = {"status": status, **media}
            if status == "online":
                await _claim_seat(connection, meeting_id, user_id, locked.max_participants)
                values["joined_at"] = utc_now()
            await self._write(connection, meeting_id, user_id, row is not None, **values)
        participant = await self.get(meeting_id, user_id)
        assert participant is not None
        return participant

    async def add(self, meeting_id: int, user_id: int) -> tuple[ParticipantRecord | None, bool]:
        """Invite, re-admit or admit; the row, and whether it came in from the waiting room. A
        waiting user comes in online (raises JoinRefused when the meeting is full), others are
        invited offline. A current participant keeps the role the row has under the meeting's lock
        (a hand-over landing meanwhile is kept); a new or removed one is a ``participant``."""
        async with self._engine.begin() as connection:
            locked = await lock_meeting(connection, meeting_id)
            if locked is None:
                raise JoinRefused(JoinRefusal.GONE)
            row = await self._locked_row(connection, meeting_id, user_id)
            admitted = row is not None and row.status == "waiting"
            online = row is not None and row.status in {"waiting", "online"}
            values: dict[str, Any] = {"status": "online" if online else "offline", "removed": False, "invited": True}
            if row is not None and row.removed:
                values["role"] = "participant"
            if admitted:
                await _claim_seat(connection, meeting_id, user_id, locked.max_participants)
                values["joined_at"] = utc_now()
            await self._write(connection, meeting_id, user_id, row is not None, **values)
        return await self.get(meeting_id, user_id), admitted

    async def admit(self, meeting_id: int, user_id: int) -> ParticipantRecord | None:
        """A waiting user comes in online, if a seat is free (else JoinRefused)."""
        async with self._engine.begin() as connection:
            locked = await lock_meeting(connection, meeting_id)
            if locked is None:
                raise JoinRefused(JoinRefusal.GONE)
            await _claim_seat(connection, meeting_id, user_id, locked.max_participants)
            await connection.execute(
                update(participants)
                .where(
                    participants.c.meeting_id == meeting_id,
                    participants.c.user_id == user_id,
                    participants.c.status == "waiting",
                )
                .values(status="online", joined_at=utc_now())
            )
        return await self.get(meeting_id, user_id)

    async def update(self, meeting_id: int, user_id: int, **values: Any) -> ParticipantRecord | None:
        async with self._engine.begin() as connection:
            await connection.execute(
                update(participants)
                .where(participants.c.meeting_id == meeting_id, participants.c.user_id == user_id)
                .values(**values)
            )
        return await self.get(meeting_id, user_id)

    async def remove(self, meeting_id: int, user_id: int, *, by_user: int) -> bool:
        """Remove a participant, in one statement under the meeting's lock, only if they are not the
        host, ``by_user`` still moderates, and a moderator is removed by the host alone: a hand-over
        landing meanwhile never leaves a meeting with a removed host. False when nothing changed."""
        caller = participants.alias("caller")

        def caller_is(*roles: str) -> Any:
            return exists().where(
                caller.c.meeting_id == meeting_id,
                caller.c.user_id == by_user,
                caller.c.role.in_(roles),
                caller.c.removed.is_(False),
            )

        async with self._engine.begin() as connection:
            if await lock_meeting(connection, meeting_id) is None:
                return False
            changed = await connection.execute(
                update(participants)
                .where(
                    participants.c.meeting_id == meeting_id,
                    participants.c.user_id == user_id,
                    participants.c.removed.is_(False),
                    participants.c.role != "host",
                    caller_is("host", "moderator"),
                    or_(participants.c.role != "moderator", caller_is("host")),
                )
                .values(removed=True, status="offline")
            )
        return changed.rowcount > 0

    async def went_offline(self, meeting_id: int, user_id: int) -> bool:
        """An online participant turns offline unless a socket of theirs in the meeting is open (on
        any node) at this moment: checked and written in one statement under the meeting's lock, so
        a reconnect is not undone and of sockets closing together one alone sees the change. True
        when this call made them offline."""
        open_socket = exists().where(
            signaling_sessions.c.meeting_id == meeting_id,
            signaling_sessions.c.user_id == user_id,
            signaling_sessions.c.disconnected_at.is_(None),
        )
        async with self._engine.begin() as connection:
            if await lock_meeting(connection, meeting_id) is None:
                return False
            changed = await connection.execute(
                update(participants)
                .where(
                    participants.c.meeting_id == meeting_id,
                    participants.c.user_id == user_id,
                    participants.c.status == "online",
                    ~open_socket,
                )
                .values(status="offline")
            )
        return changed.rowcount > 0

    async def set_role(self, meeting_id: int, user_id: int, role: str) -> bool:
        """Give a participant a non-host role; False when they hold the host role (a meeting keeps
        its host until the host hands the role over), checked in the same statement."""
        async with self._engine.begin() as connection:
            changed = await connection.execute(
                update(participants)
                .where(
                    participants.c.meeting_id == meeting_id,
                    participants.c.user_id == user_id,
                    participants.c.role != "host",
                )
                .values(role=role)
            )
        return changed.rowcount > 0

    async def hand_over_host(self, meeting_id: int, by_user: int, to_user: int) -> bool:
        """Exactly one host, even when hand-overs or removals race: under the meeting's lock
        ``by_user`` must still be the host and ``to_user`` still a participant (False if not); they
        become a moderator and ``to_user`` the host."""
        async with self._engine.begin() as connection:
            if await lock_meeting(connection, meeting_id) is None:
                return False
            current = await self._locked_row(connection, meeting_id, by_user)
            if current is None or current.role != "host" or current.removed:
                return False
            target = await self._locked_row(connection, meeting_id, to_user)
            if target is None or target.removed:
                return False
            await connection.execute(
                update(participants)
                .where(
                    participants.c.meeting_id == meeting_id,
                    participants.c.role == "host",
                    participants.c.user_id != to_user,
                )
                .values(role="moderator")
            )
            await connection.execute(
                update(participants)
                .where(participants.c.meeting_id == meeting_id, participants.c.user_id == to_user)
                .values(role="host")
            )
        return True
