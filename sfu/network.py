"""Where the media sockets are bound and what the ICE candidates say about them.

aioice gathers a host candidate on every non-loopback interface, on any port. An operator needs more
control: bind one address (127.0.0.1 for tests, a private address behind 1:1 NAT), announce another
(the NAT's public address), and keep media within a firewall's UDP port range. Gathering is done here,
on an aioice ``Connection`` that is then used as usual: each bound socket keeps its true address as
its candidate (so pairing and checks see the real socket), while the candidates listed in the SDP
carry the announced addresses.

With ``udp_port`` or ``tcp_port`` set, connections also share sockets the server opened at start
(``SharedPort``: one UDP port for every connection, or a TCP port for ICE over TCP). Each connection
then gets a ``SharedMediaProtocol`` on such a port, which aioice uses like any socket of its own, and
the port hands it what the server's ICE ufrag in a STUN check, or the sender's address, says is its.
"""

from __future__ import annotations

import abc
import asyncio
import copy
import ipaddress
import itertools
import logging
import random
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aioice import Candidate, Connection, stun
from aioice.candidate import candidate_foundation, candidate_priority
from aioice.ice import StunProtocol, get_host_addresses
from aioice.turn import UDP_SOCKET_BUFFER_SIZE

from sfu.arrival import HANDLING_TIME, ArrivalClock, KernelArrivalClock

if TYPE_CHECKING:
    from sfu.ports import Listeners
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


class MediaConnection(Connection):
    """An aioice connection whose datagrams carry when they reached this machine (``sfu/arrival.py``)
    instead of their ICE component: media has one component, RTP and RTCP being muxed."""

    def deliver(self, data: bytes, arrived: float) -> None:
        """A datagram for the DTLS transport, and its arrival on the ``time.monotonic`` clock."""
        self._queue.put_nowait((data, arrived))

    def data_received(self, data: bytes, component: int) -> None:
        """What aioice's own sockets pass on (a TURN client's relay) is timed as it is handled."""
        self.deliver(data, time.monotonic())

    async def recvfrom(self) -> tuple[bytes, float]:  # type: ignore[override]
        """The next datagram and when it arrived."""
        return await super().recvfrom()  # type: ignore[return-value]


class MediaProtocol(StunProtocol):
    """A media socket that lets through only what its connection can use (RFC 7983 demultiplexing):
    STUN that parses, and DTLS, RTP or RTCP from the client's validated address. Anything else (an
    empty datagram, an unknown first byte, a datagram from an address that is on none of the
    connection's candidate pairs) is dropped here and counted, before the DTLS transport sees it: aioice
    hands every non-STUN datagram on, whoever sent it, and one empty datagram would end the DTLS
    transport's receive loop. Pairs come from the client's signaled candidates and from its checks that
    carried the right credentials (also those that arrived before the client's answer was read, which
    aioice answers at once and keeps for later), so a client's first DTLS packet is never refused."""

    receiver: MediaConnection

    def __init__(self, receiver: MediaConnection) -> None:
        super().__init__(receiver)
        self.stats: TransportStats | None = None  # its transport's counters: ``malformed`` counts drops
        self.dropped = 0
        self.clock: ArrivalClock = HANDLING_TIME  # its own socket's, once bound
        self._validated: tuple[str, int] | None = None  # the last address found on a pair

    def datagram_received(self, data: bytes | str, addr: tuple[Any, ...]) -> None:
        self.received(data, addr, self.clock)

    def received(self, data: bytes | str, addr: tuple[Any, ...], clock: ArrivalClock) -> None:
        """A datagram read from a socket whose ``clock`` says when it arrived (asked before the
        socket's next datagram is read)."""
        addr = (addr[0], addr[1])
        if not isinstance(data, bytes) or not data:
            self._drop()
        elif data[0] < 4:  # STUN
            if parse_stun(data) is None:
                self._drop()
                return
            super().datagram_received(data, addr)
        elif (19 < data[0] < 64 or 127 < data[0] < 192) and self._from_client(addr):  # DTLS; RTP or RTCP
            self.receiver.deliver(data, clock.stamp())
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


class SharedPort(abc.ABC):
    """A socket every connection shares. A connection is named by the server's ICE ufrag, which opens
    the USERNAME of every STUN check a client sends (``server-ufrag:client-ufrag``); each connection has
    its own ``SharedMediaProtocol`` here. What the port cannot give to a connection it drops and counts:
    ``malformed`` for what cannot be read, ``unrouted`` for what names no connection it has."""

    kind: str  # "udp" or "tcp"
    candidate: Candidate  # the bound address and port, once open

    def __init__(self) -> None:
        self.by_ufrag: dict[str, SharedMediaProtocol] = {}
        self.transactions: dict[bytes, SharedMediaProtocol] = {}  # the connections' checks awaiting answers
        self.malformed = 0
        self.unrouted = 0

    def attach(self, connection: Connection) -> SharedMediaProtocol:
        protocol = SharedMediaProtocol(connection, self)
        self.by_ufrag[connection.local_username] = protocol
        return protocol

    def detach(self, protocol: SharedMediaProtocol) -> None:
        """Forget a closing connection: its ufrag, its addresses and its checks."""
        if self.by_ufrag.get(protocol.receiver.local_username) is protocol:
            del self.by_ufrag[protocol.receiver.local_username]
        for transaction_id in [key for key, owner in self.transactions.items() if owner is protocol]:
            del self.transactions[transaction_id]
        self.forget(protocol)

    def named(self, message: stun.Message) -> SharedMediaProtocol | None:
        """The connection a STUN request is for, by the ufrag its USERNAME starts with."""
        username = message.attributes.get("USERNAME")
        if message.message_class != stun.Class.REQUEST or not isinstance(username, str):
            return None
        return self.by_ufrag.get(username.partition(":")[0])

    @staticmethod
    def authentic(message: stun.Message, protocol: SharedMediaProtocol) -> bool:
        """The request carries the connection's password (MESSAGE-INTEGRITY): it comes from its client."""
        return message.check_message_integrity(protocol.receiver.local_password.encode("utf8"))

    @abc.abstractmethod
    def forget(self, protocol: SharedMediaProtocol) -> None:
        """Drop whatever the port keeps for a connection besides its ufrag."""

    @abc.abstractmethod
    def send(self, protocol: SharedMediaProtocol, data: bytes, addr: tuple[str, int]) -> None:
        """Send a connection's packet to one of its client's addresses."""

    @abc.abstractmethod
    def extra_info(self, name: str, default: Any = None) -> Any:
        """What the port's socket says of itself (``sockname``...), as a transport's ``get_extra_info``."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop listening; the connections on the port have been closed before."""


_serials = itertools.count()


class SharedMediaProtocol(MediaProtocol):
    """A connection's share of a ``SharedPort``: its own ICE state and counters on the port's socket."""

    def __init__(self, connection: Connection, port: SharedPort) -> None:
        super().__init__(connection)
        self.port = port
        self.addresses: dict[tuple[str, int], None] = {}  # remote addresses the port routes here, oldest first
        self.serial = next(_serials)  # a connection gathered later (an ICE restart's) has a higher one
        self.local_candidate = copy.copy(port.candidate)
        self.connection_made(PortView(port, self))

    async def request(
        self,
        request: stun.Message,
        addr: tuple[str, int],
        integrity_key: bytes | None = None,
        retransmissions: int | None = None,
    ) -> tuple[stun.Message, tuple[str, int]]:
        """The server's own checks: their answers carry no USERNAME, so the port goes by transaction."""
        self.port.transactions[request.transaction_id] = self
        try:
            return await super().request(request, addr, integrity_key, retransmissions)
        finally:
            self.port.transactions.pop(request.transaction_id, None)


class PortView(asyncio.DatagramTransport):
    """The transport a connection's protocol sees of a shared port: what it sends goes out through the
    port; closing it only unhooks the connection, and the port stays open for everyone else."""

    def __init__(self, port: SharedPort, protocol: SharedMediaProtocol) -> None:
        super().__init__()
        self._port = port
        self._protocol = protocol
        self._closing = False

    def sendto(self, data: Any, addr: Any = None) -> None:
        if not self._closing and addr is not None:
            self._port.send(self._protocol, data, (addr[0], addr[1]))

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._port.detach(self._protocol)
        asyncio.get_running_loop().call_soon(self._protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()

    def is_closing(self) -> bool:
        return self._closing

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._port.extra_info(name, default)


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
    udp_port: int = 0  # one UDP port for all connections (0: a port per connection)
    tcp_port: int = 0  # ICE over TCP (0: none)
    listeners: Listeners | None = field(default=None, compare=False, repr=False)  # the shared ports, once open

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


async def gather(network: Network, controlling: bool = False) -> MediaConnection:
    """A connection with a UDP socket per address of ``network`` (its own, or the shared ``udp_port``)
    and the shared TCP ports if any; raises ``NoMediaPort`` when it has no UDP socket. The server is the
    controlled side (it is ICE-lite to its clients)."""
    shared = network.listeners
    connection = MediaConnection(
        ice_controlling=controlling,
        components=1,
        use_ipv4=True,
        use_ipv6=network.ipv6,
        local_username=shared.fresh_ufrag() if shared is not None else None,
    )
    connection._local_candidates_start = True
    if shared is not None:  # before any await: the ufrag is claimed at once
        connection._protocols.extend(port.attach(connection) for port in shared.ports)
    if not network.udp_port:
        for address in network.addresses():
            protocol = await _bind(connection, address, network.ports())
            if protocol is None:
                continue
            if not network.announced(protocol.local_candidate.host):  # an IP version nothing is announced for
                protocol.transport.close()
                continue
            connection._protocols.append(protocol)
    real = sorted((protocol.local_candidate for protocol in connection._protocols), key=lambda c: -c.priority)
    if not any(candidate.transport == "udp" for candidate in real):
        await connection.close()
        raise NoMediaPort(f"no UDP socket could be bound for media on {network.addresses() or 'any interface'}")
    connection._local_candidates = [
        announced for candidate in real for announced in _announced(candidate, network.announced(candidate.host))
    ]
    connection._local_candidates_end = True
    return connection


def _announced(real: Candidate, hosts: list[str]) -> list[Candidate]:
    """What the SDP lists for a bound socket: the same candidate at each announced address."""
    listed = []
    for host in hosts:
        candidate = copy.copy(real)
        candidate.host = candidate._network_host = host
        candidate.foundation = candidate_foundation("host", real.transport, host)
        listed.append(candidate)
    return listed


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
        protocol.clock = KernelArrivalClock.of(sock)
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
