"""The media server inside the process: rooms, peers, the signaling it answers and its clock.

One asyncio loop forwards every room's packets; a single ticker drives key-frame follow-ups, layer
choices, RTCP reports and active-speaker detection for all of them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiortc.rtcdtlstransport import RTCCertificate

from config.settings import SfuSettings
from sfu.counters import MediaTotals
from sfu.denoise import NoiseSuppression, WorkerSetup
from sfu.dynacast import Dynacast
from sfu.events import MediaEvents, NoListener
from sfu.live import LiveFeed, Outlet
from sfu.network import NO_MEDIA_PORT, Network, NoMediaPort, SharedMediaProtocol
from sfu.peer import Peer, Signal
from sfu.ports import open_listeners
from sfu.recording import RoomRecording, TrackFile
from sfu.room import Room
from sfu.sdp import SdpError
from sfu.subscriber import NegotiationError
from sfu.track import LAYER_NAMES

log = logging.getLogger("huiyi.sfu")

TICK_SECONDS = 0.25
REPORT_EVERY_TICKS = 4  # RTCP reports and statistics once a second


class SignalError(Exception):
    """A client's SFU message cannot be acted on; ``code`` and the message go back as an ``error``."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


class Sfu:
    def __init__(self, settings: SfuSettings, denoise_setup: WorkerSetup | None = None) -> None:
        self.settings = settings
        self.network = Network(
            bind=tuple(settings.bind_addresses),
            announce=tuple(settings.announce_addresses),
            port_min=settings.port_min,
            port_max=settings.port_max,
            ipv6=settings.ipv6,
            udp_port=settings.udp_port,
            tcp_port=settings.tcp_port,
        )
        self.certificate = RTCCertificate.generateCertificate()
        self.rooms: dict[int, Room] = {}
        self.peers: dict[str, Peer] = {}
        self._closing: set[Peer] = set()  # removed, their connections still closing
        self._ticker: asyncio.Task[None] | None = None
        self._locks: dict[str, asyncio.Lock] = {}
        self._recordings: dict[str, RoomRecording] = {}
        self.events: MediaEvents = NoListener()
        # Counts of the tracks and down-tracks gone so far; ``totals`` adds the live ones.
        self.retired = MediaTotals()
        self.last_tick = time.monotonic()  # the media clock's, to tell it still runs
        self._streams: dict[str, LiveFeed] = {}
        self.dynacast = Dynacast()
        setup = denoise_setup or WorkerSetup(bitrate=settings.noise_suppression_bitrate)
        self.noise = NoiseSuppression(
            self,
            setup,
            settings.noise_suppression_model,
            settings.noise_suppression_max_streams,
            settings.noise_suppression_workers or max(1, (os.cpu_count() or 2) - 1),
        )

    async def start(self) -> None:
        self.network = await open_listeners(self.network)
        self._ticker = asyncio.get_running_loop().create_task(self._tick_forever())

    async def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        for recording_id in list(self._recordings):
            await self.stop_recording(recording_id)
        for stream_id in list(self._streams):
            self.stop_stream(stream_id, "server shutdown")
        for peer_id in list(self.peers):
            await self.remove_peer(peer_id)
        self.noise.close()
        if self.network.listeners is not None:
            self.network.listeners.close()

    def log_status(self) -> None:
        """On SIGUSR1 (see control/cli.py): one line with the process's media load, so an operator (or a soak test) can
        watch for leaks in a live server without a debugger."""
        shared = self.network.listeners
        sockets = sum(
            not isinstance(protocol, SharedMediaProtocol)
            for peer in self.peers.values()
            for side in (peer.publisher, peer.subscriber)
            if side.transport is not None
            for protocol in side.transport.link.connection._protocols
        )
        log.info(
            "media server status: rooms=%d peers=%d media_sockets=%d tasks=%d%s",
            len(self.rooms),
            len(self.peers),
            sockets + (shared.udp_sockets if shared is not None else 0),
            len(asyncio.all_tasks()),
            " " + shared.status() if shared is not None else "",
        )

    def totals(self) -> MediaTotals:
        """Everything forwarded and received since the server started, gone peers included."""
        live = MediaTotals()
        for room in self.rooms.values():
            for track in room.tracks.values():
                live.add_track(track)
        for peer in [*self.peers.values(), *self._closing]:
            for down in peer.subscriber.downtracks.values():
                live.add_downtrack(down)
        return self.retired.plus(live)

    @property
    def ticking(self) -> bool:
        """The media clock runs (it drives key frames, layer choices and RTCP for every room)."""
        return self._ticker is not None and not self._ticker.done()

    # peers --------------------------------------------------------------------------------------

    def peer(self, meeting_id: int, peer_id: str, user_id: int, signal: Signal) -> Peer:
        peer = self.peers.get(peer_id)
        if peer is None:
            room = self.rooms.get(meeting_id)
            if room is None:
                room = self.rooms[meeting_id] = Room(meeting_id, self.events, self.retired)
                for feed in (*self._recordings.values(), *self._streams.values()):
                    if feed.meeting_id == meeting_id:
                        room.add_feed(feed)
            peer = Peer(self, room, peer_id, user_id, signal)
            self.peers[peer_id] = peer
            room.add_peer(peer)
            log.info("peer %s (user %s) joined media of meeting %s", peer_id, user_id, meeting_id)
            if room.speaker_announcement is not None:
                # Who speaks now, not only at the next change; sent once the join this peer is made
                # for has been answered (the answer goes out in the same turn of the loop).
                speaking = {"active_speaker": room.speaker_announcement}
                asyncio.get_running_loop().call_soon(peer.signal, "media-state", speaking)
        return peer

    async def remove_peer(self, peer_id: str) -> None:
        peer = self.peers.pop(peer_id, None)
        self._locks.pop(peer_id, None)
        if peer is None:
            return
        peer.room.remove_peer(peer)
        self._closing.add(peer)
        try:
            await peer.close()
        finally:
            self._closing.discard(peer)
        if peer.room.empty:
            self.rooms.pop(peer.room.id, None)
        log.info("peer %s left media of meeting %s", peer_id, peer.room.id)

    # recording ----------------------------------------------------------------------------------

    def start_recording(
        self, meeting_id: int, recording_id: str, directory: Path, on_file_closed: Callable[[TrackFile], None]
    ) -> None:
        """Record every track the meeting's room has on this node, and every track published later,
        each to its own file in ``directory`` (created, mode 0700), until ``stop_recording``. A room
        with no media here yet is fine: tracks are picked up as they come. ``on_file_closed`` is
        called on the event loop for each file once it is finished."""
        if recording_id in self._recordings:
            raise ValueError(f"recording {recording_id} is already running")
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        recording = RoomRecording(meeting_id, recording_id, directory, on_file_closed)
        self._recordings[recording_id] = recording
        room = self.rooms.get(meeting_id)
        if room is not None:
            room.add_feed(recording)
        log.info("recording %s of meeting %s started in %s", recording_id, meeting_id, directory)

    async def stop_recording(self, recording_id: str, reason: str = "stopped") -> list[TrackFile]:
        """Stop the recording's taps, wait for every file to be finished (off the event loop) and
        return them all, those closed earlier too. An unknown id gives []."""
        recording = self._recordings.pop(recording_id, None)
        if recording is None:
            return []
        room = self.rooms.get(recording.meeting_id)
        if room is not None:
            room.remove_feed(recording)
        files = await recording.stop(reason)
        log.info("recording %s of meeting %s stopped: %d files", recording_id, recording.meeting_id, len(files))
        return files

    def recording_files(self, recording_id: str) -> list[TrackFile]:
        """The files of a running recording so far, open and closed."""
        recording = self._recordings.get(recording_id)
        return recording.files() if recording is not None else []

    def recordings(self) -> list[str]:
        """Ids of the recordings running on this node."""
        return list(self._recordings)

    # live streams -------------------------------------------------------------------------------

    def start_stream(self, meeting_id: int, stream_id: str, outlet: Outlet, layer: str = "medium") -> LiveFeed:
        """Feed every track the meeting's room has on this node, and every track published later,
        to ``outlet`` (a compositor's input) until ``stop_stream``; videos at ``layer`` at most."""
        if stream_id in self._streams:
            raise ValueError(f"stream {stream_id} is already running")
        feed = LiveFeed(meeting_id, stream_id, outlet, layer)
        self._streams[stream_id] = feed
        room = self.rooms.get(meeting_id)
        if room is not None:
            room.add_feed(feed)
        log.info("stream %s of meeting %s fed", stream_id, meeting_id)
        return feed

    def streams(self) -> list[str]:
        """Ids of the live streams this node feeds."""
        return list(self._streams)

    def stop_stream(self, stream_id: str, reason: str = "stopped") -> None:
        """Stop feeding the stream's compositor; an unknown id is ignored."""
        feed = self._streams.pop(stream_id, None)
        if feed is None:
            return
        room = self.rooms.get(feed.meeting_id)
        if room is not None:
            room.remove_feed(feed)
        feed.close(reason)
        log.info("stream %s of meeting %s no longer fed: %s", stream_id, feed.meeting_id, reason)

    # signaling ----------------------------------------------------------------------------------

    async def handle(self, peer: Peer, kind: str, data: dict[str, Any]) -> None:
        """Act on an ``offer``, ``answer`` or ``ice-candidate`` addressed to the server."""
        lock = self._locks.setdefault(peer.id, asyncio.Lock())
        async with lock:
            try:
                await self._dispatch(peer, kind, data)
            except SdpError as exc:
                raise SignalError(400, f"unusable sdp: {exc}") from None
            except NegotiationError as exc:
                raise SignalError(409, str(exc)) from None
            except NoMediaPort:
                log.warning("no media port free for peer %s", peer.id)
                raise SignalError(503, NO_MEDIA_PORT) from None

    async def _dispatch(self, peer: Peer, kind: str, data: dict[str, Any]) -> None:
        target = data.get("target")
        if kind == "offer":
            target = target or "publisher"
            if target == "subscriber":
                if data.get("ice_restart") is not True:
                    raise SignalError(400, "the server offers on the subscriber connection; send ice_restart: true")
                await peer.subscriber.restart_ice()
                return
            if target != "publisher":
                raise SignalError(400, "data.target must be publisher or subscriber")
            answer = await peer.publisher.on_offer(_sdp(data))
            peer.signal("answer", {"target": "publisher", "sdp": answer})
        elif kind == "answer":
            if (target or "subscriber") != "subscriber":
                raise SignalError(400, "answers go to the subscriber connection (data.target: subscriber)")
            await peer.subscriber.on_answer(_sdp(data))
        elif kind == "ice-candidate":
            candidate = data.get("candidate")
            if candidate is not None and not isinstance(candidate, str):
                raise SignalError(400, "data.candidate must be a string or null")
            side = {"publisher": peer.publisher, "subscriber": peer.subscriber}.get(target or "publisher")
            if side is None:
                raise SignalError(400, "data.target must be publisher or subscriber")
            await side.add_candidate(candidate or None)

    def set_preferences(self, peer: Peer, data: dict[str, Any]) -> None:
        """``media-state`` from a peer about what it wants to receive, or to have its own
        microphone's noise suppressed."""
        check_preferences(data)
        if "noise_suppression" in data:
            self.noise.set_peer(peer.id, data["noise_suppression"])
        if "layer" in data:
            layer, track_id = data["layer"], data.get("track_id")
            if track_id is not None and (not isinstance(track_id, str) or track_id not in peer.room.tracks):
                raise SignalError(404, "data.track_id is not a track in this room")
            peer.set_layer(layer, track_id)
        if "max_bitrate" in data:
            peer.set_max_bitrate(data["max_bitrate"] or None)

    # clock --------------------------------------------------------------------------------------

    async def _tick_forever(self) -> None:
        count = 0
        while True:
            await asyncio.sleep(TICK_SECONDS)
            count += 1
            try:
                self._tick(count % REPORT_EVERY_TICKS == 0)
            except Exception:
                log.exception("media clock tick failed")

    def _tick(self, full: bool) -> None:
        now = self.last_tick = time.monotonic()
        for recording in self._recordings.values():
            recording.tick()
        for stream in self._streams.values():
            stream.tick()
        self.noise.tick()
        for room in list(self.rooms.values()):
            if full:
                for track in room.tracks.values():
                    for layer in track.layers:
                        layer.roll_window(now)
                    if track.svc is not None:
                        track.svc.roll_window(now)
            for peer in list(room.peers.values()):
                peer.tick(now, full)
            speaker = room.detect_speaker()
            if speaker is not None:
                for peer in room.peers.values():
                    peer.signal("media-state", {"active_speaker": speaker})
        tracks = [track for room in self.rooms.values() for track in room.tracks.values()]
        self.dynacast.review(tracks, self._signal_of, now)

    def _signal_of(self, peer_id: str) -> Signal | None:
        peer = self.peers.get(peer_id)
        return peer.signal if peer is not None else None


def check_preferences(data: dict[str, Any]) -> None:
    """The checks of ``set_preferences`` that need no room, so that a node handing them to another
    node's media server (``control.remote_sfu``) refuses what that server would refuse, and says so
    before the room is told of a change."""
    if "noise_suppression" in data and not isinstance(data["noise_suppression"], bool):
        raise SignalError(400, "data.noise_suppression must be true or false")
    if "layer" in data and data["layer"] not in LAYER_NAMES:
        raise SignalError(400, "data.layer must be low, medium or high")
    bitrate = data.get("max_bitrate")
    if bitrate is not None and (not isinstance(bitrate, int) or isinstance(bitrate, bool) or bitrate < 0):
        raise SignalError(400, "data.max_bitrate must be a number of bit/s, or null for no cap")


def _sdp(data: dict[str, Any]) -> str:
    text = data.get("sdp")
    if not isinstance(text, str) or not text:
        raise SignalError(400, "data.sdp (a session description) is required")
    return text
