"""Live noise suppression: a published microphone forwarded cleaned, in place of the original.

The media loop never decodes. A suppressed track's Opus packets go, as they arrive, to a worker
process (``ai/live_denoise.py``) over a socket pair; each comes back cleaned and re-encoded with the
same duration, and is forwarded under the original's sequence number and timestamp. Down-tracks
therefore see one unbroken stream whichever packets they get, so switching on or off needs no
rewriting of sequence numbers or timestamps and nothing for the subscriber to notice:

- switching on, the originals go on being forwarded until the first cleaned packet is back; from
  then on only cleaned packets newer than the last forwarded one are;
- switching off, new packets stay with the worker's until those in flight are back (or 200 ms
  passed), then the originals held meanwhile follow, so no packet is skipped or sent twice;
- a worker that stops answering (or dies) makes the track fall back to its originals.

What it costs is measured per stream: the time from a packet's arrival to its cleaned copy's
(``latency``), the model's and the encoder's look-ahead (``algorithmic_delay``), and the worker's CPU time per second of
audio (``cpu_percent``)."""

from __future__ import annotations

import asyncio
import collections
import importlib.util
import logging
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sfu import rtp
from sfu.track import Layer, PublishedTrack

if TYPE_CHECKING:
    from sfu.server import Sfu

log = logging.getLogger("huiyi.sfu.denoise")
STREAM = struct.Struct("!I")
FRAME_IN = struct.Struct("!IHI")
FRAME_OUT = struct.Struct("!IHIBI")
READY = struct.Struct("!II")
RATE = 48_000
DRAIN_SECONDS = 0.2  # how long switching off waits for the packets still at the worker
STALL_SECONDS = 0.5  # a packet at the worker this long: originals are forwarded until it catches up
CAUGHT_UP_SECONDS = 0.1  # a new stream is switched to once its packets come back this soon
RESTART_SECONDS = 5.0  # a worker that died is started again no sooner than this
LATENCY_SAMPLES = 500


LIVE_ENGINES = ("rnnoise", "deepfilternet")  # engines that clean 10 ms frames as they come


def live_models(model_dir: str) -> list[str]:
    """The denoising models a live stream can use: those of the frame-by-frame engines."""
    from ai.registry import Registry

    described = Registry(Path(model_dir) if model_dir else None, Path(tempfile.gettempdir())).describe()
    return [m["model_id"] for m in described if m["task"] == "denoising" and m["engine"] in LIVE_ENGINES]


def default_model() -> str:
    """RNNoise where installed (20 ms of look-ahead), else DeepFilterNet 3 (30 ms), which comes
    with the install."""
    return "rnnoise" if importlib.util.find_spec("pyrnnoise") is not None else "deepfilternet3"


@dataclass(frozen=True)
class WorkerSetup:
    model_dir: str = ""
    cache_dir: str = ""
    bitrate: int = 48_000
    log_level: str = "INFO"


class DenoiseWorker:
    """The worker process and the server's end of its socket pair, read on the event loop."""

    def __init__(self, setup: WorkerSetup, on_message: Any) -> None:
        self.setup = setup
        self.on_message = on_message
        self.process: Any = None
        self.channel: socket.socket | None = None
        self.started_at = 0.0

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for end in (ours, theirs):
            end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
            end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        cache = self.setup.cache_dir or tempfile.mkdtemp(prefix="huiyi-denoise-")
        root = str(Path(__file__).resolve().parents[1])  # where the ai package is, installed or not
        environment = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
        arguments = [str(theirs.fileno()), str(os.getpid()), self.setup.model_dir, cache]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ai.live_denoise", *arguments, str(self.setup.bitrate), self.setup.log_level],
            pass_fds=[theirs.fileno()],
            env=environment,
            stdin=subprocess.DEVNULL,
        )
        theirs.close()
        ours.setblocking(False)
        self.channel = ours
        self.started_at = time.monotonic()
        asyncio.get_running_loop().add_reader(ours.fileno(), self._read)
        log.info("started the noise suppression worker (pid %s)", self.process.pid)

    def _read(self) -> None:
        while self.channel is not None:
            try:
                message = self.channel.recv(4096)
            except BlockingIOError:
                return
            except OSError:
                message = b""
            if not message:
                self._lost()
                return
            self.on_message(message)

    def _lost(self) -> None:
        if self.channel is not None:
            asyncio.get_running_loop().remove_reader(self.channel.fileno())
            self.channel.close()
            self.channel = None

    def send(self, message: bytes) -> bool:
        """False when the message could not go (the worker is gone, or too far behind)."""
        if self.channel is None:
            return False
        try:
            self.channel.send(message)
            return True
        except (BlockingIOError, OSError):
            return False

    def close(self) -> None:
        self._lost()
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)
        self.process = None


class SuppressedTrack:
    """One published audio track being cleaned, and its switch's state: starting, on, draining
    (switching off), off, or failed."""

    def __init__(self, manager: NoiseSuppression, stream_id: int, track: PublishedTrack, model: str) -> None:
        self.manager = manager
        self.id = stream_id
        self.track = track
        self.model = model
        self.state = "starting"
        self.error: str | None = None
        self.delay = 0  # samples
        self.opened_at = 0.0  # when the worker had the stream open (0: not yet)
        self.layer: Layer | None = None
        self.last_forwarded: int | None = None  # sequence number of the last packet sent down
        # seq -> (when it went to the worker, its layer, the original): withheld until its copy is back
        self.sent: dict[int, tuple[float, Layer, rtp.Packet]] = {}
        self.held: list[tuple[Layer, rtp.Packet]] = []  # originals waiting while draining
        self.drain_until = 0.0
        self.stalled = False
        self.latencies: collections.deque[float] = collections.deque(maxlen=LATENCY_SAMPLES)
        self.busy_us = 0
        self.cleaned = 0
        self.fallbacks = 0
        self.started_at = time.monotonic()

    # packets from the publisher (PublishedTrack.forward) ----------------------------------------

    def take(self, layer: Layer, packet: rtp.Packet) -> bool:
        """Whether the original is withheld (its cleaned copy goes instead)."""
        self.layer = layer
        if self.state in ("off", "failed"):
            self._forwarded(packet.seq)
            return False
        if self.state == "draining":
            self.held.append((layer, packet))
            return True
        now = time.monotonic()
        if not self.opened_at:  # the worker is still starting, or loading the model
            self._forwarded(packet.seq)
            return False
        message = b"F" + FRAME_IN.pack(self.id, packet.seq, packet.timestamp) + packet.payload
        if not self.manager.worker.send(message):
            self._forwarded(packet.seq)
            return False
        self.sent[packet.seq] = (now, layer, packet)
        if self.state == "starting":
            self._forwarded(packet.seq)
            return False
        self._stalled(now)  # (behind: forwards this original with those still waiting)
        return True

    def _stalled(self, now: float) -> bool:
        """The oldest packet at the worker has been there too long: the originals still waiting
        for their copies go now, and the next ones too until the worker catches up."""
        oldest = next(iter(self.sent.values()))[0]
        if now - oldest <= STALL_SECONDS:
            self.stalled = False
            return False
        if not self.stalled:
            self.stalled = True
            self.fallbacks += 1
            log.warning("noise suppression of track %s: the worker fell behind; forwarding originals", self.track.id)
        self._release_waiting()
        return True

    def _release_waiting(self) -> None:
        """Forward, in order, the withheld originals whose cleaned copies are not back."""
        waiting = sorted(self.sent.items(), key=lambda item: (item[0] - (self.last_forwarded or 0)) & 0xFFFF)
        for seq, (_, layer, packet) in waiting:
            if self.last_forwarded is None or rtp.seq_newer(seq, self.last_forwarded):
                self.last_forwarded = seq
                self.track.pass_down(layer, packet)

    def _forwarded(self, seq: int) -> None:
        if self.last_forwarded is None or rtp.seq_newer(seq, self.last_forwarded):
            self.last_forwarded = seq

    # packets back from the worker ---------------------------------------------------------------

    def cleaned_packet(self, seq: int, timestamp: int, level: int, busy_us: int, payload: bytes) -> None:
        now = time.monotonic()
        sent = self.sent.pop(seq, None)
        if len(self.sent) > 256:  # never back (the worker restarted): give up on the oldest
            self.sent.pop(next(iter(self.sent)))
        self.busy_us += busy_us
        self.cleaned += 1
        if self.state in ("off", "failed") or self.layer is None:
            return
        if self.state == "starting":
            # Caught up (what is still at the worker went there just now): the next original is
            # the first withheld; the copies of those already forwarded are dropped as they come.
            if not self.sent or now - next(iter(self.sent.values()))[0] < CAUGHT_UP_SECONDS:
                self.state = "on"
            return
        if sent is not None:
            self.latencies.append(now - sent[0])
        if self.track.muted or (self.last_forwarded is not None and not rtp.seq_newer(seq, self.last_forwarded)):
            return  # its original went already
        self.last_forwarded = seq
        data = rtp.FIXED_HEADER.pack(0x80, self.track.out_payload_type, seq, timestamp, self.layer.ssrc) + payload
        self.track.send_down(self.layer, rtp.Packet(data), bytes((level & 0x7F,)))
        if self.state == "draining" and not self.sent:
            self._finish_drain()

    # switching ----------------------------------------------------------------------------------

    def opened(self, delay: int) -> None:
        self.delay = delay
        self.opened_at = time.monotonic()

    def fail(self, reason: str) -> None:
        """Back to the originals for good (the model cannot run)."""
        log.warning("noise suppression of track %s failed: %s", self.track.id, reason)
        self.error = reason
        self._finish_drain()
        self.state = "failed"

    def switch_off(self) -> None:
        if self.state in ("starting", "off", "failed"):
            self.state = "off" if self.state != "failed" else "failed"
            return
        self.state = "draining"
        self.drain_until = time.monotonic() + DRAIN_SECONDS
        if not self.sent:
            self._finish_drain()

    def _finish_drain(self) -> None:
        self._release_waiting()
        self.sent.clear()
        self._flush_held()
        self.state = "off"

    def _flush_held(self) -> None:
        held, self.held = self.held, []
        for layer, packet in held:
            if self.last_forwarded is None or rtp.seq_newer(packet.seq, self.last_forwarded):
                self.last_forwarded = packet.seq
                self.track.pass_down(layer, packet)

    def tick(self, now: float) -> None:
        if self.state == "draining" and now >= self.drain_until:
            self._finish_drain()

    def describe(self) -> dict[str, Any]:
        ordered = sorted(self.latencies)
        elapsed = max(time.monotonic() - self.started_at, 1e-3)

        def quantile(q: float) -> float | None:
            return round(1000 * ordered[int(q * (len(ordered) - 1))], 2) if ordered else None

        return {
            "track_id": self.track.id,
            "peer_id": self.track.publisher_id,
            "user_id": self.track.user_id,
            "state": self.state,
            "model": self.model,
            "error": self.error,
            "algorithmic_delay_ms": round(1000 * self.delay / RATE, 2),
            "latency_ms_p50": quantile(0.5),
            "latency_ms_p95": quantile(0.95),
            "added_latency_ms": round(quantile(0.5) + 1000 * self.delay / RATE, 2) if ordered else None,
            "cpu_percent": round(100 * self.busy_us / 1e6 / elapsed, 2),
            "packets_cleaned": self.cleaned,
            "fallbacks": self.fallbacks,
        }


class NoiseSuppression:
    """Who asked for suppression (a peer for its own tracks, a room for all of its), and the
    suppressed tracks kept in line with that on every media tick."""

    def __init__(self, sfu: Sfu, setup: WorkerSetup, model: str, max_streams: int) -> None:
        self.sfu = sfu
        self.model = model or default_model()
        self.max_streams = max_streams
        self.worker = DenoiseWorker(setup, self._on_message)
        self.peers: dict[str, str] = {}  # peer id -> model
        self.rooms: dict[int, str] = {}  # room id -> model
        self.tracks: dict[str, SuppressedTrack] = {}  # by track id
        self._streams: dict[int, SuppressedTrack] = {}
        self._ids = 0
        self._restart_after = 0.0

    # the switch ---------------------------------------------------------------------------------

    def set_peer(self, peer_id: str, enabled: bool, model: str | None = None) -> None:
        if enabled:
            self.peers[peer_id] = model or self.model
        else:
            self.peers.pop(peer_id, None)
        self.reconcile()

    def set_room(self, room_id: int, enabled: bool, model: str | None = None) -> None:
        if enabled:
            self.rooms[room_id] = model or self.model
        else:
            self.rooms.pop(room_id, None)
            for peer in self.sfu.peers.values():
                if peer.room.id == room_id:
                    self.peers.pop(peer.id, None)
        self.reconcile()

    def wanted(self, track: PublishedTrack, room_id: int) -> str | None:
        if track.kind != "audio" or track.codec.name != "opus":
            return None
        return self.peers.get(track.publisher_id) or self.rooms.get(room_id)

    def reconcile(self) -> None:
        """Start and stop suppressing tracks to match what was asked, and forget the asks of
        peers and rooms that are gone."""
        self.peers = {peer_id: model for peer_id, model in self.peers.items() if peer_id in self.sfu.peers}
        self.rooms = {room_id: model for room_id, model in self.rooms.items() if room_id in self.sfu.rooms}
        live: dict[str, tuple[PublishedTrack, str]] = {}
        for room in self.sfu.rooms.values():
            for track in room.tracks.values():
                model = self.wanted(track, room.id)
                if model is not None:
                    live[track.id] = (track, model)
        for track_id, suppressed in list(self.tracks.items()):
            wanted = live.get(track_id)
            if wanted is None or wanted[1] != suppressed.model or wanted[0] is not suppressed.track:
                self._stop(suppressed)
        for track_id, (track, model) in live.items():
            # (a track still draining from its previous model starts again once drained)
            if track_id not in self.tracks and track.cleaner is None and len(self.tracks) < self.max_streams:
                self._start(track, model)

    def _start(self, track: PublishedTrack, model: str) -> None:
        if not self.worker.alive:
            if time.monotonic() < self._restart_after:
                return
            self.worker.close()
            self.worker.start()
            self._restart_after = time.monotonic() + RESTART_SECONDS
        self._ids += 1
        suppressed = SuppressedTrack(self, self._ids, track, model)
        self.tracks[track.id] = suppressed
        self._streams[suppressed.id] = suppressed
        track.cleaner = suppressed
        self.worker.send(b"O" + STREAM.pack(suppressed.id) + model.encode())
        log.info("noise suppression (%s) on for track %s of peer %s", model, track.id, track.publisher_id)

    def _stop(self, suppressed: SuppressedTrack) -> None:
        suppressed.switch_off()
        del self.tracks[suppressed.track.id]
        log.info("noise suppression off for track %s", suppressed.track.id)
        if suppressed.state == "off" or suppressed.state == "failed":
            self._forget(suppressed)

    def _forget(self, suppressed: SuppressedTrack) -> None:
        if suppressed.track.cleaner is suppressed:
            suppressed.track.cleaner = None
        self._streams.pop(suppressed.id, None)
        self.worker.send(b"C" + STREAM.pack(suppressed.id))

    # the worker's answers -----------------------------------------------------------------------

    def _on_message(self, message: bytes) -> None:
        kind, body = message[:1], message[1:]
        if kind == b"F":
            stream_id, seq, timestamp, level, busy = FRAME_OUT.unpack_from(body)
            suppressed = self._streams.get(stream_id)
            if suppressed is not None:
                suppressed.cleaned_packet(seq, timestamp, level, busy, body[FRAME_OUT.size :])
                if suppressed.state == "off":
                    self._forget(suppressed)
        elif kind == b"R":
            stream_id, delay = READY.unpack_from(body)
            suppressed = self._streams.get(stream_id)
            if suppressed is not None:
                suppressed.opened(delay)
        elif kind == b"E":
            suppressed = self._streams.get(STREAM.unpack_from(body)[0])
            if suppressed is not None:
                suppressed.fail(body[STREAM.size :].decode("utf-8", "replace"))

    # the media clock ----------------------------------------------------------------------------

    def tick(self) -> None:
        now = time.monotonic()
        if self.tracks and not self.worker.alive:
            for suppressed in list(self.tracks.values()):
                suppressed.fail("the noise suppression worker stopped")
                self._forget(suppressed)
            self.tracks.clear()
        for suppressed in list(self._streams.values()):
            suppressed.tick(now)
            if suppressed.state == "off" and suppressed.track.id not in self.tracks:
                self._forget(suppressed)
        self.reconcile()

    def describe_room(self, room_id: int) -> dict[str, Any]:
        room = self.sfu.rooms.get(room_id)
        present = room.tracks.values() if room is not None else ()
        tracks = [self.tracks[track.id].describe() for track in present if track.id in self.tracks]
        return {
            "room_id": room_id,
            "enabled": room_id in self.rooms,
            "model": self.rooms.get(room_id),
            "tracks": tracks,
        }

    def close(self) -> None:
        for suppressed in list(self._streams.values()):
            if suppressed.track.cleaner is suppressed:
                suppressed.track.cleaner = None
        self._streams.clear()
        self.tracks.clear()
        self.worker.close()
