"""ICE over TCP (RFC 6544) for clients whose UDP is blocked: a TCP port (``[sfu] tcp_port``) on each
bound address, listed in every connection's SDP as a passive host candidate ranked below the UDP ones.

A client connects and frames what it sends as RFC 4571 does: a 2-byte length, then one STUN, DTLS, RTP
or RTCP packet. Its first frame must be a STUN check that names one of the server's connections by its
ICE ufrag and carries that connection's password; the stream then belongs to that connection, and each
frame is handed to it as a datagram from the stream's remote address, so aioice's checks (answered on
the same stream), the DTLS handshake and SRTP run on it as they do on UDP. A stream that opens with
anything else, or says nothing for ``FIRST_FRAME_SECONDS``, is closed and counted. A stream that
cannot take more (its client reads too slowly) loses packets, as a datagram would be lost, rather
than delaying every later one.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aioice import Candidate
from aioice.candidate import candidate_foundation, candidate_priority

from sfu.network import COMPONENT, SharedMediaProtocol, SharedPort, parse_stun

FIRST_FRAME_SECONDS = 10.0  # a client checks as soon as it connects
MAX_UNIDENTIFIED = 256  # streams waiting for their first check; more are refused at once
MAX_STREAMS = 8  # per connection: a client opens one per candidate pair it checks
MAX_QUEUED_BYTES = 256 * 1024  # unsent bytes a stream may hold before packets are dropped
MAX_FRAME = 0xFFFF
# RFC 6544 4.2: a passive host candidate's local preference (direction 4 of 7), below UDP's 65535.
LOCAL_PREFERENCE = (1 << 13) * 4 + 8191


class TcpListener(SharedPort):
    kind = "tcp"

    def __init__(self) -> None:
        super().__init__()
        self.server: asyncio.Server | None = None
        self.streams: dict[tuple[str, int], TcpStream] = {}  # streams that named their connection
        self.unidentified: set[TcpStream] = set()
        self.send_drops = 0  # packets a full stream could not take

    @classmethod
    async def open(cls, host: str, port: int) -> TcpListener:
        """Listen on ``host:port``; raises ``OSError`` when it cannot be had."""
        listener = cls()
        loop = asyncio.get_running_loop()
        listener.server = await loop.create_server(lambda: TcpStream(listener), host, port, reuse_address=True)
        bound_host, bound_port = listener.server.sockets[0].getsockname()[:2]
        listener.candidate = Candidate(
            foundation=candidate_foundation("host", "tcp", bound_host),
            component=COMPONENT,
            transport="tcp",
            priority=candidate_priority(COMPONENT, "host", LOCAL_PREFERENCE),
            host=bound_host,
            port=bound_port,
            type="host",
            tcptype="passive",
        )
        return listener

    def identify(self, stream: TcpStream, frame: bytes) -> SharedMediaProtocol | None:
        """The connection a new stream's first frame names, which then owns the stream; ``None``
        (counted) when the frame is no authentic check for a connection that can take one more stream."""
        message = parse_stun(frame) if frame and frame[0] < 4 else None
        if message is None:
            self.malformed += 1
            return None
        protocol = self.named(message)
        if protocol is None or not self.authentic(message, protocol) or len(protocol.addresses) >= MAX_STREAMS:
            self.unrouted += 1
            return None
        self.unidentified.discard(stream)
        self.streams[stream.remote] = stream
        protocol.addresses[stream.remote] = None
        return protocol

    def lost(self, stream: TcpStream) -> None:
        self.unidentified.discard(stream)
        if self.streams.get(stream.remote) is stream:
            del self.streams[stream.remote]
            if stream.owner is not None:
                stream.owner.addresses.pop(stream.remote, None)

    def forget(self, protocol: SharedMediaProtocol) -> None:
        for addr in protocol.addresses:
            stream = self.streams.pop(addr, None)
            if stream is not None:
                stream.close()
        protocol.addresses.clear()

    def send(self, protocol: SharedMediaProtocol, data: bytes, addr: tuple[str, int]) -> None:
        stream = self.streams.get(addr)
        if stream is not None and stream.owner is protocol and not stream.send(data):
            self.send_drops += 1

    def extra_info(self, name: str, default: Any = None) -> Any:
        return (self.candidate.host, self.candidate.port) if name == "sockname" else default

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for stream in [*self.streams.values(), *self.unidentified]:
            stream.close()


class TcpStream(asyncio.Protocol):
    """One client's TCP connection to a ``TcpListener``, in RFC 4571 frames both ways."""

    def __init__(self, listener: TcpListener) -> None:
        self.listener = listener
        self.transport: asyncio.Transport | None = None
        self.remote: tuple[str, int] = ("", 0)
        self.owner: SharedMediaProtocol | None = None
        self._buffer = bytearray()
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.remote = (peer[0], peer[1])
        if len(self.listener.unidentified) >= MAX_UNIDENTIFIED:
            self.listener.unrouted += 1
            transport.abort()  # type: ignore[attr-defined]
            return
        self.listener.unidentified.add(self)
        self._deadline = asyncio.get_running_loop().call_later(FIRST_FRAME_SECONDS, self._silent)

    def _silent(self) -> None:
        self.listener.unrouted += 1
        self.close()

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        start = 0
        while len(buffer) - start >= 2:
            end = start + 2 + int.from_bytes(buffer[start : start + 2], "big")
            if end > len(buffer):
                break
            frame = bytes(buffer[start + 2 : end])
            start = end
            self._frame(frame)
            if self.transport is None or self.transport.is_closing():
                buffer.clear()
                return
        del buffer[:start]

    def _frame(self, frame: bytes) -> None:
        if self.owner is None:
            self.owner = self.listener.identify(self, frame)
            if self.owner is None:
                self.close()
                return
            if self._deadline is not None:
                self._deadline.cancel()
        self.owner.datagram_received(frame, self.remote)

    def send(self, data: bytes) -> bool:
        transport = self.transport
        if (
            transport is None
            or transport.is_closing()
            or len(data) > MAX_FRAME
            or transport.get_write_buffer_size() > MAX_QUEUED_BYTES
        ):
            return False
        transport.write(len(data).to_bytes(2, "big") + data)
        return True

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self.listener.lost(self)
        self.transport = None
