"""Running the real server (``run_server.py``) as a separate process, as an operator would, and
calling its API over HTTP: plain calls (``request`` blocking, ``call`` over an aiohttp session) and
the few steps most tests of a server process start with (a user, a meeting, joining it)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT = 30.0


def free_port() -> int:
    """A loopback TCP port free at this moment, for a server or a fake the tests start."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def free_udp_port() -> int:
    """A loopback UDP port free at this moment, for the SFU's single media port."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def server_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The caller's environment without HUIYI_* settings that would leak into the server. The TURN
    server stays off unless ``extra`` turns it on: its fixed port is for one server per machine; the
    metrics listener takes a free port, logged (``extra`` may set one)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("HUIYI_")}
    env["HUIYI_TURN_ENABLED"] = "false"
    env["HUIYI_METRICS_PORT"] = "0"  # servers running at once never clash over the metrics port
    # Media in the server's own process unless a test asks for workers (tests/test_sfu_workers.py),
    # or TEST_SFU_WORKERS does for every server a run starts (the suite against media workers).
    env["HUIYI_SFU_WORKERS"] = os.environ.get("TEST_SFU_WORKERS", "0")
    env.update(extra or {})
    return env


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "run_server.py"), *args],
        env=server_environment(env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def request(method: str, url: str, body: Any = None, token: str | None = None) -> tuple[int, dict[str, Any]]:
    """Status and JSON answer of one call with a JSON ``body``, blocking (for plain test code)."""
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    prepared = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(prepared, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def client_session() -> aiohttp.ClientSession:
    """An HTTP client for a test server that drops idle connections before the server does (its
    ``header_timeout_seconds``, 10 s): a request sent on a connection the server is closing just
    then fails with "Server disconnected", and a test that waits 10 s between two calls hits that."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(keepalive_timeout=5))


async def call(
    http: aiohttp.ClientSession, method: str, url: str, token: str | None = None, **kwargs: Any
) -> tuple[int, dict[str, Any]]:
    """Status and JSON answer of one call over ``http`` (``kwargs``: json, data, params...)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.request(method, url, headers=headers, **kwargs) as response:
        return response.status, await response.json()


def make_user(base_url: str, name: str, password: str = "correct horse battery staple 42") -> tuple[str, int]:
    """Register ``name`` (mail at example.com) and log in; the access token and user id."""
    status, body = request(
        "POST",
        base_url + "/api/v1/auth/register",
        {"username": name, "email": f"{name}@example.com", "password": password},
    )
    assert status in (200, 201), body
    status, body = request("POST", base_url + "/api/v1/auth/login", {"username": name, "password": password})
    assert status == 200, body
    return body["data"]["access_token"], body["data"]["user"]["user_id"]


def make_meeting(base_url: str, host_token: str, title: str = "media test") -> int:
    """A new meeting, its creator (and so its host) the holder of ``host_token``."""
    status, body = request("POST", base_url + "/api/v1/meetings", {"title": title}, token=host_token)
    assert status in (200, 201), body
    return int(body["data"]["meeting_id"])


def invite_code_of(base_url: str, host_token: str, meeting_id: int) -> str:
    """The meeting's invite code, read by its host from the meeting view."""
    status, body = request("GET", f"{base_url}/api/v1/meetings/{meeting_id}", token=host_token)
    assert status == 200, body
    return body["data"]["invite_code"]


def join_meeting(base_url: str, token: str, meeting_id: int, invite_code: str | None = None) -> None:
    """Join over REST; anyone but the host needs the meeting's ``invite_code``."""
    payload = {"invite_code": invite_code} if invite_code else {}
    status, body = request("POST", f"{base_url}/api/v1/meetings/{meeting_id}/join", payload, token=token)
    assert status == 200, body


def room_stats(base_url: str, meeting_id: int, token: str) -> dict[str, Any]:
    """The media server's view of the meeting's room (peers, tracks, layers, transports)."""
    status, body = request("GET", f"{base_url}/api/v1/webrtc/room/{meeting_id}/stats", token=token)
    assert status == 200, body
    return body["data"]


@dataclass
class ServerProcess:
    process: subprocess.Popen[str]
    url: str
    log: Path
    env: dict[str, str]  # the HUIYI_* settings it was started with

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_server(
    *args: str,
    log: Path,
    env: dict[str, str] | None = None,
    script: Path = ROOT / "run_server.py",
    host: str = "127.0.0.1",
) -> ServerProcess:
    """Start the server on ``host`` (loopback, or a test link's address: tests/links.py) and return
    once it answers its health check (or fail with its log)."""
    port = free_port()
    handle = log.open("a")
    process = subprocess.Popen(
        [sys.executable, str(script), "--host", host, "--port", str(port), *args],
        env=server_environment(env),
        stdin=subprocess.DEVNULL,
        stdout=handle,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )
    handle.close()
    server = ServerProcess(process, f"http://{host}:{port}", log, dict(env or {}))
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log.read_text()}")
        try:
            if request("GET", server.url + "/api/v1/health")[0] == 200:
                return server
        except OSError:
            pass
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"server did not answer within {START_TIMEOUT} s:\n{log.read_text()}")
