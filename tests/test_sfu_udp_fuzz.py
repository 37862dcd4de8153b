"""Hostile UDP at the live SFU: while a publisher and a subscriber are connected and video flows, tens
of thousands of random, truncated and mutated STUN, DTLS, RTP and RTCP datagrams hit its media ports,
from strangers' sockets and from the clients' own 5-tuples. The server stays up, counts what it
dropped, and the subscriber keeps decoding."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aioice import stun
from aiortc import RTCPeerConnection

from sfu import rtcp, rtp
from tests.rtc_clients import Participant, connect_user
from tests.server_process import ServerProcess, request, room_stats, start_server
from tests.support import until
from tests.test_sfu_packets import rtp_packet

STRANGER_DATAGRAMS = 16_000
SPOOFED_DATAGRAMS = 4_000
BATCH = 250  # datagrams sent between two turns of the event loop, so the clients' media keeps flowing
FUZZ_SECONDS = 10.0


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    env = {"HUIYI_RATE_LIMITS": "off", "HUIYI_SFU_BIND_ADDRESSES": "127.0.0.1"}
    process = start_server("--data-dir", str(tmp_path / "data"), log=tmp_path / "server.log", env=env)
    yield process
    process.stop()


def corpus(generator: random.Random) -> list[bytes]:
    """Valid-looking datagrams of every kind the media port demultiplexes."""
    binding = stun.Message(stun.Method.BINDING, stun.Class.REQUEST, transaction_id=generator.randbytes(12))
    binding.attributes["USERNAME"] = "abcd:efgh"
    binding.attributes["PRIORITY"] = 1853824767
    binding.attributes["ICE-CONTROLLING"] = generator.getrandbits(64)
    binding.attributes["USE-CANDIDATE"] = None
    binding.add_message_integrity(b"x" * 22)
    binding.add_fingerprint()
    extension = rtp.extension_block([(1, b"0"), (2, b"h")])
    return [
        bytes(binding),
        bytes([22, 0xFE, 0xFD, 0, 0]) + generator.randbytes(8) + b"\x00\x40" + generator.randbytes(64),  # DTLS
        bytes([23, 0xFE, 0xFD, 0, 1]) + generator.randbytes(8) + b"\x00\x20" + generator.randbytes(32),
        rtp_packet(
            generator.getrandbits(16), 1, generator.getrandbits(32), b"\x10" + generator.randbytes(80), ext=extension
        ),
        rtcp.receiver_report(1, [rtcp.ReportBlock(2, 1, 1, 1, 1, 1, 1)]) + rtcp.nack(1, 2, [5, 6]) + rtcp.pli(1, 2),
        rtcp.remb(1, 1_000_000, [2, 3]),
    ]


def hostile(generator: random.Random, pool: list[bytes]) -> bytes:
    """Random bytes, an empty datagram, or a valid-looking one mutated and maybe cut short."""
    roll = generator.random()
    if roll < 0.05:
        return b""
    if roll < 0.2:
        return generator.randbytes(generator.randrange(1, 200))
    data = bytearray(generator.choice(pool))
    for _ in range(generator.randrange(0, 6)):
        data[generator.randrange(len(data))] = generator.randrange(256)
    if generator.random() < 0.5:
        del data[generator.randrange(len(data) + 1) :]
    return bytes(data)


def nominated(pc: RTCPeerConnection):
    pair = pc.getTransceivers()[0].sender.transport.transport._connection._nominated[1]
    return pair.protocol.transport, pair.remote_addr


def transport_counters(server: ServerProcess, who: Participant) -> dict[str, dict[str, int]]:
    return {
        f"{t['peer_id']}/{t['connection']}": {k: t[k] for k in ("malformed", "srtp_failures", "packets_in")}
        for t in room_stats(server.url, who.meeting_id, who.token)["transports"]
    }


async def test_hostile_datagrams_are_dropped_and_media_keeps_flowing(server, people) -> None:
    host = await connect_user(server.url, "host", people=people)
    await host.publish(video=(160, 120), audio=True)
    viewer = await connect_user(server.url, "viewer", host, people)
    await until(lambda: (t := viewer.video_from(host.user_id)) is not None and t.frames >= 5, "frames", 20)
    assert viewer.subscriber is not None
    before = transport_counters(server, host)

    targets = [nominated(host.publisher)[1], nominated(viewer.subscriber)[1]]
    assert all(address[0] == "127.0.0.1" for address in targets)
    own_tuples = [nominated(host.publisher), nominated(viewer.subscriber)]
    strangers = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(4)]
    generator = random.Random(20240611)
    pool = corpus(generator)
    sent = 0
    deadline = time.monotonic() + FUZZ_SECONDS
    try:
        for stranger in strangers:
            stranger.bind(("127.0.0.1", 0))
            stranger.setblocking(False)
        while sent < STRANGER_DATAGRAMS + SPOOFED_DATAGRAMS and time.monotonic() < deadline:
            for _ in range(BATCH):
                data = hostile(generator, pool)
                if sent < STRANGER_DATAGRAMS:
                    # A full socket buffer loses the datagram, as a network would.
                    with contextlib.suppress(BlockingIOError):
                        generator.choice(strangers).sendto(data, generator.choice(targets))
                else:  # from the client's own address and port, as a spoofer on the path would send
                    transport, address = generator.choice(own_tuples)
                    transport.sendto(data, address)
                sent += 1
            await asyncio.sleep(0.005)
    finally:
        for stranger in strangers:
            stranger.close()
    assert sent == STRANGER_DATAGRAMS + SPOOFED_DATAGRAMS, f"only {sent} datagrams sent in {FUZZ_SECONDS} s"

    assert server.process.poll() is None and request("GET", server.url + "/api/v1/health")[0] == 200
    video = viewer.video_from(host.user_id)
    assert video is not None
    frames = video.frames
    await until(lambda: video.frames >= frames + 15, "the viewer to decode new frames after the fuzzing", 20)
    after = transport_counters(server, host)
    publisher_key = next(key for key in after if key.endswith("/publisher"))
    subscriber_key = next(key for key in after if key.endswith("/subscriber"))
    for key in (publisher_key, subscriber_key):
        assert after[key]["malformed"] > before[key]["malformed"] + 100, (key, before[key], after[key])
        assert after[key]["srtp_failures"] > before[key]["srtp_failures"], (key, before[key], after[key])
    assert "Traceback" not in server.log.read_text(), "nothing the datagrams did ended up as a server error"
