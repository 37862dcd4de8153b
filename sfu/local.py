"""The media server as the control plane uses it: rooms' operations by meeting and peer id, taking
and giving plain data. The same face in front of an ``Sfu`` in the server's own process (``sfu.workers
= 0``) and in each worker process (``sfu/worker.py``), whose server-side ``WorkerPool``
(``sfu/pool.py``) presents it again for all the workers at once, so the control plane never knows
which it has."""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from config.settings import SfuSettings
from sfu.captions import CaptionSink, RoomCaptions
from sfu.counters import MediaTotals
from sfu.denoise import WorkerSetup
from sfu.live import LiveFeed, Outlet
from sfu.peer import Peer, Signal
from sfu.recording import TrackFile
from sfu.server import Sfu, SignalError
from sfu.track import PublishedTrack
from sfu.views import peer_view, room_stats

CAPTION_TICK_SECONDS = 0.1  # caption feeds follow their rooms' tracks this often


class PoolEvents(Protocol):
    """What the media tells whoever runs it, as plain data (``published_view``)."""

    def track_published(self, view: dict[str, Any]) -> None: ...

    def track_unpublished(self, view: dict[str, Any], reason: str) -> None: ...

    def media_flowing(self, seconds: float) -> None: ...


class NoEvents:
    def track_published(self, view: dict[str, Any]) -> None:
        return None

    def track_unpublished(self, view: dict[str, Any], reason: str) -> None:
        return None

    def media_flowing(self, seconds: float) -> None:
        return None


def published_view(meeting_id: int, track: PublishedTrack) -> dict[str, Any]:
    """A track as webhooks tell of it."""
    return {
        "meeting_id": meeting_id,
        "user_id": track.user_id,
        "peer_id": track.publisher_id,
        "track_id": track.id,
        "kind": track.kind,
        "codec": track.codec.name,
        "layers": [layer.name for layer in track.layers],
    }


class _Relay:
    """The ``Sfu``'s listener, handing its news on as plain data."""

    def __init__(self, media: LocalMedia) -> None:
        self.media = media

    def track_published(self, meeting_id: int, track: PublishedTrack) -> None:
        self.media.events.track_published(published_view(meeting_id, track))

    def track_unpublished(self, meeting_id: int, track: PublishedTrack, reason: str) -> None:
        self.media.events.track_unpublished(published_view(meeting_id, track), reason)

    def media_flowing(self, peer: Peer, seconds: float) -> None:
        self.media.events.media_flowing(seconds)


@dataclass
class WorkerLoad:
    """One media server's load and health, as metrics, readiness and placement read it."""

    worker: int | None  # None: the server's own process
    pid: int
    rooms: list[int] = field(default_factory=list)
    peers: int = 0
    tracks: dict[str, int] = field(default_factory=dict)  # by kind
    downtracks: int = 0
    totals: MediaTotals = field(default_factory=MediaTotals)
    recordings: int = 0
    streams: int = 0
    ticking: bool = True
    tick_age: float = 0.0  # seconds since the media clock last ticked
    packets_per_second: float = 0.0  # forwarded, over the last interval the pool measured

    def as_data(self) -> dict[str, Any]:
        data = asdict(self)
        data["totals"] = asdict(self.totals)
        return data

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> WorkerLoad:
        return cls(**{**data, "totals": MediaTotals(**data["totals"])})


@dataclass(frozen=True)
class PeerInfo:
    meeting_id: int
    user_id: int


class LocalMedia:
    def __init__(self, settings: SfuSettings, denoise_setup: WorkerSetup | None = None) -> None:
        self.sfu = Sfu(settings, denoise_setup)
        self.settings = settings
        self.events: PoolEvents = NoEvents()
        self.sfu.events = _Relay(self)
        self._captions: dict[int, RoomCaptions] = {}
        self._caption_ticker: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.sfu.start()
        self._caption_ticker = asyncio.get_running_loop().create_task(self._tick_captions())

    async def close(self) -> None:
        if self._caption_ticker is not None:
            self._caption_ticker.cancel()
        for feed in self._captions.values():
            feed.close()
        self._captions.clear()
        await self.sfu.close()

    # sessions -----------------------------------------------------------------------------------

    async def join(self, meeting_id: int, peer_id: str, user_id: int, signal: Signal) -> None:
        self.sfu.peer(meeting_id, peer_id, user_id, signal)

    def _peer(self, peer_id: str) -> Peer:
        peer = self.sfu.peers.get(peer_id)
        if peer is None:
            raise SignalError(409, "this session has no media here (join first)")
        return peer

    async def handle(self, peer_id: str, kind: str, data: dict[str, Any]) -> None:
        await self.sfu.handle(self._peer(peer_id), kind, data)

    async def set_preferences(self, peer_id: str, data: dict[str, Any]) -> None:
        self.sfu.set_preferences(self._peer(peer_id), data)

    async def leave(self, peer_id: str) -> None:
        await self.sfu.remove_peer(peer_id)

    def meetings(self) -> list[int]:
        return list(self.sfu.rooms)

    def peer_info(self, peer_id: str) -> PeerInfo | None:
        peer = self.sfu.peers.get(peer_id)
        return PeerInfo(peer.room.id, peer.user_id) if peer is not None else None

    def worker_of(self, meeting_id: int) -> int | None:
        return None

    # views and host controls --------------------------------------------------------------------

    def _room_peers(self, meeting_id: int) -> list[Peer]:
        room = self.sfu.rooms.get(meeting_id)
        return list(room.peers.values()) if room is not None else []

    async def room_peers(self, meeting_id: int) -> list[dict[str, Any]]:
        return [peer_view(peer) for peer in self._room_peers(meeting_id)]

    async def room_stats(self, meeting_id: int) -> dict[str, Any]:
        return room_stats(meeting_id, self._room_peers(meeting_id))

    async def control_peer(self, peer_id: str, changes: dict[str, Any]) -> dict[str, Any] | None:
        """Apply a host's or the peer's own ``changes`` (``layer``, ``max_bitrate``,
        ``noise_suppression``, ``audio``, ``video``; absent ones stay); the peer's view after, or
        None when it has no media here."""
        peer = self.sfu.peers.get(peer_id)
        if peer is None:
            return None
        if changes.get("layer") is not None:
            peer.set_layer(changes["layer"], None)
        if changes.get("max_bitrate") is not None:
            peer.set_max_bitrate(changes["max_bitrate"] or None)
        if changes.get("noise_suppression") is not None:
            self.sfu.noise.set_peer(peer.id, changes["noise_suppression"])
        for kind in ("audio", "video"):
            if changes.get(kind) is not None:
                peer.set_muted(kind, not changes[kind])
        return peer_view(peer)

    # noise suppression --------------------------------------------------------------------------

    async def set_room_noise(self, meeting_id: int, enabled: bool, model: str | None) -> None:
        self.sfu.noise.set_room(meeting_id, enabled, model)

    async def describe_noise(self, meeting_id: int) -> dict[str, Any]:
        return self.sfu.noise.describe_room(meeting_id)

    async def noise_switches(self, meeting_id: int) -> dict[str, Any]:
        """The switches on in the room: ``room`` (its model, or None when off) and ``users``
        whose own switch is on."""
        noise = self.sfu.noise
        users = {
            peer.user_id
            for peer_id, peer in self.sfu.peers.items()
            if peer.room.id == meeting_id and peer_id in noise.peers
        }
        return {"room": noise.rooms.get(meeting_id), "users": sorted(users)}

    # recordings, streams, captions --------------------------------------------------------------

    def start_recording(
        self, meeting_id: int, recording_id: str, directory: Path, on_file_closed: Callable[[TrackFile], None]
    ) -> None:
        self.sfu.start_recording(meeting_id, recording_id, directory, on_file_closed)

    async def stop_recording(self, recording_id: str, reason: str = "stopped") -> list[TrackFile]:
        return await self.sfu.stop_recording(recording_id, reason)

    def recording_files(self, recording_id: str) -> list[TrackFile]:
        return self.sfu.recording_files(recording_id)

    def recordings(self) -> list[str]:
        return self.sfu.recordings()

    def start_stream(self, meeting_id: int, stream_id: str, outlet: Outlet, layer: str = "medium") -> LiveFeed:
        return self.sfu.start_stream(meeting_id, stream_id, outlet, layer)

    def stop_stream(self, stream_id: str, reason: str = "stopped") -> None:
        self.sfu.stop_stream(stream_id, reason)

    def start_captions(self, meeting_id: int, sink: CaptionSink) -> None:
        """Caption the room's audio tracks, now and as they come, into ``sink`` until
        ``stop_captions``."""
        if meeting_id not in self._captions:
            self._captions[meeting_id] = RoomCaptions(self.sfu.rooms, meeting_id, sink)

    def stop_captions(self, meeting_id: int) -> None:
        feed = self._captions.pop(meeting_id, None)
        if feed is not None:
            feed.close()

    async def _tick_captions(self) -> None:
        while True:
            await asyncio.sleep(CAPTION_TICK_SECONDS)
            for feed in list(self._captions.values()):
                feed.tick()

    # load ---------------------------------------------------------------------------------------

    def load(self, worker: int | None = None) -> WorkerLoad:
        sfu = self.sfu
        return WorkerLoad(
            worker=worker,
            pid=os.getpid(),
            rooms=list(sfu.rooms),
            peers=len(sfu.peers),
            tracks=dict(Counter(track.kind for room in sfu.rooms.values() for track in room.tracks.values())),
            downtracks=sum(len(peer.subscriber.downtracks) for peer in sfu.peers.values()),
            totals=sfu.totals(),
            recordings=len(sfu.recordings()),
            streams=len(sfu.streams()),
            ticking=sfu.ticking,
            tick_age=round(time.monotonic() - sfu.last_tick, 3),
        )

    def loads(self) -> list[WorkerLoad]:
        return [self.load()]

    def totals(self) -> MediaTotals:
        return self.sfu.totals()

    def pids(self) -> dict[int, int]:
        return {}

    def restarts(self) -> dict[int, int]:
        return {}

    def streams(self) -> list[str]:
        return self.sfu.streams()

    def log_status(self) -> None:
        self.sfu.log_status()
