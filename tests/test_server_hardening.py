"""The real server process against what a hostile or careless client, or another local user, can
try: reading its files, learning its versions, holding connections with slow headers, cutting
uploads off. One SQLite-backed process serves the module, with a short header timeout."""

from __future__ import annotations

import socket
import stat
import struct
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from control.context import SETTINGS
from tests.conftest import Api
from tests.server_process import ServerProcess, make_user, request, start_server
from tests.support import file_form, image_bytes, until, uploaded

HEADER_TIMEOUT = 1.0
DEADLINE = 15.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("hardening")
    process = start_server(
        "--data-dir",
        str(root / "data"),
        log=root / "server.log",
        env={"HUIYI_RATE_LIMITS": "off", "HUIYI_SERVER_HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT)},
    )
    yield process
    assert process.stop() == 0, process.log.read_text()


@pytest.fixture(scope="module")
def token(server: ServerProcess) -> str:
    return make_user(server.url, "hardy")[0]


def data_dir(server: ServerProcess) -> Path:
    return server.log.parent / "data"


def port(server: ServerProcess) -> int:
    return int(server.url.rsplit(":", 1)[1])


def multipart(data: bytes, name: str) -> tuple[str, bytes]:
    head = f'--edge\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n\r\n'.encode()
    return "multipart/form-data; boundary=edge", head + data + b"\r\n--edge--\r\n"


def upload(server: ServerProcess, token: str, path: str, data: bytes, name: str) -> int:
    content_type, body = multipart(data, name)
    call = urllib.request.Request(
        server.url + path,
        data=body,
        method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": content_type},
    )
    with urllib.request.urlopen(call, timeout=10) as response:
        return int(response.status)


def raw_exchange(server: ServerProcess, data: bytes) -> bytes:
    """Send ``data`` and read until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port(server)), timeout=DEADLINE) as connection:
        connection.sendall(data)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    return answer


def modes_under(root: Path) -> dict[str, str]:
    """Every file and directory under ``root`` (and root itself) that is not private, with its mode."""
    loose = {}
    for path in [root, *root.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        if mode != (0o700 if path.is_dir() else 0o600):
            loose[str(path.relative_to(root))] = oct(mode)
    return loose


async def test_everything_the_server_writes_is_private(server: ServerProcess, token: str) -> None:
    assert upload(server, token, "/api/v1/media/upload", b"minutes of the meeting\n", "minutes.txt") == 201
    assert upload(server, token, "/api/v1/users/upload-avatar", image_bytes(), "me.png") == 200
    assert request("POST", server.url + "/api/v1/auth/forgot-password", {"email": "hardy@example.com"})[0] == 200
    root = data_dir(server)
    await until(lambda: list((root / "outbox").glob("*.eml")), "a reset mail written", DEADLINE)

    written = {path.relative_to(root).parts[0] for path in root.rglob("*") if path.is_file()}
    assert {"huiyi.db", "huiyi.db-wal", "huiyi.db-shm", "jwt_secret", "media", "avatars", "outbox"} <= written
    assert modes_under(root) == {}


async def test_an_embedded_app_writes_private_files_too(api: Api) -> None:
    """Without the command line's umask (this test process keeps its own), modes are still private."""
    account = await api.account()
    await uploaded(api, account, b"agenda\n", "agenda.txt")
    avatar = file_form(image_bytes(), "me.png")
    await api.call("POST", "/api/v1/users/upload-avatar", token=account.access, data=avatar, expect=200)
    await api.call("POST", "/api/v1/auth/forgot-password", json={"email": account.email}, expect=200)
    await api.settle()
    assert api.outbox(), "no reset mail was written"
    root = api.app[SETTINGS].server.data_dir
    assert modes_under(root) == {}


def test_the_server_header_names_no_versions(server: ServerProcess) -> None:
    for request_bytes in (
        b"GET /api/v1/health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        b"GET /no/such/page HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        # Refused by the HTTP parser before the application sees it.
        b"GET /\x01 HTTP/1.1\r\nHost: localhost\r\n\r\n",
    ):
        head = raw_exchange(server, request_bytes).split(b"\r\n\r\n", 1)[0].decode("latin-1")
        servers = [line for line in head.split("\r\n") if line.lower().startswith("server:")]
        assert servers == ["Server: huiyi"], head
    log = server.log.read_text()
    assert "INFO aiohttp.server: Error handling request from 127.0.0.1: 400 Invalid char in url path" in log
    assert " ERROR " not in log and "Traceback" not in log, "a malformed request is the client's fault"


def test_a_connection_whose_headers_do_not_arrive_is_closed(server: ServerProcess) -> None:
    connections = [socket.create_connection(("127.0.0.1", port(server)), timeout=DEADLINE) for _ in range(20)]
    try:
        started = time.monotonic()
        for connection in connections:
            connection.sendall(b"GET /api/v1/hea")
        for connection in connections:
            assert connection.recv(1024) == b"", "the server closes without answering"
        elapsed = time.monotonic() - started
    finally:
        for connection in connections:
            connection.close()
    assert HEADER_TIMEOUT * 0.8 <= elapsed < HEADER_TIMEOUT + 5
    # A client that does send its headers in time is served as before.
    assert raw_exchange(server, b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").startswith(
        b"HTTP/1.1 200 "
    )


@pytest.mark.parametrize("path", ["/api/v1/media/upload", "/api/v1/users/upload-avatar"])
async def test_an_upload_cut_off_mid_stream_leaves_nothing(server: ServerProcess, token: str, path: str) -> None:
    root = data_dir(server)
    before = {p for p in root.rglob("*") if p.is_file() and not p.name.startswith("huiyi.db")}
    log_before = server.log.read_text().count("request body cut off")
    connection = socket.create_connection(("127.0.0.1", port(server)), timeout=DEADLINE)
    connection.sendall(
        f"POST {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n"
        "Content-Type: multipart/form-data; boundary=cut\r\nContent-Length: 10000000\r\n\r\n".encode()
        + b'--cut\r\nContent-Disposition: form-data; name="file"; filename="big.bin"\r\n\r\n'
        + b"\x00" * 300_000
    )
    if path == "/api/v1/media/upload":
        await until(
            lambda: list((root / "media" / ".scratch").rglob("*.part")), "the upload reaching storage", DEADLINE
        )
    # A reset instead of an orderly close: the client vanished.
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    connection.close()

    await until(
        lambda: server.log.read_text().count("request body cut off") > log_before, "the cut-off noticed", DEADLINE
    )
    log = server.log.read_text()
    assert " INFO huiyi.http: request body cut off" in log
    assert " ERROR " not in log and "Traceback" not in log
    after = {p for p in root.rglob("*") if p.is_file() and not p.name.startswith("huiyi.db")}
    assert after == before
