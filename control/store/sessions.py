"""Signaling sessions: one row per socket, open until it disconnects, kept afterwards as history."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from control.envelope import utc_now
from control.store.meetings import lock_meeting
from control.store.schema import participants, signaling_sessions


@dataclass(frozen=True)
class SessionRecord:
    id: str
    meeting_id: int
    user_id: int
    node_id: str
    client_address: str
    connected_at: datetime
    disconnected_at: datetime | None
    close_reason: str | None
    messages_in: int
    messages_out: int


def _record(row: Any) -> SessionRecord:
    return SessionRecord(**row._mapping)


class SessionStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def open(self, *, session_id: str, meeting_id: int, user_id: int, node_id: str, client_address: str) -> bool:
        """Record a socket as open, unless its user has meanwhile turned offline or been removed
        (their previous socket closing as this one was admitted): checked under the meeting's lock
        that ``went_offline`` takes, so the two never both succeed. True when it was recorded."""
        async with self._engine.begin() as connection:
            if await lock_meeting(connection, meeting_id) is None:
                return False
            present = await connection.scalar(
                select(participants.c.user_id).where(
                    participants.c.meeting_id == meeting_id,
                    participants.c.user_id == user_id,
                    participants.c.status != "offline",
                    participants.c.removed.is_(False),
                )
            )
            if present is None:
                return False
            await connection.execute(
                signaling_sessions.insert().values(
                    id=session_id,
                    meeting_id=meeting_id,
                    user_id=user_id,
                    node_id=node_id,
                    client_address=client_address,
                    connected_at=utc_now(),
                )
            )
        return True

    async def close(self, session_id: str, reason: str, messages_in: int, messages_out: int) -> None:
        async with self._engine.begin() as connection:
            await connection.execute(
                update(signaling_sessions)
                .where(signaling_sessions.c.id == session_id, signaling_sessions.c.disconnected_at.is_(None))
                .values(
                    disconnected_at=utc_now(),
                    close_reason=reason[:200],
                    messages_in=messages_in,
                    messages_out=messages_out,
                )
            )

    async def close_node(self, node_id: str, reason: str) -> list[tuple[int, int]]:
        """Sessions a node left open when it stopped (or crashed and restarted) are closed; the
        (meeting, user) pairs that have no open session left on any node."""
        still_open = signaling_sessions.c.disconnected_at.is_(None)
        async with self._engine.begin() as connection:
            pairs = {
                (row.meeting_id, row.user_id)
                for row in await connection.execute(
                    select(signaling_sessions.c.meeting_id, signaling_sessions.c.user_id).where(
                        signaling_sessions.c.node_id == node_id, still_open
                    )
                )
            }
            await connection.execute(
                update(signaling_sessions)
                .where(signaling_sessions.c.node_id == node_id, still_open)
                .values(disconnected_at=utc_now(), close_reason=reason)
            )
            elsewhere = {
                (row.meeting_id, row.user_id)
                for row in await connection.execute(
                    select(signaling_sessions.c.meeting_id, signaling_sessions.c.user_id).where(still_open)
                )
            }
        return sorted(pairs - elsewhere)

    async def open_nodes(self) -> set[str]:
        """The nodes that hold open sessions."""
        query = select(signaling_sessions.c.node_id).where(signaling_sessions.c.disconnected_at.is_(None)).distinct()
        async with self._engine.connect() as connection:
            return set((await connection.scalars(query)).all())

    async def get(self, session_id: str) -> SessionRecord | None:
        async with self._engine.connect() as connection:
            row = (
                await connection.execute(select(signaling_sessions).where(signaling_sessions.c.id == session_id))
            ).first()
        return _record(row) if row else None

    async def for_meeting(self, meeting_id: int, *, open_only: bool = False) -> list[SessionRecord]:
        query = select(signaling_sessions).where(signaling_sessions.c.meeting_id == meeting_id)
        if open_only:
            query = query.where(signaling_sessions.c.disconnected_at.is_(None))
        async with self._engine.connect() as connection:
            rows = (await connection.execute(query.order_by(signaling_sessions.c.connected_at))).all()
        return [_record(row) for row in rows]

    async def totals(self) -> tuple[int, int]:
        """(open sessions, distinct users online) over every node."""
        query = select(func.count(), func.count(func.distinct(signaling_sessions.c.user_id))).where(
            signaling_sessions.c.disconnected_at.is_(None)
        )
        async with self._engine.connect() as connection:
            sessions, online_users = (await connection.execute(query)).one()
        return int(sessions), int(online_users)
