"""Fixtures: the API runs in-process on both store backends (SQLite file, and PostgreSQL in a
schema of its own per test), Redis is the real server; under CI a missing server fails. A test that
never reaches the database is marked ``sqlite_only`` and runs once."""

from __future__ import annotations

import asyncio
import email
import email.policy
import itertools
import os
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient
from xdist.scheduler import LoadScopeScheduling

from config import Settings, load_settings
from control.app import create_app
from control.auth.passwords import hash_password
from control.auth.sessions import issue_tokens
from control.context import BACKGROUND, SETTINGS, STORE
from control.store.users import UserRecord
from tests.server_process import ServerProcess, start_server

if TYPE_CHECKING:
    from tests.rtc_clients import Participant

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
# For a test that never reaches the database (validation, routing, the OpenAPI document, settings):
# the backend cannot change its outcome, so it runs once, on SQLite.
sqlite_only = pytest.mark.parametrize("settings_factory", ["sqlite"], indirect=True)


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
            # Each app's metrics listener on a port of its own, so apps running at once never clash.
            "metrics": {"port": 0},
            # Media in the test's own process; tests/test_sfu_workers.py runs worker processes.
            "sfu": {"workers": 0},
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
        self._password_hash = ""  # PASSWORD's, made once: each hash costs ~100 ms

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

    async def stored_account(self, role: str = "user") -> Account:
        """An account with a session, made straight in the store the way registering and logging in
        make one, without spending the registration and login rate limits or a password hash each
        (for tests that need many accounts, or the limits untouched)."""
        if not self._password_hash:
            self._password_hash = await hash_password(PASSWORD)
        n = next(_counter)
        username, address = f"user{n}", f"user{n}@example.com"
        user = await self.app[STORE].users.create(
            username=username, email=address, password_hash=self._password_hash, nickname=username, role=role
        )
        tokens = await issue_tokens(self.app, user)
        return Account(user.id, username, address, PASSWORD, tokens.access_token, tokens.refresh_token)

    async def settle(self) -> None:
        """Wait for what the app does after answering (a mail being sent, say)."""
        for task in list(self.app[BACKGROUND]):
            await task

    def outbox(self) -> list[EmailMessage]:
        """The mails written to the outbox (no SMTP server configured), oldest first."""
        mails = sorted((self.app[SETTINGS].server.data_dir / "outbox").glob("*.eml"))
        parsed = [email.message_from_bytes(path.read_bytes(), policy=email.policy.default) for path in mails]
        return [mail for mail in parsed if isinstance(mail, EmailMessage)]


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


@pytest.fixture
async def nodes(
    tmp_path: Path, redis_url: str, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[ServerProcess, ServerProcess]]:
    """Two server processes sharing one PostgreSQL schema, one Redis and one signing key; a test
    may add settings to both by parametrizing this fixture indirectly with a dict of HUIYI_* variables."""
    schema = await postgres_schema()
    env = {
        "HUIYI_DATABASE_SCHEMA": schema,
        "HUIYI_AUTH_JWT_SECRET": uuid.uuid4().hex * 2,
        "HUIYI_REDIS_KEY_PREFIX": f"t{uuid.uuid4().hex}",
        **getattr(request, "param", {}),
    }
    common = ["--database-url", POSTGRES_URL, "--redis-url", redis_url]
    started: list[ServerProcess] = []
    try:
        for name in ("a", "b"):
            started.append(
                await asyncio.to_thread(
                    start_server,
                    *common,
                    "--data-dir",
                    str(tmp_path / name),
                    log=tmp_path / f"{name}.log",
                    env={**env, "HUIYI_SERVER_NODE_ID": f"node-{name}"},
                )
            )
        yield started[0], started[1]
    finally:
        for server in started:
            server.stop()
        await drop_schema(schema)


@pytest.fixture
async def people() -> AsyncIterator[list[Participant]]:
    """The aiortc participants a test connects (``tests.rtc_clients.connect_user``), closed at its end."""
    found: list[Participant] = []
    yield found
    await asyncio.gather(*(person.close() for person in found), return_exceptions=True)


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    """A headless Chromium (see ``tests.browser``), imported only by the tests that ask for one."""
    from tests.browser import launch

    async with launch() as launched:
        yield launched


# Modules whose tests measure media as it flows (browsers, aiortc peers, live pipelines, timings).
# Two of them side by side on a two-core machine starve each other's encoders and clocks, so the
# test workers run them one after another, on one worker, while the other workers take the rest.
REAL_TIME_MODULES = frozenset(
    f"tests/{name}.py"
    for name in (
        "test_captions",
        "test_constrained_links",
        "test_dynacast_browser",
        "test_live_denoise",
        "test_red_audio_browser",
        "test_recording_aiortc",
        "test_recording_e2e",
        "test_recording_media",
        "test_rooms_across_nodes",
        "test_rooms_across_nodes_browser",
        "test_sfu_adaptation",
        "test_sfu_aiortc",
        "test_sfu_browser",
        "test_sfu_ice_tcp",
        "test_sfu_network",
        "test_sfu_single_port",
        "test_sfu_svc_browser",
        "test_sfu_workers",
        "test_streaming_e2e",
        "test_turn_browser",
        "test_two_nodes",
        "test_webapp_browser",
        "test_webapp_firefox",
    )
)


class RealTimeApartScheduling(LoadScopeScheduling):
    """``--dist loadscope`` (each module whole on one worker, its tests in order), with every
    real-time module in one unit of work."""

    def _split_scope(self, nodeid: str) -> str:
        module = nodeid.split("::", 1)[0]
        return "real-time media modules" if module in REAL_TIME_MODULES else super()._split_scope(nodeid)


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> LoadScopeScheduling | None:
    return RealTimeApartScheduling(config, log) if config.getoption("dist") == "loadscope" else None
