"""JSON logs: with --log-format json every line the server writes is one JSON object, records say
which request, meeting, user and media peer they are about, and no password, token or stream key a
client sent ends up in the log."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from pathlib import Path

from config.logformat import JsonFormatter, scrub
from tests.server_process import ServerProcess, client_session, join_meeting, make_meeting, request, start_server
from tests.support import MEETINGS, until

PASSWORD = "Sekret-pass-98765"
STREAM_KEY = "live_9f8e7d6c5b4a3f2e1d0c"
QUERY_PASSWORD = "query-pass-1234567"


async def test_json_lines_carry_context_and_never_secrets(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    server: ServerProcess = await asyncio.to_thread(
        start_server, "--data-dir", str(tmp_path / "data"), "--log-format", "json", log=log, env={}
    )
    try:
        assert (
            request(
                "POST",
                server.url + "/api/v1/auth/register",
                {"username": "logged", "email": "l@example.com", "password": PASSWORD},
            )[0]
            == 201
        )
        status, session = request(
            "POST", server.url + "/api/v1/auth/login", {"username": "logged", "password": PASSWORD}
        )
        assert status == 200
        token, refresh = session["data"]["access_token"], session["data"]["refresh_token"]
        user_id = session["data"]["user"]["user_id"]
        meeting_id = make_meeting(server.url, token)
        join_meeting(server.url, token, meeting_id)
        # A wrong password and a stream key in a body, secrets in a query string, a caller's request id.
        request("POST", server.url + "/api/v1/auth/login", {"username": "logged", "password": PASSWORD + "x"})
        request("POST", server.url + MEETINGS, {"title": "keyed", "stream_key": STREAM_KEY}, token)
        query = f"?password={QUERY_PASSWORD}&stream_key={STREAM_KEY}&access_token={token}"
        async with client_session() as http:
            async with http.get(server.url + "/api/v1/health" + query, headers={"X-Request-ID": "trace-42"}) as answer:
                assert answer.status == 200
            socket = await http.ws_connect(
                server.url + "/ws/signaling", params={"meeting_id": meeting_id, "user_id": user_id, "token": token}
            )
            await socket.send_json({"type": "join", "data": {}})
            joined = await socket.receive_json(timeout=10)
            assert joined["type"] == "join"
            peer_id = joined["data"]["session_id"]
            await socket.close()
        await until(lambda: "closed: " in log.read_text(), "the socket's closing logged")
    finally:
        await asyncio.to_thread(server.stop)

    text = log.read_text()
    for secret in (PASSWORD, STREAM_KEY, QUERY_PASSWORD, token, refresh):
        assert secret not in text, f"a secret reached the log: {secret[:12]}..."
    records = [json.loads(line) for line in text.splitlines() if line.strip()]  # every line is JSON
    assert all({"time", "level", "logger", "message"} <= set(record) for record in records)
    access = [r for r in records if r["logger"] == "aiohttp.access"]
    assert all("request_id" in r for r in access)
    traced = [r for r in access if r["request_id"] == "trace-42"]
    assert len(traced) == 1 and "password=***" in traced[0]["message"] and "stream_key=***" in traced[0]["message"]
    joins = [r for r in access if f"/api/v1/meetings/{meeting_id}/join" in r["message"]]
    assert joins and all(r["meeting_id"] == meeting_id and r["user_id"] == user_id for r in joins)
    opened = [r for r in records if r["message"].startswith(f"socket {peer_id} opened")]
    assert len(opened) == 1
    assert (opened[0]["meeting_id"], opened[0]["user_id"], opened[0]["peer_id"]) == (meeting_id, user_id, peer_id)
    media = [r for r in records if r["logger"] == "huiyi.sfu" and peer_id in r["message"]]
    assert media and all(r.get("peer_id") == peer_id for r in media)


def test_scrubbing_masks_values_that_grant_access() -> None:
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJlLXZhbHVl"
    line = scrub(f'Authorization: Bearer {jwt} password="hunter22" secret=abc stream_key: xyz token=*** ok=1')
    assert jwt not in line and "hunter22" not in line and "abc" not in line and "xyz" not in line
    assert line.endswith("token=*** ok=1")
    record = logging.LogRecord("huiyi", logging.ERROR, __file__, 1, "failed with password=%s", ("p4ss",), None)
    record.meeting_id = 7
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "failed with password=***" and entry["meeting_id"] == 7 and entry["level"] == "ERROR"


NATIVE_WRITER = """
import logging, os
from config.logformat import capture_native_output, configure_logging
capture_native_output(configure_logging("{level}", "json"))
os.write(2, b"0.00%\\n12.50%\\nncnn: model file is damaged\\n")  # as a model runtime's C code does
logging.getLogger("huiyi.ai.node").info("job done")
"""


def native_lines(level: str) -> list[dict]:
    completed = subprocess.run(
        [sys.executable, "-c", NATIVE_WRITER.format(level=level)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert completed.returncode == 0, completed.stderr
    return [json.loads(line) for line in completed.stderr.splitlines()]  # every line is JSON


def test_what_native_code_writes_to_standard_error_becomes_json_records() -> None:
    records = native_lines("INFO")
    assert {(r["logger"], r["level"], r["message"]) for r in records} == {
        ("huiyi.native", "WARNING", "ncnn: model file is damaged"),
        ("huiyi.ai.node", "INFO", "job done"),
    }, records
    progress = [r for r in native_lines("DEBUG") if r["logger"] == "huiyi.native" and r["level"] == "DEBUG"]
    assert [r["message"] for r in progress] == ["0.00%", "12.50%"]
