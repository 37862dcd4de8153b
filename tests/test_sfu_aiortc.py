"""The SFU against real aiortc peers, over the real server process: media forwarded, never decoded."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from bench.metrics import media_workers
from tests.codec_guard_server import CODEC_USED
from tests.rtc_clients import Participant, connect_user
from tests.server_process import ROOT, ServerProcess, make_user, request, room_stats, start_server
from tests.support import until

GUARDED = ROOT / "tests" / "codec_guard_server.py"


@pytest.fixture
def server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    """The server with its codec factories trapped; a test may add settings by parametrizing this
    fixture indirectly with a dict of HUIYI_* variables."""
    log = tmp_path / "server.log"
    # The guard script lives in tests/, so this checkout's packages must be put on its path.
    env = {"HUIYI_RATE_LIMITS": "off", "HUIYI_SFU_BIND_ADDRESSES": "127.0.0.1", "PYTHONPATH": str(ROOT)}
    env.update(getattr(request, "param", {}))
    process = start_server("--data-dir", str(tmp_path / "data"), log=log, env=env, script=GUARDED)
    yield process
    process.stop()


@pytest.fixture
async def room(
    server: ServerProcess, people: list[Participant]
) -> AsyncIterator[tuple[ServerProcess, int, list[Participant]]]:
    """A meeting whose host (first of the people) is ready to publish."""
    host = await connect_user(server.url, "host", people=people)
    yield server, host.meeting_id, people


async def test_one_publisher_two_subscribers_then_a_late_joiner_then_the_publisher_leaves(room) -> None:
    server, meeting_id, people = room
    host = people[0]
    await host.publish(video=(320, 240), audio=True)
    alice = await connect_user(server.url, "alice", host, people)
    bob = await connect_user(server.url, "bob", host, people)

    for viewer in (alice, bob):
        await until(
            lambda v=viewer: (t := v.video_from(host.user_id)) is not None and t.frames >= 10,
            f"user {viewer.user_id} to decode 10 frames of the host's video",
            20,
        )
        video = viewer.video_from(host.user_id)
        assert video is not None and video.sizes == {(320, 240)}
        audio = [r for r in viewer.remote.values() if r.track.kind == "audio"]
        assert audio and audio[0].info["user_id"] == host.user_id
        await until(lambda a=audio[0]: a.frames >= 20, "audio frames", 10)

    carol = await connect_user(server.url, "carol", host, people)
    await until(
        lambda: (t := carol.video_from(host.user_id)) is not None and t.frames >= 5, "the late joiner's frames", 20
    )

    viewers = {alice.peer_id, bob.peer_id, carol.peer_id}
    stats = room_stats(server.url, meeting_id, alice.token)
    assert stats["peers"] == 4
    published = {track["kind"]: track for track in stats["tracks"]}
    assert {track["peer_id"] for track in stats["tracks"]} == {host.peer_id} and published.keys() == {"audio", "video"}
    assert published["video"]["codec"] == "vp8" and published["video"]["subscribers"] == 3
    [layer] = published["video"]["layers"]  # aiortc sends no simulcast: one layer, named high
    assert layer["name"] == "high" and layer["active"] and layer["packets"] > 0 and layer["bytes"] > 0
    assert published["audio"]["layers"][0]["packets"] > 0
    for subscription in stats["subscriptions"]:
        assert subscription["subscriber_peer_id"] in viewers and subscription["publisher_peer_id"] == host.peer_id
        assert subscription["packets"] > 0 and subscription["bytes"] > 0 and not subscription["paused"]
        if subscription["kind"] == "video":
            assert subscription["current_layer"] == "high", subscription
    assert sorted(s["subscriber_peer_id"] for s in stats["subscriptions"]) == sorted([*viewers, *viewers])
    connections = {(t["peer_id"], t["connection"]): t for t in stats["transports"]}
    assert connections[(host.peer_id, "publisher")]["state"] == "connected"
    assert connections[(host.peer_id, "publisher")]["packets_in"] > 0
    for viewer_id in viewers:
        assert connections[(viewer_id, "subscriber")]["state"] == "connected"
        assert connections[(viewer_id, "subscriber")]["packets_out"] > 0

    await host.close()
    people.remove(host)
    for viewer in (alice, bob, carol):
        video = viewer.video_from(host.user_id)
        assert video is not None
        await asyncio.wait_for(video.ended.wait(), 2)  # within a second or so of leaving

    assert CODEC_USED not in server.log.read_text()


def speaker_announcements(person: Participant) -> list[dict]:
    return [
        m["data"]["active_speaker"]
        for m in person.messages
        if m["type"] == "media-state" and m["from"] == 0 and "active_speaker" in m["data"]
    ]


async def test_active_speaker_server_side_mute_and_media_rest_rules(room) -> None:
    server, meeting_id, people = room
    host = people[0]
    alice = await connect_user(server.url, "alice", host, people)
    bob = await connect_user(server.url, "bob", host, people)
    await alice.publish(video=None, audio=True)

    await until(lambda: speaker_announcements(bob), "bob to hear who is speaking", 10)
    assert speaker_announcements(bob)[-1]["user_id"] == alice.user_id
    assert speaker_announcements(bob)[-1]["peer_id"] == alice.peer_id
    # Someone who comes in while alice talks is told so at once, not only when the speaker changes.
    carla = await connect_user(server.url, "carla", host, people)
    await until(lambda: speaker_announcements(carla), "carla to hear who is speaking", 10)
    assert speaker_announcements(carla)[0]["user_id"] == alice.user_id

    def alice_audio_at_bob():
        return next((r for r in bob.remote.values() if r.info.get("user_id") == alice.user_id), None)

    await until(lambda: (a := alice_audio_at_bob()) is not None and a.frames > 10, "alice's audio at bob", 10)

    url = f"{server.url}/api/v1/webrtc"
    # Only the peer itself or a host/moderator may change a peer's media.
    status, body = request("POST", f"{url}/peer/{alice.peer_id}/media", {"audio": False}, token=bob.token)
    assert status == 403, body
    status, body = request("POST", f"{url}/peer/{'0' * 32}/media", {"audio": False}, token=host.token)
    assert status == 404, body
    status, body = request("POST", f"{url}/peer/{alice.peer_id}/media", {}, token=host.token)
    assert status == 400, body
    status, body = request("POST", f"{url}/peer/{alice.peer_id}/media", {"layer": "huge"}, token=host.token)
    assert status == 400 and body["data"]["errors"][0]["field"] == "layer", body

    status, body = request("POST", f"{url}/peer/{alice.peer_id}/media", {"audio": False}, token=host.token)
    assert status == 200, body
    assert body["data"]["published"][0]["muted"] is True
    await until(
        lambda: any(
            m["type"] == "media-state" and m["data"].get("media_state", {}).get("audio") is False for m in bob.messages
        ),
        "bob to hear that alice was muted",
        5,
    )

    def forwarded_to_bob() -> int:
        stats = room_stats(server.url, meeting_id, bob.token)
        return next(s["packets"] for s in stats["subscriptions"] if s["subscriber_peer_id"] == bob.peer_id)

    # A window in which nothing may happen: the server forwards no packet once the mute is answered,
    # and bob decodes at most what was already in flight (an unmuted second is 50 frames).
    forwarded, frozen = forwarded_to_bob(), alice_audio_at_bob().frames
    await asyncio.sleep(1.0)
    assert forwarded_to_bob() == forwarded, "a muted peer's audio is no longer forwarded"
    assert alice_audio_at_bob().frames <= frozen + 10

    status, body = request("POST", f"{url}/peer/{alice.peer_id}/media", {"audio": True}, token=alice.token)
    assert status == 200 and body["data"]["published"][0]["muted"] is False
    await until(lambda: alice_audio_at_bob().frames > frozen + 20, "alice's audio to flow again", 10)


async def test_room_views_are_for_members_only(room) -> None:
    server, meeting_id, people = room
    outsider_token, _ = make_user(server.url, "outsider")
    url = f"{server.url}/api/v1/webrtc/room"
    status, body = request("GET", f"{url}/{meeting_id}/peers", token=outsider_token)
    assert status == 403, body
    status, body = request("GET", f"{url}/{meeting_id}/stats", token=outsider_token)
    assert status == 403, body
    status, body = request("GET", f"{url}/999999/peers", token=people[0].token)
    assert status == 404 and body["code"] == 2001, body
    status, body = request("GET", f"{url}/{meeting_id}/peers", token=people[0].token)
    assert status == 200 and [peer["user_id"] for peer in body["data"]] == [people[0].user_id], body


def udp_sockets(pid: int) -> int:
    """UDP sockets the server holds (its media workers' too, when it has them): its socket fds
    whose inodes /proc/net/udp lists."""
    inodes = set()
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        with open(table) as rows:
            inodes |= {row.split()[9] for row in list(rows)[1:]}
    held = 0
    for process in (pid, *media_workers(pid)):
        for fd in Path(f"/proc/{process}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            held += target.startswith("socket:[") and target[8:-1] in inodes
    return held


@pytest.mark.parametrize("server", [{"HUIYI_SFU_SILENCE_SECONDS": "3"}], indirect=True, ids=["silence_3s"])
async def test_a_publisher_whose_media_vanishes_is_reaped(room) -> None:
    server, meeting_id, people = room
    host = people[0]
    await host.publish(video=(160, 120), audio=False)
    alice = await connect_user(server.url, "alice", host, people)
    await until(lambda: (t := alice.video_from(host.user_id)) is not None and t.frames > 5, "frames", 20)
    held = udp_sockets(server.process.pid)

    # The host's network drops: no DTLS goodbye, no more packets; its signaling socket stays open.
    for transceiver in host.publisher.getTransceivers():
        for protocol in transceiver.sender.transport.transport._connection._protocols:
            protocol.transport.close()

    video = alice.video_from(host.user_id)
    assert video is not None
    started = time.monotonic()
    # Silence is noticed on the server's once-a-second check; ICE consent expiry would take ~30 s.
    await asyncio.wait_for(video.ended.wait(), 10)
    assert time.monotonic() - started >= 2.5, "a connection is closed only after sfu.silence_seconds"
    status, body = request("GET", f"{server.url}/api/v1/webrtc/room/{meeting_id}/peers", token=alice.token)
    assert status == 200
    reaped = next(peer for peer in body["data"] if peer["user_id"] == host.user_id)
    assert reaped["publisher_state"] == "failed" and reaped["published"] == []
    await until(lambda: udp_sockets(server.process.pid) < held, "the server to close the host's UDP socket", 5)
