"""Benchmark and test clients keep their media on the loopback interface.

aiortc's peer connections gather host candidates through aioice, which lists every non-loopback
interface and never 127.0.0.1. Clients made with aiortc (the tests' participants, the naive baseline)
call ``loopback_only`` first, so their candidates, and so all their media, stay on 127.0.0.1. The
synthetic clients gather through ``sfu.network`` with ``LOOPBACK`` instead.
"""

from __future__ import annotations

import threading

import aioice.ice

from sfu.network import LOOPBACK

ADDRESSES = list(LOOPBACK.bind)
_per_thread = threading.local()


def _loopback_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    del use_ipv6  # ::1 would need a server bound to it; IPv4 loopback is enough for every client
    return list(getattr(_per_thread, "addresses", ADDRESSES)) if use_ipv4 else []


def loopback_only() -> None:
    """From now on, aioice in this process gathers host candidates on 127.0.0.1 only."""
    aioice.ice.get_host_addresses = _loopback_addresses


def use_addresses_in_this_thread(addresses: list[str]) -> None:
    """Clients on the calling thread gather on ``addresses`` (its network namespace's) instead."""
    _per_thread.addresses = list(addresses)
