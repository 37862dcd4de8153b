"""One UDP port for every connection's media (``[sfu] udp_port``), as LiveKit and mediasoup's
WebRtcServer offer it: one socket per bound address however many clients there are, and one firewall
rule for all of them.

Which connection a datagram is for:

- a STUN request goes by its USERNAME, whose first part is the server's ICE ufrag and so names one
  connection; when it also carries that connection's password (MESSAGE-INTEGRITY), the port learns
  that its sender's address is that connection's client. This holds for the first check from a new
  address, for consent checks, and for checks after an ICE restart: the restart's new ufrag names the
  connection gathered for it, and an address moves only to a connection gathered later than the one
  it belongs to, so the old connection's last consent checks do not pull it back;
- a STUN response goes to the connection whose check it answers (by transaction id);
- anything else (DTLS, RTP, RTCP, STUN indications) goes by the sender's address to the connection it
  was last learnt for.

What names no connection is dropped and counted on the port. A connection's addresses are forgotten
when it closes, so the table holds only live connections' clients.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from aioice import Candidate, stun
from aioice.candidate import candidate_foundation, candidate_priority

from sfu.arrival import HANDLING_TIME, ArrivalClock, KernelArrivalClock
from sfu.network import COMPONENT, SharedMediaProtocol, SharedPort, parse_stun

SOCKET_BUFFER_BYTES = 4 * 1024 * 1024  # every client's media passes this one socket (the kernel may cap it)
MAX_ADDRESSES = 16  # per connection; a client has a few candidates, the oldest address learnt goes first


class SharedUdpPort(SharedPort, asyncio.DatagramProtocol):
    kind = "udp"

    def __init__(self) -> None:
        super().__init__()
        self.transport: asyncio.DatagramTransport | None = None
        self.by_address: dict[tuple[str, int], SharedMediaProtocol] = {}
        self.clock: ArrivalClock = HANDLING_TIME

    @classmethod
    async def open(cls, host: str, port: int) -> SharedUdpPort:
        """Bind ``host:port``; raises ``OSError`` when it cannot be had."""
        _, shared = await asyncio.get_running_loop().create_datagram_endpoint(cls, local_addr=(host, port))
        return shared

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER_BYTES)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER_BYTES)
        self.clock = KernelArrivalClock.of(sock)
        host, port = transport.get_extra_info("sockname")[:2]
        self.candidate = Candidate(
            foundation=candidate_foundation("host", "udp", host),
            component=COMPONENT,
            transport="udp",
            priority=candidate_priority(COMPONENT, "host"),
            host=host,
            port=port,
            type="host",
        )

    def datagram_received(self, data: bytes | str, addr: tuple[Any, ...]) -> None:
        addr = (addr[0], addr[1])
        if not isinstance(data, bytes) or not data:
            self.malformed += 1
            return
        if data[0] < 4:
            message = parse_stun(data)
            if message is None:
                self.malformed += 1
                return
            protocol = self._stun_owner(message, addr)
        else:
            protocol = self.by_address.get(addr)
        if protocol is None:
            self.unrouted += 1
            return
        protocol.received(data, addr, self.clock)

    def _stun_owner(self, message: stun.Message, addr: tuple[str, int]) -> SharedMediaProtocol | None:
        if message.message_class in (stun.Class.RESPONSE, stun.Class.ERROR):
            return self.transactions.get(message.transaction_id)
        if message.message_class == stun.Class.INDICATION:
            return self.by_address.get(addr)
        protocol = self.named(message)
        if protocol is None:
            return None
        current = self.by_address.get(addr)
        if (current is None or current.serial < protocol.serial) and self.authentic(message, protocol):
            self._learn(addr, protocol)
        return protocol

    def _learn(self, addr: tuple[str, int], protocol: SharedMediaProtocol) -> None:
        previous = self.by_address.get(addr)
        if previous is not None:
            previous.addresses.pop(addr, None)
        if len(protocol.addresses) >= MAX_ADDRESSES:
            oldest = next(iter(protocol.addresses))
            del protocol.addresses[oldest]
            del self.by_address[oldest]
        self.by_address[addr] = protocol
        protocol.addresses[addr] = None

    def forget(self, protocol: SharedMediaProtocol) -> None:
        for addr in protocol.addresses:
            if self.by_address.get(addr) is protocol:
                del self.by_address[addr]
        protocol.addresses.clear()

    def send(self, protocol: SharedMediaProtocol, data: bytes, addr: tuple[str, int]) -> None:
        if self.transport is not None:
            self.transport.sendto(data, addr)

    def extra_info(self, name: str, default: Any = None) -> Any:
        return self.transport.get_extra_info(name, default) if self.transport is not None else default

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
