"""Rate limits: the spec's table, 429 with Retry-After, per-caller keys, overrides, Redis sharing."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from config import ConfigError
from control.app import all_endpoints, create_app
from control.endpoints import Access, Endpoint
from tests.conftest import Api, SettingsFactory, sqlite_only
from tests.contract import CONTRACT_LIMITS

# Endpoints the contract does not list: service endpoints (health, readiness, the OpenAPI
# document), the avatar download, rotating a meeting's invite code, the ICE servers (STUN/TURN) of
# a caller, a speech, denoising or enhancement job's status, the webhook receivers'
# administration, a live stream's HLS files (for its participants, and at its public address), a
# meeting's live captions switch and transcript, and a room's live noise suppression.
NOT_IN_SPEC = {
    "meta.health",
    "meta.ready",
    "meta.openapi",
    "users.get_avatar",
    "meetings.rotate_invite_code",
    "webrtc.ice_servers",
    "speech.job_status",
    "webhooks.list",
    "webhooks.create",
    "webhooks.get",
    "webhooks.update",
    "webhooks.delete",
    "streaming.hls",
    "streaming.public_hls",
    "meetings.captions",
    "meetings.transcript",
    "meetings.transcript_vtt",
    "audio.job_status",
    "video.job_status",
    "webrtc.room_noise_suppression",
    "webrtc.set_room_noise_suppression",
}


def contract_key(endpoint: Endpoint) -> tuple[str, str]:
    return endpoint.method, re.sub(r"\{[^}]+\}", "{}", endpoint.openapi_path).rstrip("/")


def test_every_endpoint_has_the_contract_rate_limit() -> None:
    for endpoint in all_endpoints():
        key = contract_key(endpoint)
        if endpoint.operation_id in NOT_IN_SPEC:
            assert key not in CONTRACT_LIMITS, endpoint.operation_id
            continue
        assert key in CONTRACT_LIMITS, f"{endpoint.operation_id} {key} is not in the contract"
        assert endpoint.rate_limit == CONTRACT_LIMITS[key], endpoint.operation_id


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


@sqlite_only
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


# A path parameter with its optional pattern, which may hold a quantifier such as {32}.
PATH_PARAMETER = re.compile(r"\{(\w+)(?::((?:[^{}]|\{\d+(?:,\d*)?\})*))?\}")


def parameter_value(match: re.Match[str]) -> str:
    """A value the route accepts (so the call reaches the guard) and no row has."""
    pattern = match.group(2) or r"\d+"
    candidates = ("999999", "f" * 32, "f" * 32 + ".png", "index.m3u8")
    return next(value for value in candidates if re.fullmatch(pattern, value))


@sqlite_only
async def test_every_operation_enforces_its_limit(limited: Callable[..., Any]) -> None:
    """Each operation, with its limit overridden to 2 a minute, refuses the third call with 429:
    the limit is applied on every route the declarations make, before the handler runs."""
    api = await limited(endpoints={endpoint.operation_id: "2/minute" for endpoint in all_endpoints()})
    # Accounts made in the store, so registering and logging in keep their whole budget.
    admin, user, doomed = [await api.stored_account(role) for role in ("admin", "user", "user")]
    for endpoint in all_endpoints():
        path = PATH_PARAMETER.sub(parameter_value, endpoint.path)
        token = {
            Access.PUBLIC: None,
            Access.USER: doomed.access if endpoint.operation_id == "users.delete_account" else user.access,
            Access.ADMIN: admin.access,
            Access.REFRESH: user.refresh,
        }[endpoint.access]
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        statuses = []
        for _ in range(3):
            response = await api.client.request(endpoint.method, path, headers=headers)
            statuses.append(response.status)
            retry_after = response.headers.get("Retry-After")
            await response.read()
        assert 429 not in statuses[:2] and statuses[2] == 429, (endpoint.operation_id, statuses)
        assert retry_after is not None and 1 <= int(retry_after) <= 60, endpoint.operation_id


@sqlite_only
async def test_the_window_moves(limited: Callable[..., Any]) -> None:
    """A moving window: a slot frees when the call that took it is a window old, not at a
    fixed boundary when every slot would free at once."""
    api = await limited(endpoints={"meta.health": "3 per 4 seconds"})
    loop = asyncio.get_running_loop()
    start = loop.time()
    for _ in range(2):
        await api.call("GET", "/api/v1/health", expect=200)
    await asyncio.sleep(max(0.0, start + 2.0 - loop.time()))
    await api.call("GET", "/api/v1/health", expect=200)
    await api.call("GET", "/api/v1/health", expect=429)
    await asyncio.sleep(max(0.0, start + 4.2 - loop.time()))
    # The first two calls left the window; the one made two seconds later did not.
    await api.call("GET", "/api/v1/health", expect=200)
    await api.call("GET", "/api/v1/health", expect=200)
    await api.call("GET", "/api/v1/health", expect=429)
