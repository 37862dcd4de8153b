"""Rate limits: the spec's table, 429 with Retry-After, per-caller keys, overrides, Redis sharing."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from config import ConfigError
from control.app import all_endpoints, create_app
from tests.conftest import IN_CI, Api, SettingsFactory

SPEC = Path(__file__).resolve().parents[2] / "shared" / "spec" / "API.md"
UNITS = {"min": "minute", "hour": "hour", "day": "day", "sec": "second"}
# Endpoints the contract does not list: service endpoints, the avatar download and rotating a
# meeting's invite code.
NOT_IN_SPEC = {"meta.health", "meta.openapi", "users.get_avatar", "meetings.rotate_invite_code"}


def spec_limits() -> dict[tuple[str, str], str]:
    """(method, path with {} for parameters) -> "N/unit", read from the contract's tables."""
    if not SPEC.is_file():
        if IN_CI:
            pytest.fail(f"the API contract is missing at {SPEC}")
        pytest.skip(f"the API contract is not beside the repository ({SPEC})")
    limits: dict[tuple[str, str], str] = {}
    prefix = ""
    for line in SPEC.read_text().splitlines():
        if line.startswith("### "):
            found = re.search(r"`(/[^`]+)`", line)
            prefix = found.group(1) if found else ""
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 5 or cells[0] not in {"GET", "POST", "PUT", "DELETE"}:
            continue
        method, path, _meaning, _auth, limit = cells
        full = path if path.startswith(("/api/", "/ws")) else prefix + path
        full = re.sub(r":\w+", "{}", full).rstrip("/")
        amount, unit = limit.split("/")
        limits[(method, full)] = f"{amount}/{UNITS[unit]}"
    return limits


def test_every_endpoint_has_the_spec_rate_limit() -> None:
    spec = spec_limits()
    assert len(spec) > 70
    checked = 0
    for endpoint in all_endpoints():
        key = (endpoint.method, re.sub(r"\{[^}]+\}", "{}", endpoint.openapi_path).rstrip("/"))
        if endpoint.operation_id in NOT_IN_SPEC:
            assert key not in spec
            continue
        assert key in spec, f"{endpoint.operation_id} {key} is not in the contract"
        assert endpoint.rate_limit == spec[key], endpoint.operation_id
        checked += 1
    assert checked >= 16


@pytest.fixture
def limited(settings_factory: SettingsFactory, make_api: Callable[..., Any]) -> Callable[..., Any]:
    async def make(**rate_limits: Any) -> Api:
        return await make_api(settings_factory(rate_limits={"enabled": True, **rate_limits}))

    return make


async def test_login_answers_429_after_five_a_minute(limited: Callable[..., Any]) -> None:
    api = await limited()
    attempt = {"username": "nobody", "password": "whatever1"}
    for _ in range(5):
        assert (await api.call("POST", "/api/v1/auth/login", json=attempt))["status"] == 404
    blocked = await api.call("POST", "/api/v1/auth/login", json=attempt, expect=429)
    assert blocked["code"] == 429
    assert 1 <= int(blocked["headers"]["Retry-After"]) <= 60
    # Other endpoints keep their own budget.
    await api.call("GET", "/api/v1/health", expect=200)


async def test_forgot_password_allows_three_an_hour(limited: Callable[..., Any]) -> None:
    api = await limited()
    for _ in range(3):
        await api.call("POST", "/api/v1/auth/forgot-password", json={"email": "a@example.com"}, expect=200)
    blocked = await api.call("POST", "/api/v1/auth/forgot-password", json={"email": "a@example.com"}, expect=429)
    assert 3500 <= int(blocked["headers"]["Retry-After"]) <= 3600


async def test_limits_are_kept_per_user(limited: Callable[..., Any]) -> None:
    api = await limited()
    first = await api.account()
    second = await api.account()
    for _ in range(10):
        rotated = await api.call("POST", "/api/v1/auth/refresh", token=first.refresh, expect=200)
        first.refresh = rotated["data"]["refresh_token"]
    assert (await api.call("POST", "/api/v1/auth/refresh", token=first.refresh))["status"] == 429
    await api.call("POST", "/api/v1/auth/refresh", token=second.refresh, expect=200)


async def test_profile_allows_one_hundred_a_minute(limited: Callable[..., Any]) -> None:
    api = await limited()
    account = await api.account()
    for _ in range(100):
        await api.call("GET", "/api/v1/users/profile", token=account.access, expect=200)
    await api.call("GET", "/api/v1/users/profile", token=account.access, expect=429)
    await api.call("PUT", "/api/v1/users/profile", token=account.access, json={}, expect=200)


async def test_limits_can_be_overridden_per_endpoint(limited: Callable[..., Any]) -> None:
    api = await limited(endpoints={"auth.register": "2/minute"})
    for _ in range(2):
        assert (await api.register())["status"] == 201
    assert (await api.register())["status"] == 429


async def test_bad_overrides_are_refused_at_start(settings_factory: SettingsFactory) -> None:
    with pytest.raises(ConfigError, match="unknown operations"):
        create_app(settings_factory(rate_limits={"endpoints": {"auth.nope": "1/minute"}}))
    with pytest.raises(ConfigError, match="invalid rate limit"):
        create_app(settings_factory(rate_limits={"endpoints": {"auth.login": "lots"}}))


async def test_redis_shares_counters_between_nodes(
    settings_factory: SettingsFactory, make_api: Callable[..., Any], redis_url: str
) -> None:
    shared = {"rate_limits": {"enabled": True}, "redis": {"url": redis_url, "key_prefix": f"t{uuid.uuid4().hex}"}}
    node_a = await make_api(settings_factory(**shared))
    node_b = await make_api(settings_factory(**shared))
    attempt = {"username": "nobody", "password": "whatever1"}
    for node in (node_a, node_b, node_a, node_b, node_a):
        assert (await node.call("POST", "/api/v1/auth/login", json=attempt))["status"] == 404
    await node_b.call("POST", "/api/v1/auth/login", json=attempt, expect=429)
    await node_a.call("POST", "/api/v1/auth/login", json=attempt, expect=429)
