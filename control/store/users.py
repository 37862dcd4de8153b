"""User accounts: the only module that reads or writes the users table."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from control.envelope import utc_now
from control.store.schema import users

DELETED_PASSWORD = "!"


class DuplicateUsername(Exception):
    """The username is held by another account (case-insensitively)."""


class DuplicateEmail(Exception):
    """The email address is held by another account (case-insensitively)."""


@dataclass(frozen=True)
class UserRecord:
    id: int
    username: str
    email: str | None
    nickname: str
    avatar_file: str | None
    password_hash: str
    role: str
    status: str
    token_version: int
    created_at: datetime
    updated_at: datetime

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


AccountListener = Callable[[UserRecord], Awaitable[None]]


def _record(row: Any) -> UserRecord:
    return UserRecord(**row._mapping)


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class UserStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        # Told of every account after a write to it commits, before the write's caller goes on:
        # caches of accounts (on every node) and the sockets of revoked users hang off this.
        self.listeners: list[AccountListener] = []

    async def _check_unique(
        self, connection: AsyncConnection, username: str | None, email: str | None, exclude_id: int | None
    ) -> None:
        for column, value, error in (
            (users.c.username, username, DuplicateUsername),
            (users.c.email, email, DuplicateEmail),
        ):
            if value is None:
                continue
            query = select(users.c.id).where(func.lower(column) == value.lower())
            if exclude_id is not None:
                query = query.where(users.c.id != exclude_id)
            if (await connection.execute(query.limit(1))).first() is not None:
                raise error(value)

    async def _write_unique(
        self, statement: Any, username: str | None, email: str | None, exclude_id: int | None
    ) -> Any:
        """Run an insert/update that must keep usernames and emails unique, naming the clash."""
        try:
            async with self._engine.begin() as connection:
                await self._check_unique(connection, username, email, exclude_id)
                return (await connection.execute(statement)).first()
        except IntegrityError:
            # A concurrent write won the race between the check and this statement.
            async with self._engine.connect() as connection:
                await self._check_unique(connection, username, email, exclude_id)
            raise

    async def create(
        self, *, username: str, email: str, password_hash: str, nickname: str, role: str = "user"
    ) -> UserRecord:
        now = utc_now()
        values = {
            "username": username,
            "email": email,
            "nickname": nickname,
            "password_hash": password_hash,
            "role": role,
            "status": "active",
            "token_version": 0,
            "created_at": now,
            "updated_at": now,
        }
        statement = users.insert().values(**values).returning(*users.c)
        row = await self._write_unique(statement, username, email, None)
        assert row is not None
        return _record(row)

    async def get(self, user_id: int) -> UserRecord | None:
        async with self._engine.connect() as connection:
            row = (await connection.execute(select(users).where(users.c.id == user_id))).first()
        return _record(row) if row else None

    async def find_for_login(self, identifier: str) -> UserRecord | None:
        """By email when the identifier holds an @, else by username; both case-insensitive."""
        column = users.c.email if "@" in identifier else users.c.username
        query = select(users).where(func.lower(column) == identifier.lower())
        async with self._engine.connect() as connection:
            row = (await connection.execute(query)).first()
        return _record(row) if row else None

    async def update(self, user_id: int, *, revoke_tokens: bool = False, **fields: Any) -> UserRecord | None:
        """Update fields; ``revoke_tokens`` bumps the token version so every issued token dies.
        A deleted account is final: a write racing its deletion (a new avatar, a new email)
        changes nothing and answers None, so no personal data comes back to a scrubbed row."""
        values: dict[str, Any] = {**fields, "updated_at": utc_now()}
        if revoke_tokens:
            values["token_version"] = users.c.token_version + 1
        statement = (
            update(users).where(users.c.id == user_id, users.c.status != "deleted").values(**values).returning(*users.c)
        )
        row = await self._write_unique(statement, fields.get("username"), fields.get("email"), user_id)
        if row is None:
            return None
        record = _record(row)
        for listener in self.listeners:
            await listener(record)
        return record

    async def scrub(self, user_id: int) -> UserRecord | None:
        """Delete an account: personal data goes, the row stays (status ``deleted``) so
        references from meetings and files keep pointing somewhere, and the username and email
        become free for new registrations."""
        return await self.update(
            user_id,
            revoke_tokens=True,
            username=f"#deleted-{user_id}",
            email=None,
            nickname="",
            avatar_file=None,
            password_hash=DELETED_PASSWORD,
            status="deleted",
        )

    async def search(
        self, *, page: int, page_size: int, status: str | None, text: str | None
    ) -> tuple[list[UserRecord], int]:
        def filtered(query: Select[Any]) -> Select[Any]:
            if status:
                query = query.where(users.c.status == status)
            if text:
                pattern = f"%{_escape_like(text.lower())}%"
                query = query.where(
                    or_(
                        func.lower(users.c.username).like(pattern, escape="\\"),
                        func.lower(users.c.email).like(pattern, escape="\\"),
                        func.lower(users.c.nickname).like(pattern, escape="\\"),
                    )
                )
            return query

        rows_query = filtered(select(users)).order_by(users.c.id).limit(page_size).offset((page - 1) * page_size)
        count_query = filtered(select(func.count()).select_from(users))
        async with self._engine.connect() as connection:
            rows = (await connection.execute(rows_query)).all()
            total = int((await connection.execute(count_query)).scalar_one())
        return [_record(row) for row in rows], total
