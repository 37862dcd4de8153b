"""Allocations (RFC 8656 §6): a relayed transport address the server holds for one client 5-tuple,
with its lifetime, permissions, channels and byte-rate buckets, and the table of all of them.

Each allocation owns one UDP socket on the relay address and is that socket's protocol. What
arrives there from a permitted peer goes to the client as ChannelData (when the peer has a channel)
or a Data indication; what the client sends goes out of that socket to the peer.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import random
import socket
import struct
import sys
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Protocol

from turn.counters import Counters
from turn.messages import DataIndications, channel_data
from turn.permissions import Channels, Permissions
from turn.policy import Quotas, TokenBucket

log = logging.getLogger("huiyi.turn")

Address = tuple[str, int]

DEFAULT_LIFETIME = 600
MAX_LIFETIME = 3600
RESERVATION_LIFETIME = 30.0
# Ports tried for one allocation before the server answers 508 (Insufficient Capacity).
PORT_ATTEMPTS = 256
# A TCP client whose unsent answers pass this many bytes loses relayed packets until it reads.
CLIENT_BACKLOG_BYTES = 1 << 20
# Relay sockets get room for bursts of a few hundred packets (the system may grant less).
RELAY_BUFFER_BYTES = 1 << 19

# Linux socket options for DONT-FRAGMENT (not exported by the socket module).
_DONT_FRAGMENT = {socket.AF_INET: (0, 10, 2), socket.AF_INET6: (41, 23, 2)} if sys.platform == "linux" else {}
DONT_FRAGMENT_SUPPORTED = bool(_DONT_FRAGMENT)
_CHANNEL_HEADER = struct.Struct("!HH")


class ClientLink(Protocol):
    """The client side of a 5-tuple: how the server answers it."""

    address: Address
    transport: str  # "udp", "tcp" or "tls"
    key: Hashable  # the same for every message of this 5-tuple
    pad: bool  # ChannelData is padded to four bytes (TCP and TLS)
    closed: bool

    def send(self, data: bytes) -> None: ...

    def sender(self) -> Callable[[bytes], object]:
        """The quickest way to send to the client, for the relay path."""
        ...

    def backlog(self) -> int: ...

    async def attach(self, allocation: Allocation) -> None:
        """Tell the listener the allocation for the client's packets (and open what serves them)."""
        ...

    def detach(self) -> None:
        """The allocation is gone."""
        ...


class AllocationError(Exception):
    """An Allocate that cannot be granted; ``code`` is the STUN error to answer."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


def lifetime_for(requested: int | None) -> int:
    """RFC 8656 §7.2: the requested lifetime, capped at the maximum, raised to the default."""
    if requested is None:
        return DEFAULT_LIFETIME
    return max(DEFAULT_LIFETIME, min(requested, MAX_LIFETIME))


class Allocation(asyncio.DatagramProtocol):
    """One client's relayed transport address and what it permits; the protocol of its relay
    socket, so what peers send there arrives in ``datagram_received``."""

    def __init__(
        self,
        link: ClientLink,
        username: str,
        user: str,
        relayed: Address,
        lifetime: int,
        rate: int,
        counters: Counters,
        now: float,
    ) -> None:
        self.link = link
        self.to_client = link.sender()  # replaced once attached: the link may have a quicker way then
        self.pad = link.pad
        self.username = username
        self.user = user
        self.relayed = relayed
        self.expires = now + lifetime
        self.permissions = Permissions()
        self.channels = Channels()
        self.counters = counters
        self.to_peers = TokenBucket(rate, now) if rate else None
        self.from_peers = TokenBucket(rate, now) if rate else None
        self.indications = DataIndications()
        self.relay: asyncio.DatagramTransport | None = None
        # The Allocate that made it and the answer, for retransmissions of that request.
        self.transaction_id = b""
        self.response = b""

    # the relay path (every packet) -----------------------------------------------------------

    def to_peer(self, peer: Address, payload: bytes, now: float) -> None:
        counters = self.counters
        if self.permissions.expiry.get(peer[0], 0.0) <= now:
            counters.no_permission += 1
            return
        bucket = self.to_peers
        if bucket is not None and not bucket.take(len(payload), now):
            counters.over_bandwidth += 1
            return
        self.relay.sendto(payload, peer)  # type: ignore[union-attr]
        counters.packets_to_peers += 1
        counters.bytes_to_peers += len(payload)

    def from_client_channel(self, data: bytes) -> None:
        """A ChannelData message from the client (``to_peer`` unrolled: this runs per packet)."""
        counters = self.counters
        if len(data) < 4:
            counters.malformed += 1
            return
        number, length = _CHANNEL_HEADER.unpack_from(data)
        channel = self.channels.by_number.get(number)
        now = time.monotonic()
        if channel is None or channel.expires <= now:
            counters.no_permission += 1
            return
        if len(data) < 4 + length:
            counters.malformed += 1
            return
        peer = channel.peer
        if self.permissions.expiry.get(peer[0], 0.0) <= now:
            counters.no_permission += 1
            return
        bucket = self.to_peers
        if bucket is not None and not bucket.take(length, now):
            counters.over_bandwidth += 1
            return
        self.relay.sendto(data[4 : 4 + length], peer)  # type: ignore[union-attr]
        counters.packets_to_peers += 1
        counters.bytes_to_peers += length

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.relay = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:  # type: ignore[override]
        """A packet from a peer: to the client, if the peer has a permission."""
        counters = self.counters
        try:
            now = time.monotonic()
            host = addr[0]
            if self.permissions.expiry.get(host, 0.0) <= now:
                counters.no_permission += 1
                return
            bucket = self.from_peers
            if bucket is not None and not bucket.take(len(data), now):
                counters.over_bandwidth += 1
                return
            pad = self.pad
            if pad and self.link.backlog() > CLIENT_BACKLOG_BYTES:
                counters.client_backlog += 1
                return
            peer = (host, addr[1])
            channel = self.channels.by_peer.get(peer)
            if channel is not None and channel.expires > now:
                if pad:
                    self.to_client(channel_data(channel.number, data, True))
                else:
                    self.to_client(_CHANNEL_HEADER.pack(channel.number, len(data)) + data)
            else:
                self.to_client(self.indications.pack(peer, data))
            counters.packets_to_clients += 1
            counters.bytes_to_clients += len(data)
        except Exception:
            counters.internal_errors += 1
            log.exception("turn: relaying a packet from %s failed", addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors from peers (port unreachable...) are theirs to have; the relay goes on.
        pass

    # upkeep ------------------------------------------------------------------------------------

    def refresh(self, lifetime: int, now: float) -> None:
        self.expires = now + lifetime

    def prune(self, now: float) -> None:
        self.permissions.prune(now)
        self.channels.prune(now)

    def close(self) -> None:
        if self.relay is not None:
            self.relay.close()
            self.relay = None


@dataclass
class _Reservation:
    sock: socket.socket
    expires: float


class Allocations:
    """Every allocation of the server, by 5-tuple, with the relay ports they hold and the quotas."""

    def __init__(
        self,
        relay_host: str,
        public_host: str,
        port_range: tuple[int, int],
        quotas: Quotas,
        rate: int,
        counters: Counters,
    ) -> None:
        self.relay_host = relay_host
        self.public_host = public_host
        self.family = socket.AF_INET6 if ":" in relay_host else socket.AF_INET
        self.port_range = port_range
        self.quotas = quotas
        self.rate = rate
        self.counters = counters
        self.by_link: dict[Hashable, Allocation] = {}
        self.pending: set[Hashable] = set()  # Allocates being carried out
        self.reservations: dict[bytes, _Reservation] = {}
        self._random = random.Random()

    def get(self, link: ClientLink) -> Allocation | None:
        return self.by_link.get(link.key)

    async def create(
        self,
        link: ClientLink,
        username: str,
        user: str,
        lifetime: int,
        *,
        even_port: bool | None = None,
        token: bytes | None = None,
        dont_fragment: bool = False,
    ) -> tuple[Allocation, bytes | None]:
        """A new allocation for ``link`` (the caller has checked there is none), and the token of
        the port reserved beside it when ``even_port`` asked for one (its R bit)."""
        refusal = self.quotas.refusal(user)
        if refusal is not None:
            raise AllocationError(refusal, "allocation quota reached" if refusal == 486 else "server is full")
        # Taken before the first await, so concurrent Allocates of one user cannot overshoot it.
        self.quotas.take(user)
        try:
            allocation, token = await self._create(link, username, user, lifetime, even_port, token, dont_fragment)
        except BaseException:
            self.quotas.give_back(user)
            raise
        return allocation, token

    async def _create(
        self,
        link: ClientLink,
        username: str,
        user: str,
        lifetime: int,
        even_port: bool | None,
        token: bytes | None,
        dont_fragment: bool,
    ) -> tuple[Allocation, bytes | None]:
        now = time.monotonic()
        reserved_token = None
        if token is not None:
            reservation = self.reservations.pop(token, None)
            if reservation is None or reservation.expires <= now:
                raise AllocationError(508, "no such reservation")
            sock = reservation.sock
        else:
            sock, reserved = self._bind(even_port is not None, bool(even_port))
            if reserved is not None:
                reserved_token = os.urandom(8)
                self.reservations[reserved_token] = _Reservation(reserved, now + RESERVATION_LIFETIME)
        if dont_fragment:
            level, option, value = _DONT_FRAGMENT[self.family]
            sock.setsockopt(level, option, value)
        port = sock.getsockname()[1]
        allocation = Allocation(link, username, user, (self.public_host, port), lifetime, self.rate, self.counters, now)
        try:
            await asyncio.get_running_loop().create_datagram_endpoint(lambda: allocation, sock=sock)
        except OSError as exc:
            sock.close()
            raise AllocationError(508, f"relay socket: {exc}") from None
        await link.attach(allocation)
        allocation.to_client = link.sender()
        self.by_link[link.key] = allocation
        self.counters.allocations += 1
        self.counters.allocations_created += 1
        log.info(
            "turn allocation %s:%s for user %s at %s (%s %s:%s), %d s",
            *allocation.relayed,
            user,
            self.relay_host,
            link.transport,
            *link.address,
            lifetime,
        )
        return allocation, reserved_token

    def delete(self, allocation: Allocation, why: str) -> None:
        if self.by_link.get(allocation.link.key) is not allocation:
            return
        del self.by_link[allocation.link.key]
        allocation.link.detach()
        allocation.close()
        self.quotas.give_back(allocation.user)
        self.counters.allocations -= 1
        log.info("turn allocation %s:%s of user %s deleted: %s", *allocation.relayed, allocation.user, why)

    def sweep(self, now: float) -> None:
        """Delete expired allocations and reservations; forget expired permissions and channels."""
        for allocation in list(self.by_link.values()):
            if allocation.expires <= now:
                self.delete(allocation, "expired")
            else:
                allocation.prune(now)
        for token in [t for t, r in self.reservations.items() if r.expires <= now]:
            self.reservations.pop(token).sock.close()

    def close(self) -> None:
        for allocation in list(self.by_link.values()):
            self.delete(allocation, "server stopping")
        for reservation in self.reservations.values():
            reservation.sock.close()
        self.reservations.clear()

    def channels_and_permissions(self) -> tuple[int, int]:
        now = time.monotonic()
        allocations = list(self.by_link.values())
        return sum(a.channels.active(now) for a in allocations), sum(len(a.permissions) for a in allocations)

    # relay ports -------------------------------------------------------------------------------

    def _bind(self, even: bool, reserve_next: bool) -> tuple[socket.socket, socket.socket | None]:
        """A socket on a free relay port (even when asked), with the next port bound too when a
        reservation is wanted; 508 when none is free."""
        low, high = self.port_range
        if low == 0:
            candidates: list[int] = [0] * PORT_ATTEMPTS
        else:
            size = high - low + 1
            start = self._random.randrange(size)
            candidates = [low + (start + i) % size for i in range(min(size, PORT_ATTEMPTS * 2))]
        for port in candidates:
            if port and even and port % 2:
                continue
            if reserve_next and port and port + 1 > high:
                continue
            sock = self._try_bind(port)
            if sock is None:
                continue
            bound = sock.getsockname()[1]
            if even and bound % 2:
                sock.close()
                continue
            if not reserve_next:
                return sock, None
            neighbour = self._try_bind(bound + 1) if bound + 1 <= 65535 else None
            if neighbour is not None:
                return sock, neighbour
            sock.close()
        raise AllocationError(508, "no relay port free")

    def _try_bind(self, port: int) -> socket.socket | None:
        sock = socket.socket(self.family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                sock.setsockopt(socket.SOL_SOCKET, option, RELAY_BUFFER_BYTES)
            sock.bind((self.relay_host, port))
        except OSError as exc:
            sock.close()
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return None
            raise AllocationError(508, f"relay socket: {exc}") from None
        return sock
