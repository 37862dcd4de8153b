"""What the relay may do: which peers it may send to, how many allocations a user and the server
may hold, and how many bytes a second an allocation may relay.

An open relay is a tool for reaching what sits behind the server's firewall (its loopback, the
private network, the cloud's metadata address) and for flooding others. So peers whose addresses
are not public are refused (403) unless an operator allows their network explicitly.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Iterable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class PeerPolicy:
    """Decides whether the relay may exchange packets with a peer address."""

    def __init__(self, allowed_cidrs: Iterable[str], own_endpoints: Iterable[tuple[str, int]] = ()) -> None:
        self.allowed = [ipaddress.ip_network(text, strict=False) for text in allowed_cidrs]
        # The server's own listening transport addresses: relaying to them would loop.
        self.own_endpoints = {(str(ipaddress.ip_address(host)), port) for host, port in own_endpoints}
        self._cache: dict[str, bool] = {}

    def permits(self, host: str, port: int | None = None) -> bool:
        if port is not None and (host, port) in self.own_endpoints:
            return False
        verdict = self._cache.get(host)
        if verdict is None:
            verdict = self._decide(host)
            if len(self._cache) > 65536:
                self._cache.clear()
            self._cache[host] = verdict
        return verdict

    def _decide(self, host: str) -> bool:
        try:
            address: IPAddress = ipaddress.ip_address(host)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if any(address in network for network in self.allowed):
            return True
        return forbidden_reason(address) is None


def forbidden_reason(address: IPAddress) -> str | None:
    """Why the relay refuses ``address`` by default, or None for a public unicast address."""
    for reason, test in (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("private", address.is_private),
        ("reserved", address.is_reserved),
        # Shared (carrier-grade NAT) space and the like: neither private nor reachable publicly.
        ("not public", not address.is_global),
    ):
        if test:
            return reason
    return None


class Quotas:
    """Allocations held per user and in all; a refusal says which limit was reached."""

    def __init__(self, per_user: int, total: int) -> None:
        self.per_user = per_user
        self.total = total
        self.held: Counter[str] = Counter()
        self.in_use = 0

    def refusal(self, user: str) -> int | None:
        """486 when the user holds their share, 508 when the server is full, else None."""
        if self.in_use >= self.total:
            return 508
        if self.held[user] >= self.per_user:
            return 486
        return None

    def take(self, user: str) -> None:
        self.held[user] += 1
        self.in_use += 1

    def give_back(self, user: str) -> None:
        self.held[user] -= 1
        self.in_use -= 1
        if self.held[user] <= 0:
            del self.held[user]


class TokenBucket:
    """At most ``rate`` bytes a second on average, in bursts of up to a second's worth."""

    __slots__ = ("capacity", "last", "rate", "tokens")

    def __init__(self, rate: float, now: float) -> None:
        self.rate = rate
        self.capacity = rate
        self.tokens = rate
        self.last = now

    def take(self, size: int, now: float) -> bool:
        tokens = self.tokens + (now - self.last) * self.rate
        if tokens > self.capacity:
            tokens = self.capacity
        self.last = now
        if tokens < size:
            self.tokens = tokens
            return False
        self.tokens = tokens - size
        return True
