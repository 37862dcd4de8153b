"""Signed JWTs. Each token names its type so a refresh token can never pass as an access token
(and back), and carries the user's token version so bumping it revokes every earlier token."""

from __future__ import annotations

import secrets
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

import jwt

from control.envelope import utc_now
from control.errors import BusinessCode, unauthorized

TokenType = Literal["access", "refresh"]
ALGORITHM = "HS256"
ISSUER = "huiyi"
VERIFIED_CAPACITY = 20_000  # tokens whose signature was checked, remembered to skip checking again


@dataclass(frozen=True)
class TokenClaims:
    user_id: int
    token_type: TokenType
    version: int
    jti: str
    family: str | None
    expires_at: datetime


class TokenCodec:
    def __init__(self, key: str, access_ttl: timedelta, refresh_ttl: timedelta) -> None:
        self._key = key
        self.access_ttl = access_ttl
        self.refresh_ttl = refresh_ttl
        self._verified: OrderedDict[str, TokenClaims] = OrderedDict()

    def issue(self, user_id: int, version: int, token_type: TokenType, family: str | None = None) -> TokenClaims:
        now = utc_now()
        ttl = self.access_ttl if token_type == "access" else self.refresh_ttl
        return TokenClaims(
            user_id=user_id,
            token_type=token_type,
            version=version,
            jti=secrets.token_hex(16),
            family=family,
            expires_at=now + ttl,
        )

    def encode(self, claims: TokenClaims) -> str:
        payload = {
            "iss": ISSUER,
            "sub": str(claims.user_id),
            "typ": claims.token_type,
            "ver": claims.version,
            "jti": claims.jti,
            "iat": utc_now(),
            "exp": claims.expires_at,
        }
        if claims.family is not None:
            payload["fam"] = claims.family
        return jwt.encode(payload, self._key, algorithm=ALGORITHM)

    def decode(self, token: str, expected: TokenType) -> TokenClaims:
        """The claims of a valid token of the expected type. A client presents the same token on
        every request until it expires, so a verified one is remembered (by its exact text) and
        only its expiry and type are checked again."""
        claims = self._verified.get(token)
        if claims is None:
            claims = self._verify(token)
            self._verified[token] = claims
            if len(self._verified) > VERIFIED_CAPACITY:
                self._verified.popitem(last=False)
        if claims.expires_at <= utc_now():
            raise unauthorized("Token expired", BusinessCode.TOKEN_EXPIRED)
        if claims.token_type != expected:
            raise unauthorized(f"{'An access' if expected == 'access' else 'A refresh'} token is required")
        return claims

    def _verify(self, token: str) -> TokenClaims:
        """Check a token not seen before. It comes straight from a header or a query string, where
        aiohttp keeps undecodable bytes as surrogates: a JWT is ASCII, so anything else is refused
        here before the JWT library tries to encode it."""
        if not token.isascii():
            raise unauthorized("Invalid token")
        try:
            payload = jwt.decode(
                token,
                self._key,
                algorithms=[ALGORITHM],
                issuer=ISSUER,
                options={"require": ["exp", "iat", "sub", "typ", "ver", "jti", "iss"]},
            )
        except jwt.ExpiredSignatureError:
            raise unauthorized("Token expired", BusinessCode.TOKEN_EXPIRED) from None
        except jwt.InvalidTokenError:
            raise unauthorized("Invalid token") from None
        if payload["typ"] not in ("access", "refresh"):
            raise unauthorized("Invalid token")
        try:
            user_id = int(payload["sub"])
            version = int(payload["ver"])
        except (TypeError, ValueError):
            raise unauthorized("Invalid token") from None
        family = payload.get("fam")
        return TokenClaims(
            user_id=user_id,
            token_type=payload["typ"],
            version=version,
            jti=str(payload["jti"]),
            family=str(family) if family is not None else None,
            expires_at=datetime.fromtimestamp(payload["exp"], tz=UTC),
        )
