"""A real RTMP ingest for the streaming tests: nginx with its RTMP module (Debian's ``nginx-light`` and
``libnginx-mod-rtmp``), one process on a loopback port with a configuration of its own, which the
tests can kill and start again on the same port, as a live platform's ingest would drop and come
back."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.server_process import free_port

MODULE = Path("/usr/lib/nginx/modules/ngx_rtmp_module.so")
START_TIMEOUT = 10.0

CONFIG = """\
load_module {module};
daemon off;
master_process off;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log info;
events {{ worker_connections 64; }}
rtmp {{
    server {{
        listen 127.0.0.1:{port};
        chunk_size 4096;
        application live {{
            live on;
            record off;
            wait_key on;
        }}
    }}
}}
"""


def nginx_or_skip() -> str:
    """The nginx binary with the RTMP module; on CI (CI=true) a missing one fails the test."""
    binary = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if binary is None or not MODULE.exists():
        message = "nginx with libnginx-mod-rtmp is not installed (apt-get install nginx-light libnginx-mod-rtmp)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return binary


class RtmpServer:
    def __init__(self, root: Path) -> None:
        self.binary = nginx_or_skip()
        self.root = root
        self.port = free_port()
        self.config = root / "nginx.conf"
        self.config.write_text(CONFIG.format(module=MODULE, root=root, port=self.port))
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, key: str) -> str:
        return f"rtmp://127.0.0.1:{self.port}/live/{key}"

    def start(self) -> None:
        log = (self.root / "nginx.out").open("ab")
        self.process = subprocess.Popen(
            [self.binary, "-p", str(self.root), "-c", str(self.config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited: {(self.root / 'nginx.out').read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("nginx did not listen in time")

    def kill(self) -> None:
        """Gone at once, connections dropped, as a crashed ingest."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
        self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
