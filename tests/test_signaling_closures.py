"""The socket limits and closures docs/meetings.md promises, each seen from a real client."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import WSMsgType

from tests.conftest import Api, SettingsFactory
from tests.test_signaling import closed_with, connect, enter, meeting_with, receive, receive_type


async def test_a_frame_over_one_mebibyte_closes_the_socket_with_1009(api: Api) -> None:
    host = await api.account()
    meeting_id = await meeting_with(api, host)
    socket, _ = await enter(api, meeting_id, host)
    await socket.send_str(json.dumps({"type": "chat", "data": {"text": "x" * (1024 * 1024 + 10)}}))
    assert await closed_with(socket) == 1009
    # The session is written closed once the server has finished with the socket.
    deadline = asyncio.get_running_loop().time() + 5
    while True:
        sessions = await api.call("GET", f"/api/v1/sessions/room/{meeting_id}", token=host.access, expect=200)
        [session] = sessions["data"]
        if session["disconnected_at"] or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.05)
    assert "exceeds limit 1048576" in session["close_reason"], session


async def test_deleting_an_ongoing_meeting_closes_its_sockets_with_4000(api: Api) -> None:
    host, guest = await api.account(), await api.account()
    meeting_id = await meeting_with(api, host, guest)
    await api.call("POST", f"/api/v1/meetings/{meeting_id}/start", token=host.access, expect=200)
    sockets = [(await enter(api, meeting_id, account))[0] for account in (host, guest)]
    await api.call("DELETE", f"/api/v1/meetings/{meeting_id}", token=host.access, expect=200)
    for socket in sockets:
        farewell = await receive_type(socket, "user-left")
        assert farewell["from"] == 0 and farewell["data"]["reason"] == "meeting deleted"
        assert await closed_with(socket) == 4000


async def test_a_meeting_that_is_over_refuses_sockets_with_4400(api: Api) -> None:
    host = await api.account()
    meeting_id = await meeting_with(api, host)
    await api.call("POST", f"/api/v1/meetings/{meeting_id}/start", token=host.access, expect=200)
    await api.call("POST", f"/api/v1/meetings/{meeting_id}/end", token=host.access, expect=200)
    late = await connect(api, meeting_id, host)
    refusal = await receive(late)
    assert refusal["type"] == "error" and refusal["data"]["code"] == 2002
    assert await closed_with(late) == 4400


async def test_one_user_may_hold_several_sockets(api: Api) -> None:
    host, guest = await api.account(), await api.account()
    meeting_id = await meeting_with(api, host, guest)
    host_socket, _ = await enter(api, meeting_id, host)
    first_tab, _ = await enter(api, meeting_id, guest)
    second_tab, _ = await enter(api, meeting_id, guest)
    await host_socket.send_json({"type": "chat", "data": {"text": "to both tabs"}})
    for tab in (first_tab, second_tab):
        assert (await receive_type(tab, "chat"))["data"]["text"] == "to both tabs"
    # Closing one tab leaves the user in the room: no user-left, still online.
    await first_tab.close()
    await second_tab.send_json({"type": "media-state", "data": {"audio": False}})
    seen: list[str] = []
    while True:
        incoming = await receive(host_socket)
        seen.append(incoming["type"])
        if incoming["type"] == "media-state" and incoming["from"] == guest.id:
            break
    assert "user-left" not in seen, seen
    participants = await api.call("GET", f"/api/v1/meetings/{meeting_id}/participants", token=host.access)
    assert {p["user_id"]: p["status"] for p in participants["data"]}[guest.id] == "online"
    await second_tab.close()
    assert (await receive_type(host_socket, "user-left"))["data"]["user_id"] == guest.id
    await host_socket.close()


async def test_relaying_to_a_user_who_is_offline_is_an_error(api: Api) -> None:
    host, guest = await api.account(), await api.account()
    meeting_id = await meeting_with(api, host, guest)
    host_socket, _ = await enter(api, meeting_id, host)
    guest_socket, _ = await enter(api, meeting_id, guest)
    await guest_socket.close()  # the guest's last socket: they turn offline
    await receive_type(host_socket, "user-left")
    await host_socket.send_json({"type": "offer", "to": guest.id, "data": {"sdp": "v=0"}})
    error = await receive_type(host_socket, "error")
    assert error["data"]["code"] == 404 and str(guest.id) in error["data"]["message"]
    await host_socket.close()


async def test_a_silent_peer_is_dropped_by_the_heartbeat(settings_factory: SettingsFactory, make_api: Any) -> None:
    api: Api = await make_api(settings_factory(signaling={"heartbeat_seconds": 0.5}))
    host, guest = await api.account(), await api.account()
    meeting_id = await meeting_with(api, host, guest)
    host_socket, _ = await enter(api, meeting_id, host)
    silent = await api.client.ws_connect(
        f"/ws/signaling?meeting_id={meeting_id}&user_id={guest.id}&token={guest.access}", autoping=False
    )
    await silent.send_json({"type": "join", "data": {}})
    await receive_type(host_socket, "user-joined")
    # The silent client never answers pings: one missed pong drops it.
    left = await receive_type(host_socket, "user-left", timeout=5)
    assert left["data"]["user_id"] == guest.id
    frame = await silent.receive(timeout=5)
    while frame.type in {WSMsgType.PING, WSMsgType.TEXT}:
        frame = await silent.receive(timeout=5)
    assert frame.type in {WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING}
    await host_socket.close()
