"""The accounts that called recently, kept in memory so authenticating a request costs no query.

Every write to an account (``UserStore.update``) is announced to every node over the bus and
waited for (see ``Hub.announce_account``), and each node drops its copy when told; so a ban, a
password change or a deletion takes effect on the very next request wherever it lands. The time
limit only bounds how long a copy can outlive a change nobody announced (an operator editing the
database by hand, or a bus message lost while Redis was unreachable)."""

from __future__ import annotations

import time
from collections import OrderedDict

from control.store.users import UserRecord, UserStore


class AccountCache:
    def __init__(self, users: UserStore, ttl_seconds: float, capacity: int = 50_000) -> None:
        self._users = users
        self._ttl = ttl_seconds
        self._capacity = capacity
        self._entries: OrderedDict[int, tuple[float, UserRecord]] = OrderedDict()
        # Bumped by every drop: a read that started before a drop must not store what it read.
        self._generation = 0

    async def get(self, user_id: int) -> UserRecord | None:
        now = time.monotonic()
        entry = self._entries.get(user_id)
        if entry is not None and entry[0] > now:
            return entry[1]
        generation = self._generation
        record = await self._users.get(user_id)
        if record is None or self._ttl <= 0 or generation != self._generation:
            return record
        self._entries[user_id] = (now + self._ttl, record)
        self._entries.move_to_end(user_id)
        if len(self._entries) > self._capacity:
            self._entries.popitem(last=False)
        return record

    def forget(self, user_id: int) -> None:
        self._generation += 1
        self._entries.pop(user_id, None)

    def clear(self) -> None:
        """Drop everything: after the bus lost messages, any copy may be stale."""
        self._generation += 1
        self._entries.clear()
