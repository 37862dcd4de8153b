"""The server as an operator runs it: a real process, restarts, and the create-admin command."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import stat
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import POSTGRES_URL, drop_schema, postgres_schema
from tests.server_process import (
    ROOT,
    client_session,
    free_port,
    join_meeting,
    make_meeting,
    make_user,
    request,
    run_cli,
    server_environment,
    start_server,
)
from tests.support import until

ADMIN_PASSWORD = "admin-pass-2024"


@pytest.fixture(params=["sqlite", "postgresql"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[list[str], dict[str, str]]]:
    """Command-line flags and environment putting a server process on one backend."""
    data_dir = str(tmp_path / "data")
    if request.param == "sqlite":
        yield ["--data-dir", data_dir], {}
        return
    schema = await postgres_schema()
    yield ["--data-dir", data_dir, "--database-url", POSTGRES_URL], {"HUIYI_DATABASE_SCHEMA": schema}
    await drop_schema(schema)


def test_restart_keeps_users_and_tokens(backend: tuple[list[str], dict[str, str]], tmp_path: Path) -> None:
    args, env = backend
    env = {**env, "HUIYI_RATE_LIMITS": "off"}
    log = tmp_path / "server.log"
    server = start_server(*args, log=log, env=env)
    try:
        status, _ = request(
            "POST",
            server.url + "/api/v1/auth/register",
            {"username": "keeper", "email": "keeper@example.com", "password": "keep-me-123"},
        )
        assert status == 201
        status, session = request(
            "POST", server.url + "/api/v1/auth/login", {"username": "keeper", "password": "keep-me-123"}
        )
        assert status == 200
    finally:
        assert server.stop() == 0, log.read_text()

    key = tmp_path / "data" / "jwt_secret"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    first_key = key.read_text()

    server = start_server(*args, log=log, env=env)
    try:
        status, profile = request("GET", server.url + "/api/v1/users/profile", token=session["data"]["access_token"])
        assert status == 200 and profile["data"]["username"] == "keeper"
        status, _ = request("POST", server.url + "/api/v1/auth/refresh", token=session["data"]["refresh_token"])
        assert status == 200
    finally:
        server.stop()
    assert key.read_text() == first_key
    assert "request_id=" in log.read_text(), "each request is logged with its request id"


def test_create_admin_then_use_the_admin_api(backend: tuple[list[str], dict[str, str]], tmp_path: Path) -> None:
    args, env = backend
    created = run_cli(
        "create-admin",
        "--username",
        "root_admin",
        "--email",
        "root@example.com",
        *args,
        env={**env, "HUIYI_ADMIN_PASSWORD": ADMIN_PASSWORD},
    )
    assert created.returncode == 0, created.stderr
    duplicate = run_cli(
        "create-admin",
        "--username",
        "root_admin",
        "--email",
        "other@example.com",
        *args,
        env={**env, "HUIYI_ADMIN_PASSWORD": ADMIN_PASSWORD},
    )
    assert duplicate.returncode == 1 and "Username is already taken" in duplicate.stderr
    weak = run_cli(
        "create-admin",
        "--username",
        "second",
        "--email",
        "s@example.com",
        *args,
        env={**env, "HUIYI_ADMIN_PASSWORD": "weak"},
    )
    assert weak.returncode == 2 and "password" in weak.stderr
    no_password = run_cli("create-admin", "--username", "third", "--email", "t@example.com", *args, env=env)
    assert no_password.returncode == 2 and "HUIYI_ADMIN_PASSWORD" in no_password.stderr

    server = start_server(*args, log=tmp_path / "server.log", env=env)
    try:
        status, session = request(
            "POST", server.url + "/api/v1/auth/login", {"username": "root_admin", "password": ADMIN_PASSWORD}
        )
        assert status == 200 and session["data"]["user"]["role"] == "admin"
        status, listing = request("GET", server.url + "/api/v1/admin/users", token=session["data"]["access_token"])
        assert status == 200 and [user["username"] for user in listing["data"]["items"]] == ["root_admin"]
    finally:
        server.stop()


def test_bad_configuration_stops_with_a_clear_message(tmp_path: Path) -> None:
    config = tmp_path / "huiyi.toml"
    config.write_text('[server]\nport = "eighty"\n')
    result = run_cli("--config", str(config), "--data-dir", str(tmp_path))
    assert result.returncode == 2 and "server.port" in result.stderr
    result = run_cli("--data-dir", str(tmp_path), "--database-url", "mysql://x")
    assert result.returncode == 2 and "unsupported database URL" in result.stderr


async def test_stopping_with_open_sockets_is_clean(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    log = tmp_path / "server.log"
    server = await asyncio.to_thread(
        start_server, "--data-dir", str(data_dir), log=log, env={"HUIYI_RATE_LIMITS": "off"}
    )
    try:
        token, user_id = make_user(server.url, "stayer")
        meeting_id = make_meeting(server.url, token)
        join_meeting(server.url, token, meeting_id)
        async with client_session() as http:
            query = f"meeting_id={meeting_id}&user_id={user_id}&token={token}"
            socket = await http.ws_connect(server.url + "/ws/signaling?" + query)
            await socket.send_json({"type": "join", "data": {}})
            assert (await socket.receive_json(timeout=5))["type"] == "join"
            assert await asyncio.to_thread(server.stop) == 0
            closing = await socket.receive(timeout=5)
            assert closing.type in {aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING}
    finally:
        server.stop()
    assert "Traceback" not in log.read_text(), log.read_text()
    with sqlite3.connect(data_dir / "huiyi.db") as database:
        rows = database.execute("SELECT disconnected_at, close_reason FROM signaling_sessions").fetchall()
    assert len(rows) == 1 and rows[0][0] is not None, rows


async def test_a_status_request_while_starting_does_not_stop_the_server(tmp_path: Path) -> None:
    """An operator's (or a monitor's) ``kill -USR1`` that lands during start-up is not fatal."""
    log = tmp_path / "server.log"
    port = free_port()
    with log.open("w") as handle:
        process = subprocess.Popen(
            [sys.executable, "run_server.py", "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(tmp_path)],
            env=server_environment(),
            stdout=handle,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    try:
        await until(lambda: "starting huiyi" in log.read_text() or process.poll() is not None, "start-up", 30)
        process.send_signal(signal.SIGUSR1)
        url = f"http://127.0.0.1:{port}/api/v1/health"
        await until(lambda: process.poll() is not None or _answers(url), "the health check or an exit", 30)
        assert process.poll() is None, log.read_text()
    finally:
        process.terminate()
        process.wait(timeout=15)


def _answers(url: str) -> bool:
    try:
        return request("GET", url)[0] == 200
    except OSError:
        return False


def test_tokens_and_invite_codes_never_reach_the_log(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    server = start_server("--data-dir", str(tmp_path / "data"), log=log, env={"HUIYI_RATE_LIMITS": "off"})
    try:
        secret = "eyJhbGciOiJIUzI1NiJ9.secret-part.signature"
        request("GET", server.url + f"/ws/signaling?meeting_id=1&user_id=1&token={secret}")
        with urllib.request.urlopen(server.url + "/?meeting=1&code=invite-secret-code", timeout=10) as page:
            assert page.status == 200
    finally:
        server.stop()
    text = log.read_text()
    assert "/ws/signaling?meeting_id=1&user_id=1&token=***" in text and "secret-part" not in text
    assert "/?meeting=1&code=***" in text and "invite-secret-code" not in text


async def test_sessions_a_killed_node_left_open_are_closed_when_it_returns(
    backend: tuple[list[str], dict[str, str]], tmp_path: Path
) -> None:
    args, env = backend
    env = {**env, "HUIYI_RATE_LIMITS": "off", "HUIYI_SERVER_NODE_ID": "node-crashy"}
    log = tmp_path / "server.log"
    server = await asyncio.to_thread(start_server, *args, log=log, env=env)
    try:
        token, user_id = make_user(server.url, "crashy")
        meeting_id = make_meeting(server.url, token, "doomed")
        join_meeting(server.url, token, meeting_id)
        async with client_session() as http:
            socket = await http.ws_connect(
                server.url + f"/ws/signaling?meeting_id={meeting_id}&user_id={user_id}&token={token}"
            )
            await socket.send_json({"type": "join", "data": {}})
            assert (await socket.receive_json(timeout=10))["type"] == "join"
            _, sessions = request("GET", server.url + f"/api/v1/sessions/room/{meeting_id}", token=token)
            assert [s["disconnected_at"] for s in sessions["data"]] == [None]
            server.process.kill()  # no chance to close anything
            server.process.wait()
    finally:
        server.stop()

    server = await asyncio.to_thread(start_server, *args, log=log, env=env)
    try:
        _, sessions = request("GET", server.url + f"/api/v1/sessions/room/{meeting_id}", token=token)
        [closed] = sessions["data"]
        assert closed["disconnected_at"] is not None and closed["close_reason"] == "node restarted", closed
        _, participants = request("GET", server.url + f"/api/v1/meetings/{meeting_id}/participants", token=token)
        assert participants["data"][0]["status"] == "offline", participants["data"]
    finally:
        assert server.stop() == 0, log.read_text()


async def test_a_recording_a_killed_node_ran_is_interrupted_when_it_returns(
    backend: tuple[list[str], dict[str, str]], tmp_path: Path
) -> None:
    args, env = backend
    env = {**env, "HUIYI_RATE_LIMITS": "off", "HUIYI_SERVER_NODE_ID": "node-recording"}
    log = tmp_path / "server.log"
    server = await asyncio.to_thread(start_server, *args, log=log, env=env)
    try:
        account = {"username": "rita", "email": "rita@example.com", "password": "record-me-123"}
        assert request("POST", server.url + "/api/v1/auth/register", account)[0] == 201
        credentials = {"username": "rita", "password": "record-me-123"}
        _, session = request("POST", server.url + "/api/v1/auth/login", credentials)
        token = session["data"]["access_token"]
        meeting = {"title": "recorded", "settings": {"enable_recording": True}}
        meeting_id = request("POST", server.url + "/api/v1/meetings", meeting, token=token)[1]["data"]["meeting_id"]
        assert request("POST", server.url + f"/api/v1/meetings/{meeting_id}/start", token=token)[0] == 200
        path = f"/api/v1/meetings/{meeting_id}/recording/start"
        recordings = [request("POST", server.url + path, {}, token=token)[1]["data"]["recording_id"]]
        server.process.kill()  # no chance to close anything
        server.process.wait()
    finally:
        server.stop()

    server = await asyncio.to_thread(start_server, *args, log=log, env=env)
    try:
        _, found = request("GET", server.url + f"/api/v1/recording/{recordings[0]}", token=token)
        assert found["data"]["status"] == "interrupted", found
        assert found["data"]["stop_reason"] == "server stopped unexpectedly"
        # Recording again, then a graceful stop: the recording stops with the server, complete.
        recordings.append(request("POST", server.url + path, {}, token=token)[1]["data"]["recording_id"])
    finally:
        assert server.stop() == 0, log.read_text()
    server = await asyncio.to_thread(start_server, *args, log=log, env=env)
    try:
        _, found = request("GET", server.url + f"/api/v1/recording/{recordings[1]}", token=token)
        assert (found["data"]["status"], found["data"]["stop_reason"]) == ("ready", "server shutdown"), found
    finally:
        assert server.stop() == 0, log.read_text()
