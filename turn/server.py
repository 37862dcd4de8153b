"""The TURN server (RFC 8656) with its STUN Binding service (RFC 8489): listeners on UDP, TCP and
TLS (one message stream per connection, framed as RFC 8656 §12.5 and RFC 6062 describe), the
requests (Allocate, Refresh, CreatePermission, ChannelBind, Binding), the indications (Send), and
ChannelData. Whatever cannot be parsed, or comes from a stranger, is dropped and counted: no packet
can stop the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import socket
import ssl
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from aioice import stun
from aioice.ice import get_host_addresses

from config.settings import TurnSettings
from turn import messages
from turn.allocation import (
    DONT_FRAGMENT_SUPPORTED,
    Allocation,
    AllocationError,
    Allocations,
    ClientLink,
    lifetime_for,
)
from turn.counters import Counters
from turn.credentials import Authenticator, Identity, Nonces
from turn.messages import CHANNEL_MAX, CHANNEL_MIN, FAMILY_IPV4, FAMILY_IPV6, SEND_INDICATION, UDP, Request
from turn.permissions import ChannelConflict
from turn.policy import PeerPolicy, Quotas

log = logging.getLogger("huiyi.turn")

SWEEP_SECONDS = 1.0
# A TCP or TLS connection that holds no allocation this long after it opened is closed.
IDLE_CONNECTION_SECONDS = 60.0
TLS_HANDSHAKE_SECONDS = 10.0
SOCKET_BUFFER_BYTES = 1 << 21
# A UDP client's own socket: room for bursts of a few hundred packets (the system may grant less).
CLIENT_SOCKET_BUFFER_BYTES = 1 << 19
_SEND_TYPE = bytes([SEND_INDICATION >> 8, SEND_INDICATION & 0xFF])


@dataclass(frozen=True)
class Endpoints:
    """Where the server listens and relays, once started (ports resolved when 0 was asked for)."""

    host: str
    port: int
    tls_port: int | None
    relay_host: str
    public_host: str


class _UdpLink:
    """A client on a UDP listener: the 5-tuple is the listener and the client's address. While it
    holds an allocation it has a socket of its own (``_ClientSocket``) when the system grants one."""

    __slots__ = ("address", "key", "listener", "own", "source")
    transport = "udp"
    pad = False
    closed = False

    def __init__(self, listener: _UdpListener, source: Any) -> None:
        self.listener = listener
        self.source = source
        self.address = (source[0], source[1])
        self.key = (id(listener), source)
        self.own: asyncio.DatagramTransport | None = None

    def send(self, data: bytes) -> None:
        self.listener.transport.sendto(data, self.source)  # type: ignore[union-attr]

    def sender(self) -> Callable[[bytes], object]:
        if self.own is not None:
            return self.own.sendto  # connected: no address to give, none to convert
        return functools.partial(self.listener.transport.sendto, addr=self.source)  # type: ignore[union-attr]

    def backlog(self) -> int:
        return 0

    async def attach(self, allocation: Allocation) -> None:
        try:
            sock = self.listener.client_socket(self.source)
            self.own, _ = await asyncio.get_running_loop().create_datagram_endpoint(
                lambda: _ClientSocket(self.listener.server, self, allocation), sock=sock
            )
        except OSError as exc:
            # Out of descriptors, say: the shared listener serves the client as before.
            log.debug("turn: no socket of its own for %s:%s (%s)", *self.address, exc)
        self.listener.allocations[self.source] = allocation

    def detach(self) -> None:
        self.listener.allocations.pop(self.source, None)
        if self.own is not None:
            self.own.close()
            self.own = None


def _from_udp_client(server: TurnServer, data: bytes, allocation: Allocation | None, link: _UdpLink) -> None:
    """One datagram from a UDP client, read on the listener or on the client's own socket."""
    first = data[0] if data else 0xFF
    if 0x40 <= first < 0x80:  # ChannelData
        if allocation is None:
            server.counters.no_permission += 1
        else:
            allocation.from_client_channel(data)
    elif first >= 0x80:
        server.counters.malformed += 1
    elif data[0:2] == _SEND_TYPE:
        server.send_indication(data, allocation)
    else:
        server.on_stun(data, link)


class _UdpListener(asyncio.DatagramProtocol):
    """The UDP port every client first reaches. A client that holds an allocation is given a socket
    of its own on the same port (``client_socket``); until then, or without one, it is served here."""

    def __init__(self, server: TurnServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None
        self.sockname: Any = None
        # Clients with an allocation, by address, for what reaches the listener all the same.
        self.allocations: dict[Any, Allocation] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.sockname = transport.get_extra_info("sockname")

    def datagram_received(self, data: bytes, addr: Any) -> None:  # type: ignore[override]
        try:
            allocation = self.allocations.get(addr)
            link = allocation.link if allocation is not None else _UdpLink(self, addr)
            _from_udp_client(self.server, data, allocation, link)  # type: ignore[arg-type]
        except Exception:
            self.server.failed(addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors from clients that went away; nothing to do.
        pass

    def client_socket(self, client: Any) -> socket.socket:
        """A socket on the listening address and port (SO_REUSEPORT: same user only) connected to
        ``client``. The kernel hands a datagram to the socket connected to its sender before the
        listener, so the client's datagrams queue there: each client has a receive buffer of its
        own (a burst of many clients no longer overflows the one queue they share, nor can one client
        fill it for the others), and its datagrams go back without an address to look up."""
        family = socket.AF_INET6 if ":" in self.sockname[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, CLIENT_SOCKET_BUFFER_BYTES)
            sock.bind(self.sockname)
            sock.connect(client)
        except OSError:
            sock.close()
            raise
        return sock


class _ClientSocket(asyncio.DatagramProtocol):
    """The protocol of a UDP client's own socket: what arrives is that client's, for its allocation."""

    def __init__(self, server: TurnServer, link: _UdpLink, allocation: Allocation) -> None:
        self.server = server
        self.link = link
        self.allocation = allocation

    def datagram_received(self, data: bytes, addr: Any) -> None:  # type: ignore[override]
        try:
            _from_udp_client(self.server, data, self.allocation, self.link)
        except Exception:
            self.server.failed(addr)

    def error_received(self, exc: Exception) -> None:
        # An ICMP error about an earlier send: the client is gone or not listening (yet).
        pass


class _StreamConnection(asyncio.Protocol):
    """One TCP or TLS connection: its own 5-tuple, carrying STUN messages and padded ChannelData."""

    pad = True

    def __init__(self, server: TurnServer, transport_name: str) -> None:
        self.server = server
        self.transport_name = transport_name
        self.stream: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.address: tuple[str, int] = ("", 0)
        self.key: Hashable = self
        self.closed = False
        self.opened = time.monotonic()
        self.allocation: Allocation | None = None

    @property
    def transport(self) -> str:  # type: ignore[override]
        return self.transport_name

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.stream = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername") or ("", 0)
        self.address = (peer[0], peer[1])
        server = self.server
        if len(server.connections) >= server.max_connections:
            # Each connection holds a descriptor: past the cap, newcomers are turned away.
            server.counters.connections_refused += 1
            self.closed = True
            transport.close()
            return
        server.connections.add(self)
        server.counters.tcp_connections += 1

    def connection_lost(self, exc: Exception | None) -> None:
        if self not in self.server.connections:
            return
        self.closed = True
        self.server.connections.discard(self)
        self.server.counters.tcp_connections -= 1
        if self.allocation is not None:
            self.server.allocations.delete(self.allocation, "connection closed")

    def send(self, data: bytes) -> None:
        if not self.closed:
            self.stream.write(data)  # type: ignore[union-attr]

    def sender(self) -> Callable[[bytes], object]:
        return self.send

    def backlog(self) -> int:
        return self.stream.get_write_buffer_size() if self.stream is not None else 0

    async def attach(self, allocation: Allocation) -> None:
        self.allocation = allocation

    def detach(self) -> None:
        self.allocation = None

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()

    def data_received(self, data: bytes) -> None:
        try:
            self._received(data)
        except Exception:
            self.server.failed(self.address)
            self.close()

    def _received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        server = self.server
        while len(buffer) >= 4:
            first = buffer[0]
            length = (buffer[2] << 8) | buffer[3]
            if first < 0x40:
                size = messages.HEADER_LENGTH + length
            elif first < 0x80:
                size = 4 + length + (-length & 3)
            else:
                # Not a frame boundary: the stream cannot be followed any more.
                server.counters.malformed += 1
                self.close()
                buffer.clear()
                return
            if len(buffer) < size:
                return
            frame = bytes(buffer[:size])
            del buffer[:size]
            if first < 0x40:
                if frame[0:2] == _SEND_TYPE:
                    server.send_indication(frame, self.allocation)
                else:
                    server.on_stun(frame, self)
            elif self.allocation is None:
                server.counters.no_permission += 1
            else:
                self.allocation.from_client_channel(frame)


class TurnServer:
    """Listens, authenticates, and keeps the allocations; see the module docstring."""

    def __init__(self, settings: TurnSettings, secret: str) -> None:
        if not secret:
            raise ValueError("the TURN server needs its shared secret")
        self.settings = settings
        self.counters = Counters()
        self.authenticator = Authenticator(secret, settings.realm)
        self.nonces = Nonces(settings.nonce_seconds)
        self.quotas = Quotas(settings.max_allocations_per_user, settings.max_allocations)
        self.connections: set[_StreamConnection] = set()
        # Open TCP and TLS connections at most: every allocation may have one, and as many again
        # may be on their way to one.
        self.max_connections = 2 * settings.max_allocations
        self.endpoints: Endpoints | None = None
        self.allocations: Allocations = None  # type: ignore[assignment]  # made by start()
        self.policy = PeerPolicy(settings.allowed_peer_cidrs)
        self._family = FAMILY_IPV4
        self._listeners: list[asyncio.BaseTransport] = []
        self._servers: list[asyncio.Server] = []
        self._sweeper: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # life cycle ---------------------------------------------------------------------------------

    async def start(self) -> Endpoints:
        settings = self.settings
        relay_host = _relay_host(settings)
        public_host = settings.public_address or relay_host
        self._family = FAMILY_IPV6 if ":" in relay_host else FAMILY_IPV4
        self.allocations = Allocations(
            relay_host,
            public_host,
            (settings.relay_port_min, settings.relay_port_max),
            self.quotas,
            settings.max_bytes_per_second,
            self.counters,
        )
        loop = asyncio.get_running_loop()
        port = await self._listen(settings.listen_host, settings.port)
        tls_port = None
        if settings.tls_cert:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(settings.tls_cert, settings.tls_key)
            server = await loop.create_server(
                lambda: _StreamConnection(self, "tls"),
                settings.listen_host,
                settings.tls_port,
                ssl=context,
                ssl_handshake_timeout=TLS_HANDSHAKE_SECONDS,
                reuse_address=True,
            )
            self._servers.append(server)
            tls_port = server.sockets[0].getsockname()[1]
        own_ports = [p for p in (port, tls_port) if p]
        own_hosts = {relay_host, public_host}
        if not ipaddress.ip_address(settings.listen_host).is_unspecified:
            own_hosts.add(settings.listen_host)
        self.policy = PeerPolicy(settings.allowed_peer_cidrs, [(h, p) for h in own_hosts for p in own_ports])
        self.endpoints = Endpoints(settings.listen_host, port, tls_port, relay_host, public_host)
        self._sweeper = loop.create_task(self._sweep())
        log.info(
            "turn server listening on %s port %d (udp, tcp)%s; relaying from %s%s, ports %s; realm %s",
            settings.listen_host,
            port,
            f", port {tls_port} (tls)" if tls_port else "",
            relay_host,
            f" announced as {public_host}" if public_host != relay_host else "",
            f"{settings.relay_port_min}-{settings.relay_port_max}" if settings.relay_port_min else "any",
            settings.realm,
        )
        return self.endpoints

    async def _listen(self, host: str, port: int) -> int:
        """UDP and TCP on the same port; with port 0, a port free for both."""
        loop = asyncio.get_running_loop()
        for _ in range(20):
            transport, _protocol = await loop.create_datagram_endpoint(
                lambda: _UdpListener(self), local_addr=(host, port), reuse_port=True
            )
            sock = transport.get_extra_info("socket")
            for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER_BYTES)
            bound = transport.get_extra_info("sockname")[1]
            try:
                server = await loop.create_server(
                    lambda: _StreamConnection(self, "tcp"), host, bound, reuse_address=True
                )
            except OSError:
                transport.close()
                if port:
                    raise
                continue
            self._listeners.append(transport)
            self._servers.append(server)
            return int(bound)
        raise OSError("no port free for both UDP and TCP")

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for server in self._servers:
            server.close()
        for connection in list(self.connections):
            connection.close()
        for listener in self._listeners:
            listener.close()
        if self.allocations is not None:
            self.allocations.close()
        for server in self._servers:
            await server.wait_closed()

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            now = time.monotonic()
            self.allocations.sweep(now)
            for connection in list(self.connections):
                idle = now - connection.opened > IDLE_CONNECTION_SECONDS
                if idle and connection.allocation is None:
                    connection.close()

    def status_line(self) -> str:
        channels, permissions = self.allocations.channels_and_permissions()
        return self.counters.status_line(channels, permissions)

    def log_status(self) -> None:
        log.info("%s", self.status_line())

    def failed(self, source: Any) -> None:
        """A packet whose handling raised: a bug, logged and counted; the server goes on."""
        self.counters.internal_errors += 1
        log.exception("turn: handling a packet from %s failed", source)

    # messages -----------------------------------------------------------------------------------

    def send_indication(self, data: bytes, allocation: Allocation | None) -> None:
        """A Send indication (RFC 8656 §11.2): relayed if it is well formed and permitted."""
        if not messages.looks_like_stun(data):
            self.counters.malformed += 1
            return
        if allocation is None:
            self.counters.no_permission += 1
            return
        parsed = messages.parse_send_indication(data)
        if parsed is None:
            self.counters.malformed += 1
            return
        allocation.to_peer(parsed[0], parsed[1], time.monotonic())

    def on_stun(self, data: bytes, link: ClientLink) -> None:
        try:
            request = messages.parse(data)
        except ValueError:
            self.counters.malformed += 1
            return
        message = request.message
        if message.message_class != stun.Class.REQUEST:
            # Indications other than Send, and responses, have no business here.
            self.counters.malformed += 1
            return
        self.counters.requests += 1
        if request.unknown:
            self._answer(link, request, None, error=420, attributes={"UNKNOWN-ATTRIBUTES": request.unknown})
            return
        method = message.message_method
        if method == stun.Method.BINDING:
            self._answer(link, request, None, attributes={"XOR-MAPPED-ADDRESS": link.address})
            return
        identity = self._authenticate(request, link)
        if identity is None:
            return
        try:
            if method == stun.Method.ALLOCATE:
                task = asyncio.get_running_loop().create_task(self._allocate(request, link, identity))
                self._tasks.add(task)
                task.add_done_callback(self._allocated)
            elif method in (stun.Method.REFRESH, stun.Method.CREATE_PERMISSION, stun.Method.CHANNEL_BIND):
                allocation = self._allocation_of(request, link, identity)
                if allocation is None:
                    return
                if method == stun.Method.REFRESH:
                    self._refresh(request, link, identity, allocation)
                elif method == stun.Method.CREATE_PERMISSION:
                    self._create_permission(request, link, identity, allocation)
                else:
                    self._channel_bind(request, link, identity, allocation)
            else:
                self._answer(link, request, identity, error=400)
        except (ValueError, TypeError, OverflowError):
            # A well-formed message whose values make no sense (an address family the relay
            # cannot take, an impossible port...): the client's error, answered as such.
            self._answer(link, request, identity, error=400)

    def _allocated(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.counters.internal_errors += 1
            log.error("turn: an Allocate failed", exc_info=task.exception())

    def _answer(
        self,
        link: ClientLink,
        request: Request,
        identity: Identity | None,
        *,
        error: int | None = None,
        attributes: dict[str, Any] | None = None,
    ) -> bytes:
        answer = messages.response(request.message, attributes, error)
        if error in (401, 438):
            answer.attributes["REALM"] = self.settings.realm
            answer.attributes["NONCE"] = self.nonces.issue(time.time())
        fingerprint = "FINGERPRINT" in request.attributes
        packed = messages.encode(answer, identity.key if identity else None, fingerprint)
        link.send(packed)
        return packed

    def _authenticate(self, request: Request, link: ClientLink) -> Identity | None:
        """The long-term credential checks of RFC 8489 §9.2.4, in its order; None once answered."""
        attributes = request.attributes
        if "MESSAGE-INTEGRITY" not in attributes:
            self.counters.unauthenticated += 1
            self._answer(link, request, None, error=401)
            return None
        username, realm, nonce = attributes.get("USERNAME"), attributes.get("REALM"), attributes.get("NONCE")
        if username is None or realm is None or nonce is None:
            self.counters.unauthenticated += 1
            self._answer(link, request, None, error=400)
            return None
        now = time.time()
        if not self.nonces.fresh(nonce, now):
            self.counters.unauthenticated += 1
            self._answer(link, request, None, error=438)
            return None
        identity = self.authenticator.identify(username, now)
        signed = identity is not None and request.message.check_message_integrity(identity.key)
        if identity is None or realm != self.settings.realm or not signed:
            self.counters.unauthenticated += 1
            log.debug("turn: credentials of %s refused for %r", link.address, username[:64])
            self._answer(link, request, None, error=401)
            return None
        return identity

    def _allocation_of(self, request: Request, link: ClientLink, identity: Identity) -> Allocation | None:
        allocation = self.allocations.get(link)
        if allocation is None:
            self._answer(link, request, identity, error=437)
            return None
        if allocation.username != identity.username:
            self._answer(link, request, identity, error=441)
            return None
        return allocation

    async def _allocate(self, request: Request, link: ClientLink, identity: Identity) -> None:
        attributes = request.attributes
        allocations = self.allocations
        existing = allocations.get(link)
        if existing is not None:
            if existing.transaction_id == request.message.transaction_id:
                link.send(existing.response)  # a retransmission: the same answer
            else:
                self._answer(link, request, identity, error=437)
            return
        if link.key in allocations.pending:
            return  # a retransmission of an Allocate still being carried out
        error = self._allocate_refusal(attributes)
        if error is not None:
            self.counters.allocations_refused += 1
            extra = {"UNKNOWN-ATTRIBUTES": [0x001A]} if error == 420 else None
            self._answer(link, request, identity, error=error, attributes=extra)
            return
        even_port = attributes.get("EVEN-PORT")
        allocations.pending.add(link.key)
        try:
            allocation, token = await allocations.create(
                link,
                identity.username,
                identity.user,
                lifetime_for(attributes.get("LIFETIME")),
                even_port=even_port,
                token=attributes.get("RESERVATION-TOKEN"),
                dont_fragment="DONT-FRAGMENT" in attributes,
            )
        except AllocationError as exc:
            self.counters.allocations_refused += 1
            log.info("turn allocation refused to user %s (%s): %s", identity.user, exc.code, exc)
            self._answer(link, request, identity, error=exc.code)
            return
        finally:
            allocations.pending.discard(link.key)
        if link.closed:
            allocations.delete(allocation, "connection closed")
            return
        answer: dict[str, Any] = {
            "XOR-RELAYED-ADDRESS": allocation.relayed,
            "LIFETIME": int(allocation.expires - time.monotonic() + 0.5),
            "XOR-MAPPED-ADDRESS": link.address,
        }
        if token is not None:
            answer["RESERVATION-TOKEN"] = token
        allocation.transaction_id = request.message.transaction_id
        allocation.response = self._answer(link, request, identity, attributes=answer)

    def _allocate_refusal(self, attributes: dict[str, Any]) -> int | None:
        """The error an Allocate earns before any port is taken (RFC 8656 §7.2), or None."""
        transport = attributes.get("REQUESTED-TRANSPORT")
        if transport is None:
            return 400
        if transport >> 24 != UDP:
            return 442
        family = attributes.get("REQUESTED-ADDRESS-FAMILY")
        token = attributes.get("RESERVATION-TOKEN")
        if token is not None and (family is not None or "EVEN-PORT" in attributes):
            return 400
        if family is not None and family != self._family:
            return 440
        if "DONT-FRAGMENT" in attributes and not DONT_FRAGMENT_SUPPORTED:
            return 420
        return None

    def _refresh(self, request: Request, link: ClientLink, identity: Identity, allocation: Allocation) -> None:
        family = request.attributes.get("REQUESTED-ADDRESS-FAMILY")
        if family is not None and family != self._family:
            self._answer(link, request, identity, error=443)
            return
        requested = request.attributes.get("LIFETIME")
        if requested == 0:
            self.allocations.delete(allocation, "released by the client")
            self._answer(link, request, identity, attributes={"LIFETIME": 0})
            return
        lifetime = lifetime_for(requested)
        allocation.refresh(lifetime, time.monotonic())
        self._answer(link, request, identity, attributes={"LIFETIME": lifetime})

    def _peer_refusal(self, peer: tuple[str, int]) -> int | None:
        if (FAMILY_IPV6 if ":" in peer[0] else FAMILY_IPV4) != self._family:
            return 443
        if not self.policy.permits(peer[0], peer[1]):
            self.counters.permissions_refused += 1
            log.debug("turn: relay to %s:%s refused by policy", *peer)
            return 403
        return None

    def _create_permission(
        self, request: Request, link: ClientLink, identity: Identity, allocation: Allocation
    ) -> None:
        if not request.peers:
            self._answer(link, request, identity, error=400)
            return
        for peer in request.peers:
            error = self._peer_refusal(peer)
            if error is not None:
                self._answer(link, request, identity, error=error)
                return
        now = time.monotonic()
        if not allocation.permissions.room_for([peer[0] for peer in request.peers], now):
            self._answer(link, request, identity, error=508)
            return
        for peer in request.peers:
            allocation.permissions.install(peer[0], now)
        self._answer(link, request, identity)

    def _channel_bind(self, request: Request, link: ClientLink, identity: Identity, allocation: Allocation) -> None:
        number = request.attributes.get("CHANNEL-NUMBER")
        if number is None or len(request.peers) != 1 or not CHANNEL_MIN <= number <= CHANNEL_MAX:
            self._answer(link, request, identity, error=400)
            return
        peer = request.peers[0]
        error = self._peer_refusal(peer)
        if error is not None:
            self._answer(link, request, identity, error=error)
            return
        now = time.monotonic()
        if not allocation.permissions.room_for([peer[0]], now):
            self._answer(link, request, identity, error=508)
            return
        try:
            allocation.channels.bind(number, peer, now)
        except ChannelConflict:
            self._answer(link, request, identity, error=400)
            return
        allocation.permissions.install(peer[0], now)
        self._answer(link, request, identity)


def _relay_host(settings: TurnSettings) -> str:
    """The address relay sockets bind to: configured, the listening one, or the first interface's."""
    if settings.relay_address:
        return settings.relay_address
    if not ipaddress.ip_address(settings.listen_host).is_unspecified:
        return settings.listen_host
    ipv6 = ipaddress.ip_address(settings.listen_host).version == 6
    found = get_host_addresses(use_ipv4=not ipv6, use_ipv6=ipv6)
    if not found:
        raise OSError("no network interface to relay from: set turn.relay_address")
    return found[0]
