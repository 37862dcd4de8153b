"""The physical-limit baseline: a bare uvloop UDP relay that copies each datagram from a publisher to
every subscriber of its room, with no ICE, DTLS, SRTP or RTP work at all, and its plain-UDP clients.

``python -m bench.relay --port P --rooms N`` relays room ``r`` on port ``P + r``; a subscriber
registers by sending ``SUB``."""

from __future__ import annotations

import argparse
import asyncio
import random
from typing import Any

from bench.client import SyntheticClient, _Layer

REGISTER = b"SUB"


class RelayProtocol(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.subscribers: list[tuple[str, int]] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if data == REGISTER:
            if addr not in self.subscribers:
                self.subscribers.append(addr)
            return
        sendto = self.transport.sendto  # type: ignore[union-attr]
        for subscriber in self.subscribers:
            sendto(data, subscriber)


async def serve(port: int, rooms: int) -> None:
    loop = asyncio.get_running_loop()
    for room in range(rooms):
        await loop.create_datagram_endpoint(RelayProtocol, local_addr=("127.0.0.1", port + room))
    print(f"relaying {rooms} room(s) from UDP port {port}", flush=True)
    await asyncio.Event().wait()


class _ClientProtocol(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: Any) -> None:
        self.on_datagram = on_datagram

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.on_datagram(data)


class RelayClient(SyntheticClient):
    """The synthetic client over the relay: same replay and counting, plain UDP instead of WebRTC."""

    def __init__(self, url: str, room: int, clip: Any, record: bool) -> None:
        super().__init__(url, "", 0, room, clip, None, simulcast=False, record=record)  # type: ignore[arg-type]
        host, port = url.removeprefix("udp://").rsplit(":", 1)
        self.address = (host, int(port) + room)
        self.udp: asyncio.DatagramTransport | None = None

    async def connect(self) -> None:
        import time

        self.result.opened_ns = time.monotonic_ns()
        self.udp, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: _ClientProtocol(self._on_media), remote_addr=self.address
        )
        if self.clip is None:
            self.udp.sendto(REGISTER)

    async def publish(self) -> None:
        assert self.clip is not None and self.udp is not None
        self.layers = [_Layer("", self.clip.layers["h"], "1")]
        self.send_media = self.udp.sendto
        self.tasks.append(asyncio.get_running_loop().create_task(self._replay(random.getrandbits(32) or 3)))

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.udp is not None:
            self.udp.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rooms", type=int, default=8)
    arguments = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(arguments.port, arguments.rooms))


if __name__ == "__main__":
    main()
