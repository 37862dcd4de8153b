"""Recording every room of a run through the API, as a host would, to measure what recording costs
the server: each room's recording starts when the measurement window opens and stops when it
closes (no composite, so nothing runs after the window); then what was written is read back from
the API and the recordings are deleted, leaving the server's disk as it was."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import aiohttp


@dataclass(frozen=True)
class Room:
    meeting_id: int
    host_token: str


async def _call(http: aiohttp.ClientSession, method: str, url: str, token: str, **kwargs: Any) -> dict[str, Any]:
    async with http.request(method, url, headers={"Authorization": f"Bearer {token}"}, **kwargs) as response:
        body = await response.json()
        if response.status >= 300:
            raise RuntimeError(f"{method} {url}: {response.status} {body}")
        return body["data"]


async def start_meeting(http: aiohttp.ClientSession, url: str, room: Room) -> None:
    """A meeting must be under way to be recorded."""
    await _call(http, "POST", f"{url}/api/v1/meetings/{room.meeting_id}/start", room.host_token)


async def record_rooms(url: str, rooms: list[Room], start_ns: int, end_ns: int) -> dict[str, Any]:
    """Record every room from ``start_ns`` to ``end_ns`` (monotonic); what was written, summed over
    the rooms: tracks (video, audio), bytes, the recorded video's bit rate, frames written and dropped."""
    async with aiohttp.ClientSession() as http:
        await asyncio.sleep(max(0.0, (start_ns - time.monotonic_ns()) / 1e9))
        started = await asyncio.gather(
            *(
                _call(
                    http,
                    "POST",
                    f"{url}/api/v1/meetings/{room.meeting_id}/recording/start",
                    room.host_token,
                    json={"composite": False},
                )
                for room in rooms
            )
        )
        await asyncio.sleep(max(0.0, (end_ns - time.monotonic_ns()) / 1e9))
        stopped = await asyncio.gather(
            *(
                _call(http, "POST", f"{url}/api/v1/meetings/{room.meeting_id}/recording/stop", room.host_token)
                for room in rooms
            )
        )
        for room, recording in zip(rooms, started, strict=True):
            await _call(http, "DELETE", f"{url}/api/v1/recording/{recording['recording_id']}", room.host_token)
    tracks = [track for recording in stopped for track in recording["tracks"]]
    video = [track for track in tracks if track["kind"] == "video" and track["duration"]]
    video_bits = sum(track["size"] * 8 / track["duration"] for track in video)
    return {
        "rooms": len(rooms),
        "tracks": len(tracks),
        "video_tracks": len(video),
        "audio_tracks": sum(track["kind"] == "audio" for track in tracks),
        "bytes": sum(track["size"] or 0 for track in tracks),
        "seconds": round(max(recording["duration"] or 0.0 for recording in stopped), 2) if stopped else 0.0,
        "video_mbit_per_second": round(video_bits / 1e6, 3),
        "frames": sum(track["frames"] or 0 for track in tracks),
        "dropped_frames": sum(track["dropped_frames"] or 0 for track in tracks),
        "files_missing": sum(track["file_id"] is None for track in tracks),
    }
