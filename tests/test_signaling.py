"""/ws/signaling over real sockets: the documented flow, refusals, bad frames, floods, room events,
and two nodes sharing a room over Redis."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import WSMsgType

from control.context import STORE
from tests.conftest import Api, SettingsFactory, sqlite_only
from tests.support import (
    SOCKET_TIMEOUT,
    closed_with,
    connect,
    enter,
    invite_code,
    meeting_with,
    receive,
    receive_type,
    until,
)


async def test_documented_flow(api: Api) -> None:
    alice, bob = await api.account(), await api.account()
    meeting_id = await meeting_with(api, alice, bob)

    alice_socket, alice_join = await enter(api, meeting_id, alice)
    assert alice_join["from"] == 0 and alice_join["meeting_id"] == meeting_id
    assert alice_join["data"]["self"]["role"] == "host"
    assert {p["user_id"] for p in alice_join["data"]["participants"]} == {alice.id, bob.id}

    bob_socket = await connect(api, meeting_id, bob, header=True)
    await bob_socket.send_json({"type": "join", "from": alice.id, "data": {}})
    bob_join = await receive_type(bob_socket, "join")
    state = {p["user_id"]: p["media_state"] for p in bob_join["data"]["participants"]}
    assert state[alice.id] == {"audio": True, "video": True, "screen_share": False}
    joined = await receive_type(alice_socket, "user-joined")
    assert joined["from"] == bob.id and joined["data"]["user_id"] == bob.id

    # ``from`` is the server's word, whatever the client claims.
    await bob_socket.send_json({"type": "chat", "from": alice.id, "meeting_id": meeting_id, "data": {"text": "hi <b>"}})
    for socket in (alice_socket, bob_socket):
        chat = await receive_type(socket, "chat")
        assert chat["from"] == bob.id and chat["data"]["text"] == "hi <b>"
    history = await api.call("GET", f"/api/v1/meetings/{meeting_id}/messages", token=alice.access, expect=200)
    assert [m["text"] for m in history["data"]] == ["hi <b>"]

    sdp = {"type": "offer", "sdp": "v=0\r\n"}
    await alice_socket.send_json({"type": "offer", "to": bob.id, "data": sdp})
    offer = await receive_type(bob_socket, "offer")
    assert offer["from"] == alice.id and offer["to"] == bob.id and offer["data"] == sdp
    await bob_socket.send_json({"type": "answer", "to": alice.id, "data": {"type": "answer", "sdp": "v=0\r\n"}})
    assert (await receive_type(alice_socket, "answer"))["from"] == bob.id
    await bob_socket.send_json({"type": "ice-candidate", "to": alice.id, "data": {"candidate": "c", "sdpMid": "0"}})
    assert (await receive_type(alice_socket, "ice-candidate"))["data"]["candidate"] == "c"

    await bob_socket.send_json({"type": "offer", "data": sdp})
    refused = await receive_type(bob_socket, "error")
    assert refused["data"]["code"] == 400 and "sdp" in refused["data"]["message"], "without `to` the SFU answers"

    await bob_socket.send_json({"type": "media-state", "data": {"audio": False, "screen_share": True}})
    changed = await receive_type(alice_socket, "media-state")
    assert changed["from"] == bob.id
    assert changed["data"]["media_state"] == {"audio": False, "video": True, "screen_share": True}
    listed = await api.call("GET", f"/api/v1/meetings/{meeting_id}/participants", token=alice.access)
    assert {p["user_id"]: p["media_state"]["audio"] for p in listed["data"]} == {alice.id: True, bob.id: False}

    await api.call("POST", f"/api/v1/meetings/{meeting_id}/leave", token=bob.access, expect=200)
    left = await receive_type(alice_socket, "user-left")
    assert left["from"] == bob.id and left["data"]["user_id"] == bob.id
    assert await closed_with(bob_socket) == 1000
    await alice_socket.close()


@pytest.mark.parametrize(
    ("query", "close_code", "code"),
    [
        ("meeting_id={m}&user_id={u}", 4401, 401),
        ("meeting_id={m}&user_id={other}&token={t}", 4403, 403),
        ("meeting_id=999999&user_id={u}&token={t}", 4404, 2001),
        ("meeting_id=abc&user_id={u}&token={t}", 4400, 400),
        ("meeting_id={m}&user_id={u}&token=not-a-jwt", 4401, 401),
        ("meeting_id={m}&user_id={outsider}&token={outsider_token}", 4403, 403),
    ],
)
async def test_socket_refusals(api: Api, query: str, close_code: int, code: int) -> None:
    host, outsider = await api.account(), await api.account()
    meeting_id = await meeting_with(api, host)
    url = "/ws/signaling?" + query.format(
        m=meeting_id, u=host.id, other=outsider.id, t=host.access, outsider=outsider.id, outsider_token=outsider.access
    )
    socket = await api.client.ws_connect(url)
    refusal = await receive(socket)
    assert refusal["type"] == "error" and refusal["data"]["code"] == code
    assert await closed_with(socket) == close_code


@sqlite_only
async def test_plain_http_on_the_socket_path_is_enveloped(api: Api) -> None:
    body = await api.call("GET", "/ws/signaling?meeting_id=1&user_id=1", expect=400)
    assert "WebSocket" in body["message"]


async def test_bad_frames_get_errors_and_the_socket_survives(api: Api) -> None:
    host = await api.account()
    meeting_id = await meeting_with(api, host)
    socket, _ = await enter(api, meeting_id, host)
    for bad in (
        '{"type": "chat", "data": {"text": "a\\u0000b"}}',
        '{"type": "chat", "data": {"text": "\\ud800"}}',
        '{"type": "offer", "to": 99999999999999999999999, "data": {}}',
        '{"type": "chat", "data": ' + "[" * 50_000,
        '{"type": "chat", "data": {"n": ' + "7" * 5000 + "}}",
        "{nope",
        "[1,2]",
        json.dumps({"type": "teleport", "data": {}}),
        json.dumps({"type": "chat", "data": 5}),
    ):
        await socket.send_str(bad)
        assert (await receive(socket))["type"] == "error"
    await socket.send_str(json.dumps({"type": "chat", "data": {"text": "x" * 70_000}}))
    assert (await receive(socket))["data"]["code"] == 413
    await socket.send_bytes(b"\x00\x01")
    assert (await receive(socket))["type"] == "error"
    await socket.send_json({"type": "user-joined", "data": {}})
    assert (await receive(socket))["type"] == "error", "server-only types are refused"
    await socket.send_json({"type": "chat", "data": {"text": "still here"}})
    assert (await receive_type(socket, "chat"))["data"]["text"] == "still here"
    await socket.close()


async def test_a_flood_is_cut_off(api: Api) -> None:
    host = await api.account()
    meeting_id = await meeting_with(api, host)
    socket, _ = await enter(api, meeting_id, host)
    for _ in range(200):
        await socket.send_json({"type": "teleport", "data": {}})
    codes = []
    while True:
        frame = await socket.receive(timeout=SOCKET_TIMEOUT)
        if frame.type != WSMsgType.TEXT:
            break
        codes.append(json.loads(frame.data)["data"]["code"])
    assert 429 in codes and socket.close_code == 4429, (codes, socket.close_code)


async def test_ending_the_meeting_closes_every_socket(api: Api) -> None:
    host, guest = await api.account(), await api.account()
    meeting_id = await meeting_with(api, host, guest)
    await api.call("POST", f"/api/v1/meetings/{meeting_id}/start", token=host.access, expect=200)
    sockets = [(await enter(api, meeting_id, account))[0] for account in (host, guest)]
    await api.call("POST", f"/api/v1/meetings/{meeting_id}/end", token=host.access, expect=200)
    for socket in sockets:
        farewell = await receive_type(socket, "user-left")
        assert farewell["from"] == 0 and "ended" in farewell["data"]["reason"]
        assert await closed_with(socket) == 4000
    late = await connect(api, meeting_id, guest)
    assert (await receive(late))["data"]["code"] == 2002


async def test_removed_user_is_disconnected_and_cannot_return(api: Api) -> None:
    host, guest = await api.account(), await api.account()
    meeting_id = await meeting_with(api, host, guest)
    host_socket, _ = await enter(api, meeting_id, host)
    guest_socket, _ = await enter(api, meeting_id, guest)
    await api.call("DELETE", f"/api/v1/meetings/{meeting_id}/participants/{guest.id}", token=host.access, expect=200)
    kicked = await receive_type(guest_socket, "error")
    assert "removed" in kicked["data"]["message"]
    assert await closed_with(guest_socket) == 4003
    assert (await receive_type(host_socket, "user-left"))["data"]["user_id"] == guest.id
    again = await connect(api, meeting_id, guest)
    assert (await receive(again))["data"]["code"] == 403
    link = {"invite_code": await invite_code(api, meeting_id, host)}
    rejoin = await api.call("POST", f"/api/v1/meetings/{meeting_id}/join", token=guest.access, json=link)
    assert rejoin["status"] == 403 and "removed" in rejoin["message"], "the invite code does not undo a removal"
    await host_socket.close()


async def test_waiting_room_socket_is_let_in_by_the_host(api: Api) -> None:
    host, guest = await api.account(), await api.account()
    meeting_id = await meeting_with(api, host, settings={"enable_waiting_room": True})
    link = {"invite_code": await invite_code(api, meeting_id, host)}
    joined = await api.call("POST", f"/api/v1/meetings/{meeting_id}/join", token=guest.access, json=link)
    assert joined["data"]["participant"]["status"] == "waiting"
    host_socket, host_join = await enter(api, meeting_id, host)
    assert guest.id not in {p["user_id"] for p in host_join["data"]["participants"]}

    lobby = await connect(api, meeting_id, guest)
    await lobby.send_json({"type": "chat", "data": {"text": "let me in"}})
    assert (await receive(lobby))["data"]["code"] == 403
    await api.call("POST", f"/api/v1/meetings/{meeting_id}/participants", token=host.access, json={"user_id": guest.id})
    admitted = await receive_type(lobby, "join")
    assert admitted["data"]["self"]["status"] == "online"
    assert (await receive_type(host_socket, "user-joined"))["data"]["user_id"] == guest.id
    for socket in (lobby, host_socket):
        await socket.close()


async def test_disconnect_tells_the_room_and_marks_offline(api: Api) -> None:
    host, guest = await api.account(), await api.account()
    meeting_id = await meeting_with(api, host, guest)
    host_socket, _ = await enter(api, meeting_id, host)
    guest_socket, _ = await enter(api, meeting_id, guest)
    await guest_socket.close()
    left = await receive_type(host_socket, "user-left")
    assert left["data"]["user_id"] == guest.id
    guest_row = await api.app[STORE].participants.get(meeting_id, guest.id)
    assert guest_row is not None and guest_row.status == "offline"
    sessions = await api.app[STORE].sessions.for_meeting(meeting_id)
    closed = [s for s in sessions if s.user_id == guest.id]
    assert len(closed) == 1 and closed[0].disconnected_at is not None and closed[0].messages_in >= 1
    await host_socket.close()


async def test_two_nodes_share_a_room_over_redis(
    settings_factory: SettingsFactory, make_api: Callable[..., Any], redis_url: str
) -> None:
    shared = {"redis": {"url": redis_url, "key_prefix": f"t{uuid.uuid4().hex}"}}
    node_a: Api = await make_api(settings_factory(server={"node_id": "node-a"}, **shared))
    node_b: Api = await make_api(settings_factory(server={"node_id": "node-b"}, **shared))
    alice, bob = await node_a.account(), await node_b.account()
    meeting_id = await meeting_with(node_a, alice)
    link = {"invite_code": await invite_code(node_a, meeting_id, alice)}
    await node_b.call("POST", f"/api/v1/meetings/{meeting_id}/join", token=bob.access, json=link, expect=200)

    alice_socket, _ = await enter(node_a, meeting_id, alice)
    bob_socket, bob_join = await enter(node_b, meeting_id, bob)
    assert {p["user_id"] for p in bob_join["data"]["participants"]} == {alice.id, bob.id}
    assert (await receive_type(alice_socket, "user-joined"))["from"] == bob.id

    await bob_socket.send_json({"type": "offer", "to": alice.id, "data": {"sdp": "v=0"}})
    assert (await receive_type(alice_socket, "offer"))["from"] == bob.id
    await alice_socket.send_json({"type": "media-state", "data": {"video": False}})
    assert (await receive_type(bob_socket, "media-state"))["data"]["media_state"]["video"] is False
    await node_a.call("POST", f"/api/v1/meetings/{meeting_id}/messages", token=alice.access, json={"text": "hello b"})
    assert (await receive_type(bob_socket, "chat"))["data"]["text"] == "hello b"

    await node_a.call("POST", f"/api/v1/meetings/{meeting_id}/end", token=alice.access, expect=200)
    assert (await receive_type(bob_socket, "user-left"))["data"]["reason"] == "meeting cancelled"  # never started
    assert await closed_with(bob_socket) == 4000
    await alice_socket.close()


async def test_sockets_closing_together_tell_the_room_once(api: Api) -> None:
    host, guest = await api.account(), await api.account()
    meeting_id = await meeting_with(api, host, guest)
    host_socket, _ = await enter(api, meeting_id, host)
    guest_sockets = [(await enter(api, meeting_id, guest))[0] for _ in range(6)]
    await asyncio.gather(*(socket.close() for socket in guest_sockets))

    store = api.app[STORE]

    async def all_closed() -> bool:
        sessions = [s for s in await store.sessions.for_meeting(meeting_id) if s.user_id == guest.id]
        row = await store.participants.get(meeting_id, guest.id)
        return row is not None and row.status == "offline" and all(s.disconnected_at for s in sessions)

    await until(all_closed, "the guest's sockets closed", SOCKET_TIMEOUT)
    await api.call("POST", f"/api/v1/meetings/{meeting_id}/messages", token=host.access, json={"text": "marker"})
    farewells = 0
    while (incoming := await receive(host_socket))["type"] != "chat":
        farewells += incoming["type"] == "user-left" and incoming["data"]["user_id"] == guest.id
    assert farewells == 1
    await host_socket.close()


async def test_noise_suppression_switches_are_told_to_the_room(api: Api) -> None:
    alice, bob, carol = await api.account(), await api.account(), await api.account()
    meeting_id = await meeting_with(api, alice, bob, carol)
    alice_socket, _ = await enter(api, meeting_id, alice)
    bob_socket, bob_join = await enter(api, meeting_id, bob)

    async def heard(socket: Any) -> dict[str, Any]:
        while True:
            incoming = await receive_type(socket, "media-state")
            if "noise_suppression" in incoming["data"]:
                assert incoming["from"] == 0
                return incoming["data"]

    await bob_socket.send_json({"type": "media-state", "data": {"noise_suppression": True}})
    own = {"noise_suppression": True, "scope": "participant", "user_id": bob.id, "by": bob.id}
    assert await heard(alice_socket) == own and await heard(bob_socket) == own

    room = f"/api/v1/webrtc/room/{meeting_id}/noise-suppression"
    await api.call("POST", room, token=bob.access, json={"enabled": True}, expect=403)
    answer = await api.call("POST", room, token=alice.access, json={"enabled": True}, expect=200)
    model = answer["data"]["model"]
    assert answer["data"]["enabled"] and model in ("rnnoise", "deepfilternet3")
    everyone = {"noise_suppression": True, "scope": "room", "model": model, "by": alice.id}
    assert await heard(bob_socket) == everyone and await heard(alice_socket) == everyone

    # Someone joining now hears the switches that are on, after the join.
    carol_socket, _ = await enter(api, meeting_id, carol)
    assert await heard(carol_socket) == everyone | {"by": None}
    assert await heard(carol_socket) == own | {"by": None}

    # A host switches someone's own off over REST; the room hears who did.
    bob_peer = f"/api/v1/webrtc/peer/{bob_join['data']['session_id']}/media"
    await api.call("POST", bob_peer, token=alice.access, json={"noise_suppression": False}, expect=200)
    by_host = {"noise_suppression": False, "scope": "participant", "user_id": bob.id, "by": alice.id}
    assert await heard(carol_socket) == by_host and await heard(bob_socket) == by_host
    await api.call("POST", room, token=alice.access, json={"enabled": False}, expect=200)
    off = {"noise_suppression": False, "scope": "room", "model": None, "by": alice.id}
    assert await heard(carol_socket) == off

    await bob_socket.send_json({"type": "media-state", "data": {"noise_suppression": "yes"}})
    assert (await receive_type(bob_socket, "error"))["data"]["code"] == 400
    for socket in (alice_socket, bob_socket, carol_socket):
        await socket.close()
