"""Persistence: one schema and one query layer over SQLite (default) or PostgreSQL."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from control.store.captions import CaptionStore
from control.store.chat import ChatStore
from control.store.engine import migrate, open_engine
from control.store.media import JobStore, MediaStore
from control.store.meetings import MeetingStore, ParticipantStore
from control.store.recordings import RecordingStore
from control.store.sessions import SessionStore
from control.store.stats import StatsStore
from control.store.streams import StreamStore
from control.store.tokens import TokenStore
from control.store.users import UserStore
from control.store.webhooks import WebhookStore


class Store:
    """The repositories over one engine; opened (and migrated) once per process."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.users = UserStore(engine)
        self.tokens = TokenStore(engine)
        self.meetings = MeetingStore(engine)
        self.participants = ParticipantStore(engine)
        self.chat = ChatStore(engine)
        self.sessions = SessionStore(engine)
        self.stats = StatsStore(engine)
        self.media = MediaStore(engine)
        self.jobs = JobStore(engine)
        self.recordings = RecordingStore(engine)
        self.webhooks = WebhookStore(engine)
        self.streams = StreamStore(engine)
        self.captions = CaptionStore(engine)

    @classmethod
    async def open(cls, url: str, schema: str = "", pool_size: int = 20) -> Store:
        engine = open_engine(url, schema, pool_size)
        try:
            await migrate(engine, schema)
        except BaseException:
            await engine.dispose()
            raise
        return cls(engine)

    async def close(self) -> None:
        await self.engine.dispose()
