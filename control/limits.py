"""Per-endpoint rate limits (moving window), keyed per caller: the user id when authenticated,
else the client address. Counters live in memory, or in Redis so every node shares them."""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Mapping

from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter

from config import ConfigError
from control.errors import ApiError


class RateLimiter:
    def __init__(
        self,
        defaults: Mapping[str, str],
        overrides: Mapping[str, str],
        *,
        enabled: bool,
        redis_url: str = "",
        key_prefix: str = "huiyi",
    ) -> None:
        unknown = sorted(set(overrides) - set(defaults))
        if unknown:
            raise ConfigError(f"rate_limits.endpoints names unknown operations: {', '.join(unknown)}")
        self.enabled = enabled
        self._items: dict[str, RateLimitItem] = {}
        for operation, text in {**defaults, **overrides}.items():
            try:
                self._items[operation] = parse(text)
            except ValueError:
                raise ConfigError(f"invalid rate limit {text!r} for {operation}") from None
        self._storage: Storage = (
            RedisStorage(f"async+{redis_url}", implementation="redispy", key_prefix=f"{key_prefix}:limits")
            if redis_url
            else MemoryStorage()
        )
        self._strategy = MovingWindowRateLimiter(self._storage)
        self.refused: Counter[str] = Counter()  # calls answered 429, by operation, since start

    def limit_of(self, operation: str) -> RateLimitItem:
        return self._items[operation]

    async def hit(self, operation: str, caller: str) -> None:
        """Count one request; over the limit, answer 429 with the seconds until a slot frees."""
        if not self.enabled:
            return
        item = self._items[operation]
        if await self._strategy.hit(item, operation, caller):
            return
        self.refused[operation] += 1
        stats = await self._strategy.get_window_stats(item, operation, caller)
        retry_after = max(1, math.ceil(stats.reset_time - time.time()))
        raise ApiError(
            429,
            f"Rate limit exceeded ({item}); retry in {retry_after} s",
            headers={"Retry-After": str(retry_after), "X-RateLimit-Limit": str(item.amount)},
        )

    async def close(self) -> None:
        if isinstance(self._storage, RedisStorage):
            # limits opens the redis-py client itself and offers no close of its own.
            await self._storage.bridge.storage.aclose()
