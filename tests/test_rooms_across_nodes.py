"""A meeting whose participants come in through different nodes (PostgreSQL + Redis, two server
processes on loopback) has its media on one node, and moves to the other when that node dies."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import urllib.request
from pathlib import Path

import pytest
from aiortc.rtcdtlstransport import RTCCertificate

from bench.client import SyntheticClient
from control.forwarding import FORWARDED_HEADER
from control.lost_nodes import REAP_SECONDS
from tests.conftest import POSTGRES_URL, REDIS_URL
from tests.rtc_clients import Participant, connect_user
from tests.server_process import (
    ServerProcess,
    invite_code_of,
    join_meeting,
    make_user,
    request,
    room_stats,
    start_server,
)
from tests.support import until

LOOPBACK = {"HUIYI_SFU_BIND_ADDRESSES": "127.0.0.1"}
RECOVERY_SECONDS = 10.0
# A node is taken for dead after [cluster] node_timeout_seconds (4 s); dead for LOST_SECONDS, its
# sockets are closed for it by a node that looks every REAP_SECONDS.
LOST_SECONDS = 3
LOST_NODE_SECONDS = 4 + LOST_SECONDS + 2 * REAP_SECONDS


def _local_peers(node: ServerProcess, meeting_id: int, token: str) -> int:
    """The peers the node's own media server holds in the meeting (a request marked as handed on
    is answered where it lands)."""
    url = f"{node.url}/api/v1/webrtc/room/{meeting_id}/stats"
    headers = {"Authorization": f"Bearer {token}", FORWARDED_HEADER: "test"}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as answer:
        return int(json.load(answer)["data"]["peers"])


@pytest.mark.parametrize("nodes", [{**LOOPBACK, "HUIYI_CLUSTER_LOST_SECONDS": str(LOST_SECONDS)}], indirect=True)
async def test_participants_on_two_nodes_see_each_other_and_survive_the_media_node_dying(
    nodes: tuple[ServerProcess, ServerProcess], people: list[Participant]
) -> None:
    a, b = nodes
    alice = await connect_user(a.url, "alice", people=people)  # the first in: the room goes to node a
    token, user_id = make_user(b.url, "bob")
    join_meeting(b.url, token, alice.meeting_id, invite_code_of(a.url, alice.token, alice.meeting_id))
    bob = Participant(b.url, token, user_id, alice.meeting_id)
    people.append(bob)
    await bob.connect()
    # A bench client (counts packets, decodes nothing) also listens through node b.
    token, user_id = make_user(b.url, "carl")
    join_meeting(b.url, token, alice.meeting_id, invite_code_of(a.url, alice.token, alice.meeting_id))
    counter = SyntheticClient(
        b.url, token, user_id, alice.meeting_id, None, RTCCertificate.generateCertificate(), record=False
    )
    await counter.connect()
    # Dana is in through node a alone: when it dies, nothing brings her back.
    token, user_id = make_user(a.url, "dana")
    join_meeting(a.url, token, alice.meeting_id, invite_code_of(a.url, alice.token, alice.meeting_id))
    dana = Participant(a.url, token, user_id, alice.meeting_id)
    people.append(dana)
    await dana.connect()
    try:
        await _meet_then_lose_node_a(a, b, alice, bob, counter)
        # Node a does not come back: the nodes left close its sockets for it, so dana is offline
        # and the room hears that she left (node a would have done it on its return).
        await until(
            lambda: _status(b, alice, dana.user_id) == "offline", "dana to be offline", LOST_NODE_SECONDS, interval=0.5
        )
        left = [m for m in bob.messages if m["type"] == "user-left" and m["data"]["user_id"] == dana.user_id]
        assert len(left) == 1, left
        assert "node-a has been gone" in b.log.read_text()  # and the operator reads why
        assert _status(b, alice, bob.user_id) == "online"
    finally:
        await counter.close()


def _status(node: ServerProcess, host: Participant, user_id: int) -> str:
    status, body = request("GET", f"{node.url}/api/v1/meetings/{host.meeting_id}/participants", token=host.token)
    assert status == 200, body
    return next(p["status"] for p in body["data"] if p["user_id"] == user_id)


async def _meet_then_lose_node_a(
    a: ServerProcess, b: ServerProcess, alice: Participant, bob: Participant, counter: SyntheticClient
) -> None:
    await alice.publish()
    await bob.publish()
    await until(
        lambda: alice.receives_video(bob.user_id, 10) and bob.receives_video(alice.user_id, 10),
        "both to decode video",
        20,
    )
    assert {size for size in bob.video_from(alice.user_id).sizes} == {(320, 240)}  # type: ignore[union-attr]

    # Every peer (dana's too) is on node a's media server; bob's SDP answer named node a's candidates.
    assert room_stats(a.url, alice.meeting_id, alice.token)["peers"] == 4
    assert _local_peers(b, alice.meeting_id, bob.token) == 0
    # Asked through node b, node a answers about its room, and mutes bob there for his host.
    assert room_stats(b.url, alice.meeting_id, bob.token)["peers"] == 4
    status, muted = request("POST", f"{b.url}/api/v1/webrtc/peer/{bob.peer_id}/media", {"audio": False}, alice.token)
    assert status == 200 and muted["data"]["peer_id"] == bob.peer_id, muted
    assert [track["muted"] for track in muted["data"]["published"] if track["kind"] == "audio"] == [True]

    alice.fallback_urls = [b.url]  # her socket comes back through node b, as through a load balancer
    a.process.kill()
    killed, killed_ns = time.monotonic(), time.monotonic_ns()

    def counted_since_kill() -> int:
        return sum(stream.packets for stream in counter.result.streams.values() if stream.first_ns > killed_ns)

    await until(
        lambda: (
            alice.receives_video(bob.user_id, 5)
            and bob.receives_video(alice.user_id, 5)
            and alice.rebuilds
            and bob.rebuilds
        ),
        "both to receive video again through node b",
        RECOVERY_SECONDS,
    )
    print(f"media back on node b {time.monotonic() - killed:.1f} s after node a was killed")
    assert any(m["type"] == "reconnect" for m in bob.messages)  # told by node b, his socket's node
    assert room_stats(b.url, alice.meeting_id, bob.token)["peers"] == 3
    await until(lambda: counter.result.reconnects and counted_since_kill() > 100, "the bench client's packets", 5)


@pytest.mark.parametrize("nodes", [{**LOOPBACK, "HUIYI_CLUSTER_DRAIN_SECONDS": "60"}], indirect=True)
async def test_sigterm_drains_a_node_its_meetings_run_to_their_end(
    nodes: tuple[ServerProcess, ServerProcess], people: list[Participant]
) -> None:
    a, b = nodes
    alice = await connect_user(a.url, "alice", people=people)  # her meeting runs on node a
    token, user_id = make_user(b.url, "bob")
    join_meeting(b.url, token, alice.meeting_id, invite_code_of(a.url, alice.token, alice.meeting_id))
    bob = Participant(b.url, token, user_id, alice.meeting_id)
    people.append(bob)
    await bob.connect()
    await alice.publish()
    await until(lambda: bob.receives_video(alice.user_id, 5), "bob to decode alice's video", 20)

    a.process.send_signal(signal.SIGTERM)
    await until(lambda: request("GET", a.url + "/api/v1/health/ready")[0] == 503, "node a to say it drains")
    # A meeting that starts now is placed on node b, though its host came in through node a.
    carol = await connect_user(a.url, "carol", people=people)
    assert _local_peers(b, carol.meeting_id, carol.token) == 1
    assert _local_peers(a, carol.meeting_id, carol.token) == 0
    # The running one goes on where it is.
    seen = bob.video_from(alice.user_id).frames  # type: ignore[union-attr]
    await until(
        lambda: bob.receives_video(alice.user_id, seen + 15), "alice's video to keep coming while node a drains", 10
    )
    assert a.process.poll() is None and not bob.rebuilds

    # Once it has ended, node a stops by itself.
    assert request("POST", f"{a.url}/api/v1/meetings/{alice.meeting_id}/end", token=alice.token)[0] == 200
    assert await asyncio.to_thread(a.process.wait, 15) == 0


@pytest.mark.parametrize("nodes", [{**LOOPBACK, "HUIYI_CLUSTER_NODE_TIMEOUT_SECONDS": "60"}], indirect=True)
async def test_a_node_that_restarts_at_once_takes_its_sockets_media_with_it(
    nodes: tuple[ServerProcess, ServerProcess], people: list[Participant], tmp_path: Path
) -> None:
    """Node b dies and is back (same node id) long before its presence would lapse: node a, which ran
    the media of b's sockets, drops those peers when b announces its start."""
    a, b = nodes
    alice = await connect_user(a.url, "alice", people=people)
    token, user_id = make_user(b.url, "bob")
    join_meeting(b.url, token, alice.meeting_id, invite_code_of(a.url, alice.token, alice.meeting_id))
    bob = Participant(b.url, token, user_id, alice.meeting_id)
    people.append(bob)
    await bob.connect()
    assert room_stats(a.url, alice.meeting_id, alice.token)["peers"] == 2

    b.process.kill()
    b.process.wait()
    settings = ["--database-url", POSTGRES_URL, "--redis-url", REDIS_URL, "--data-dir", str(tmp_path / "b")]
    again = await asyncio.to_thread(start_server, *settings, log=b.log, env=b.env)
    try:
        await until(lambda: room_stats(a.url, alice.meeting_id, alice.token)["peers"] == 1, "bob's peer to go", 10)
    finally:
        again.stop()
