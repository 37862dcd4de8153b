"""How the SFU adapts what it forwards, seen from aiortc peers over one real server process: H.264
forwarded untouched, loss recovered, key-frame requests throttled, sender reports relayed, the
publisher's bitrate invitation following its uplink loss, its retransmissions unwrapped or (when
nobody asked for them) dropped, and inactive m-sections reused.

The server drops 5 % of the video it sends (``sfu.simulated_loss``), so every test here also runs
with the receivers' loss recovery at work."""

from __future__ import annotations

import asyncio
import datetime
import itertools
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from aiortc.rtp import RTCP_PSFB_APP, RtcpPsfbPacket, RtpPacket, is_rtcp, unpack_remb_fci
from aiortc.stats import RTCRemoteOutboundRtpStreamStats

from tests.codec_guard_server import CODEC_USED
from tests.rtc_clients import Participant, RemoteTrack, connect_user
from tests.server_process import ROOT, ServerProcess, room_stats, start_server
from tests.support import until

GUARDED = ROOT / "tests" / "codec_guard_server.py"
LOSS = 0.05
PUBLISH_BITRATE = 1_200_000  # [sfu] publish_bitrate: what the server invites a publisher to send
KEYFRAME_REQUEST_INTERVAL = 0.5  # docs/sfu.md: at most one key-frame request per layer this often
names = itertools.count()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp("adaptation")
    env = {
        "HUIYI_RATE_LIMITS": "off",
        "HUIYI_SFU_BIND_ADDRESSES": "127.0.0.1",
        "HUIYI_SFU_SIMULATED_LOSS": str(LOSS),
        "HUIYI_SFU_PUBLISH_BITRATE": str(PUBLISH_BITRATE),
        "PYTHONPATH": str(ROOT),  # the guard script lives in tests/
    }
    process = start_server("--data-dir", str(base / "data"), log=base / "server.log", env=env, script=GUARDED)
    yield process
    process.stop()
    assert CODEC_USED not in process.log.read_text(), "the server decoded or encoded media"


@pytest.fixture
async def pair(server: ServerProcess, people: list[Participant]) -> tuple[Participant, Participant]:
    """A fresh meeting with a host (who will publish) and a viewer, both connected."""
    host = await connect_user(server.url, f"host{next(names)}", people=people)
    return host, await connect_user(server.url, f"user{next(names)}", host, people)


def stats_of(server: ServerProcess, who: Participant) -> dict[str, Any]:
    """The room's media statistics, as ``who`` reads them."""
    return room_stats(server.url, who.meeting_id, who.token)


def video_subscription(stats: dict[str, Any], viewer: Participant) -> dict[str, Any]:
    return next(s for s in stats["subscriptions"] if s["subscriber_peer_id"] == viewer.peer_id and s["kind"] == "video")


def video_layer(stats: dict[str, Any], publisher: Participant) -> dict[str, Any]:
    track = next(t for t in stats["tracks"] if t["peer_id"] == publisher.peer_id and t["kind"] == "video")
    [layer] = track["layers"]  # aiortc does not send simulcast
    return layer


async def decoding(viewer: Participant, publisher: Participant, frames: int) -> RemoteTrack:
    """The publisher's video at the viewer, once it has decoded ``frames`` frames."""
    await until(
        lambda: (t := viewer.video_from(publisher.user_id)) is not None and t.frames >= frames,
        f"{frames} decoded frames of the publisher's video",
        20,
    )
    video = viewer.video_from(publisher.user_id)
    assert video is not None
    return video


async def test_h264_is_forwarded_end_to_end(server: ServerProcess, pair) -> None:
    host, viewer = pair
    await host.publish(video=(160, 120), audio=False, video_codec="video/H264")
    video = await decoding(viewer, host, 10)
    assert video.sizes == {(160, 120)}
    stats = stats_of(server, viewer)
    # The server forwarded H.264 packets as they came (the codec guard sees it never transcodes),
    # so the viewer decoded H.264.
    assert next(t for t in stats["tracks"] if t["kind"] == "video")["codec"] == "h264"
    assert video_layer(stats, host)["packets"] > 0 and video_subscription(stats, viewer)["packets"] > 0


async def test_simulated_loss_is_recovered_by_nack_and_retransmission(server: ServerProcess, pair) -> None:
    host, viewer = pair
    await host.publish(video=(160, 120), audio=False)
    video = await decoding(viewer, host, 5)

    # A window that measures: over 3 s, frames keep coming (15 a second are sent), no stall of 1.5 s.
    start, last_count, last_change, longest_stall = time.monotonic(), video.frames, time.monotonic(), 0.0
    first = video.frames
    while time.monotonic() - start < 3.0:
        await asyncio.sleep(0.05)
        now = time.monotonic()
        if video.frames != last_count:
            longest_stall = max(longest_stall, now - last_change)
            last_count, last_change = video.frames, now
    longest_stall = max(longest_stall, time.monotonic() - last_change)
    assert video.frames - first >= 30, f"only {video.frames - first} frames decoded in 3 s"
    assert longest_stall < 1.5, f"decoding stalled for {longest_stall:.2f} s"

    await until(
        lambda: (s := video_subscription(stats_of(server, viewer), viewer))["nacks"] > 0 and s["retransmits"] > 0,
        "the viewer's NACKs to be answered with retransmissions",
        10,
        interval=0.1,
    )


async def test_a_storm_of_plis_becomes_at_most_one_keyframe_request_per_half_second(
    server: ServerProcess, pair
) -> None:
    host, viewer = pair
    await host.publish(video=(160, 120), audio=False)
    video = await decoding(viewer, host, 5)
    ssrc = viewer.media_ssrc(video)

    opened = time.monotonic()
    before = stats_of(server, viewer)
    storm = 40
    for _ in range(storm):  # 40 PLIs in about a second, as a broken decoder might send
        await video.receiver._send_rtcp_pli(ssrc)
        await asyncio.sleep(0.025)
    await until(
        lambda: (
            video_subscription(stats_of(server, viewer), viewer)["plis"]
            >= video_subscription(before, viewer)["plis"] + storm
        ),
        "the server to count every PLI",
        5,
        interval=0.1,
    )
    after = stats_of(server, viewer)
    window = time.monotonic() - opened

    requests = video_layer(after, host)["keyframe_requests"] - video_layer(before, host)["keyframe_requests"]
    allowed = int(window / KEYFRAME_REQUEST_INTERVAL) + 1
    assert 1 <= requests <= allowed, f"{requests} key-frame requests upstream in {window:.2f} s for {storm} PLIs"


async def test_subscribers_get_sender_reports_on_the_publisher_clock(server: ServerProcess, pair) -> None:
    host, viewer = pair
    await host.publish(video=(160, 120), audio=False)
    video = await decoding(viewer, host, 5)

    async def sender_report() -> RTCRemoteOutboundRtpStreamStats | None:
        report = await video.receiver.getStats()
        return next((s for s in report.values() if isinstance(s, RTCRemoteOutboundRtpStreamStats)), None)

    deadline = time.monotonic() + 10
    first = await sender_report()
    while first is None and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        first = await sender_report()
    assert first is not None, "no RTCP sender report reached the viewer"
    assert first.ssrc == viewer.media_ssrc(video), "the report describes the stream the viewer receives"
    assert first.packetsSent > 0 and first.bytesSent > 0
    # Built from the publisher's own report (the same machine's clock) advanced to the sending time.
    skew = abs((first.remoteTimestamp - datetime.datetime.now(datetime.UTC)).total_seconds())
    assert skew < 2.0, f"the report's NTP time is {skew:.2f} s off"
    # Its counts are what the server sent this viewer (about 30 packets a second), not the publisher's.
    sent = video_subscription(stats_of(server, viewer), viewer)["packets"]
    assert sent - 90 <= first.packetsSent <= sent, (first.packetsSent, sent)

    later = first
    while later.remoteTimestamp == first.remoteTimestamp and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        later = await sender_report() or first
    assert later.remoteTimestamp > first.remoteTimestamp, "sender reports keep coming"
    assert later.packetsSent > first.packetsSent


class Uplink:
    """The publisher's video as it leaves its connection: what it sent, and a switch that loses
    packets on the way (``lose`` decides per packet, RTX included), as a lossy uplink would."""

    def __init__(self, publisher: Participant) -> None:
        self.sender = next(s for s in publisher.publisher.getSenders() if s.track and s.track.kind == "video")
        self.sent: dict[int, bytes] = {}  # media sequence number -> payload, first transmissions
        self.dropped: dict[int, bytes] = {}
        self.remb: list[int] = []  # bitrates of the REMB packets the publisher received, in order
        self.lose: Callable[[RtpPacket], bool] | None = None
        transport = self.sender.transport
        send = transport._send_rtp

        async def lossy_send(data: bytes) -> None:
            if not is_rtcp(data):
                packet = RtpPacket.parse(data)
                first = packet.ssrc == self.sender._ssrc
                if first:
                    self.sent[packet.sequence_number] = packet.payload
                if self.lose is not None and self.lose(packet):
                    if first:
                        self.dropped[packet.sequence_number] = packet.payload
                    return
            await send(data)

        transport._send_rtp = lossy_send
        handle = self.sender._handle_rtcp_packet

        async def watch_rtcp(packet) -> None:
            if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
                bitrate, ssrcs = unpack_remb_fci(packet.fci)
                if self.sender._ssrc in ssrcs:
                    self.remb.append(bitrate)
            await handle(packet)

        self.sender._handle_rtcp_packet = watch_rtcp


class Arrivals:
    """Every RTP packet of a received video as it reaches the viewer: each datagram's sequence number
    before decryption (so a repeat SRTP will reject as a replay is still seen), and each packet that
    decrypts, before any RTX unwrapping."""

    def __init__(self, viewer: Participant, video: RemoteTrack) -> None:
        self.media_ssrc = viewer.media_ssrc(video)
        self.media: list[tuple[int, int, bytes]] = []  # (payload type, sequence number, payload)
        self.datagrams: Counter[int] = Counter()  # media sequence number -> datagrams carrying it
        receiver = video.receiver
        handle = receiver._handle_rtp_packet

        async def watch(packet: RtpPacket, arrival_time_ms: int) -> None:
            if packet.ssrc == self.media_ssrc:
                self.media.append((packet.payload_type, packet.sequence_number, packet.payload))
            await handle(packet, arrival_time_ms)

        receiver._handle_rtp_packet = watch
        arrivals = self

        class Counting:
            def __init__(self, session) -> None:
                self.session = session

            def unprotect(self, data: bytes) -> bytes:
                if int.from_bytes(data[8:12], "big") == arrivals.media_ssrc:
                    arrivals.datagrams[int.from_bytes(data[2:4], "big")] += 1
                return self.session.unprotect(data)

            def unprotect_rtcp(self, data: bytes) -> bytes:
                return self.session.unprotect_rtcp(data)

        receiver.transport._rx_srtp = Counting(receiver.transport._rx_srtp)

    def offset(self, sent: dict[int, bytes]) -> int:
        """How the server shifts the publisher's sequence numbers for this viewer, from payloads seen
        on both sides (a payload can repeat, so the most common shift wins)."""
        by_payload = {payload: seq for seq, payload in sent.items()}
        shifts = Counter(
            (seq - by_payload[payload]) & 0xFFFF for _, seq, payload in self.media if payload in by_payload
        )
        assert shifts, "no packet the publisher sent reached the viewer"
        return shifts.most_common(1)[0][0]


async def test_publish_bitrate_falls_while_the_uplink_loses_and_recovers_after(server: ServerProcess, pair) -> None:
    host, viewer = pair
    await host.publish(video=(160, 120), audio=False)
    uplink = Uplink(host)
    await decoding(viewer, host, 5)
    await until(lambda: len(uplink.remb) >= 2, "two REMB packets at the publisher", 10)
    assert set(uplink.remb) == {PUBLISH_BITRATE}, f"a clean uplink is invited at publish_bitrate: {uplink.remb}"

    chance = random.Random(7)
    uplink.lose = lambda packet: chance.random() < 0.6  # retransmissions too: the loss outlasts repair
    lossy_from = len(uplink.remb)
    await until(
        lambda: any(bitrate < 0.8 * PUBLISH_BITRATE for bitrate in uplink.remb[lossy_from:]),
        "the invitation to fall while the uplink loses 60 %",
        10,
    )
    uplink.lose = None
    clean_from = len(uplink.remb)
    await until(
        lambda: (
            len(uplink.remb) > clean_from + 1
            and uplink.remb[-1] >= 1.15 * min(uplink.remb[clean_from - 1 :])
            and uplink.remb[-1] > uplink.remb[-2]
        ),
        "the invitation to rise again once the uplink is clean",
        10,
    )
    assert max(uplink.remb) <= PUBLISH_BITRATE, "the invitation never exceeds publish_bitrate"


async def test_publisher_retransmissions_reach_the_viewer_unwrapped(server: ServerProcess, pair) -> None:
    host, viewer = pair
    await host.publish(video=(160, 120), audio=False)
    uplink = Uplink(host)
    video = await decoding(viewer, host, 5)
    arrivals = Arrivals(viewer, video)
    before = video_layer(stats_of(server, viewer), host)["nacks_sent"]

    # Every 5th first transmission is lost; the server NACKs it and aiortc sends it again as RTX.
    uplink.lose = lambda packet: packet.ssrc == uplink.sender._ssrc and packet.sequence_number % 5 == 0
    await until(lambda: len(uplink.dropped) >= 8, "8 packets lost on the uplink", 10)
    uplink.lose = None
    lost = dict(uplink.dropped)
    assert video_layer(stats_of(server, viewer), host)["nacks_sent"] > before, "the server NACKed the lost packets"

    shift = arrivals.offset(uplink.sent)
    media_payload_type = next(pt for pt, _, _ in arrivals.media)

    def repaired() -> set[int]:
        """Lost packets that reached the viewer as media: its payload type, its shifted sequence number."""
        return {
            (seq - shift) & 0xFFFF
            for pt, seq, payload in arrivals.media
            if pt == media_payload_type and lost.get((seq - shift) & 0xFFFF) == payload
        }

    # The server itself loses 5 % on the way down (and repairs that on the RTX stream), so not all.
    await until(lambda: len(repaired()) >= len(lost) // 2, "the repaired packets at the viewer", 10)
    assert {pt for pt, _, _ in arrivals.media} == {media_payload_type}, "no RTX payload type on the media stream"


async def test_retransmissions_nobody_asked_for_are_dropped_as_probes(server: ServerProcess, pair) -> None:
    host, viewer = pair
    await host.publish(video=(160, 120), audio=False)
    uplink = Uplink(host)
    video = await decoding(viewer, host, 5)
    arrivals = Arrivals(viewer, video)
    await until(lambda: len(uplink.sent) >= 40, "40 packets sent", 10)
    before = video_layer(stats_of(server, viewer), host)["probes_dropped"]

    # Bandwidth probing as a browser does it: resend packets that arrived (still in aiortc's history).
    probed = sorted(uplink.sent)[-30:-10]
    for seq in probed:
        await uplink.sender._retransmit(seq)
    await until(
        lambda: video_layer(stats_of(server, viewer), host)["probes_dropped"] >= before + len(probed),
        f"{len(probed)} probes counted",
        5,
        interval=0.1,
    )
    # Not forwarded: no probed packet reached the viewer's media stream a second time, by the time
    # packets the publisher sent after the probes have reached it.
    shift = arrivals.offset(uplink.sent)
    later = (max(uplink.sent) + shift + 5) & 0xFFFF
    await until(
        lambda: any(0 <= (seq - later) & 0xFFFF < 1000 for seq in arrivals.datagrams),
        "packets sent after the probes at the viewer",
        5,
    )
    repeats = {seq: n for seq in probed if (n := arrivals.datagrams[(seq + shift) & 0xFFFF]) > 1}
    assert not repeats, f"probes forwarded to the viewer: {repeats}"


def m_sections(viewer: Participant) -> list[str]:
    assert viewer.subscriber is not None and viewer.subscriber.remoteDescription is not None
    return viewer.subscriber.remoteDescription.sdp.split("\r\nm=")[1:]


def offered(viewer: Participant, user_id: int) -> bool:
    """Whether the viewer's current remote description carries a video of ``user_id``."""
    if viewer.subscriber is None or viewer.subscriber.remoteDescription is None:
        return False
    tracks = {info["track_id"] for info in viewer.track_info.values() if info["user_id"] == user_id}
    return any(track in section for section in m_sections(viewer) for track in tracks)


async def test_renegotiation_reuses_the_m_section_of_a_publisher_who_left(server: ServerProcess) -> None:
    viewer = await connect_user(server.url, f"host{next(names)}")
    counts: list[int] = []
    try:
        for _ in range(4):
            publisher = await connect_user(server.url, f"user{next(names)}", viewer)
            try:
                await publisher.publish(video=(160, 120), audio=False)
                await until(
                    lambda user=publisher.user_id: offered(viewer, user),
                    "the viewer to be offered the new publisher's video",
                    10,
                )
                counts.append(len(m_sections(viewer)))
            finally:
                await publisher.close()
            # The server offers the section inactive; once the viewer has answered that, it is free.
            await until(
                lambda: all("a=inactive" in section for section in m_sections(viewer)) and not viewer._offers.locked(),
                "the departed publisher's m-section to become inactive",
                10,
            )
    finally:
        await viewer.close()
    assert counts[0] == 1, counts
    assert max(counts) <= 2, f"m-sections grew with each publisher who came and left: {counts}"
