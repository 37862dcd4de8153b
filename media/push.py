"""A live composite's outputs: an RTMP/RTMPS push (FLV) or HLS (segments and a playlist on disk).

The compositor encodes once; every output muxes the same packets into a container of its own,
from a thread of its own fed through a bounded queue, so one slow or broken output (a stalled
RTMP server) never holds up the picture or the other outputs. An output whose queue overflows
drops packets and starts again at the next key frame, which it asks the encoder for.

An RTMP output whose connection fails or is refused tries again with a growing wait (backoff)
and reports ``reconnecting``; once ``give_up_seconds`` pass without a connection it reports
``failed`` with the reason. Each connection starts at a key frame with its timestamps from zero,
as a new publish does. HLS writes to local disk: an error there fails it at once.

A push URL carries the platform's stream key: it is never logged or reported whole (``mask_url``).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import av

log = logging.getLogger("huiyi.media.push")

QUEUE_PACKETS = 400  # about 4 s of 30 fps video with its audio
NETWORK_TIMEOUT = 5.0  # seconds an RTMP server may take to answer before it counts as down
FIRST_RETRY = 0.5  # seconds before the first reconnection; doubles up to the output's max_retry
PLAYLIST = "index.m3u8"
SEGMENT_PATTERN = "seg%05d.ts"

VIDEO, AUDIO = 0, 1


def mask_url(url: str) -> str:
    """``url`` fit for logs and answers: the stream key (the last path part), any query and any
    password shown by their last two characters at most."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(unreadable url)"
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    if parts.username:
        host = f"{_mask(parts.username)}@{host}"
    path = parts.path
    head, _, key = path.rpartition("/")
    if key and head:
        path = f"{head}/{_mask(key)}"
    query = "&".join(
        f"{name}={_mask(value)}" if value else name
        for name, _, value in (item.partition("=") for item in parts.query.split("&") if item)
    )
    return urlunsplit((parts.scheme, host, path, query, ""))


def host_of(url: str) -> tuple[str, int]:
    """The host and port an RTMP(S) URL connects to."""
    parts = urlsplit(url)
    default = 443 if parts.scheme == "rtmps" else 1935
    return parts.hostname or "", parts.port or default


def _mask(secret: str) -> str:
    return "****" + secret[-2:] if len(secret) > 8 else "****"


@dataclass(frozen=True, slots=True)
class Encoded:
    """One encoded packet of the composite, as every output gets it."""

    media: int  # VIDEO or AUDIO
    data: bytes
    pts: int
    dts: int
    keyframe: bool
    time_base: Fraction

    @property
    def seconds(self) -> float:
        return float(self.dts * self.time_base)


class Output:
    """One destination of the composite. ``put`` is called by the compositor and never blocks;
    ``close`` finishes the container (the FLV connection closed properly, the playlist ended)."""

    kind = ""
    retries = False  # whether a lost destination is tried again, or fails the output

    def __init__(
        self,
        target: str,
        shown: str,
        templates: tuple[av.stream.Stream, av.stream.Stream],
        request_keyframe: Callable[[], None],
        give_up_seconds: float,
        max_retry_seconds: float,
    ) -> None:
        self.target = target  # the destination, secrets included
        self.shown = shown  # how it is named in logs and answers
        self.templates = templates
        self.request_keyframe = request_keyframe
        self.give_up_seconds = give_up_seconds
        self.max_retry_seconds = max_retry_seconds
        self.state = "starting"  # starting | live | reconnecting | failed | stopped
        self.error: str | None = None
        self.reconnects = 0
        self.bytes = 0
        self.dropped = 0  # packets lost to a full queue
        self._queue: queue.Queue[Encoded | None] = queue.Queue(QUEUE_PACKETS)
        self._connected = False
        self._skip_to_keyframe = True
        self._closing = threading.Event()
        self._container: av.container.OutputContainer | None = None
        self._streams: tuple[av.stream.Stream, av.stream.Stream] | None = None
        self._offset: float | None = None  # seconds of the composite where this connection's zero is
        self._thread = threading.Thread(target=self._run, name=f"{self.kind} output", daemon=True)

    def start(self) -> None:
        self._thread.start()

    # compositor side ----------------------------------------------------------------------------

    def put(self, packet: Encoded) -> None:
        if not self._connected or self._closing.is_set():
            return
        try:
            self._queue.put_nowait(packet)
        except queue.Full:
            self.dropped += 1
            self._skip_to_keyframe = True
            self.request_keyframe()

    def finish(self) -> None:
        """Take nothing more: what is queued is written, then the container closed (``wait``)."""
        self._closing.set()
        while True:
            try:
                self._queue.put_nowait(None)
                return
            except queue.Full:  # stuck on a server that stopped answering: the backlog goes
                with contextlib.suppress(queue.Empty):
                    self._queue.get_nowait()

    def wait(self, timeout: float) -> None:
        self._thread.join(max(0.0, timeout))

    def status(self) -> dict[str, Any]:
        return {
            "type": self.kind,
            "target": self.shown,
            "state": self.state,
            "error": self.error,
            "reconnects": self.reconnects,
            "bytes": self.bytes,
            "dropped_packets": self.dropped,
        }

    # output thread ------------------------------------------------------------------------------

    def _run(self) -> None:
        down_since: float | None = None
        wait = FIRST_RETRY
        while not self._closing.is_set():
            try:
                self._open()
            except Exception as exc:
                reason = self._reason(exc)
                now = time.monotonic()
                down_since = down_since or now
                if not self.retries or now - down_since >= self.give_up_seconds:
                    self._give_up(reason)
                    return
                if self.state != "reconnecting":
                    log.warning("%s output %s unreachable: %s; trying again", self.kind, self.shown, reason)
                self.state, self.error = "reconnecting", reason
                self._closing.wait(wait)
                wait = min(wait * 2, self.max_retry_seconds)
                continue
            if self.state == "reconnecting":
                self.reconnects += 1
                log.info("%s output %s connected again", self.kind, self.shown)
            self._skip_to_keyframe = True
            self._connected = True
            self.request_keyframe()
            failure = self._pump()
            self._connected = False
            if failure is None:  # closing: the container was finished
                break
            self._abandon()
            self._drain()
            down_since, wait = time.monotonic(), FIRST_RETRY
            if not self.retries:
                self._give_up(failure)
                return
            log.warning("%s output %s lost: %s; reconnecting", self.kind, self.shown, failure)
            self.state, self.error = "reconnecting", failure
        if self.state != "failed":
            self.state = "stopped"

    def _pump(self) -> str | None:
        """Write packets until closing (None once the container is finished) or a failure (its reason)."""
        while True:
            packet = self._queue.get()
            if packet is None:
                try:
                    self._finish()
                except Exception as exc:
                    log.info("%s output %s closed with an error: %s", self.kind, self.shown, self._reason(exc))
                return None
            try:
                self._write(packet)
            except Exception as exc:
                return self._reason(exc)

    def _write(self, packet: Encoded) -> None:
        if self._skip_to_keyframe:
            if packet.media != VIDEO or not packet.keyframe:
                return
            self._skip_to_keyframe = False
            if self._offset is None:
                self._offset = packet.seconds
        assert self._container is not None and self._streams is not None and self._offset is not None
        shift = round(self._offset / packet.time_base)
        if packet.dts - shift < 0:
            return  # audio from before this connection's first picture
        out = av.Packet(packet.data)
        out.stream = self._streams[packet.media]
        out.pts, out.dts = packet.pts - shift, packet.dts - shift
        out.time_base = packet.time_base
        out.is_keyframe = packet.keyframe
        self._container.mux(out)
        self.bytes += len(packet.data)
        if self.state != "live":
            self.state, self.error = "live", None
            log.info("%s output %s is live", self.kind, self.shown)

    def _open(self) -> None:
        container = self._container_for()
        try:
            streams = tuple(container.add_stream_from_template(template) for template in self.templates)
            container.start_encoding()  # connects (RTMP) or writes the header
        except BaseException:
            _quietly_close(container)
            raise
        self._container, self._streams = container, (streams[0], streams[1])
        self._offset = None

    def _container_for(self) -> av.container.OutputContainer:
        raise NotImplementedError

    def _finish(self) -> None:
        container, self._container = self._container, None
        if container is not None:
            container.close()

    def _abandon(self) -> None:
        container, self._container = self._container, None
        if container is not None:
            _quietly_close(container)

    def _drain(self) -> None:
        while True:
            try:
                if self._queue.get_nowait() is None:
                    self._closing.set()
                    return
            except queue.Empty:
                return

    def _give_up(self, reason: str) -> None:
        self.state, self.error = "failed", reason
        self._connected = False
        log.warning("%s output %s failed: %s", self.kind, self.shown, reason)
        self._drain()

    def _reason(self, exc: BaseException) -> str:
        text = str(exc) or exc.__class__.__name__
        return text.replace(self.target, self.shown)[:500]


class RtmpOutput(Output):
    """A push to an RTMP or RTMPS ingest (``rtmp://host/app/key``), as FLV."""

    kind = "rtmp"
    retries = True

    def _container_for(self) -> av.container.OutputContainer:
        # The timeout bounds connecting and every write: a server that stops answering counts as lost.
        options = {"flvflags": "no_duration_filesize"}
        return av.open(self.target, "w", format="flv", options=options, timeout=(NETWORK_TIMEOUT, NETWORK_TIMEOUT))


class HlsOutput(Output):
    """HLS: MPEG-TS segments of about ``segment_seconds`` and a playlist of the last ``list_size``
    in ``directory``; older segments are deleted, and the playlist is replaced whole each time, so
    a reader never sees half of one. Closing marks the playlist ended."""

    kind = "hls"

    def __init__(self, directory: Path, segment_seconds: float, list_size: int, **options: Any) -> None:
        super().__init__(str(directory / PLAYLIST), "hls", **options)
        self.directory = directory
        self.segment_seconds = segment_seconds
        self.list_size = list_size

    def _container_for(self) -> av.container.OutputContainer:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        options = {
            "hls_time": f"{self.segment_seconds:g}",
            "hls_list_size": str(self.list_size),
            "hls_flags": "delete_segments+independent_segments+temp_file",
            "hls_segment_filename": str(self.directory / SEGMENT_PATTERN),
        }
        return av.open(self.target, "w", format="hls", options=options)


def _quietly_close(container: av.container.OutputContainer) -> None:
    try:
        container.close()
    except Exception as exc:
        log.debug("closing a broken output: %s", exc)
