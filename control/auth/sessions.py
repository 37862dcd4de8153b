"""Issuing a token pair: the access token is stateless, the refresh token is recorded so it
can be rotated (used once) and its family revoked when a used one comes back."""

from __future__ import annotations

import secrets

from aiohttp import web

from control.api.schemas import TokenPair, seconds_until
from control.context import STORE, TOKENS
from control.envelope import utc_now
from control.store.users import UserRecord


async def issue_tokens(app: web.Application, user: UserRecord, family: str | None = None) -> TokenPair:
    codec = app[TOKENS]
    access = codec.issue(user.id, user.token_version, "access")
    refresh = codec.issue(user.id, user.token_version, "refresh", family=family or secrets.token_hex(16))
    assert refresh.family is not None
    await app[STORE].tokens.add_refresh(
        jti=refresh.jti, user_id=user.id, family=refresh.family, expires_at=refresh.expires_at
    )
    now = utc_now()
    return TokenPair(
        access_token=codec.encode(access),
        refresh_token=codec.encode(refresh),
        expires_in=seconds_until(access.expires_at, now),
        refresh_expires_in=seconds_until(refresh.expires_at, now),
    )
