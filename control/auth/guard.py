"""The guard every endpoint passes first: authenticate as the endpoint requires, then count
the call against its rate limit under the caller's key."""

from __future__ import annotations

from aiohttp import web

from control.auth.tokens import TokenClaims, TokenType
from control.context import CURRENT_USER, LIMITER, STORE, TOKENS
from control.endpoints import Access, Endpoint
from control.errors import forbidden, unauthorized
from control.store.users import UserRecord

TOKEN_CLAIMS = web.RequestKey("token_claims", TokenClaims)


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


async def authenticate(request: web.Request, token: str, token_type: TokenType) -> tuple[UserRecord, TokenClaims]:
    """Check signature, expiry and type, then the account itself on every call, so a ban or a
    password change takes effect on the very next request."""
    claims = request.app[TOKENS].decode(token, token_type)
    user = await request.app[STORE].users.get(claims.user_id)
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
        if token is None:
            raise unauthorized()
        token_type: TokenType = "refresh" if endpoint.access is Access.REFRESH else "access"
        user, claims = await authenticate(request, token, token_type)
        if endpoint.access is Access.ADMIN and not user.is_admin:
            raise forbidden("Administrator role required")
        request[CURRENT_USER] = user
        request[TOKEN_CLAIMS] = claims
        caller = f"user:{user.id}"
    else:
        caller = f"ip:{request.remote or 'unknown'}"
    await request.app[LIMITER].hit(endpoint.operation_id, caller)
