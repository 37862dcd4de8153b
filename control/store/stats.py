"""Aggregate figures over every node's sessions and rooms, read from the shared database."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from control.store.meetings import member_of_meeting
from control.store.schema import chat_messages, meetings, participants, signaling_sessions


@dataclass(frozen=True)
class RoomFigures:
    meeting_id: int
    title: str
    status: str
    participants_online: int
    sessions_open: int
    messages: int


class StatsStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def ongoing_meetings(self) -> int:
        query = select(func.count()).select_from(meetings).where(meetings.c.status == "ongoing")
        async with self._engine.connect() as connection:
            return int((await connection.execute(query)).scalar_one())

    async def rooms(self, viewer_id: int | None) -> list[RoomFigures]:
        """Rooms that are ongoing or hold an open socket; only those the viewer takes part in
        (not removed, not waiting to be admitted) unless None."""
        online = (
            select(func.count())
            .where(participants.c.meeting_id == meetings.c.id, participants.c.status == "online")
            .scalar_subquery()
        )
        open_sessions = (
            select(func.count())
            .where(signaling_sessions.c.meeting_id == meetings.c.id, signaling_sessions.c.disconnected_at.is_(None))
            .scalar_subquery()
        )
        messages = select(func.count()).where(chat_messages.c.meeting_id == meetings.c.id).scalar_subquery()
        query = select(
            meetings.c.id.label("meeting_id"),
            meetings.c.title,
            meetings.c.status,
            online.label("participants_online"),
            open_sessions.label("sessions_open"),
            messages.label("messages"),
        ).where(or_(meetings.c.status == "ongoing", open_sessions > 0))
        if viewer_id is not None:
            query = query.where(member_of_meeting(viewer_id))
        async with self._engine.connect() as connection:
            rows = (await connection.execute(query.order_by(meetings.c.id))).all()
        return [RoomFigures(**row._mapping) for row in rows]
