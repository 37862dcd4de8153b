"""Fixtures: the API runs in-process on both store backends (SQLite file, and PostgreSQL in a
schema of its own per test), Redis is the real server; under CI a missing server fails."""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient

from config import Settings, load_settings
from control.app import create_app
from control.context import STORE
from control.store.users import UserRecord

POSTGRES_URL = os.environ.get("HUIYI_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("HUIYI_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
PASSWORD = "correct-horse-42"


def unavailable(what: str, error: BaseException) -> None:
    """A server the suite needs is down: fatal under CI, a skip on a developer's machine."""
    message = f"{what} is not reachable ({type(error).__name__}: {error})"
    if IN_CI:
        pytest.fail(message + "; CI requires it", pytrace=False)
    pytest.skip(message)


async def postgres_schema() -> str:
    """A fresh schema name, after checking the server answers."""
    try:
        connection = await asyncpg.connect(POSTGRES_URL, timeout=5)
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        unavailable("PostgreSQL at " + POSTGRES_URL, exc)
    await connection.close()
    return f"t_{uuid.uuid4().hex[:16]}"


async def drop_schema(schema: str) -> None:
    connection = await asyncpg.connect(POSTGRES_URL, timeout=5)
    try:
        await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await connection.close()


@pytest.fixture
async def redis_url() -> AsyncIterator[str]:
    client = aioredis.from_url(REDIS_URL)
    try:
        await client.ping()
    except (OSError, aioredis.RedisError) as exc:
        unavailable("Redis at " + REDIS_URL, exc)
    finally:
        await client.aclose()
    yield REDIS_URL


SettingsFactory = Callable[..., Settings]


@pytest.fixture(params=["sqlite", "postgresql"])
async def settings_factory(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SettingsFactory]:
    """Builds Settings for a test on one backend; the data dir and database are the test's own."""
    database: dict[str, str] = {}
    schema = ""
    if request.param == "postgresql":
        schema = await postgres_schema()
        database = {"url": POSTGRES_URL, "schema": schema}

    def make(**sections: dict[str, Any]) -> Settings:
        layers: dict[str, dict[str, Any]] = {
            "server": {"data_dir": str(tmp_path / "data")},
            "database": dict(database),
            "rate_limits": {"enabled": False},
            # The TURN server has tests of its own; an app per test need not start its process.
            "turn": {"enabled": False},
        }
        for section, values in sections.items():
            layers.setdefault(section, {}).update(values)
        return load_settings(None, layers, environ={})

    yield make
    if schema:
        await drop_schema(schema)


@dataclass
class Account:
    id: int
    username: str
    email: str
    password: str
    access: str
    refresh: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access}"}


_counter = itertools.count(1)


class Api:
    """A client of the running app that speaks the envelope."""

    def __init__(self, client: TestClient) -> None:
        self.client = client

    @property
    def app(self) -> web.Application:
        return self.client.app  # type: ignore[return-value]

    async def call(
        self, method: str, path: str, *, token: str | None = None, expect: int | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        headers = dict(kwargs.pop("headers", {}))
        if token:
            headers["Authorization"] = f"Bearer {token}"
        response = await self.client.request(method, path, headers=headers, **kwargs)
        body = await response.json()
        assert set(body) == {"code", "message", "data", "timestamp", "request_id"}, body
        assert response.headers["X-Request-ID"] == body["request_id"]
        if expect is not None:
            assert response.status == expect, body
        body["status"] = response.status
        body["headers"] = response.headers
        return body

    async def register(self, **fields: Any) -> dict[str, Any]:
        n = next(_counter)
        payload = {"username": f"user{n}", "email": f"user{n}@example.com", "password": PASSWORD, **fields}
        return await self.call("POST", "/api/v1/auth/register", json=payload)

    async def account(self, **fields: Any) -> Account:
        registered = await self.register(**fields)
        assert registered["status"] == 201, registered
        user = registered["data"]
        password = fields.get("password", PASSWORD)
        session = await self.call(
            "POST", "/api/v1/auth/login", json={"username": user["username"], "password": password}, expect=200
        )
        return Account(
            id=user["user_id"],
            username=user["username"],
            email=user["email"],
            password=password,
            access=session["data"]["access_token"],
            refresh=session["data"]["refresh_token"],
        )

    async def admin(self) -> Account:
        """An administrator made the way create-admin makes one: straight in the store."""
        account = await self.account()
        record: UserRecord | None = await self.app[STORE].users.update(account.id, role="admin")
        assert record is not None and record.is_admin
        return account


@pytest.fixture
async def make_api(settings_factory: SettingsFactory, aiohttp_client: Any) -> Callable[[Settings], Any]:
    """Apps made here are shut down (aiohttp_client's teardown) before the test's database is
    dropped (settings_factory's): fixtures are torn down in reverse order of their setup."""

    async def make(settings: Settings) -> Api:
        return Api(await aiohttp_client(create_app(settings)))

    return make


@pytest.fixture
async def api(make_api: Callable[[Settings], Any], settings_factory: SettingsFactory) -> Api:
    return await make_api(settings_factory())
