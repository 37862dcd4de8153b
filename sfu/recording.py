"""Recording a room on the server: each published track's encoded media into its own file.

A ``RoomRecording`` taps every track its room has and every track published while it runs. Each
track gets a file named ``<user_id>-<kind>-<track_id>.<ext>`` in the recording's directory, written
by its own thread; a track that is unpublished, or whose publisher leaves, has its file closed there
and then. All files share one clock, milliseconds since the recording started, and each file's
``started_at`` says where its first frame falls, so they can be laid side by side afterwards.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from media.mux import FORMATS, TrackWriter
from sfu.taps import SenderClock, Tap
from sfu.track import PublishedTrack

log = logging.getLogger("huiyi.sfu.recording")


@dataclass(frozen=True)
class TrackFile:
    """One recorded track's file, closed (finished) or still being written."""

    recording_id: str
    meeting_id: int
    user_id: int
    peer_id: str
    track_id: str
    kind: str  # "audio" | "video"
    codec: str  # "vp8" | "vp9" | "h264" | "opus"
    path: Path  # absolute
    container: str  # "webm" | "matroska"
    mime_type: str
    started_at: float | None  # wall clock (UNIX seconds) of the first frame written
    ended_at: float | None  # wall clock of the last frame written
    frames: int
    dropped_frames: int  # lost to queue overflow or to holes not repaired in time
    bytes: int
    width: int | None  # last video frame size (video only)
    height: int | None
    closed: bool
    reason: str  # "stopped", "left", "unpublished", "disk", "error: ..."; "" while open


OnFileClosed = Callable[[TrackFile], None]


class _Recorded:
    """A track being recorded: its tap, its writer, and how it ended."""

    __slots__ = ("closed", "path", "reason", "tap", "track", "writer")

    def __init__(self, track: PublishedTrack, tap: Tap, writer: TrackWriter, path: Path) -> None:
        self.track, self.tap, self.writer, self.path = track, tap, writer, path
        self.closed = False
        self.reason = ""


class RoomRecording:
    def __init__(self, meeting_id: int, recording_id: str, directory: Path, on_file_closed: OnFileClosed) -> None:
        self.meeting_id = meeting_id
        self.recording_id = recording_id
        self.directory = directory.absolute()
        self.on_file_closed = on_file_closed
        self.origin = time.time()  # millisecond 0 of every file
        self._loop = asyncio.get_running_loop()
        self._live: dict[str, _Recorded] = {}  # by track id
        self._all: list[_Recorded] = []
        self._clocks: dict[str, SenderClock] = {}  # by publisher (peer) id
        self._closing: set[asyncio.Task[None]] = set()

    def attach(self, track: PublishedTrack) -> None:
        """Start recording a track (one the room has, or one just published)."""
        if track.id in self._live:
            return
        if track.codec.name not in FORMATS:
            # AV1 (sent with layers, sfu/av1dd.py) has no depacketizer here: its video is left out, the
            # rest of the meeting (its publisher's audio too) is recorded.
            log.warning(
                "recording %s: %s track %s (user %s) is not recorded: no %s recording",
                self.recording_id,
                track.kind,
                track.id,
                track.user_id,
                track.codec.name.upper(),
            )
            return
        fmt = FORMATS[track.codec.name]
        path = self.directory / f"{track.user_id}-{track.kind}-{track.id}.{fmt.extension}"
        clock = self._clocks.setdefault(track.publisher_id, SenderClock())
        entry: _Recorded | None = None

        def request_keyframe() -> None:
            if entry is not None:
                entry.tap.request_keyframe()

        def on_failure() -> None:  # from the writer's thread
            self._loop.call_soon_threadsafe(self._writer_failed, track)

        writer = TrackWriter(path, track.codec.name, self.origin, request_keyframe, on_failure)
        tap = Tap(track, writer.put, clock)
        entry = _Recorded(track, tap, writer, path)
        self._live[track.id] = entry
        self._all.append(entry)
        track.taps.append(tap)
        tap.request_keyframe()  # a track already sending: its video file can start now, not at the next tick
        log.info("recording %s: track %s (%s) to %s", self.recording_id, track.id, track.kind, path.name)
        if track.codec.name == "vp9":
            # A file holds one picture size: of a VP9 track with spatial layers, the smallest.
            log.info("recording %s: VP9 track %s is recorded at its base spatial layer", self.recording_id, track.id)

    def detach(self, track: PublishedTrack, reason: str) -> None:
        """Stop recording a track; its file is finished off the event loop, then reported."""
        entry = self._live.pop(track.id, None)
        if entry is None:
            return
        entry.tap.close()
        task = self._loop.create_task(self._finish(entry, reason))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _writer_failed(self, track: PublishedTrack) -> None:
        entry = self._live.get(track.id)
        if entry is not None:
            self.detach(track, entry.writer.failure or "error")

    async def _finish(self, entry: _Recorded, reason: str) -> None:
        try:
            await asyncio.to_thread(entry.writer.close)
        finally:
            entry.closed = True
            entry.reason = entry.writer.failure or reason
        log.info("recording %s: %s closed (%s)", self.recording_id, entry.path.name, entry.reason)
        try:
            self.on_file_closed(self._file(entry))
        except Exception:
            log.exception("recording %s: on_file_closed failed", self.recording_id)

    def tick(self) -> None:
        for entry in list(self._live.values()):
            entry.tap.tick()

    async def stop(self, reason: str) -> list[TrackFile]:
        """Close every file (those of tracks still live with ``reason``) and return them all."""
        for entry in list(self._live.values()):
            self.detach(entry.track, reason)
        while self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        return self.files()

    def files(self) -> list[TrackFile]:
        return [self._file(entry) for entry in self._all]

    def _file(self, entry: _Recorded) -> TrackFile:
        track, writer = entry.track, entry.writer
        fmt = FORMATS[track.codec.name]
        video = track.kind == "video"
        return TrackFile(
            recording_id=self.recording_id,
            meeting_id=self.meeting_id,
            user_id=track.user_id,
            peer_id=track.publisher_id,
            track_id=track.id,
            kind=track.kind,
            codec=track.codec.name,
            path=entry.path,
            container=fmt.container,
            mime_type=fmt.mime_type,
            started_at=writer.started_at,
            ended_at=writer.ended_at,
            frames=writer.frames,
            dropped_frames=entry.tap.dropped + writer.dropped,
            bytes=writer.bytes_written,
            width=writer.width if video else None,
            height=writer.height if video else None,
            closed=entry.closed,
            reason=entry.reason,
        )
