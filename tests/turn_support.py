"""Pieces the TURN tests share: a TURN server in the test's own event loop, a UDP echo peer, and a
raw STUN/TURN client that sends exactly the messages a test writes (aioice's ``stun.Message``) and
hands back what the server answered, so error responses can be checked one by one."""

from __future__ import annotations

import asyncio
import shutil
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aioice import stun

from config import load_settings
from config.settings import TurnSettings
from tests.conftest import IN_CI
from turn.credentials import issue, long_term_key
from turn.messages import TurnMessage, parse
from turn.server import TurnServer

SECRET = "test-turn-secret-of-some-length"
LOOPBACK = "127.0.0.1"
REQUESTED_UDP = 17 << 24


def turn_settings(**values: Any) -> TurnSettings:
    """The [turn] settings the tests run with: loopback only, any free port, loopback peers allowed."""
    layers = {
        "listen_host": LOOPBACK,
        "port": 0,
        "relay_port_min": 0,
        "relay_port_max": 0,
        "allowed_peer_cidrs": ["127.0.0.1/32"],
        **values,
    }
    return load_settings(None, {"turn": layers}, environ={}).turn


@asynccontextmanager
async def running_turn(**values: Any) -> AsyncIterator[TurnServer]:
    server = TurnServer(turn_settings(**values), SECRET)
    await server.start()
    try:
        yield server
    finally:
        await server.close()


class _Echo(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.received = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.DatagramTransport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received += 1
        self.transport.sendto(data, addr)


@asynccontextmanager
async def echo_peer() -> AsyncIterator[tuple[tuple[str, int], _Echo]]:
    """A UDP peer on 127.0.0.1 that sends every datagram back where it came from."""
    transport, protocol = await asyncio.get_running_loop().create_datagram_endpoint(_Echo, local_addr=(LOOPBACK, 0))
    try:
        yield transport.get_extra_info("sockname")[:2], protocol
    finally:
        transport.close()


def coturn_program(name: str) -> str:
    """The path of one of coturn's programs: under CI it must be installed, elsewhere the test is
    skipped when it is not."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is missing: apt-get install coturn"
        if IN_CI:
            pytest.fail(message + " (CI requires it)", pytrace=False)
        pytest.skip(message)
    return path


class _Inbox(asyncio.Protocol, asyncio.DatagramProtocol):
    """Sorts what the server sends: answers by transaction id, everything else in a queue."""

    def __init__(self) -> None:
        self.answers: dict[bytes, asyncio.Future[stun.Message]] = {}
        self.other: asyncio.Queue[bytes] = asyncio.Queue()
        self.buffer = b""
        self.lost = asyncio.Event()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set()

    def datagram_received(self, data: bytes, addr: Any) -> None:  # type: ignore[override]
        self.sort(data)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while len(self.buffer) >= 4:
            length = struct.unpack("!H", self.buffer[2:4])[0]
            size = 20 + length if self.buffer[0] < 0x40 else 4 + length + (-length & 3)
            if len(self.buffer) < size:
                return
            frame, self.buffer = self.buffer[:size], self.buffer[size:]
            self.sort(frame)

    def sort(self, data: bytes) -> None:
        if data[0] < 0x40:
            message = parse(data).message
            waiter = self.answers.pop(message.transaction_id, None)
            if message.message_class in (stun.Class.RESPONSE, stun.Class.ERROR) and waiter is not None:
                waiter.set_result(message)
                return
        self.other.put_nowait(data)


class Probe:
    """A TURN client under the test's control, over UDP or TCP."""

    def __init__(self, server: tuple[str, int], user_id: int | str = 1, transport: str = "udp") -> None:
        self.server = server
        self.transport_name = transport
        self.username, self.password = issue(SECRET, user_id, 3600)
        self.realm: str | None = None
        self.nonce: bytes | None = None
        self.inbox = _Inbox()
        self.transport: Any = None

    async def __aenter__(self) -> Probe:
        loop = asyncio.get_running_loop()
        if self.transport_name == "tcp":
            self.transport, _ = await loop.create_connection(lambda: self.inbox, *self.server)
        else:
            self.transport, _ = await loop.create_datagram_endpoint(lambda: self.inbox, remote_addr=self.server)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.transport.close()

    @property
    def local(self) -> tuple[str, int]:
        return self.transport.get_extra_info("sockname")[:2]

    def send(self, data: bytes) -> None:
        if self.transport_name == "tcp":
            self.transport.write(data + bytes(-len(data) & 3))
        else:
            self.transport.sendto(data)

    async def exchange(self, message: stun.Message | bytes, timeout: float = 3.0) -> stun.Message:
        """Send a request (a message, or its bytes) and return the answer to it."""
        data = bytes(message)
        waiter = asyncio.get_running_loop().create_future()
        self.inbox.answers[data[8:20]] = waiter
        self.send(data)
        return await asyncio.wait_for(waiter, timeout)

    def key(self) -> bytes:
        assert self.realm is not None
        return long_term_key(self.username, self.realm, self.password)

    async def request(
        self, method: stun.Method, attributes: dict[str, Any] | None = None, *, sign: bool = True
    ) -> stun.Message:
        """Send a request (signed with the current nonce once one is known) and return the answer;
        a first 401 or a 438 is answered by signing again, as a client does."""
        for _ in range(3):
            message = TurnMessage(method, stun.Class.REQUEST, attributes=dict(attributes or {}))
            if sign and self.nonce is not None:
                message.attributes.update({"USERNAME": self.username, "REALM": self.realm, "NONCE": self.nonce})
                message.add_message_integrity(self.key())
            answer = await self.exchange(message)
            if sign and answer.error_code in (401, 438) and "NONCE" in answer.attributes:
                retry = self.nonce is None or answer.error_code == 438
                self.realm, self.nonce = answer.attributes["REALM"], answer.attributes["NONCE"]
                if retry:
                    continue
            return answer
        return answer

    async def allocate(self, **attributes: Any) -> stun.Message:
        return await self.request(stun.Method.ALLOCATE, {"REQUESTED-TRANSPORT": REQUESTED_UDP, **attributes})

    async def next_frame(self, timeout: float = 3.0) -> bytes:
        return await asyncio.wait_for(self.inbox.other.get(), timeout)
