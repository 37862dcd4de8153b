"""Running the real server (``run_server.py``) as a separate process, as an operator would."""

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

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT = 30.0


def free_port() -> int:
    """A loopback TCP port free at this moment, for a server or a fake the tests start."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def server_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The caller's environment without HUIYI_* settings that would leak into the server. The TURN
    server stays off unless ``extra`` turns it on: its fixed port is for one server per machine."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("HUIYI_")}
    env["HUIYI_TURN_ENABLED"] = "false"
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
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    call = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(call, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


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
    *args: str, log: Path, env: dict[str, str] | None = None, script: Path = ROOT / "run_server.py"
) -> ServerProcess:
    """Start the server and return once it answers its health check (or fail with its log)."""
    port = free_port()
    handle = log.open("a")
    process = subprocess.Popen(
        [sys.executable, str(script), "--host", "127.0.0.1", "--port", str(port), *args],
        env=server_environment(env),
        stdin=subprocess.DEVNULL,
        stdout=handle,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )
    handle.close()
    server = ServerProcess(process, f"http://127.0.0.1:{port}", log, dict(env or {}))
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
