"""Event-loop lag: everything on a node (HTTP, signaling, the media clock and packet forwarding)
shares one loop, so a callback that runs late says the node is overloaded or blocked."""

from __future__ import annotations

import asyncio

from prometheus_client import Histogram

SAMPLE_SECONDS = 0.5


async def watch_loop_lag(histogram: Histogram) -> None:
    """Sleep a known time and record how much later than asked the loop woke up, forever."""
    loop = asyncio.get_running_loop()
    while True:
        asked = loop.time()
        await asyncio.sleep(SAMPLE_SECONDS)
        histogram.observe(max(0.0, loop.time() - asked - SAMPLE_SECONDS))
