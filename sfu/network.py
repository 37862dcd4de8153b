"""Where the media sockets are bound and what the ICE candidates say about them.

aioice gathers a host candidate on every non-loopback interface, on any port. An operator needs more
control: bind one address (127.0.0.1 for tests, a private address behind 1:1 NAT), announce another
(the NAT's public address), and keep media within a firewall's UDP port range. Gathering is done here,
on an aioice ``Connection`` that is then used as usual: each bound socket keeps its true address as
its candidate (so pairing and checks see the real socket), while the candidates listed in the SDP
carry the announced addresses.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aioice import Candidate, Connection, stun
from aioice.candidate import candidate_foundation, candidate_priority
from aioice.ice import StunProtocol, get_host_addresses
from aioice.turn import UDP_SOCKET_BUFFER_SIZE

if TYPE_CHECKING:
    from sfu.transport import TransportStats

log = logging.getLogger("huiyi.sfu.network")

COMPONENT = 1  # RTP and RTCP are muxed: one component


def parse_stun(data: bytes) -> stun.Message | None:
    """A STUN message, or ``None`` for bytes that are not one. aioice's parser refuses with
    ``ValueError``, but an attribute shorter than its type needs (PRIORITY, ICE-CONTROLLING...) makes
    it raise ``struct.error``, which would escape from the socket's callback into the loop's log."""
    try:
        return stun.parse_message(data)
    except (ValueError, struct.error):
        return None


class MediaProtocol(StunProtocol):
    """A media socket that lets through only what its connection can use (RFC 7983 demultiplexing):
    STUN that parses, and DTLS, RTP or RTCP from the client's validated address. Anything else (an
    empty datagram, an unknown first byte, a datagram from an address that is on none of the
    connection's candidate pairs) is dropped here and counted, before the DTLS transport sees it: aioice
    hands every non-STUN datagram on, whoever sent it, and one empty datagram would end the DTLS
    transport's receive loop. Pairs come from the client's signaled candidates and from its checks that
    carried the right credentials (also those that arrived before the client's answer was read, which
    aioice answers at once and keeps for later), so a client's first DTLS packet is never refused."""

    def __init__(self, receiver: Connection) -> None:
        super().__init__(receiver)
        self.stats: TransportStats | None = None  # its transport's counters: ``malformed`` counts drops
        self.dropped = 0
        self._validated: tuple[str, int] | None = None  # the last address found on a pair

    def datagram_received(self, data: bytes | str, addr: tuple[Any, ...]) -> None:
        addr = (addr[0], addr[1])
        if not isinstance(data, bytes) or not data:
            self._drop()
        elif data[0] < 4:  # STUN
            if parse_stun(data) is None:
                self._drop()
                return
            super().datagram_received(data, addr)
        elif (19 < data[0] < 64 or 127 < data[0] < 192) and self._from_client(addr):  # DTLS; RTP or RTCP
            self.receiver.data_received(data, self.local_candidate.component)
        else:
            self._drop()

    def _from_client(self, addr: tuple[str, int]) -> bool:
        if addr == self._validated:
            return True
        connection = self.receiver
        known = any(pair.protocol is self and pair.remote_addr == addr for pair in connection._check_list) or any(
            protocol is self and source == addr for _, source, protocol in connection._early_checks
        )
        if known:
            self._validated = addr
        return known

    def _drop(self) -> None:
        self.dropped += 1
        if self.stats is not None:
            self.stats.malformed += 1


class NoMediaPort(ConnectionError):
    """No socket could be bound for a connection (every port of the range in use, or no address)."""


NO_MEDIA_PORT = "the media server has no free port; try again later"  # what the client is told (503)


@dataclass(frozen=True)
class Network:
    """Addresses and ports for media. An empty ``bind`` means every non-loopback interface (IPv6
    ones only with ``ipv6``); an empty ``announce`` means candidates carry the bound addresses."""

    bind: tuple[str, ...] = ()
    announce: tuple[str, ...] = ()
    port_min: int = 0
    port_max: int = 0
    ipv6: bool = False

    def addresses(self) -> list[str]:
        return list(self.bind) or get_host_addresses(use_ipv4=True, use_ipv6=self.ipv6)

    def ports(self) -> Iterator[int]:
        """The ports to try: the whole range once, from a random place in it (0: the kernel picks)."""
        if not self.port_min:
            yield 0
            return
        start = random.randint(self.port_min, self.port_max)
        yield from range(start, self.port_max + 1)
        yield from range(self.port_min, start)

    def announced(self, bound: str) -> list[str]:
        """The addresses to announce for a socket bound to ``bound``: those of its IP version."""
        if not self.announce:
            return [bound]
        version = ipaddress.ip_address(bound).version
        return [address for address in self.announce if ipaddress.ip_address(address).version == version]


LOOPBACK = Network(bind=("127.0.0.1",))


async def gather(network: Network, controlling: bool = False) -> Connection:
    """A connection with one UDP socket per address of ``network``; raises ``NoMediaPort`` when none
    could be bound. The server is the controlled side (it is ICE-lite to its clients)."""
    connection = Connection(ice_controlling=controlling, components=1, use_ipv4=True, use_ipv6=network.ipv6)
    connection._local_candidates_start = True
    listed: list[Candidate] = []
    for address in network.addresses():
        protocol = await _bind(connection, address, network.ports())
        if protocol is None:
            continue
        real = protocol.local_candidate
        announced_addresses = network.announced(real.host)
        if not announced_addresses:  # an interface of an IP version nothing is announced for
            protocol.transport.close()
            continue
        connection._protocols.append(protocol)
        for announced in announced_addresses:
            listed.append(
                Candidate(
                    foundation=candidate_foundation("host", "udp", announced),
                    component=COMPONENT,
                    transport="udp",
                    priority=real.priority,
                    host=announced,
                    port=real.port,
                    type="host",
                )
            )
    if not listed:
        await connection.close()
        raise NoMediaPort(f"no UDP socket could be bound for media on {network.addresses() or 'any interface'}")
    connection._local_candidates = listed
    connection._local_candidates_end = True
    return connection


async def _bind(connection: Connection, address: str, ports: Iterator[int]) -> MediaProtocol | None:
    loop = asyncio.get_running_loop()
    failure: OSError | None = None
    for port in ports:
        try:
            transport, protocol = await loop.create_datagram_endpoint(
                lambda: MediaProtocol(connection), local_addr=(address, port)
            )
        except OSError as exc:
            failure = exc
            continue
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_SOCKET_BUFFER_SIZE)
        host, bound_port = transport.get_extra_info("sockname")[:2]
        protocol.local_candidate = Candidate(
            foundation=candidate_foundation("host", "udp", host),
            component=COMPONENT,
            transport="udp",
            priority=candidate_priority(COMPONENT, "host"),
            host=host,
            port=bound_port,
            type="host",
        )
        return protocol
    if failure is not None:
        log.warning("cannot bind a media socket on %s (%s)", address, failure.strerror or failure)
    return None
