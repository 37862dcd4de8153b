"""ICE over TCP (``[sfu] tcp_port``): the server lists a passive TCP candidate below its UDP ones, and a
client whose UDP is blocked reaches it over a TCP stream of RFC 4571 frames. In process: framing, the
first frame naming its connection, and strangers' streams refused and counted. End to end: a headless
Chromium forbidden UDP joins a meeting with an aiortc participant (aioice has no TCP candidates, so
aiortc stays on UDP beside it), both decode each other's video, the browser's selected candidate pairs
are TCP, and an ICE restart over TCP keeps the media flowing."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from aioice import Candidate, stun

from sfu.icetcp import TcpListener
from sfu.network import LOOPBACK, Network, gather
from sfu.ports import open_listeners
from tests.browser import launch, needs_chromium, open_participant, video_from
from tests.ice_checks import HELLO, check, check_for
from tests.rtc_clients import Participant, invite_code_of, join_meeting, make_meeting, make_user
from tests.server_process import ServerProcess, free_port, free_udp_port, start_server
from tests.support import media_status, until

# Chromium's own policy for networks that block UDP: no UDP unless a proxy carries it, and there is none.
NO_UDP = ["--force-webrtc-ip-handling-policy", "--webrtc-ip-handling-policy=disable_non_proxied_udp"]
SELECTED_PAIRS = """async () => Promise.all([window.huiyi.publisher, window.huiyi.subscriber].map(async (pc) => {
  const report = await pc.getStats();
  const stats = {};
  report.forEach((entry) => { stats[entry.id] = entry; });
  const transport = Object.values(stats).find((entry) => entry.type === 'transport' && entry.selectedCandidatePairId);
  const pair = transport && stats[transport.selectedCandidatePairId];
  return pair ? { local: stats[pair.localCandidateId], remote: stats[pair.remoteCandidateId] } : null;
}))"""
REMOTE_UFRAGS = """[window.huiyi.publisher, window.huiyi.subscriber].map(
    (pc) => (pc.remoteDescription.sdp.match(/a=ice-ufrag:(\\S+)/) || [])[1] || null)"""


def frame(data: bytes) -> bytes:
    return len(data).to_bytes(2, "big") + data


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    length = int.from_bytes(await asyncio.wait_for(reader.readexactly(2), 5), "big")
    return await asyncio.wait_for(reader.readexactly(length), 5)


@pytest.fixture
async def listening() -> AsyncIterator[tuple[Network, TcpListener]]:
    network = await open_listeners(Network(bind=LOOPBACK.bind, udp_port=free_udp_port(), tcp_port=free_port()))
    assert network.listeners is not None
    (listener,) = [port for port in network.listeners.ports if isinstance(port, TcpListener)]
    yield network, listener
    network.listeners.close()


# in process -----------------------------------------------------------------------------------------


async def test_a_passive_tcp_candidate_is_listed_below_the_udp_one(listening) -> None:
    network, _ = listening
    connection = await gather(network)
    try:
        udp, tcp = connection.local_candidates
        assert (udp.transport, udp.port) == ("udp", network.udp_port)
        assert (tcp.transport, tcp.port, tcp.tcptype) == ("tcp", network.tcp_port, "passive")
        assert tcp.priority < udp.priority
        assert re.fullmatch(
            rf"\S+ 1 tcp {tcp.priority} 127\.0\.0\.1 {network.tcp_port} typ host tcptype passive", tcp.to_sdp()
        )
        parsed = Candidate.from_sdp(tcp.to_sdp())  # as a client reads it
        assert (parsed.transport, parsed.tcptype) == ("tcp", "passive")
    finally:
        await connection.close()


async def test_a_stream_belongs_to_the_connection_its_first_check_names(listening) -> None:
    network, listener = listening
    connection = await gather(network)
    reader, writer = await asyncio.open_connection("127.0.0.1", network.tcp_port)
    try:
        framed = frame(check_for(connection))
        for piece in (framed[:1], framed[1:9], framed[9:]):  # frames may arrive in any pieces
            writer.write(piece)
            await writer.drain()
        answer = stun.parse_message(await read_frame(reader))
        assert answer.message_class == stun.Class.RESPONSE
        assert answer.attributes["XOR-MAPPED-ADDRESS"] == writer.get_extra_info("sockname")[:2]
        writer.write(frame(HELLO) + frame(b""))  # two frames in one write; an empty one is dropped
        await until(lambda: connection._queue.qsize() == 1, "the client's DTLS to reach its connection")
        assert connection._queue.get_nowait()[0] == HELLO
        assert len(listener.streams) == 1 and not listener.unidentified

        await connection.close()  # the connection goes: so does its stream
        assert await asyncio.wait_for(reader.read(), 5) == b""
        await until(lambda: not listener.streams and not listener.by_ufrag, "the listener to forget the connection")
    finally:
        writer.close()
        await connection.close()


async def test_streams_that_name_no_connection_are_closed_and_counted(listening) -> None:
    network, listener = listening
    connection = await gather(network)
    openings = [
        frame(check("nobody", "x" * 22)),  # no connection has this ufrag
        frame(check(connection.local_username, "x" * 22)),  # the right ufrag, the wrong password
        frame(HELLO),  # DTLS before any check
        frame(b"\x00\x01 not stun at all"),
        frame(b""),
    ]
    try:
        for opening in openings:
            reader, writer = await asyncio.open_connection("127.0.0.1", network.tcp_port)
            writer.write(opening)
            with contextlib.suppress(ConnectionResetError):
                assert await asyncio.wait_for(reader.read(), 5) == b"", "closed without an answer"
            writer.close()
        assert (listener.unrouted, listener.malformed) == (2, 3)
        await until(lambda: not listener.unidentified and not listener.streams, "the refused streams to be gone")
        assert connection._queue.empty() and not connection._early_checks
    finally:
        await connection.close()


# end to end -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("ice-tcp")
    env = {
        "HUIYI_RATE_LIMITS": "off",
        "HUIYI_SFU_BIND_ADDRESSES": "127.0.0.1",
        "HUIYI_SFU_UDP_PORT": str(free_udp_port()),
        "HUIYI_SFU_TCP_PORT": str(free_port()),
    }
    process = start_server("--data-dir", str(tmp / "data"), log=tmp / "server.log", env=env)
    yield process
    process.stop()


@pytest.fixture
async def udp_blocked_browser() -> AsyncIterator[Any]:
    async with launch(*NO_UDP) as launched:
        yield launched


def selected_udp_pair(pc: Any) -> tuple[str, int]:
    """An aiortc connection's nominated pair: its local transport and the server port it reaches."""
    pair = pc.getTransceivers()[0].sender.transport.transport._connection._nominated[1]
    return pair.local_candidate.transport, pair.remote_addr[1]


@needs_chromium
async def test_a_browser_without_udp_joins_over_tcp(server, udp_blocked_browser, people) -> None:
    udp_port, tcp_port = int(server.env["HUIYI_SFU_UDP_PORT"]), int(server.env["HUIYI_SFU_TCP_PORT"])
    token, user_id = make_user(server.url, "host")
    meeting_id = make_meeting(server.url, token)
    join_meeting(server.url, token, meeting_id)
    host = Participant(server.url, token, user_id, meeting_id)
    people.append(host)
    await host.connect()
    await host.publish(video=(320, 240), audio=True)
    guest_token, guest_id = make_user(server.url, "guest")
    join_meeting(server.url, guest_token, meeting_id, invite_code_of(server.url, token, meeting_id))
    page = await open_participant(udp_blocked_browser, server, meeting_id, guest_token, guest_id)

    async def decoded() -> tuple[int, int]:
        """Frames of the host's video the browser decoded, and of the browser's the host decoded."""
        seen, received = await video_from(page, user_id), host.video_from(guest_id)
        return (seen or {}).get("framesDecoded", 0), received.frames if received is not None else 0

    async def decoding(than: tuple[int, int]) -> bool:
        return all(now > then + 30 for now, then in zip(await decoded(), than, strict=True))

    await until(lambda: decoding((0, 0)), "the browser and the aiortc host to decode each other's video", timeout=40)
    for pair in await page.evaluate(SELECTED_PAIRS):
        assert pair is not None
        assert (pair["local"]["protocol"], pair["local"]["tcpType"]) == ("tcp", "active"), pair
        assert (pair["remote"]["protocol"], pair["remote"]["port"]) == ("tcp", tcp_port), pair
    assert host.subscriber is not None
    for pc in (host.publisher, host.subscriber):
        assert f"127.0.0.1 {tcp_port} typ host tcptype passive" in pc.remoteDescription.sdp
        assert selected_udp_pair(pc) == ("udp", udp_port)
    status = await media_status(server)
    assert status["tcp_streams"] >= 2 and status["udp_connections"] == 4 and status["media_sockets"] == 1

    # The browser restarts ICE on both connections: new credentials, new streams, media goes on.
    before = await page.evaluate(REMOTE_UFRAGS)
    await page.evaluate("window.huiyi.restartIce()")

    async def restarted() -> bool:
        now = await page.evaluate(REMOTE_UFRAGS)
        return all(now) and all(a != b for a, b in zip(now, before, strict=True))

    await until(restarted, "both of the browser's connections to get new server ICE credentials", timeout=15)
    then = await decoded()
    await until(lambda: decoding(then), "media to flow both ways after the restart", timeout=20)
    assert all(pair["local"]["protocol"] == "tcp" for pair in await page.evaluate(SELECTED_PAIRS))

    # The browser leaves: its streams are closed and the listener forgets it.
    await page.context.close()

    async def gone() -> bool:
        status = await media_status(server)
        return status["peers"] == 1 and status["tcp_streams"] == 0 and status["udp_connections"] == 2

    await until(gone, "the browser's connections and streams to be gone", timeout=30)
    assert "Traceback" not in server.log.read_text()
