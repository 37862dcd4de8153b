"""A constrained network link for tests: a network namespace joined to this one by a veth pair on a
private /30, its downlink capped with ``tc tbf``. The server binds the host side's address; a client
in the namespace reaches it only through the capped link. A browser is started inside the namespace
through ``ip netns exec``; an aiortc client runs on an event loop in a thread that entered the
namespace (a thread's sockets are made in its own network namespace).

Everything the link made (namespace, veth pair, qdisc) is deleted when it closes, also after a failed
test. It needs root (namespaces, ``tc``): outside CI a test without it is skipped, under CI it fails.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import random
import shutil
import stat
import subprocess
import threading
from collections.abc import Coroutine, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

from bench import loopback
from tests.conftest import IN_CI

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
BURST_BYTES = 4000  # tbf's bucket: a few packets, so a burst above the rate is queued, not passed
QUEUE_LATENCY_MS = 400  # what tbf queues before it drops: a slow access link's buffer, a key frame or two


def require_links() -> None:
    """Skip (or, under CI, fail) unless this process may make namespaces and shape links."""
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    reason = f"missing {', '.join(missing)}" if missing else "not root" if os.geteuid() != 0 else ""
    if not reason:
        return
    if IN_CI:
        raise RuntimeError(f"constrained-link tests need root with ip and tc (iproute2) under CI: {reason}")
    pytest.skip(f"constrained links unavailable: {reason}")


def _run(*command: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True, timeout=10)
    if result.returncode:
        raise RuntimeError(f"{' '.join(command)} failed: {result.stderr.strip()}")


def _free_subnet() -> int:
    """The third octet of a 10.213.N.0/30 that no interface here uses."""
    used = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True, check=True).stdout
    for _ in range(100):
        octet = random.randrange(1, 255)
        if f"10.213.{octet}." not in used:
            return octet
    raise RuntimeError("no free 10.213.N.0/30 subnet for a test link")


class Link:
    """The host side (``host_address``, in this namespace) and the peer side (``peer_address``, in
    namespace ``namespace``) of one veth pair. ``cap`` limits what flows towards the peer."""

    def __init__(self) -> None:
        tag = f"{os.getpid() % 100000}{random.randrange(100)}"
        octet = _free_subnet()
        self.namespace = f"hq{tag}"
        self.host_interface, self.peer_interface = f"hqh{tag}", f"hqp{tag}"
        self.host_address, self.peer_address = f"10.213.{octet}.1", f"10.213.{octet}.2"
        self.rates: dict[bool, int | None] = {}  # by direction: uplink (peer to host) or not

    def open(self) -> None:
        _run("ip", "netns", "add", self.namespace)
        _run("ip", "link", "add", self.host_interface, "type", "veth", "peer", "name", self.peer_interface)
        _run("ip", "link", "set", self.peer_interface, "netns", self.namespace)
        _run("ip", "addr", "add", f"{self.host_address}/30", "dev", self.host_interface)
        _run("ip", "link", "set", self.host_interface, "up")
        inside = ("ip", "netns", "exec", self.namespace)
        _run(*inside, "ip", "addr", "add", f"{self.peer_address}/30", "dev", self.peer_interface)
        _run(*inside, "ip", "link", "set", self.peer_interface, "up")
        _run(*inside, "ip", "link", "set", "lo", "up")

    def cap(self, rate: int, uplink: bool = False) -> None:
        """Limit the host-to-peer direction (or, with ``uplink``, peer-to-host) to ``rate`` bit/s: a
        token bucket whose queue holds QUEUE_LATENCY_MS of traffic."""
        _run(
            *self._device(uplink), "root", "tbf", "rate", f"{rate}bit", "burst", str(BURST_BYTES),
            "latency", f"{QUEUE_LATENCY_MS}ms",
        )  # fmt: skip
        self.rates[uplink] = rate

    def lift(self, uplink: bool = False) -> None:
        if self.rates.get(uplink) is not None:
            _run(*self._device(uplink, "del"), "root")
            self.rates[uplink] = None

    def _device(self, uplink: bool, verb: str = "") -> tuple[str, ...]:
        verb = verb or ("change" if self.rates.get(uplink) is not None else "add")
        if uplink:
            return ("ip", "netns", "exec", self.namespace, "tc", "qdisc", verb, "dev", self.peer_interface)
        return ("tc", "qdisc", verb, "dev", self.host_interface)

    def close(self) -> None:
        """Delete the pair (both ends go with either) and the namespace; what is already gone is fine."""
        subprocess.run(["ip", "link", "del", self.host_interface], capture_output=True, timeout=10)
        subprocess.run(["ip", "netns", "del", self.namespace], capture_output=True, timeout=10)

    def wrapper(self, program: str, directory: Path) -> str:
        """An executable that runs ``program`` inside the namespace (for Playwright's executable_path)."""
        script = directory / f"in-{self.namespace}"
        script.write_text(f'#!/bin/sh\nexec ip netns exec {self.namespace} {program} "$@"\n')
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
        return str(script)


@contextmanager
def constrained_link() -> Iterator[Link]:
    require_links()
    link = Link()
    try:
        link.open()
        yield link
    finally:
        link.close()


class NamespaceLoop:
    """An asyncio loop on a thread inside the link's namespace: aiortc clients made on it gather
    candidates on, and send from, the namespace's address."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self.loop = asyncio.new_event_loop()
        self._ready: Future[None] = Future()
        self._thread = threading.Thread(target=self._main, name=f"netns-{link.namespace}", daemon=True)
        self._thread.start()
        self._ready.result(timeout=10)

    def _main(self) -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            descriptor = os.open(f"/var/run/netns/{self.link.namespace}", os.O_RDONLY)
            try:
                if libc.setns(descriptor, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns into the link's namespace failed")
            finally:
                os.close(descriptor)
            loopback.use_addresses_in_this_thread([self.link.peer_address])
        except BaseException as exc:  # handed to the caller waiting on _ready
            self._ready.set_exception(exc)
            return
        self._ready.set_result(None)
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    async def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the namespace's loop and wait for it from the caller's loop."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coroutine, self.loop))

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self.loop.close()
