"""Permissions and channel bindings of one allocation (RFC 8656 §9 and §12).

A permission lets packets from and to one peer IP address (any port) through the relay for five
minutes; a channel binding names one peer transport address with a number (0x4000 and up) for ten
minutes, so the client can use 4-byte ChannelData headers instead of Send and Data
indications. Binding a channel also installs or refreshes the permission for the peer's address.
Times are ``time.monotonic()`` seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

Address = tuple[str, int]

PERMISSION_LIFETIME = 300.0
# Peer addresses one allocation may hold permissions for at once (a media connection needs a few).
MAX_PERMISSIONS = 1000
CHANNEL_LIFETIME = 600.0
# After a binding expires, its number and peer stay reserved this long, so late packets of the
# old binding cannot reach a new one (RFC 8656 §12).
CHANNEL_COOLDOWN = 300.0


@dataclass
class Channel:
    number: int
    peer: Address
    expires: float


class ChannelConflict(Exception):
    """The number is bound to another peer, or the peer to another number (answered 400)."""


class Permissions:
    """Peer IP address -> expiry time."""

    def __init__(self) -> None:
        self.expiry: dict[str, float] = {}

    def install(self, host: str, now: float) -> None:
        self.expiry[host] = now + PERMISSION_LIFETIME

    def room_for(self, hosts: list[str], now: float) -> bool:
        """Whether ``hosts`` fit under ``MAX_PERMISSIONS`` (expired ones are dropped to make room)."""
        new = {host for host in hosts if host not in self.expiry}
        if len(self.expiry) + len(new) <= MAX_PERMISSIONS:
            return True
        self.prune(now)
        return len(self.expiry) + len(new) <= MAX_PERMISSIONS

    def allows(self, host: str, now: float) -> bool:
        return self.expiry.get(host, 0.0) > now

    def prune(self, now: float) -> None:
        for host in [host for host, expires in self.expiry.items() if expires <= now]:
            del self.expiry[host]

    def __len__(self) -> int:
        return len(self.expiry)


class Channels:
    """Channel number <-> peer transport address, both ways, for the two directions of the relay."""

    def __init__(self) -> None:
        self.by_number: dict[int, Channel] = {}
        self.by_peer: dict[Address, Channel] = {}

    def bind(self, number: int, peer: Address, now: float) -> Channel:
        """Bind or refresh; a conflicting binding (even one cooling down) raises ``ChannelConflict``."""
        channel = self.by_number.get(number)
        other = self.by_peer.get(peer)
        if (channel is not None and channel.peer != peer) or (other is not None and other.number != number):
            raise ChannelConflict(f"channel {number:#06x} or peer {peer[0]}:{peer[1]} is bound otherwise")
        if channel is None:
            channel = Channel(number, peer, 0.0)
            self.by_number[number] = channel
            self.by_peer[peer] = channel
        channel.expires = now + CHANNEL_LIFETIME
        return channel

    def prune(self, now: float) -> None:
        for channel in [c for c in self.by_number.values() if c.expires + CHANNEL_COOLDOWN <= now]:
            del self.by_number[channel.number]
            del self.by_peer[channel.peer]

    def active(self, now: float) -> int:
        return sum(1 for channel in self.by_number.values() if channel.expires > now)
