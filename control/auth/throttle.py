"""Password-guessing defence for login, per account, on top of the per-address rate limit.

Failed logins for an account from one address back off exponentially (after a few free tries,
1 s, 2 s, 4 s … up to 15 minutes), so one address cannot guess a password at any useful speed.
Failures from every address together back the account off too, but for at most a minute at a
time and never for an address the account logged in from successfully within the last 30 days:
an attacker spreading guesses over many addresses slows down, and still cannot lock the owner out
of the account from where they usually log in. While backed off, a login is refused with 429
before the password is checked, so a guess made then tells nothing.

State lives in memory, or in Redis (when configured) so every node applies the same backoff."""

from __future__ import annotations

import json
import time
from typing import Protocol

import redis.asyncio as aioredis

from control.errors import ApiError

FREE_FAILURES = 5
ADDRESS_CAP_SECONDS = 900.0
ACCOUNT_CAP_SECONDS = 60.0
FORGET_AFTER_SECONDS = 3600  # a quiet hour clears the failures
KNOWN_ADDRESS_SECONDS = 30 * 24 * 3600


class _Storage(Protocol):
    async def get(self, key: str) -> str | None: ...

    async def set(self, key: str, value: str, ttl: int) -> None: ...

    async def delete(self, key: str) -> None: ...

    async def close(self) -> None: ...


class _MemoryStorage:
    def __init__(self) -> None:
        self._items: dict[str, tuple[float, str]] = {}

    async def get(self, key: str) -> str | None:
        item = self._items.get(key)
        if item is None or item[0] < time.monotonic():
            self._items.pop(key, None)
            return None
        return item[1]

    async def set(self, key: str, value: str, ttl: int) -> None:
        if len(self._items) > 100_000:  # bounded under a flood of distinct addresses
            now = time.monotonic()
            self._items = {k: v for k, v in self._items.items() if v[0] >= now}
        self._items[key] = (time.monotonic() + ttl, value)

    async def delete(self, key: str) -> None:
        self._items.pop(key, None)

    async def close(self) -> None:
        self._items.clear()


class _RedisStorage:
    def __init__(self, url: str, prefix: str) -> None:
        self._client = aioredis.from_url(url)
        self._prefix = prefix

    async def get(self, key: str) -> str | None:
        value = await self._client.get(self._prefix + key)
        return value.decode() if value is not None else None

    async def set(self, key: str, value: str, ttl: int) -> None:
        await self._client.set(self._prefix + key, value, ex=ttl)

    async def delete(self, key: str) -> None:
        await self._client.delete(self._prefix + key)

    async def close(self) -> None:
        await self._client.aclose()


def _backoff(failures: int, cap: float) -> float:
    return 0.0 if failures < FREE_FAILURES else min(cap, 2.0 ** (failures - FREE_FAILURES))


class LoginThrottle:
    def __init__(self, *, enabled: bool, redis_url: str = "", key_prefix: str = "huiyi") -> None:
        self.enabled = enabled
        self._storage: _Storage = _RedisStorage(redis_url, f"{key_prefix}:login:") if redis_url else _MemoryStorage()

    async def check(self, user_id: int, address: str) -> None:
        """Refuse (429) a login for this account from this address while it is backed off."""
        if not self.enabled:
            return
        now = time.time()
        waits = [await self._blocked_until(f"pair:{user_id}:{address}")]
        if await self._storage.get(f"known:{user_id}:{address}") is None:
            waits.append(await self._blocked_until(f"account:{user_id}"))
        until = max(waits)
        if until > now:
            retry_after = max(1, int(until - now + 0.999))
            raise ApiError(
                429,
                f"Too many failed logins for this account; retry in {retry_after} s",
                headers={"Retry-After": str(retry_after)},
            )

    async def failed(self, user_id: int, address: str) -> None:
        if not self.enabled:
            return
        await self._count(f"pair:{user_id}:{address}", ADDRESS_CAP_SECONDS)
        await self._count(f"account:{user_id}", ACCOUNT_CAP_SECONDS)

    async def succeeded(self, user_id: int, address: str) -> None:
        if not self.enabled:
            return
        await self._storage.delete(f"pair:{user_id}:{address}")
        await self._storage.delete(f"account:{user_id}")
        await self._storage.set(f"known:{user_id}:{address}", "1", KNOWN_ADDRESS_SECONDS)

    async def _blocked_until(self, key: str) -> float:
        value = await self._storage.get(key)
        return float(json.loads(value)["until"]) if value else 0.0

    async def _count(self, key: str, cap: float) -> None:
        value = await self._storage.get(key)
        failures = (json.loads(value)["failures"] if value else 0) + 1
        until = time.time() + _backoff(failures, cap)
        await self._storage.set(key, json.dumps({"failures": failures, "until": until}), FORGET_AFTER_SECONDS)

    async def close(self) -> None:
        await self._storage.close()
