"""The guard every endpoint passes first: authenticate as the endpoint requires, then count
the call against its rate limit under the caller's key."""

from __future__ import annotations

from aiohttp import web

from control.auth.tokens import TokenClaims, TokenType
from control.context import ACCOUNTS, CURRENT_USER, LIMITER, TOKENS
from control.endpoints import Access, Endpoint
from control.errors import ApiError, forbidden, unauthorized
from control.logcontext import USER_ID
from control.store.users import UserRecord

TOKEN_CLAIMS = web.RequestKey("token_claims", TokenClaims)


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


async def authenticate(app: web.Application, token: str, token_type: TokenType) -> tuple[UserRecord, TokenClaims]:
    """Check signature, expiry and type, then the account itself on every call, so a ban or a
    password change takes effect on the very next request (the account cache is told of every
    change on every node before the change's own request answers)."""
    claims = app[TOKENS].decode(token, token_type)
    user = await app[ACCOUNTS].get(claims.user_id)
    if user is None or user.status == "deleted":
        raise unauthorized("Account no longer exists")
    if user.status == "banned":
        raise forbidden("Account is banned")
    if claims.version != user.token_version:
        raise unauthorized("Token has been revoked")
    return user, claims


async def guard(request: web.Request, endpoint: Endpoint) -> None:
    if endpoint.access is not Access.PUBLIC:
        token = bearer_token(request)
        token_type: TokenType = "refresh" if endpoint.access is Access.REFRESH else "access"
        try:
            if token is None:
                raise unauthorized()
            user, claims = await authenticate(request.app, token, token_type)
        except ApiError:
            # Callers without a valid token count against the address they call from, so
            # guessing tokens costs as much as any anonymous request.
            await request.app[LIMITER].hit(endpoint.operation_id, f"ip:{request.remote or 'unknown'}")
            raise
        if endpoint.access is Access.ADMIN and not user.is_admin:
            raise forbidden("Administrator role required")
        request[CURRENT_USER] = user
        request[TOKEN_CLAIMS] = claims
        USER_ID.set(user.id)
        caller = f"user:{user.id}"
    else:
        caller = f"ip:{request.remote or 'unknown'}"
    await request.app[LIMITER].hit(endpoint.operation_id, caller)
