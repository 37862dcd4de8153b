"""With accounts cached in memory on every node, a ban made through one node holds on the very
next request through the other, and closes the user's socket there."""

from __future__ import annotations

import aiohttp

from tests.conftest import PASSWORD, POSTGRES_URL
from tests.server_process import ServerProcess, call, client_session, run_cli
from tests.support import receive_type


async def test_a_ban_through_one_node_holds_on_the_next_request_through_the_other(
    nodes: tuple[ServerProcess, ServerProcess],
) -> None:
    a, b = nodes
    schema = a.env["HUIYI_DATABASE_SCHEMA"]
    created = run_cli(
        "create-admin",
        "--username",
        "root",
        "--email",
        "root@example.com",
        "--database-url",
        POSTGRES_URL,
        env={"HUIYI_ADMIN_PASSWORD": PASSWORD, "HUIYI_DATABASE_SCHEMA": schema},
    )
    assert created.returncode == 0, created.stderr
    async with client_session() as http:
        _, admin = await call(
            http, "POST", a.url + "/api/v1/auth/login", json={"username": "root", "password": PASSWORD}
        )
        admin_token = admin["data"]["access_token"]
        user = {"username": "mallory", "email": "mallory@example.com", "password": PASSWORD}
        status, registered = await call(http, "POST", b.url + "/api/v1/auth/register", json=user)
        assert status == 201
        user_id = registered["data"]["user_id"]

        for round_ in range(3):  # logins are limited to 5 a minute per address, admin included
            status, session = await call(
                http, "POST", b.url + "/api/v1/auth/login", json={"username": "mallory", "password": PASSWORD}
            )
            assert status == 200, session
            token = session["data"]["access_token"]
            # Node b now holds the account in its cache.
            assert (await call(http, "GET", b.url + "/api/v1/users/profile", token))[0] == 200
            socket = None
            if round_ == 0:
                status, meeting = await call(http, "POST", b.url + "/api/v1/meetings", token, json={"title": "M"})
                meeting_id = meeting["data"]["meeting_id"]
                await call(http, "POST", b.url + f"/api/v1/meetings/{meeting_id}/join", token, json={})
                socket = await http.ws_connect(
                    b.url + f"/ws/signaling?meeting_id={meeting_id}&user_id={user_id}&token={token}"
                )
                await socket.send_json({"type": "join", "data": {}})
                await receive_type(socket, "join")

            status, _ = await call(http, "POST", a.url + f"/api/v1/admin/users/{user_id}/ban", admin_token)
            assert status == 200
            status, refused = await call(http, "GET", b.url + "/api/v1/users/profile", token)
            assert status == 403, (round_, refused)
            if socket is not None:
                error = await receive_type(socket, "error")
                assert error["data"]["code"] == 4403
                frame = await socket.receive(timeout=5)
                assert frame.type == aiohttp.WSMsgType.CLOSE and frame.data == 4403
                await socket.close()
            status, _ = await call(http, "POST", a.url + f"/api/v1/admin/users/{user_id}/unban", admin_token)
            assert status == 200
