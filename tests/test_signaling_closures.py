"""The socket limits and closures docs/meetings.md promises, each seen from a real client."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket as net
import struct
from typing import Any

from aiohttp import WSMsgType

from tests.conftest import Account, Api, SettingsFactory
from tests.support import closed_with, connect, enter, meeting_with, receive, receive_type, until


async def test_a_frame_over_one_mebibyte_closes_the_socket_with_1009(api: Api) -> None:
    host = await api.account()
    meeting_id = await meeting_with(api, host)
    socket, _ = await enter(api, meeting_id, host)
    await socket.send_str(json.dumps({"type": "chat", "data": {"text": "x" * (1024 * 1024 + 10)}}))
    assert await closed_with(socket) == 1009

    # The session is written closed once the server has finished with the socket.
    async def closed_session() -> dict[str, Any] | None:
        sessions = await api.call("GET", f"/api/v1/sessions/room/{meeting_id}", token=host.access, expect=200)
        [session] = sessions["data"]
        return session if session["disconnected_at"] else None

    session = await until(closed_session, "the session written closed", 5)
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


SLOW_READER_BUFFER = 4096  # bytes the stalled client's kernel will take before the server must queue
FLOOD_CHAT = "\U0001f600" * 2000  # the longest chat; JSON-escaped it is ~24 kB on every socket
FLOOD_SENDERS = 5  # each may post 100 chats a minute over REST
FLOOD_PER_SENDER = 95


async def stalled_socket(api: Api, meeting_id: int, account: Account) -> net.socket:
    """A signaling socket that joins its room and then never reads again: a raw TCP connection with
    a small receive buffer, the WebSocket handshake done by hand, so no client library drains it."""
    loop = asyncio.get_running_loop()
    raw = net.socket(net.AF_INET, net.SOCK_STREAM)
    raw.setsockopt(net.SOL_SOCKET, net.SO_RCVBUF, SLOW_READER_BUFFER)
    raw.setblocking(False)
    server = api.client.server
    await loop.sock_connect(raw, (server.host, server.port))
    path = f"/ws/signaling?meeting_id={meeting_id}&user_id={account.id}&token={account.access}"
    handshake = (
        f"GET {path} HTTP/1.1\r\nHost: {server.host}:{server.port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    )
    await loop.sock_sendall(raw, handshake.encode())
    answer = b""
    while b"\r\n\r\n" not in answer:  # one byte at a time: nothing past the headers is read
        byte = await asyncio.wait_for(loop.sock_recv(raw, 1), 5)
        assert byte, answer
        answer += byte
    assert answer.startswith(b"HTTP/1.1 101"), answer
    await loop.sock_sendall(raw, masked_text_frame(json.dumps({"type": "join", "data": {}})))
    return raw


def masked_text_frame(text: str) -> bytes:
    """One final text frame as a client must send it (masked; payloads under 64 KiB)."""
    payload = text.encode()
    mask = os.urandom(4)
    length = (
        bytes([0x80 | len(payload)]) if len(payload) < 126 else bytes([0x80 | 126]) + struct.pack("!H", len(payload))
    )
    return b"\x81" + length + mask + bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))


async def test_a_client_that_stops_reading_is_dropped_as_too_slow(api: Api) -> None:
    host, slow, listener = await api.account(), await api.account(), await api.account()
    senders = [await api.account() for _ in range(FLOOD_SENDERS)]
    meeting_id = await meeting_with(api, host, slow, listener, *senders)
    listener_socket, _ = await enter(api, meeting_id, listener)
    stalled = await stalled_socket(api, meeting_id, slow)
    await receive_type(listener_socket, "user-joined")
    heard: list[str] = []

    async def listen() -> None:
        """The listener is a client that keeps reading, as a browser does."""
        while True:
            incoming = await receive(listener_socket, timeout=50)
            if incoming["type"] == "chat":
                heard.append(incoming["data"]["text"])

    listening = asyncio.create_task(listen())
    loop = asyncio.get_running_loop()
    try:

        async def slow_session() -> dict[str, Any]:
            sessions = await api.call("GET", f"/api/v1/sessions/room/{meeting_id}", token=host.access, expect=200)
            [session] = [s for s in sessions["data"] if s["user_id"] == slow.id]
            return session

        # Flood the room with the longest chats until the stalled socket is let go.
        sent = 0
        deadline = loop.time() + 45
        session = await slow_session()
        while session["disconnected_at"] is None:
            assert loop.time() < deadline, (sent, session)
            if sent < FLOOD_SENDERS * FLOOD_PER_SENDER:
                sender = senders[sent // FLOOD_PER_SENDER]
                path = f"/api/v1/meetings/{meeting_id}/messages"
                await api.call("POST", path, token=sender.access, json={"text": FLOOD_CHAT}, expect=201)
                sent += 1
            else:
                await asyncio.sleep(0.05)
            if sent % 10 == 0 or sent == FLOOD_SENDERS * FLOOD_PER_SENDER:
                session = await slow_session()
        assert session["close_reason"] == "too slow to keep up", session

        # The room goes on without it: the listener got every chat, and still gets new ones.
        await api.call(
            "POST",
            f"/api/v1/meetings/{meeting_id}/messages",
            token=host.access,
            json={"text": "still here"},
            expect=201,
        )
        while "still here" not in heard:
            assert loop.time() < deadline + 5 and not listening.done(), (len(heard), listening)
            await asyncio.sleep(0.05)
        assert heard == [FLOOD_CHAT] * sent + ["still here"]
    finally:
        listening.cancel()
        stalled.close()
        await listener_socket.close()
