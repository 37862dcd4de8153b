"""Recorded tracks written to disk as they arrive: encoded frames muxed into Matroska/WebM, never
re-encoded.

Each file has its own writer thread fed through a bounded queue, so the media server's event loop
never waits on the disk. Files are written cluster by cluster (a cluster at least every second) and
flushed after every frame, so a server killed mid-recording leaves files that play up to about a
second before the kill.
"""

from __future__ import annotations

import errno
import io
import logging
import queue
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av

log = logging.getLogger("huiyi.media.mux")

QUEUE_FRAMES = 256  # about 8 s of 30 fps video or 5 s of Opus: only a stalled disk fills it
MILLISECONDS = Fraction(1, 1000)
# Cut a cluster at least every second and flush after each frame: what was written stays playable.
MUXER_OPTIONS = {"cluster_time_limit": "1000", "flush_packets": "1"}
# An Opus identification header (RFC 7845): version 1, two channels, no pre-skip, 48 kHz, no gain,
# mapping family 0. WebRTC's Opus is always signalled as 48000/2; a mono stream decodes as two
# identical channels.
OPUS_HEAD = b"OpusHead" + struct.pack("<BBHIhB", 1, 2, 0, 48000, 0, 0)


@dataclass(frozen=True, slots=True)
class Format:
    container: str  # FFmpeg's muxer name and the interface's container name
    extension: str
    mime_type: str


FORMATS = {
    "vp8": Format("webm", "webm", "video/webm"),
    "vp9": Format("webm", "webm", "video/webm"),  # an SVC track's base spatial layer (sfu/depacketize.py)
    "h264": Format("matroska", "mkv", "video/x-matroska"),
    "opus": Format("webm", "webm", "audio/webm"),
}


@dataclass(slots=True)
class EncodedFrame:
    """One frame of a track as its publisher encoded it, reassembled from RTP packets."""

    data: bytes
    timestamp: int  # RTP timestamp
    keyframe: bool  # always true for audio
    arrival: float  # wall clock (UNIX seconds) when its first packet arrived
    width: int = 0  # for video key frames, as the bitstream says; 0 otherwise
    height: int = 0
    wallclock: float = 0.0  # when it was captured, on the recording's clock (set by the tap)


class TrackWriter:
    """Muxes one track's frames into one file from its own thread.

    ``put`` is called on the event loop and never blocks: when the queue is full the frame is dropped
    and counted, the publisher is asked for a key frame (``request_keyframe``) and, for video, frames
    are skipped until that key frame arrives, since frames after a hole cannot be decoded. ``close``
    blocks until the file is finished; call it off the event loop.
    """

    def __init__(
        self,
        path: Path,
        codec: str,
        origin: float,
        request_keyframe: Callable[[], None],
        on_failure: Callable[[], None],
        capacity: int = QUEUE_FRAMES,
    ) -> None:
        self.path = path
        self.codec = codec
        self.format = FORMATS[codec]
        self.video = codec != "opus"
        self.origin = origin  # wall clock of millisecond 0 in the file
        self.request_keyframe = request_keyframe
        self.on_failure = on_failure
        self.frames = 0
        self.dropped = 0
        self.started_at: float | None = None
        self.ended_at: float | None = None
        self.width: int | None = None
        self.height: int | None = None
        self.failure: str | None = None  # "disk" or "error: ..." once writing failed
        self.size = 0  # bytes, once closed
        self._skip_to_keyframe = self.video  # a video file starts at a key frame
        self._accepted = 0
        self._queue: queue.Queue[EncodedFrame | None] = queue.Queue(capacity)
        self._container: av.container.OutputContainer | None = None
        self._stream: av.stream.Stream | None = None
        self._last_pts = -1
        self._closing = False
        self._thread = threading.Thread(target=self._run, name=f"mux {path.name}", daemon=True)
        self._thread.start()

    # event loop side ----------------------------------------------------------------------------

    def put(self, frame: EncodedFrame) -> None:
        if self._closing or self.failure is not None:
            return
        if self._skip_to_keyframe and not frame.keyframe:
            self.dropped += self._accepted > 0  # before the first key frame nothing is missing yet
            return
        try:
            self._queue.put_nowait(frame)
        except queue.Full:
            self.dropped += 1
            self._skip_to_keyframe = self.video
            self.request_keyframe()
            return
        self._accepted += 1
        self._skip_to_keyframe = False

    def close(self) -> None:
        """Finish the file (index and duration written) and wait for the writer thread: blocking."""
        self._closing = True
        self._queue.put(None)
        self._thread.join()

    @property
    def bytes_written(self) -> int:
        if self._thread.is_alive():
            try:
                return self.path.stat().st_size
            except OSError:
                return 0
        return self.size

    # writer thread ------------------------------------------------------------------------------

    def _run(self) -> None:
        while (frame := self._queue.get()) is not None:
            if self.failure is not None:
                continue
            try:
                self._write(frame)
            except Exception as exc:
                self._fail(exc)
        try:
            if self._container is not None:
                self._container.close()
        except Exception as exc:
            self._fail(exc)
        try:
            self.size = self.path.stat().st_size
        except OSError:
            self.size = 0

    def _fail(self, exc: Exception) -> None:
        if self.failure is not None:
            return
        no_space = isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
        self.failure = "disk" if no_space else f"error: {exc}"
        log.warning("recording %s stopped: %s", self.path, exc)
        self.on_failure()

    def _write(self, frame: EncodedFrame) -> None:
        # Milliseconds since the recording's start, strictly increasing: a frame captured just before
        # the start, or a clock correction that steps back, is placed right after the previous one.
        pts = max(round((frame.wallclock - self.origin) * 1000), self._last_pts + 1)
        if self._container is None:
            self._open(frame)
        assert self._container is not None and self._stream is not None
        packet = av.Packet(frame.data)
        packet.stream = self._stream
        packet.pts = packet.dts = pts
        packet.time_base = MILLISECONDS
        packet.is_keyframe = frame.keyframe
        self._container.mux(packet)
        self._last_pts = pts
        self.frames += 1
        moment = self.origin + pts / 1000
        if self.started_at is None:
            self.started_at = moment
        self.ended_at = moment
        if frame.width and frame.height:
            self.width, self.height = frame.width, frame.height

    def _open(self, frame: EncodedFrame) -> None:
        container = av.open(str(self.path), "w", format=self.format.container, options=dict(MUXER_OPTIONS))
        if self.codec == "opus":
            stream = _opus_stream(container)
        else:
            # The codec parameters of the first key frame; later changes (a simulcast layer switch)
            # travel in the bitstream, which decoders follow. H.264's SPS and PPS are taken from the
            # first frame's parameter sets by the muxer.
            stream = container.add_mux_stream(self.codec, width=frame.width, height=frame.height)
        stream.time_base = MILLISECONDS
        self._container, self._stream = container, stream


def _opus_stream(container: av.container.OutputContainer) -> av.stream.Stream:
    """An Opus stream whose codec private data is an identification header, which players need.

    A stream made for muxing only cannot carry one, so the stream is copied from a template whose
    (never opened) codec context holds the parameters, and the header is set on the copy.
    """
    with av.open(io.BytesIO(), "w", format="webm") as scratch:
        template = scratch.add_stream("libopus", rate=48000, layout="stereo")
        stream = container.add_stream_from_template(template)
    stream.codec_context.extradata = OPUS_HEAD
    return stream
