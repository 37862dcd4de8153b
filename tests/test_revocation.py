"""Revoking a user reaches every channel at once: REST, the signaling socket and the SFU peer.

A ban, a password change, an account deletion close the user's sockets before the call that made
them answers; a socket dies with its token unless renewed over the socket; guessing tokens or
passwords is throttled."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import timedelta
from typing import Any

import pytest
from aiohttp import ClientWebSocketResponse

from control.context import SFU, TOKENS
from tests.conftest import PASSWORD, Account, Api, SettingsFactory, sqlite_only
from tests.support import closed_with, enter, meeting_with, receive, receive_type


async def error_then_close(socket: ClientWebSocketResponse) -> tuple[dict[str, Any], int]:
    """The server's last word on a socket it closes: the error it sent, and the close code."""
    error = await receive_type(socket, "error")
    return error, await closed_with(socket)


def media_peers(api: Api, meeting_id: int) -> set[int]:
    room = api.app[SFU].sfu.rooms.get(meeting_id)
    return {peer.user_id for peer in room.peers.values()} if room else set()


async def room_with_guest(api: Api) -> tuple[Account, Account, int, ClientWebSocketResponse]:
    host, guest = await api.account(), await api.account()
    meeting_id = await meeting_with(api, host, guest)
    await api.call("POST", f"/api/v1/meetings/{meeting_id}/start", token=host.access, expect=200)
    socket, _ = await enter(api, meeting_id, guest)
    assert guest.id in media_peers(api, meeting_id)
    return host, guest, meeting_id, socket


async def test_ban_closes_the_socket_and_drops_media_before_it_answers(api: Api) -> None:
    admin = await api.admin()
    host, guest, meeting_id, socket = await room_with_guest(api)
    await api.call("POST", f"/api/v1/admin/users/{guest.id}/ban", token=admin.access, expect=200)
    # Already gone from the media server when the ban answered; the socket only has to drain.
    assert guest.id not in media_peers(api, meeting_id)
    await socket.send_json({"type": "chat", "data": {"text": "still here?"}})
    error, code = await error_then_close(socket)
    assert code == 4403 and "banned" in error["data"]["message"]
    history = await api.call("GET", f"/api/v1/meetings/{meeting_id}/messages", token=host.access, expect=200)
    assert all(m["text"] != "still here?" for m in history["data"]), history["data"]
    await api.call("GET", "/api/v1/users/profile", token=guest.access, expect=403)


@pytest.mark.parametrize("how", ["password change", "account deletion"])
async def test_revoking_tokens_closes_the_users_sockets(api: Api, how: str) -> None:
    _, guest, meeting_id, socket = await room_with_guest(api)
    if how == "password change":
        body = {"old_password": PASSWORD, "new_password": "another-pass-77"}
        await api.call("POST", "/api/v1/users/change-password", token=guest.access, json=body, expect=200)
    else:
        await api.call(
            "DELETE", "/api/v1/users/account", token=guest.access, json={"current_password": PASSWORD}, expect=200
        )
    assert guest.id not in media_peers(api, meeting_id)
    error, code = await error_then_close(socket)
    assert code == 4401, error


async def test_an_unrelated_account_change_keeps_the_socket(api: Api) -> None:
    _, guest, _, socket = await room_with_guest(api)
    await api.call("PUT", "/api/v1/users/profile", token=guest.access, json={"nickname": "Guesty"}, expect=200)
    profile = await api.call("GET", "/api/v1/users/profile", token=guest.access, expect=200)
    assert profile["data"]["nickname"] == "Guesty"  # the cached account was refreshed
    await socket.send_json({"type": "media-state", "data": {"audio": False}})
    assert (await receive_type(socket, "media-state"))["data"]["user_id"] == guest.id


def short_lived(api: Api, account: Account, seconds: float) -> Account:
    """The account with an access token the server signed that expires in ``seconds``."""
    claims = api.app[TOKENS].issue(account.id, 0, "access")
    claims = dataclasses.replace(
        claims, expires_at=claims.expires_at - api.app[TOKENS].access_ttl + timedelta(seconds=seconds)
    )
    return dataclasses.replace(account, access=api.app[TOKENS].encode(claims))


async def test_socket_closes_when_its_token_expires(api: Api) -> None:
    host, guest = await api.account(), await api.account()
    meeting_id = await meeting_with(api, host, guest)
    socket, _ = await enter(api, meeting_id, short_lived(api, guest, 2))
    assert guest.id in media_peers(api, meeting_id)
    error = await receive_type(socket, "error", timeout=6)
    assert error["data"]["code"] == 1005
    assert await closed_with(socket) == 4401
    assert guest.id not in media_peers(api, meeting_id)


async def test_socket_renewed_over_itself_outlives_its_first_token(api: Api) -> None:
    host, guest = await api.account(), await api.account()
    meeting_id = await meeting_with(api, host, guest)
    socket, _ = await enter(api, meeting_id, short_lived(api, guest, 2))
    await socket.send_json({"type": "auth", "data": {"token": host.access}})
    assert (await receive_type(socket, "error"))["data"]["code"] == 403  # another user's token
    await socket.send_json({"type": "auth", "data": {"token": "not-a-token"}})
    assert (await receive_type(socket, "error"))["data"]["code"] == 401
    await socket.send_json({"type": "auth", "data": {"token": guest.access}})
    renewed = await receive_type(socket, "auth")
    assert renewed["data"]["expires_at"].endswith("Z")
    await asyncio.sleep(3)  # past the first token's expiry
    await socket.send_json({"type": "media-state", "data": {"video": False}})
    assert (await receive_type(socket, "media-state"))["data"]["user_id"] == guest.id
    assert guest.id in media_peers(api, meeting_id)
    await socket.close()


async def test_sockets_per_user_are_capped(settings_factory: SettingsFactory, make_api: Any) -> None:
    api: Api = await make_api(settings_factory(signaling={"max_sockets_per_user": 2}))
    host = await api.account()
    meeting_id = await meeting_with(api, host)
    url = f"/ws/signaling?meeting_id={meeting_id}&user_id={host.id}&token={host.access}"
    kept = []
    for _ in range(2):
        kept.append(await api.client.ws_connect(url))
        await kept[-1].send_json({"type": "join", "data": {}})
        await receive_type(kept[-1], "join")
    refused = await api.client.ws_connect(url)
    error = await receive(refused)
    assert error["type"] == "error" and error["data"]["code"] == 429
    assert await closed_with(refused) == 4408
    await kept[0].close()
    # The slot frees once the closed socket's session is closed on the server.
    deadline = asyncio.get_running_loop().time() + 5
    while True:
        again = await api.client.ws_connect(url)
        await again.send_json({"type": "join", "data": {}})
        first = await receive(again)
        if first["type"] == "join":
            break
        assert first["data"]["code"] == 429 and asyncio.get_running_loop().time() < deadline
        await again.close()
        await asyncio.sleep(0.05)
    for socket in (kept[1], again):
        await socket.close()


@sqlite_only
async def test_invalid_tokens_count_against_the_callers_address(
    settings_factory: SettingsFactory, make_api: Any
) -> None:
    settings = settings_factory(rate_limits={"enabled": True, "endpoints": {"users.get_profile": "3/minute"}})
    api: Api = await make_api(settings)
    for _ in range(3):
        await api.call("GET", "/api/v1/users/profile", token="forged.token.value", expect=401)
    refused = await api.call("GET", "/api/v1/users/profile", token="forged.token.value", expect=429)
    assert int(refused["headers"]["Retry-After"]) >= 1


async def test_login_backs_off_after_repeated_wrong_passwords(settings_factory: SettingsFactory, make_api: Any) -> None:
    settings = settings_factory(rate_limits={"enabled": True, "endpoints": {"auth.login": "100/minute"}})
    api: Api = await make_api(settings)
    victim = await api.account()
    for _ in range(5):
        wrong = {"username": victim.username, "password": "wrong-guess-1"}
        await api.call("POST", "/api/v1/auth/login", json=wrong, expect=401)
    # Backed off: refused before the password is looked at, even the right one.
    right = {"username": victim.username, "password": PASSWORD}
    refused = await api.call("POST", "/api/v1/auth/login", json=right, expect=429)
    assert refused["headers"]["Retry-After"] == "1"
    await asyncio.sleep(1.1)
    await api.call("POST", "/api/v1/auth/login", json=right, expect=200)
