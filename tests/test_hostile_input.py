"""Input meant to break the server, sent as raw bytes where a well-behaved client library would
refuse to: it must get a clean 4xx (or a socket error), never a 500."""

from __future__ import annotations

import asyncio
import json
import struct

from tests.conftest import Api, sqlite_only

DEADLINE = 10.0
WEBSOCKET_UPGRADE = (
    b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
)


async def open_raw(api: Api) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    server = api.client.server
    return await asyncio.open_connection(server.host, server.port)


async def http_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 answer with a Content-Length body: status, headers, body."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), DEADLINE)
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines if line)
    body = await asyncio.wait_for(reader.readexactly(int(headers.get("Content-Length", "0"))), DEADLINE)
    return int(status_line.split()[1]), headers, body


async def websocket_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One unmasked server frame: opcode and payload."""
    first, second = await asyncio.wait_for(reader.readexactly(2), DEADLINE)
    length = second & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", await reader.readexactly(2))
    return first & 0x0F, await asyncio.wait_for(reader.readexactly(length), DEADLINE)


def huge_integer_document() -> bytes:
    return b'{"username": ' + b"7" * 5000 + b', "password": "x"}'


async def test_a_json_integer_with_too_many_digits_is_a_400(api: Api) -> None:
    login = await api.call("POST", "/api/v1/auth/login", data=huge_integer_document())
    assert login["status"] == 400 and "too many digits" in login["message"]
    account = await api.account()
    profile = await api.call(
        "PUT", "/api/v1/users/profile", token=account.access, data=b'{"nickname": ' + b"1" * 4301 + b"}"
    )
    assert profile["status"] == 400


@sqlite_only
async def test_undecodable_bearer_token_is_a_401(api: Api) -> None:
    reader, writer = await open_raw(api)
    writer.write(
        b"GET /api/v1/users/profile HTTP/1.1\r\nHost: localhost\r\n"
        b"Authorization: Bearer \xff\xfe\x80.abc.def\r\nConnection: close\r\n\r\n"
    )
    status, headers, body = await http_answer(reader)
    writer.close()
    assert status == 401 and headers["WWW-Authenticate"] == "Bearer"
    assert json.loads(body)["message"] == "Invalid token"


async def test_undecodable_token_on_the_socket_is_a_socket_error(api: Api) -> None:
    account = await api.account()
    reader, writer = await open_raw(api)
    writer.write(
        f"GET /ws/signaling?meeting_id=1&user_id={account.id} HTTP/1.1\r\nHost: localhost\r\n".encode()
        + b"Authorization: Bearer \xff\xfe\x80.abc.def\r\n"
        + WEBSOCKET_UPGRADE
        + b"\r\n"
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), DEADLINE)
    assert head.startswith(b"HTTP/1.1 101 ") and b"\r\nServer: huiyi\r\n" in head
    opcode, payload = await websocket_frame(reader)
    assert opcode == 0x1
    refusal = json.loads(payload)
    assert refusal["type"] == "error" and refusal["data"] == {"code": 401, "message": "Invalid token"}
    opcode, payload = await websocket_frame(reader)
    assert opcode == 0x8 and struct.unpack("!H", payload[:2])[0] == 4401
    writer.close()


@sqlite_only
async def test_a_body_that_fails_to_decompress_is_a_400(api: Api) -> None:
    reader, writer = await open_raw(api)
    garbage = b"not gzip at all" * 10
    writer.write(
        b"POST /api/v1/auth/login HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        b"Content-Encoding: gzip\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(garbage), garbage)
    )
    status, _, body = await http_answer(reader)
    writer.close()
    assert (
        status == 400
        and json.loads(body)["message"] == "The request body could not be decoded (broken framing or compression)"
    )


async def test_an_undecodable_form_field_name_is_a_400(api: Api) -> None:
    account = await api.account()
    body = (
        b'--edge\r\nContent-Disposition: form-data; name="note\xff\xfe"\r\n\r\n' + b"v" * 300 + b"\r\n"
        b'--edge\r\nContent-Disposition: form-data; name="file"; filename="a\xff.txt"\r\n\r\nhello\r\n--edge--\r\n'
    )
    reader, writer = await open_raw(api)
    writer.write(
        f"POST /api/v1/media/upload HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {account.access}\r\n"
        f"Content-Type: multipart/form-data; boundary=edge\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n".encode()
        + body
    )
    status, _, answer = await http_answer(reader)
    writer.close()
    assert status == 400 and json.loads(answer)["message"] == "Field note\\udcff\\udcfe is too long"


@sqlite_only
async def test_the_web_client_refuses_a_range_that_selects_nothing(api: Api) -> None:
    page = await api.client.get("/")
    size = len(await page.read())
    nothing = await api.client.get("/", headers={"Range": "bytes=-0"})
    assert nothing.status == 416 and nothing.headers["Content-Range"] == f"bytes */{size}"
    head = await api.client.get("/", headers={"Range": "bytes=0-9"})
    assert head.status == 206 and len(await head.read()) == 10
