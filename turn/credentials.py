"""Time-limited TURN credentials (the "TURN REST API" scheme coturn calls static-auth-secret) and
the nonces of the long-term credential mechanism (RFC 8489 §9.2).

The control plane and the TURN server share one secret and nothing else: a user name is
``<expiry unix time>:<user id>``, its password ``base64(HMAC-SHA1(secret, user name))``. The
control plane hands such a pair to each participant; the TURN server recomputes the password from
the user name, so it needs no user database and no call back to the control plane, and a leaked
pair stops working when its time is up.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any

SEPARATOR = ":"
_KEY_CACHE_SIZE = 4096


def password_for(secret: str, username: str) -> str:
    return base64.b64encode(hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()).decode()


def issue(secret: str, user_id: str | int, ttl_seconds: int, now: float | None = None) -> tuple[str, str]:
    """A user name and password for ``user_id``, valid for ``ttl_seconds`` from ``now``."""
    expiry = int((time.time() if now is None else now) + ttl_seconds)
    username = f"{expiry}{SEPARATOR}{user_id}"
    return username, password_for(secret, username)


def long_term_key(username: str, realm: str, password: str) -> bytes:
    """The MESSAGE-INTEGRITY key of the long-term mechanism: MD5(user name:realm:password)."""
    return hashlib.md5(f"{username}:{realm}:{password}".encode()).digest()


@dataclass(frozen=True)
class Identity:
    """Who a valid user name says the client is."""

    username: str
    user: str  # the part after the expiry: the quota is counted per user
    expiry: int
    key: bytes


class Authenticator:
    """Checks user names and derives their keys; keys are cached, since a client signs every
    request of its allocation with the same one."""

    def __init__(self, secret: str, realm: str) -> None:
        self.secret = secret
        self.realm = realm
        self._keys: dict[str, Identity] = {}

    def identify(self, username: str, now: float) -> Identity | None:
        """The identity behind ``username``, or None when it is malformed or has expired."""
        identity = self._keys.get(username)
        if identity is None:
            expiry_text, separator, user = username.partition(SEPARATOR)
            if not separator or not user or not expiry_text.isdigit() or len(expiry_text) > 12:
                return None
            key = long_term_key(username, self.realm, password_for(self.secret, username))
            identity = Identity(username, user, int(expiry_text), key)
            if len(self._keys) >= _KEY_CACHE_SIZE:
                self._keys.clear()
            self._keys[username] = identity
        if identity.expiry < now:
            return None
        return identity


class Nonces:
    """Stateless nonces: the expiry time and a MAC of it under a key of this process, so a nonce
    needs no table, and one from before a restart is simply stale."""

    def __init__(self, lifetime: float) -> None:
        self.lifetime = lifetime
        self._key = secrets.token_bytes(32)

    def issue(self, now: float) -> bytes:
        stamp = f"{int((now + self.lifetime) * 1000):013x}"
        return (stamp + self._mac(stamp)).encode()

    def fresh(self, nonce: Any, now: float) -> bool:
        """True for a nonce this process issued that has not expired."""
        if not isinstance(nonce, bytes) or len(nonce) != 13 + 24:
            return False
        try:
            stamp = nonce[:13].decode("ascii")
            expiry_ms = int(stamp, 16)
        except ValueError:
            return False
        if not hmac.compare_digest(nonce[13:], self._mac(stamp).encode()):
            return False
        return expiry_ms / 1000 > now

    def _mac(self, stamp: str) -> str:
        return hmac.new(self._key, stamp.encode(), hashlib.sha256).hexdigest()[:24]


def ice_servers(
    secret: str,
    user_id: int,
    ttl_seconds: int,
    host: str,
    port: int,
    tls_port: int | None,
    now: float | None = None,
) -> tuple[list[dict[str, Any]], int]:
    """The RTCIceServer entries (W3C WebRTC) for one user, and the unix time their credentials
    expire: STUN, TURN over UDP and TCP, and TURN over TLS when it is served. One entry: browsers
    and aiortc ignore the credentials for the stun: URL."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    username, credential = issue(secret, user_id, ttl_seconds, now)
    urls = [f"stun:{host}:{port}", f"turn:{host}:{port}?transport=udp", f"turn:{host}:{port}?transport=tcp"]
    if tls_port:
        urls.append(f"turns:{host}:{tls_port}?transport=tcp")
    expiry = int(username.split(SEPARATOR, 1)[0])
    return [{"urls": urls, "username": username, "credential": credential}], expiry
