"""The ICE servers a participant's peer connections are given: this server's STUN and TURN URLs,
with TURN credentials made for that user (turn/credentials.py), valid for
``turn.credential_ttl_seconds``. Empty while the TURN server is off or not running."""

from __future__ import annotations

import ipaddress
import re
from datetime import UTC, datetime
from urllib.parse import urlsplit

from aiohttp import web
from pydantic import BaseModel, Field

from config import Settings
from control.context import SETTINGS, TURN
from control.envelope import iso_utc
from turn.credentials import ice_servers

_HOST_NAME = re.compile(r"^[A-Za-z0-9.-]{1,253}$")


class IceServer(BaseModel):
    """An RTCIceServer, as RTCPeerConnection's configuration takes it."""

    urls: list[str] = Field(description="stun:, turn: (UDP and TCP) and, when served, turns: URLs")
    username: str = Field(description="<expiry unix time>:<user id>")
    credential: str


class IceServersOut(BaseModel):
    ice_servers: list[IceServer] = Field(description="Pass as RTCConfiguration.iceServers; empty when TURN is off")
    expires_at: str | None = Field(description="When the credentials stop working; ask again before then")


def ice_servers_for(request: web.Request, user_id: int) -> IceServersOut:
    process = request.app[TURN]
    settings = request.app[SETTINGS]
    endpoints = process.endpoints
    if endpoints is None or not process.running:
        return IceServersOut(ice_servers=[], expires_at=None)
    servers, expiry = ice_servers(
        process.secret,
        user_id,
        settings.turn.credential_ttl_seconds,
        url_host(settings, request),
        endpoints.port,
        endpoints.tls_port,
    )
    return IceServersOut(
        ice_servers=[IceServer(**server) for server in servers],
        expires_at=iso_utc(datetime.fromtimestamp(expiry, UTC)),
    )


def url_host(settings: Settings, request: web.Request) -> str:
    """The host in the URLs: configured, the TURN server's own single address, the server's public
    URL, or else the name the client reached this server by (the TURN server listens beside it)."""
    turn = settings.turn
    if turn.url_host:
        return turn.url_host
    if turn.public_address:
        return turn.public_address
    if not ipaddress.ip_address(turn.listen_host).is_unspecified:
        return turn.listen_host
    for candidate in (urlsplit(settings.server.public_url).hostname, request.url.host):
        if candidate and _usable(candidate):
            return candidate
    return "localhost"


def _usable(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return bool(_HOST_NAME.match(host))
    return True
