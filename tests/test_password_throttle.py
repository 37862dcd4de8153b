"""The password throttle on its own, in memory and in the real Redis: guesses from one address
back off hard, guesses spread over addresses back the account off mildly, and the owner's usual
address is never locked out by someone else's guessing."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from control.auth.throttle import FREE_FAILURES, PasswordThrottle
from control.errors import ApiError


@pytest.fixture(params=["memory", "redis"])
async def throttle(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[PasswordThrottle]:
    made = PasswordThrottle(
        enabled=True, redis_url=redis_url if request.param == "redis" else "", key_prefix=f"t{uuid.uuid4().hex}"
    )
    yield made
    await made.close()


async def refused(throttle: PasswordThrottle, user_id: int, address: str) -> int | None:
    """The Retry-After of a refused attempt, or None when the attempt was let through."""
    try:
        await throttle.attempt(user_id, address)
    except ApiError as exc:
        assert exc.status == 429
        return int(exc.headers["Retry-After"])
    return None


async def test_one_address_guessing_backs_off(throttle: PasswordThrottle) -> None:
    for _ in range(FREE_FAILURES):
        assert await refused(throttle, 1, "10.0.0.1") is None
    assert await refused(throttle, 1, "10.0.0.1") == 1
    # Another account from the same address is not affected.
    assert await refused(throttle, 2, "10.0.0.1") is None


async def test_parallel_guesses_are_counted_as_they_arrive(throttle: PasswordThrottle) -> None:
    answers = await asyncio.gather(*(refused(throttle, 1, "10.0.0.1") for _ in range(FREE_FAILURES)))
    assert answers == [None] * FREE_FAILURES
    assert await refused(throttle, 1, "10.0.0.1") is not None


async def test_guesses_spread_over_addresses_back_the_account_off_but_not_its_owner(
    throttle: PasswordThrottle,
) -> None:
    await throttle.attempt(1, "192.0.2.1")
    await throttle.succeeded(1, "192.0.2.1")  # the owner's usual address
    for n in range(FREE_FAILURES):
        assert await refused(throttle, 1, f"198.51.100.{n}") is None
    # A new address now waits, however fresh it is...
    assert await refused(throttle, 1, "203.0.113.9") is not None
    # ...but the owner still gets in from where they usually do, which forgives the account.
    assert await refused(throttle, 1, "192.0.2.1") is None
    await throttle.succeeded(1, "192.0.2.1")
    assert await refused(throttle, 1, "203.0.113.9") is None


async def test_a_right_password_forgives_the_attempts(throttle: PasswordThrottle) -> None:
    for _ in range(FREE_FAILURES - 1):
        await throttle.attempt(1, "10.0.0.1")
    await throttle.attempt(1, "10.0.0.1")
    await throttle.succeeded(1, "10.0.0.1")
    for _ in range(FREE_FAILURES):
        assert await refused(throttle, 1, "10.0.0.1") is None
