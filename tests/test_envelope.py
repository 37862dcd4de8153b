"""The envelope and error model on every kind of answer, including router errors and a crash."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import asyncpg
import pytest
from sqlalchemy import text

from control.context import STORE
from tests.conftest import POSTGRES_URL, Api, SettingsFactory, sqlite_only


async def test_success_envelope_and_generated_request_id(api: Api) -> None:
    body = await api.call("GET", "/api/v1/health", expect=200)
    assert body["code"] == 200 and body["message"] == "Success"
    assert body["data"]["status"] == "ok" and body["data"]["database"] in {"sqlite", "postgresql"}
    stamp = datetime.fromisoformat(body["timestamp"].replace("Z", "+00:00"))
    assert stamp.tzinfo is not None and abs((datetime.now(UTC) - stamp).total_seconds()) < 60
    assert re.fullmatch(r"[0-9a-f]{32}", body["request_id"])
    other = await api.call("GET", "/api/v1/health")
    assert other["request_id"] != body["request_id"]


@pytest.mark.parametrize(
    ("sent", "echoed"),
    [("trace-42.a:b", "trace-42.a:b"), ("evil id;<script>", "evilidscript"), ("x" * 200, "x" * 64)],
)
@sqlite_only
async def test_request_id_is_honoured_and_sanitised(api: Api, sent: str, echoed: str) -> None:
    response = await api.client.get("/api/v1/nowhere", headers={"X-Request-ID": sent}, skip_auto_headers=())
    body = await response.json()
    assert body["request_id"] == echoed and response.headers["X-Request-ID"] == echoed


@sqlite_only
async def test_unknown_route_and_method_are_enveloped(api: Api) -> None:
    missing = await api.call("GET", "/api/v1/does-not-exist", expect=404)
    assert missing["code"] == 404 and missing["data"] is None
    wrong_method = await api.call("PATCH", "/api/v1/auth/login", expect=405)
    assert wrong_method["code"] == 405 and "POST" in wrong_method["headers"]["Allow"]


@sqlite_only
async def test_bad_json_bodies_are_400(api: Api) -> None:
    for raw in (b"{not json", b"[1, 2]", b"\xff\xfe", b'"text"'):
        body = await api.call(
            "POST", "/api/v1/auth/login", data=raw, headers={"Content-Type": "application/json"}, expect=400
        )
        assert body["code"] == 400
    fields = await api.call("POST", "/api/v1/auth/register", json={}, expect=400)
    assert {error["field"] for error in fields["data"]["errors"]} == {"username", "email", "password"}
    too_big = await api.call("POST", "/api/v1/auth/login", data=b"{" + b" " * (2 * 1024 * 1024) + b"}")
    assert too_big["status"] == 413


async def test_unexpected_failure_is_500_without_internals(api: Api) -> None:
    account = await api.account()
    async with api.app[STORE].engine.begin() as connection:
        await connection.execute(text("DROP TABLE refresh_tokens"))
    body = await api.call(
        "POST", "/api/v1/auth/login", json={"username": account.username, "password": account.password}, expect=500
    )
    assert body["code"] == 500 and body["message"] == "Internal server error" and body["data"] is None
    raw = str(body).lower()
    for leak in ("refresh_tokens", "insert", "traceback", "sqlalchemy", "select"):
        assert leak not in raw
    still_serving = await api.call("GET", "/api/v1/users/profile", token=account.access)
    assert still_serving["status"] == 200


@pytest.mark.parametrize("settings_factory", ["postgresql"], indirect=True)
async def test_a_lost_database_connection_is_503_then_recovers(settings_factory: SettingsFactory, make_api) -> None:
    """Connections are not pinged at checkout: one that died under the pool (a database restart)
    fails its request with a 503 to retry, not a 500, and the pool replaces it."""
    api: Api = await make_api(settings_factory(database={"pool_size": 1}))
    account = await api.account()
    await api.call("GET", "/api/v1/meetings", token=account.access, expect=200)
    async with api.app[STORE].engine.connect() as connection:
        pid = (await connection.execute(text("SELECT pg_backend_pid()"))).scalar_one()
    killer = await asyncpg.connect(POSTGRES_URL)
    try:
        assert await killer.fetchval("SELECT pg_terminate_backend($1)", pid)
    finally:
        await killer.close()
    lost = await api.call("GET", "/api/v1/meetings", token=account.access, expect=503)
    assert lost["headers"]["Retry-After"] == "1" and "database" in lost["message"]
    await api.call("GET", "/api/v1/meetings", token=account.access, expect=200)


@sqlite_only
async def test_openapi_lists_every_endpoint(api: Api) -> None:
    response = await api.client.get("/api/v1/openapi.json")
    document = await response.json()
    assert document["openapi"].startswith("3.1")
    operations = {(method.upper(), path) for path, item in document["paths"].items() for method in item}
    expected = {
        ("POST", "/api/v1/auth/register"),
        ("POST", "/api/v1/auth/login"),
        ("POST", "/api/v1/auth/refresh"),
        ("POST", "/api/v1/auth/forgot-password"),
        ("POST", "/api/v1/auth/reset-password"),
        ("GET", "/api/v1/users/profile"),
        ("PUT", "/api/v1/users/profile"),
        ("POST", "/api/v1/users/change-password"),
        ("POST", "/api/v1/users/upload-avatar"),
        ("DELETE", "/api/v1/users/account"),
        ("GET", "/api/v1/admin/users"),
        ("GET", "/api/v1/admin/users/{user_id}"),
        ("PUT", "/api/v1/admin/users/{user_id}"),
        ("DELETE", "/api/v1/admin/users/{user_id}"),
        ("POST", "/api/v1/admin/users/{user_id}/ban"),
        ("POST", "/api/v1/admin/users/{user_id}/unban"),
    }
    assert expected <= operations
    register = document["paths"]["/api/v1/auth/register"]["post"]
    schema_ref = register["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    register_schema = document["components"]["schemas"][schema_ref.rsplit("/", 1)[1]]
    assert set(register_schema["required"]) == {"username", "email", "password"}
    assert register["x-rate-limit"] == "5/minute"


async def test_pathological_input_is_400_not_500(api: Api) -> None:
    account = await api.account()
    nested = await api.call(
        "POST",
        "/api/v1/meetings",
        token=account.access,
        data=b"[" * 100_000,
        headers={"Content-Type": "application/json"},
    )
    assert nested["status"] == 400 and "nested" in nested["message"]
    nul = await api.call("POST", "/api/v1/meetings", token=account.access, json={"title": "a\x00b"})
    assert nul["status"] == 400 and "NUL" in nul["message"]
    surrogate = await api.call(
        "POST",
        "/api/v1/meetings",
        token=account.access,
        data=b'{"title": "\\ud800"}',
        headers={"Content-Type": "application/json"},
    )
    assert surrogate["status"] == 400 and "surrogate" in surrogate["message"]
    query = await api.call("GET", "/api/v1/meetings", token=account.access, params={"status": "a\x00"})
    assert query["status"] == 400 and "NUL" in query["message"]
    for moment in ("9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00"):
        created = await api.call(
            "POST", "/api/v1/meetings", token=account.access, json={"title": "x", "start_time": moment}
        )
        assert created["status"] == 400 and created["data"]["errors"][0]["field"] == "start_time"
        listed = await api.call("GET", "/api/v1/meetings", token=account.access, params={"start_from": moment})
        assert listed["status"] == 400
    far = await api.call(
        "POST", "/api/v1/meetings", token=account.access, json={"title": "x", "start_time": "9999-12-31T10:00:00Z"}
    )
    assert far["status"] == 201 and far["data"]["start_time"] == "9999-12-31T10:00:00Z"
    moved = await api.call(
        "PUT",
        f"/api/v1/meetings/{far['data']['meeting_id']}",
        token=account.access,
        json={"end_time": "9999-12-31T09:00:00Z"},
    )
    assert moved["status"] == 400 and "end_time" in moved["message"]
