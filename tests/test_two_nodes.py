"""Two server processes sharing PostgreSQL and Redis behave as one deployment."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from tests.ai_support import SENTENCES, microphone_samples, speak, wer
from tests.conftest import PASSWORD
from tests.rtc_clients import Participant, SpeechAudioTrack, connect_user
from tests.server_process import ServerProcess, call, client_session, invite_code_of, join_meeting, make_user, request
from tests.support import receive_type, until


async def test_two_processes_are_one_deployment(nodes: tuple[ServerProcess, ServerProcess]) -> None:
    a, b = nodes
    async with client_session() as http:
        tokens: dict[str, str] = {}
        ids: dict[str, int] = {}
        for name, node in (("alice", a), ("bob", b)):
            status, _ = await call(
                http,
                "POST",
                node.url + "/api/v1/auth/register",
                json={"username": name, "email": f"{name}@example.com", "password": PASSWORD},
            )
            assert status == 201
            # Logged in on the other node: one database, one signing key.
            other = b if node is a else a
            status, session = await call(
                http, "POST", other.url + "/api/v1/auth/login", json={"username": name, "password": PASSWORD}
            )
            assert status == 200
            tokens[name], ids[name] = session["data"]["access_token"], session["data"]["user"]["user_id"]

        status, created = await call(
            http, "POST", a.url + "/api/v1/meetings", tokens["alice"], json={"title": "Across nodes"}
        )
        meeting_id = created["data"]["meeting_id"]
        link = {"invite_code": created["data"]["invite_code"]}
        await call(http, "POST", a.url + f"/api/v1/meetings/{meeting_id}/start", tokens["alice"])
        for name, node in (("alice", a), ("bob", b)):
            status, _ = await call(
                http, "POST", node.url + f"/api/v1/meetings/{meeting_id}/join", tokens[name], json=link
            )
            assert status == 200

        def socket_url(node: ServerProcess, name: str) -> str:
            return node.url + f"/ws/signaling?meeting_id={meeting_id}&user_id={ids[name]}&token={tokens[name]}"

        alice = await http.ws_connect(socket_url(a, "alice"))
        bob = await http.ws_connect(socket_url(b, "bob"))
        await alice.send_json({"type": "join", "data": {}})
        await receive_type(alice, "join")
        await bob.send_json({"type": "join", "data": {}})
        await receive_type(bob, "join")
        assert (await receive_type(alice, "user-joined"))["from"] == ids["bob"]

        await bob.send_json({"type": "chat", "data": {"text": "from node b"}})
        assert (await receive_type(alice, "chat"))["data"]["text"] == "from node b"
        await alice.send_json({"type": "offer", "to": ids["bob"], "data": {"sdp": "v=0"}})
        assert (await receive_type(bob, "offer"))["from"] == ids["alice"]
        await bob.send_json({"type": "media-state", "data": {"audio": False}})
        assert (await receive_type(alice, "media-state"))["data"]["media_state"]["audio"] is False

        for node in (a, b):
            status, overview = await call(http, "GET", node.url + "/api/v1/stats/overview", tokens["alice"])
            assert status == 200 and overview["data"]["sessions"] == 2 and overview["data"]["online_users"] == 2
        status, sessions = await call(http, "GET", b.url + f"/api/v1/sessions/room/{meeting_id}", tokens["bob"])
        assert {s["node_id"] for s in sessions["data"]} == {"node-a", "node-b"}

        # Rate-limit counters are shared: login allows 5 a minute per address, whichever node
        # answers. Two logins above plus three here reach it; apart, neither node would.
        refused = []
        for attempt in range(6):
            node = (a, b)[attempt % 2]
            status, _ = await call(
                http, "POST", node.url + "/api/v1/auth/login", json={"username": "alice", "password": "wrong-1"}
            )
            refused.append(status)
        assert refused == [401, 401, 401, 429, 429, 429]

        # Ending on node a closes bob's socket on node b.
        await call(http, "POST", a.url + f"/api/v1/meetings/{meeting_id}/end", tokens["alice"])
        assert (await receive_type(bob, "user-left"))["data"]["reason"] == "meeting ended"
        await alice.close()
        await bob.close()


async def test_a_recording_started_on_one_node_is_heard_and_stopped_on_the_other(
    nodes: tuple[ServerProcess, ServerProcess],
) -> None:
    a, b = nodes
    async with client_session() as http:
        account = {"username": "rita", "email": "rita@example.com", "password": PASSWORD}
        assert (await call(http, "POST", a.url + "/api/v1/auth/register", json=account))[0] == 201
        credentials = {"username": "rita", "password": PASSWORD}
        _, session = await call(http, "POST", b.url + "/api/v1/auth/login", json=credentials)
        token, user_id = session["data"]["access_token"], session["data"]["user"]["user_id"]
        meeting = {"title": "Recorded across nodes", "settings": {"enable_recording": True}}
        meeting_id = (await call(http, "POST", a.url + "/api/v1/meetings", token, json=meeting))[1]["data"][
            "meeting_id"
        ]
        await call(http, "POST", a.url + f"/api/v1/meetings/{meeting_id}/start", token)
        await call(http, "POST", b.url + f"/api/v1/meetings/{meeting_id}/join", token, json={})
        socket = await http.ws_connect(b.url + f"/ws/signaling?meeting_id={meeting_id}&user_id={user_id}&token={token}")
        await socket.send_json({"type": "join", "data": {}})
        await receive_type(socket, "join")

        status, started = await call(
            http, "POST", a.url + "/api/v1/recording/start", token, json={"meeting_id": meeting_id}
        )
        assert status == 201, started
        recording_id = started["data"]["recording_id"]
        assert (await receive_type(socket, "media-state"))["data"] == {"recording": True, "recording_id": recording_id}

        status, stopped = await call(
            http, "POST", b.url + "/api/v1/recording/stop", token, json={"recording_id": recording_id}
        )
        assert status == 200 and stopped["data"]["status"] == "ready", stopped
        assert (await receive_type(socket, "media-state"))["data"] == {"recording": False, "recording_id": recording_id}
        status, seen = await call(http, "GET", a.url + f"/api/v1/recording/{recording_id}", token)
        assert status == 200 and seen["data"] == stopped["data"]
        await socket.close()


@pytest.mark.parametrize("nodes", [{"HUIYI_SFU_BIND_ADDRESSES": "127.0.0.1"}], indirect=True)
async def test_captions_switched_on_one_node_caption_a_speaker_on_the_other(
    nodes: tuple[ServerProcess, ServerProcess], people: list[Participant], tmp_path: Path
) -> None:
    """The switch reaches every node; the room's node (where its first participant came in) gets the
    speaker's audio from across the nodes and transcribes it, wherever the speaker's socket is."""
    a, b = nodes
    clip = microphone_samples(speak(SENTENCES[0], tmp_path / "said.wav"))
    host = await connect_user(a.url, "carla", people=people)  # hosts, listens through node a
    speaker_token, speaker_id = make_user(b.url, "sam")
    join_meeting(b.url, speaker_token, host.meeting_id, invite_code_of(a.url, host.token, host.meeting_id))
    speaker = Participant(b.url, speaker_token, speaker_id, host.meeting_id)
    people.append(speaker)
    await speaker.connect()
    microphone = SpeechAudioTrack()
    await speaker.publish(video=None, audio=microphone)

    path = f"/api/v1/meetings/{host.meeting_id}/captions"
    assert request("POST", a.url + path, {"enabled": True}, token=host.token)[0] == 200
    await until(lambda: _caption_worker(a) is not None, "node a, the room's, to start its caption worker", 30)
    await microphone.say(clip)
    captions = await until(
        lambda: [m["data"] for m in host.messages if m["type"] == "caption" and m["data"]["final"]],
        "the caption to reach the host",
        30,
    )
    assert captions[0]["user_id"] == speaker_id and wer(SENTENCES[0], captions[0]["text"]) <= 0.2, captions
    status, transcript = request("GET", f"{a.url}/api/v1/meetings/{host.meeting_id}/transcript", token=host.token)
    assert status == 200 and [line["text"] for line in transcript["data"]["lines"]] == [captions[0]["text"]]

    assert request("POST", a.url + path, {"enabled": False}, token=host.token)[0] == 200
    assert _caption_worker(b) is None
    await until(lambda: _caption_worker(a) is None, "node a to stop its caption worker", 30)


def _caption_worker(node: ServerProcess) -> int | None:
    """The node's caption worker: the child process multiprocessing spawned (no AI node runs here)."""
    for children in Path(f"/proc/{node.process.pid}/task").glob("*/children"):
        for pid in children.read_text().split():
            with contextlib.suppress(OSError):
                if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    return int(pid)
    return None
