"""The deployment files, checked without Docker: the compose file and the Dockerfile name real
settings, real endpoints and consistent ports; the systemd unit passes ``systemd-analyze verify``;
the load balancer's nginx configuration runs, in front of two real nodes, and keeps a meeting's
sockets on one node."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
import yaml

from config import load_settings
from control.app import all_endpoints
from tests.conftest import IN_CI
from tests.server_process import ROOT, ServerProcess, call, client_session, free_port, make_user, run_cli
from tests.support import until

DEPLOY = ROOT / "deploy"
SAMPLES = {"HUIYI_PUBLIC_IP": "203.0.113.10", "HUIYI_JWT_SECRET": "j" * 64, "HUIYI_TURN_SECRET": "t" * 64}
ROUTES = {endpoint.path for endpoint in all_endpoints()}


def missing(program: str) -> None:
    if IN_CI:
        pytest.fail(f"{program} is not installed; CI requires it", pytrace=False)
    pytest.skip(f"{program} is not installed")


def interpolated(value: str) -> str:
    """A compose value with ${VAR}, ${VAR:-default} and ${VAR:?message} filled in."""

    def fill(match: re.Match[str]) -> str:
        name, rest = match.group(1), match.group(2) or ""
        return SAMPLES.get(name, rest[2:] if rest.startswith(":-") else "")

    return re.sub(r"\$\{(\w+)((?::[-?])[^}]*)?\}", fill, value)


def health_path(command: str) -> str:
    found = re.search(r"http://127\.0\.0\.1:(\d+)(/[\w/.-]+)", command)
    assert found, command
    return found.group(2)


def test_compose_runs_two_nodes_on_shared_services_behind_the_balancer() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert {"huiyi-1", "huiyi-2", "postgres", "redis", "lb"} <= set(services)
    nodes = [services["huiyi-1"], services["huiyi-2"]]
    published: set[str] = set()
    for node in nodes:
        environment = {key: interpolated(str(value)) for key, value in node["environment"].items()}
        assert all(key.startswith("HUIYI_") for key in environment)
        settings = load_settings(None, environ=environment)  # every variable is a setting, every value valid
        assert settings.database.url.startswith("postgresql://") and "@postgres:" in settings.database.url
        assert settings.redis.url.startswith("redis://redis:")
        assert settings.auth.jwt_secret == SAMPLES["HUIYI_JWT_SECRET"]
        assert settings.sfu.announce_addresses == [SAMPLES["HUIYI_PUBLIC_IP"]]
        assert settings.server.log_format == "json" and settings.metrics.host == "0.0.0.0"
        # Each node publishes its own media and TURN ports, as its settings say.
        ports = set(node["ports"])
        assert f"{settings.sfu.udp_port}:{settings.sfu.udp_port}/udp" in ports
        assert f"{settings.sfu.tcp_port}:{settings.sfu.tcp_port}/tcp" in ports
        assert f"{settings.turn.port}:{settings.turn.port}/udp" in ports
        relay = f"{settings.turn.relay_port_min}-{settings.turn.relay_port_max}"
        assert f"{relay}:{relay}/udp" in ports
        assert not published & ports, "two nodes publish the same port"
        published |= ports
        assert str(settings.metrics.port) not in " ".join(ports), "metrics must stay off the published ports"
        assert health_path(" ".join(node["healthcheck"]["test"])) in ROUTES
        for dependency, condition in node["depends_on"].items():
            assert condition["condition"] == "service_healthy" and "healthcheck" in services[dependency]
    assert nodes[0]["environment"]["HUIYI_SERVER_NODE_ID"] != nodes[1]["environment"]["HUIYI_SERVER_NODE_ID"]
    balancer = services["lb"]
    assert "./nginx.conf:/etc/nginx/nginx.conf:ro" in balancer["volumes"] and (DEPLOY / "nginx.conf").is_file()
    assert set(balancer["depends_on"]) == {"huiyi-1", "huiyi-2"}
    assert health_path(" ".join(balancer["healthcheck"]["test"])) in ROUTES


def test_dockerfile_is_slim_runs_as_its_own_user_and_checks_readiness() -> None:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    instructions = [line.strip().split(None, 1) for line in text.splitlines() if line.strip() and line[0] != "#"]
    by_kind: dict[str, list[str]] = {}
    for kind, argument in instructions:
        by_kind.setdefault(kind, []).append(argument)
    assert all(re.match(r"python:3\.1\d+-slim", base) for base in by_kind["FROM"])
    assert by_kind["USER"] == ["huiyi"]
    assert health_path(by_kind["HEALTHCHECK"][0]) in ROUTES
    environment = dict(re.findall(r"(HUIYI_\w+)=(\S+)", " ".join(by_kind["ENV"])))
    settings = load_settings(None, environ={**environment, "HUIYI_SFU_ANNOUNCE_ADDRESSES": "203.0.113.10"})
    exposed = " ".join(by_kind["EXPOSE"]).split()
    for port in (str(settings.server.port), f"{settings.sfu.udp_port}/udp", str(settings.sfu.tcp_port)):
        assert port in exposed
    assert "run_server.py" in by_kind["ENTRYPOINT"][0] and (ROOT / "run_server.py").is_file()


def test_systemd_unit_verifies_and_uses_real_flags(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        missing("systemd-analyze")
    unit = (DEPLOY / "huiyi.service").read_text()
    command = re.search(r"^ExecStart=(\S+) (\S+) (.*)$", unit, re.MULTILINE)
    assert command and command.group(2).endswith("/run_server.py")
    usage = run_cli("--help").stdout
    for flag in re.findall(r"--[\w-]+", command.group(3)):
        assert flag in usage, flag
    # Verified as installed here: the interpreter of this checkout in place of the venv's.
    checked = tmp_path / "huiyi.service"
    checked.write_text(unit.replace(command.group(1), sys.executable, 1))
    verified = subprocess.run([analyze, "verify", str(checked)], capture_output=True, text=True, timeout=60)
    assert verified.returncode == 0 and not verified.stderr.strip(), verified.stderr


async def test_the_balancer_config_serves_two_nodes_and_keeps_a_meeting_on_one(
    nodes: tuple[ServerProcess, ServerProcess], tmp_path: Path
) -> None:
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if nginx is None:
        missing("nginx")
    a, b = nodes
    port = free_port()
    config = (DEPLOY / "nginx.conf").read_text()
    for name, node in (("huiyi-1:8000", a), ("huiyi-2:8000", b)):
        config = config.replace(name, node.url.removeprefix("http://"))
    config = config.replace("listen 8080;", f"listen 127.0.0.1:{port};")
    config = config.replace("pid /tmp/nginx.pid;", f"pid {tmp_path / 'nginx.pid'};")
    (tmp_path / "nginx.conf").write_text(config)
    arguments = [nginx, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-e", str(tmp_path / "error.log")]
    tested = subprocess.run([*arguments, "-t"], capture_output=True, text=True, timeout=30)
    assert tested.returncode == 0, tested.stderr
    balancer = subprocess.Popen([*arguments, "-g", "daemon off;"], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        async with client_session() as http:

            async def answers() -> bool:
                try:
                    return (await call(http, "GET", url + "/api/v1/health/ready"))[0] == 200
                except aiohttp.ClientError:
                    return False

            await until(answers, "nginx in front of the nodes", 15)
            async with http.get(url + "/metrics") as hidden:
                assert hidden.status == 404
            token, user_id = await asyncio.to_thread(make_user, url, "balanced")
            nodes_of_meeting: dict[int, set[str]] = {}
            for _ in range(4):
                status, created = await call(http, "POST", url + "/api/v1/meetings", token, json={"title": "lb"})
                assert status == 201, created
                meeting_id = created["data"]["meeting_id"]
                await call(http, "POST", f"{url}/api/v1/meetings/{meeting_id}/join", token, json={})
                # Two sockets (two tabs) of one meeting, upgraded through nginx, open together.
                sockets = [await _joined_socket(http, url, meeting_id, user_id, token) for _ in range(2)]
                status, sessions = await call(http, "GET", f"{url}/api/v1/sessions/room/{meeting_id}", token)
                for socket in sockets:
                    await socket.close()
                assert status == 200 and len(sessions["data"]) == 2, sessions
                nodes_of_meeting[meeting_id] = {session["node_id"] for session in sessions["data"]}
            assert all(len(found) == 1 for found in nodes_of_meeting.values()), nodes_of_meeting
            assert set().union(*nodes_of_meeting.values()) <= {"node-a", "node-b"}
    finally:
        balancer.terminate()
        balancer.wait(10)


async def _joined_socket(
    http: aiohttp.ClientSession, url: str, meeting_id: int, user_id: int, token: str
) -> aiohttp.ClientWebSocketResponse:
    params = {"meeting_id": meeting_id, "user_id": user_id, "token": token}
    socket = await http.ws_connect(url.replace("http", "ws", 1) + "/ws/signaling", params=params)
    await socket.send_json({"type": "join", "data": {}})
    while (message := await socket.receive_json(timeout=10))["type"] != "join":
        assert message["type"] != "error", message
    return socket
