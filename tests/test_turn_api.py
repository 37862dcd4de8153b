"""How participants are handed the TURN server: ``GET /api/v1/webrtc/ice-servers``, the REST join
answer and the signaling ``join`` carry STUN/TURN URLs with credentials of the caller's own, which
the TURN server (started with the app, in its own process) accepts; the shared secret is made once
and kept in the data directory."""

from __future__ import annotations

import asyncio
import socket
import stat
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request
from aioice import stun
from aioice.turn import create_turn_endpoint

from config import load_settings
from control.context import TURN
from control.ice import url_host
from tests.conftest import Api, SettingsFactory
from tests.server_process import ROOT
from tests.support import until
from tests.turn_support import LOOPBACK, echo_peer

sqlite_only = pytest.mark.parametrize("settings_factory", ["sqlite"], indirect=True)
TURN_ON = {"enabled": True, "listen_host": LOOPBACK, "port": 0, "relay_port_min": 0, "relay_port_max": 0,
           "allowed_peer_cidrs": ["127.0.0.1/32"]}  # fmt: skip


@pytest.fixture
async def turn_api(make_api: Any, settings_factory: SettingsFactory) -> Api:
    return await make_api(settings_factory(turn=TURN_ON))


async def relay_once(server: dict[str, Any]) -> bytes:
    """Allocate with the handed-out credentials and relay one datagram to an echo peer and back."""
    turn_url = next(url for url in server["urls"] if url.startswith("turn:") and url.endswith("transport=udp"))
    host, port = turn_url[len("turn:") :].split("?")[0].rsplit(":", 1)
    received: asyncio.Queue[bytes] = asyncio.Queue()

    class Receiver(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            received.put_nowait(data)

    async with echo_peer() as (peer, _):
        relay, _ = await create_turn_endpoint(Receiver, (host, int(port)), server["username"], server["credential"])
        try:
            relay.sendto(b"through the relay", peer)
            return await asyncio.wait_for(received.get(), 5)
        finally:
            relay.close()


@sqlite_only
async def test_ice_servers_carry_working_credentials_of_the_caller(turn_api: Api) -> None:
    await turn_api.call("GET", "/api/v1/webrtc/ice-servers", expect=401)
    account = await turn_api.account()
    body = await turn_api.call("GET", "/api/v1/webrtc/ice-servers", token=account.access, expect=200)
    [server] = body["data"]["ice_servers"]
    port = turn_api.app[TURN].endpoints.port
    assert server["urls"] == [
        f"stun:{LOOPBACK}:{port}",
        f"turn:{LOOPBACK}:{port}?transport=udp",
        f"turn:{LOOPBACK}:{port}?transport=tcp",
    ]
    expiry, user = server["username"].split(":")
    assert user == str(account.id)
    assert abs(int(expiry) - (time.time() + 86400)) < 60
    assert body["data"]["expires_at"].endswith("Z")
    assert await relay_once(server) == b"through the relay"

    # Another user's name with this user's password is refused: the password is bound to the name.
    forged = {**server, "username": f"{expiry}:{account.id + 1}"}
    with pytest.raises(stun.TransactionFailed, match="401"):
        await relay_once(forged)


@sqlite_only
async def test_joining_hands_out_ice_servers_over_rest_and_signaling(turn_api: Api) -> None:
    host = await turn_api.account()
    meeting = (await turn_api.call("POST", "/api/v1/meetings", token=host.access, json={"title": "t"}))["data"]
    joined = await turn_api.call("POST", f"/api/v1/meetings/{meeting['meeting_id']}/join", token=host.access, json={})
    [server] = joined["data"]["ice_servers"]
    assert server["username"].endswith(f":{host.id}")
    assert await relay_once(server) == b"through the relay"

    socket = await turn_api.client.ws_connect(
        f"/ws/signaling?meeting_id={meeting['meeting_id']}&user_id={host.id}&token={host.access}"
    )
    try:
        await socket.send_json({"type": "join", "meeting_id": meeting["meeting_id"], "data": {}})
        while (message := await socket.receive_json(timeout=5))["type"] != "join":
            pass
        [announced] = message["data"]["ice_servers"]
        assert announced["urls"] == server["urls"] and announced["username"].endswith(f":{host.id}")
    finally:
        await socket.close()


@sqlite_only
async def test_no_ice_servers_while_turn_is_off(api: Api) -> None:
    account = await api.account()
    body = await api.call("GET", "/api/v1/webrtc/ice-servers", token=account.access, expect=200)
    assert body["data"] == {"ice_servers": [], "expires_at": None}


@sqlite_only
async def test_the_secret_is_generated_once_and_kept(make_api: Any, settings_factory: SettingsFactory) -> None:
    settings = settings_factory(turn=TURN_ON)
    first = await make_api(settings)
    secret_file = Path(settings.server.data_dir) / "turn_secret"
    secret = secret_file.read_text().strip()
    assert len(secret) >= 32 and stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert first.app[TURN].secret == secret
    second = await make_api(settings)
    assert second.app[TURN].secret == secret


def test_url_host_prefers_configuration_then_the_name_the_client_used() -> None:
    def host(turn: dict[str, Any], public_url: str = "", header: str = "meet.example.org:8000") -> str:
        settings = load_settings(None, {"turn": turn, "server": {"public_url": public_url}}, environ={})
        return url_host(settings, make_mocked_request("GET", "/", headers={"Host": header}))

    assert host({"url_host": "turn.example.org", "public_address": "203.0.113.5"}) == "turn.example.org"
    assert host({"public_address": "203.0.113.5"}) == "203.0.113.5"
    assert host({"listen_host": "192.0.2.7"}) == "192.0.2.7"
    assert host({}, public_url="https://video.example.org/") == "video.example.org"
    assert host({}) == "meet.example.org"
    assert host({}, header="evil.example/<script>") == "localhost"


@sqlite_only
async def test_the_server_runs_on_without_turn_when_its_port_is_taken(
    make_api: Any, settings_factory: SettingsFactory, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind((LOOPBACK, 0))
        api = await make_api(settings_factory(turn={**TURN_ON, "port": taken.getsockname()[1]}))
        account = await api.account()
        body = await api.call("GET", "/api/v1/webrtc/ice-servers", token=account.access, expect=200)
        assert body["data"]["ice_servers"] == []
    assert "the TURN server did not start" in caplog.text


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


async def test_the_turn_process_ends_when_the_main_process_is_gone() -> None:
    program = (
        "import asyncio\n"
        "from tests.turn_support import turn_settings\n"
        "from turn.process import TurnProcess\n"
        "async def main():\n"
        "    process = TurnProcess(turn_settings(), 'x' * 40, 'WARNING')\n"
        "    await process.start()\n"
        "    print(process.pid, flush=True)\n"
        "    await asyncio.sleep(60)\n"
        "asyncio.run(main())\n"
    )
    parent = await asyncio.create_subprocess_exec(
        sys.executable, "-c", program, stdout=asyncio.subprocess.PIPE, cwd=ROOT
    )
    assert parent.stdout is not None
    child = int(await asyncio.wait_for(parent.stdout.readline(), 30))
    assert alive(child)
    parent.kill()  # no chance to stop its TURN process
    await parent.wait()
    await until(lambda: not alive(child), "the orphaned TURN process to exit")
