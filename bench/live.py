"""Streaming every room of a run live through the API, as a host would, to measure what a stream
costs: each room's stream (HLS only, so nothing leaves the machine) starts with the load, so that
its compositor is under way by the time the measurement window opens, and stops when the window
closes; over the window the compositor processes' CPU is sampled from /proc, and their own figures
(pictures encoded, pictures dropped) are read from the API.

On a machine shared with other work a compositor gets less than the core it wants and skips
pictures, so its CPU share says little by itself; the CPU it spent per picture it encoded does not
depend on that, and gives the share of a core one stream needs at its full frame rate."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench import metrics
from bench.recording import Room, _call

COMPOSITOR = b"media.live"


def compositors(server_pid: int) -> list[int]:
    """The server's live compositor processes (``python -m media.live``, children of the server)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if parent == server_pid and COMPOSITOR in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


async def stream_rooms(
    url: str,
    rooms: list[Room],
    size: tuple[int, int],
    start_ns: int,
    window: tuple[int, int],
    server_pid: int | None,
) -> dict[str, Any]:
    """Stream every room from ``start_ns`` to the end of ``window`` (monotonic) at ``size``, 30
    frame/s; the figures are of ``window``."""
    start_window, end_ns = window
    width, height = size
    bitrate = 2_500_000 if height >= 720 else 800_000
    async with aiohttp.ClientSession() as http:
        await asyncio.sleep(max(0.0, (start_ns - time.monotonic_ns()) / 1e9))
        started = await asyncio.gather(
            *(
                _call(
                    http,
                    "POST",
                    f"{url}/api/v1/streaming/start",
                    room.host_token,
                    json={
                        "meeting_id": room.meeting_id,
                        "outputs": [{"type": "hls"}],
                        "width": width,
                        "height": height,
                        "fps": 30,
                        "video_bitrate": bitrate,
                    },
                )
                for room in rooms
            )
        )

        async def statuses() -> list[dict[str, Any]]:
            return await asyncio.gather(
                *(
                    _call(http, "GET", f"{url}/api/v1/streaming/{stream['stream_id']}/status", room.host_token)
                    for room, stream in zip(rooms, started, strict=True)
                )
            )

        await asyncio.sleep(max(0.0, (start_window - time.monotonic_ns()) / 1e9))
        pids = compositors(server_pid) if server_pid else []
        before = {pid: metrics.cpu_seconds(pid) for pid in pids}
        frames_before = sum(status["frames"] for status in await statuses())
        since = time.monotonic()
        await asyncio.sleep(max(0.0, (end_ns - time.monotonic_ns()) / 1e9))
        used = sum(metrics.cpu_seconds(pid) - before[pid] for pid in pids if Path(f"/proc/{pid}").exists())
        elapsed = time.monotonic() - since
        final = await statuses()
        encoded = sum(status["frames"] for status in final) - frames_before
        await asyncio.gather(
            *(
                _call(http, "POST", f"{url}/api/v1/streaming/stop", room.host_token, json={"stream_id": s["stream_id"]})
                for room, s in zip(rooms, started, strict=True)
            )
        )
    measured = pids and elapsed >= 1.0 and encoded > 0
    per_frame = used / encoded if measured else None
    return {
        "streams": len(rooms),
        "size": f"{width}x{height}",
        "compositor_cpu_percent": round(used / elapsed * 100, 1) if measured else None,
        "cpu_ms_per_frame": round(per_frame * 1000, 2) if per_frame is not None else None,
        # The share of one core a stream needs to encode all 30 pictures a second.
        "core_percent_at_30fps": round(per_frame * 30 * 100, 1) if per_frame is not None else None,
        "output_fps": round(encoded / elapsed / len(rooms), 1) if measured else None,
        "frames": sum(status["frames"] for status in final),
        "frames_dropped": sum(status["frames_dropped"] for status in final),
        "states": sorted({status["state"] for status in final}),
    }
