"""How the SFU adapts what it forwards, seen from aiortc peers over one real server process: H.264
forwarded untouched, loss recovered, key-frame requests throttled, sender reports relayed.

The server drops 5 % of the video it sends (``sfu.simulated_loss``), so every test here also runs
with the receivers' loss recovery at work."""

from __future__ import annotations

import asyncio
import datetime
import itertools
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from aiortc.stats import RTCRemoteOutboundRtpStreamStats

from tests.codec_guard_server import CODEC_USED
from tests.rtc_clients import (
    Participant,
    RemoteTrack,
    invite_code_of,
    join_meeting,
    make_meeting,
    make_user,
    wait_until,
)
from tests.server_process import ROOT, ServerProcess, request, start_server

GUARDED = ROOT / "tests" / "codec_guard_server.py"
LOSS = 0.05
KEYFRAME_REQUEST_INTERVAL = 0.5  # docs/sfu.md: at most one key-frame request per layer this often
names = itertools.count()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp("adaptation")
    env = {
        "HUIYI_RATE_LIMITS": "off",
        "HUIYI_SFU_BIND_ADDRESSES": "127.0.0.1",
        "HUIYI_SFU_SIMULATED_LOSS": str(LOSS),
        "PYTHONPATH": str(ROOT),  # the guard script lives in tests/
    }
    process = start_server("--data-dir", str(base / "data"), log=base / "server.log", env=env, script=GUARDED)
    yield process
    process.stop()
    assert CODEC_USED not in process.log.read_text(), "the server decoded or encoded media"


async def person(server: ServerProcess, meeting_id: int, host_token: str | None = None) -> Participant:
    token, user_id = make_user(server.url, f"user{next(names)}")
    if host_token is None:
        join_meeting(server.url, token, meeting_id)
    else:
        join_meeting(server.url, token, meeting_id, invite_code_of(server.url, host_token, meeting_id))
    participant = Participant(server.url, token, user_id, meeting_id)
    await participant.connect()
    return participant


@pytest.fixture
async def pair(server: ServerProcess) -> AsyncIterator[tuple[Participant, Participant]]:
    """A fresh meeting with a host (who will publish) and a viewer, both connected."""
    token, user_id = make_user(server.url, f"host{next(names)}")
    meeting_id = make_meeting(server.url, token)
    join_meeting(server.url, token, meeting_id)
    host = Participant(server.url, token, user_id, meeting_id)
    await host.connect()
    viewer = await person(server, meeting_id, host_token=token)
    yield host, viewer
    await asyncio.gather(host.close(), viewer.close(), return_exceptions=True)


def stats_of(server: ServerProcess, who: Participant) -> dict[str, Any]:
    status, body = request("GET", f"{server.url}/api/v1/webrtc/room/{who.meeting_id}/stats", token=who.token)
    assert status == 200, body
    return body["data"]


def video_subscription(stats: dict[str, Any], viewer: Participant) -> dict[str, Any]:
    return next(s for s in stats["subscriptions"] if s["subscriber_peer_id"] == viewer.peer_id and s["kind"] == "video")


def video_layer(stats: dict[str, Any], publisher: Participant) -> dict[str, Any]:
    track = next(t for t in stats["tracks"] if t["peer_id"] == publisher.peer_id and t["kind"] == "video")
    [layer] = track["layers"]  # aiortc does not send simulcast
    return layer


async def decoding(viewer: Participant, publisher: Participant, frames: int) -> RemoteTrack:
    """The publisher's video at the viewer, once it has decoded ``frames`` frames."""
    await wait_until(
        lambda: (t := viewer.video_from(publisher.user_id)) is not None and t.frames >= frames,
        20,
        f"{frames} decoded frames of the publisher's video",
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

    await wait_until(
        lambda: (s := video_subscription(stats_of(server, viewer), viewer))["nacks"] > 0 and s["retransmits"] > 0,
        10,
        "the viewer's NACKs to be answered with retransmissions",
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
    await wait_until(
        lambda: (
            video_subscription(stats_of(server, viewer), viewer)["plis"]
            >= video_subscription(before, viewer)["plis"] + storm
        ),
        5,
        "the server to count every PLI",
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
