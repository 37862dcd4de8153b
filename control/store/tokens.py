"""Server-side state of tokens: refresh-token rotation and single-use password-reset tokens."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import Update, delete, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from control.envelope import utc_now
from control.store.schema import password_resets, refresh_tokens


class RefreshOutcome(enum.Enum):
    ROTATED = "rotated"
    REUSED = "reused"
    UNKNOWN = "unknown"


class TokenStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def add_refresh(self, *, jti: str, user_id: int, family: str, expires_at: datetime) -> None:
        now = utc_now()
        async with self._engine.begin() as connection:
            await connection.execute(
                delete(refresh_tokens).where(refresh_tokens.c.user_id == user_id, refresh_tokens.c.expires_at < now)
            )
            await connection.execute(
                refresh_tokens.insert().values(
                    jti=jti, user_id=user_id, family=family, issued_at=now, expires_at=expires_at
                )
            )

    async def use_refresh(self, jti: str) -> RefreshOutcome:
        """Mark a refresh token used. A second use means the token leaked: the whole family
        (every token rotated from the same login) is spent so neither holder can go on."""
        async with self._engine.begin() as connection:
            marked = await connection.execute(
                update(refresh_tokens)
                .where(refresh_tokens.c.jti == jti, refresh_tokens.c.used_at.is_(None))
                .values(used_at=utc_now())
            )
            if marked.rowcount == 1:
                return RefreshOutcome.ROTATED
            family = (
                await connection.execute(select(refresh_tokens.c.family).where(refresh_tokens.c.jti == jti))
            ).scalar_one_or_none()
            if family is None:
                return RefreshOutcome.UNKNOWN
            await connection.execute(
                update(refresh_tokens)
                .where(refresh_tokens.c.family == family, refresh_tokens.c.used_at.is_(None))
                .values(used_at=utc_now())
            )
            return RefreshOutcome.REUSED

    async def add_reset(self, *, user_id: int, token_hash: str, expires_at: datetime) -> None:
        """Store a new reset token; earlier unused ones stop working so only the newest mail counts."""
        now = utc_now()
        async with self._engine.begin() as connection:
            await connection.execute(_spend_unused_resets(user_id, now))
            await connection.execute(
                password_resets.insert().values(
                    user_id=user_id, token_hash=token_hash, created_at=now, expires_at=expires_at
                )
            )

    async def revoke_resets(self, user_id: int) -> None:
        """Reset tokens already mailed stop working: the address they went to, or the password
        they would replace, has changed since."""
        async with self._engine.begin() as connection:
            await connection.execute(_spend_unused_resets(user_id, utc_now()))

    async def use_reset(self, token_hash: str) -> int | None:
        """Spend a reset token atomically; the user id when it was valid, else None."""
        now = utc_now()
        async with self._engine.begin() as connection:
            spent = await connection.execute(
                update(password_resets)
                .where(
                    password_resets.c.token_hash == token_hash,
                    password_resets.c.used_at.is_(None),
                    password_resets.c.expires_at > now,
                )
                .values(used_at=now)
            )
            if spent.rowcount != 1:
                return None
            user_id = (
                await connection.execute(
                    select(password_resets.c.user_id).where(password_resets.c.token_hash == token_hash)
                )
            ).scalar_one()
            return int(user_id)


def _spend_unused_resets(user_id: int, now: datetime) -> Update:
    return (
        update(password_resets)
        .where(password_resets.c.user_id == user_id, password_resets.c.used_at.is_(None))
        .values(used_at=now)
    )
