"""Password-guessing defence, per account, on top of the per-address rate limit: for logins and
for every other place a password is checked (changing the email or password, deleting the
account), so a stolen token is no faster a way to guess.

Failed attempts for an account from one address back off exponentially (after a few free tries,
1 s, 2 s, 4 s … up to 15 minutes), so one address cannot guess a password at any useful speed.
Attempts from every address together back the account off too, but for at most a minute at a
time and never for an address the account logged in from successfully within the last 30 days:
an attacker spreading guesses over many addresses slows down, and still cannot lock the owner out
of the account from where they usually log in. While backed off, an attempt is refused with 429
before the password is checked, so a guess made then tells nothing.

Each attempt is counted (atomically, before the password is checked) and forgiven when it turns
out right, so guesses sent in parallel are counted as they arrive. State lives in memory, or in
Redis (when configured) so every node applies the same backoff."""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Protocol

import redis.asyncio as aioredis

from control.errors import ApiError

FREE_FAILURES = 5
ADDRESS_CAP_SECONDS = 900.0
ACCOUNT_CAP_SECONDS = 60.0
FORGET_AFTER_SECONDS = 3600  # a quiet hour clears the failures
KNOWN_ADDRESS_SECONDS = 30 * 24 * 3600
MEMORY_CAPACITY = 100_000  # entries kept in memory; the oldest go first


class _Storage(Protocol):
    async def incr(self, key: str, ttl: int) -> int: ...

    async def get(self, key: str) -> str | None: ...

    async def set(self, key: str, value: str, ttl: int) -> None: ...

    async def delete(self, *keys: str) -> None: ...

    async def close(self) -> None: ...


class _MemoryStorage:
    """Bounded: a flood of distinct addresses evicts the oldest entries, never grows memory."""

    def __init__(self) -> None:
        self._items: OrderedDict[str, tuple[float, str]] = OrderedDict()

    async def incr(self, key: str, ttl: int) -> int:
        count = int(await self.get(key) or 0) + 1
        await self.set(key, str(count), ttl)
        return count

    async def get(self, key: str) -> str | None:
        item = self._items.get(key)
        if item is None or item[0] < time.monotonic():
            self._items.pop(key, None)
            return None
        return item[1]

    async def set(self, key: str, value: str, ttl: int) -> None:
        self._items[key] = (time.monotonic() + ttl, value)
        self._items.move_to_end(key)
        while len(self._items) > MEMORY_CAPACITY:
            self._items.popitem(last=False)

    async def delete(self, *keys: str) -> None:
        for key in keys:
            self._items.pop(key, None)

    async def close(self) -> None:
        self._items.clear()


class _RedisStorage:
    def __init__(self, url: str, prefix: str) -> None:
        self._client = aioredis.from_url(url)
        self._prefix = prefix

    async def incr(self, key: str, ttl: int) -> int:
        async with self._client.pipeline(transaction=True) as pipeline:
            pipeline.incr(self._prefix + key)
            pipeline.expire(self._prefix + key, ttl)
            count, _ = await pipeline.execute()
        return int(count)

    async def get(self, key: str) -> str | None:
        value = await self._client.get(self._prefix + key)
        return value.decode() if value is not None else None

    async def set(self, key: str, value: str, ttl: int) -> None:
        await self._client.set(self._prefix + key, value, ex=ttl)

    async def delete(self, *keys: str) -> None:
        await self._client.delete(*(self._prefix + key for key in keys))

    async def close(self) -> None:
        await self._client.aclose()


def _backoff(failures: int, cap: float) -> float:
    return 0.0 if failures < FREE_FAILURES else min(cap, 2.0 ** (failures - FREE_FAILURES))


class PasswordThrottle:
    def __init__(self, *, enabled: bool, redis_url: str = "", key_prefix: str = "huiyi") -> None:
        self.enabled = enabled
        self._storage: _Storage = (
            _RedisStorage(redis_url, f"{key_prefix}:passwords:") if redis_url else _MemoryStorage()
        )

    async def attempt(self, user_id: int, address: str) -> None:
        """Before checking a password: refuse (429) while backed off, else count the attempt
        (as failed until ``succeeded`` says otherwise)."""
        if not self.enabled:
            return
        known = await self._storage.get(f"known:{user_id}:{address}") is not None
        scopes = [(f"pair:{user_id}:{address}", ADDRESS_CAP_SECONDS)]
        if not known:
            scopes.append((f"account:{user_id}", ACCOUNT_CAP_SECONDS))
        now = time.time()
        until = max([float(await self._storage.get(key + ":until") or 0) for key, _ in scopes])
        if until > now:
            retry_after = max(1, int(until - now + 0.999))
            raise ApiError(
                429,
                f"Too many wrong passwords for this account; retry in {retry_after} s",
                headers={"Retry-After": str(retry_after)},
            )
        for key, cap in scopes:
            failures = await self._storage.incr(key, FORGET_AFTER_SECONDS)
            wait = _backoff(failures, cap)
            if wait:
                await self._storage.set(key + ":until", str(now + wait), FORGET_AFTER_SECONDS)

    async def succeeded(self, user_id: int, address: str) -> None:
        """The password was right: the attempt is forgiven, and the address becomes known."""
        if not self.enabled:
            return
        pair, account = f"pair:{user_id}:{address}", f"account:{user_id}"
        await self._storage.delete(pair, pair + ":until", account, account + ":until")
        await self._storage.set(f"known:{user_id}:{address}", "1", KNOWN_ADDRESS_SECONDS)

    async def close(self) -> None:
        await self._storage.close()
