"""Live streaming, the control plane's half (behaviour: docs/streaming.md).

A stream is a composite of one meeting pushed to its outputs (RTMP/RTMPS, HLS) by a compositor
process on the node whose API started it, fed by that node's media server with the room's tracks.
The row holds what the stream was asked for (push URLs masked: a stream key is never stored), its
state and its last figures; the destinations of running streams are held by a digest of their URL,
so no two streams push to one destination at once.

State: ``starting`` until every output is up, ``live``, ``reconnecting`` while an RTMP output has
lost its server and tries again, ``failed`` when every output gave up, ``stopped`` once stopped
(by a host, the meeting's end, or the server's). Stopping a stream running on another node goes
out on the bus; a node starting after a crash fails the streams it ran."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import logging
import secrets
import shutil
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ai.fetch import address_refused, parse_networks
from config.settings import StreamingSettings
from control.envelope import utc_now
from control.errors import ApiError, BusinessCode, bad_request, not_found
from control.private_files import private_directory
from control.signaling.hub import SERVER, Hub, message
from control.store import Store
from control.store.meetings import MeetingRecord
from control.store.streams import RUNNING, StartRefusal, StartRefused, StreamRecord
from media.live import LiveConfig
from media.live_process import CompositorUnavailable, LiveProcess
from media.push import host_of, mask_url
from sfu.live import LiveFeed, Outlet

log = logging.getLogger("huiyi.streams")

CHANNEL = "streams"  # every node listens: streams to stop, meetings that ended
REMOTE_STOP_SECONDS = 25.0  # how long a stop waits for the node running the stream
RESOLVE_SECONDS = 10.0  # a push URL's host name must resolve within this
STATS_EVERY = 10  # status reports between two writes of the figures to the row


class StreamMedia(Protocol):
    """What the media server offers for live streams (``sfu.local.LocalMedia``, ``sfu.pool.WorkerPool``)."""

    def start_stream(self, meeting_id: int, stream_id: str, outlet: Outlet, layer: str = "medium") -> LiveFeed: ...

    def stop_stream(self, stream_id: str, reason: str = "stopped") -> None: ...


@dataclass(frozen=True)
class OutputRequest:
    type: str  # rtmp | hls
    url: str | None = None  # rtmp: the destination, stream key included
    public: bool = False  # hls: also served at an unguessable address to anyone


@dataclass(frozen=True)
class StreamRequest:
    outputs: list[OutputRequest]
    layout: str
    width: int
    height: int
    fps: int
    video_bitrate: int
    audio_bitrate: int


def stream_not_found() -> ApiError:
    return not_found("Stream not found", BusinessCode.STREAM_NOT_FOUND)


def not_running() -> ApiError:
    return ApiError(400, "The stream is not running", code=BusinessCode.STREAM_NOT_RUNNING)


_REFUSALS = {
    StartRefusal.GONE: (404, "Meeting not found", BusinessCode.MEETING_NOT_FOUND),
    StartRefusal.NOT_STARTED: (400, "The meeting has not started; start it first", BusinessCode.MEETING_NOT_STARTED),
    StartRefusal.OVER: (400, "Meeting is already over", BusinessCode.MEETING_ENDED),
    StartRefusal.TARGET_BUSY: (
        400,
        "A stream is already pushing to one of these URLs; stop it first",
        BusinessCode.STREAM_TARGET_BUSY,
    ),
}


def _refused(reason: StartRefusal) -> ApiError:
    status, text, code = _REFUSALS[reason]
    return ApiError(status, text, code=code)


async def check_destination(url: str, allowed: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> None:
    """Refuse (400) a push URL whose host is, or resolves to, an address the server does not push
    to (see ai/fetch.py's rule); its host name is resolved once, here."""
    host, port = host_of(url)
    try:
        addresses = [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        try:
            found = await asyncio.wait_for(
                asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM), RESOLVE_SECONDS
            )
        except (OSError, UnicodeError, TimeoutError):
            raise bad_request(f"The host {host} of a push URL cannot be resolved") from None
        addresses = [ipaddress.ip_address(str(entry[4][0]).split("%", 1)[0]) for entry in found]
    for address in addresses:
        reason = address_refused(str(address), allowed)
        if reason:
            raise bad_request(f"A push URL's host {host} is {reason}, which this server does not push to")


def digest(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()


def overall_state(outputs: list[dict[str, Any]]) -> str:
    """The stream's state from its outputs' (see the module's docstring)."""
    states = [output["state"] for output in outputs]
    if not states or all(state == "failed" for state in states):
        return "failed"
    if "reconnecting" in states:
        return "reconnecting"
    if all(state in ("live", "failed") for state in states):
        return "live"
    return "starting"


@dataclass
class _Running:
    """A stream this node's compositor runs, and its latest figures."""

    record: StreamRecord
    process: LiveProcess
    feed: LiveFeed | None = None
    state: str = "starting"
    report: dict[str, Any] = field(default_factory=dict)
    previous: tuple[float, int, int] | None = None  # (monotonic, frames, bytes) of the report before
    fps: float = 0.0
    bitrate: int = 0
    reports: int = 0
    settled: asyncio.Event = field(default_factory=asyncio.Event)


class Streamer:
    """The node's part in every stream, and the operations the API offers on them."""

    def __init__(
        self,
        *,
        store: Store,
        hub: Hub,
        media: StreamMedia,
        settings: StreamingSettings,
        data_dir: Path,
        node_id: str,
        log_level: str = "INFO",
    ) -> None:
        self.store = store
        self.hub = hub
        self.media = media
        self.settings = settings
        self.root = data_dir / "streams"
        self.node_id = node_id
        self.log_level = log_level
        self._here: dict[int, _Running] = {}
        self._stopping: dict[int, asyncio.Task[StreamRecord]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        # Told each state a stream enters (starting, live, reconnecting, stopped, failed): webhooks.
        self.state_listeners: list[Callable[[StreamRecord], Awaitable[None]]] = []

    # lifecycle ----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Fail the streams this node ran when it stopped without ending them; then take part."""
        private_directory(self.root)
        for stream in await self.store.streams.running(node_id=self.node_id):
            failed = await self.store.streams.update(
                stream.id,
                RUNNING,
                status="failed",
                error="the server stopped while streaming",
                stopped_at=utc_now(),
                stop_reason="server stopped unexpectedly",
            )
            if failed is not None:
                log.warning("stream %s failed: this node stopped while it ran", stream.id)
                await self._tell_room(failed)
        await asyncio.to_thread(self._clear_directories)
        await self.hub.listen(CHANNEL, self._on_event)

    def _clear_directories(self) -> None:
        """No stream runs here yet: HLS files left by earlier ones go."""
        for directory in self.root.iterdir():
            shutil.rmtree(directory, ignore_errors=True)

    async def close(self) -> None:
        """Going away: every stream this node runs ends, its outputs closed properly."""
        for stream_id in list(self._here):
            with contextlib.suppress(ApiError):
                await self._stop_here(stream_id, "server shutdown", "stopped")
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, work: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # operations ---------------------------------------------------------------------------------

    async def begin(self, meeting: MeetingRecord, user_id: int, request: StreamRequest) -> StreamRecord:
        """Start streaming an ongoing meeting; raises ApiError when refused."""
        if meeting.is_over:
            raise _refused(StartRefusal.OVER)
        if meeting.status != "ongoing":
            raise _refused(StartRefusal.NOT_STARTED)
        if len(self._here) >= self.settings.max_streams:
            raise ApiError(
                503,
                f"This server runs as many live streams as it may ({self.settings.max_streams}); try again later",
                code=BusinessCode.STREAMING_UNAVAILABLE,
            )
        pushes = [output.url for output in request.outputs if output.type == "rtmp" and output.url]
        allowed = parse_networks(self.settings.allow_networks)
        for url in pushes:
            await check_destination(url, allowed)
        public = any(output.type == "hls" and output.public for output in request.outputs)
        shown = [
            {"type": output.type, "url": mask_url(output.url) if output.url else None, "public": output.public}
            for output in request.outputs
        ]
        try:
            record = await self.store.streams.create(
                targets=[digest(url) for url in pushes],
                meeting_id=meeting.id,
                started_by=user_id,
                layout=request.layout,
                width=request.width,
                height=request.height,
                fps=request.fps,
                video_bitrate=request.video_bitrate,
                audio_bitrate=request.audio_bitrate,
                outputs=shown,
                public_token=secrets.token_urlsafe(24) if public else None,
                node_id=self.node_id,
            )
        except StartRefused as refused:
            raise _refused(refused.reason) from None
        log.info(
            "user %s started stream %s of meeting %s to %s",
            user_id,
            record.id,
            meeting.id,
            ", ".join(output["url"] or output["type"] for output in shown),
        )
        running = _Running(record, LiveProcess(self._config(record, request), lambda _: None, self.log_level))
        running.process.on_event = lambda event: self._on_compositor(running, event)
        self._here[record.id] = running
        try:
            await running.process.start()
        except (CompositorUnavailable, OSError) as exc:
            self._here.pop(record.id, None)
            await self.store.streams.update(
                record.id, RUNNING, status="failed", error=str(exc)[:1000], stopped_at=utc_now(), stop_reason="failed"
            )
            raise ApiError(
                503, f"The live compositor could not start: {exc}", code=BusinessCode.STREAMING_UNAVAILABLE
            ) from None
        running.feed = self.media.start_stream(meeting.id, str(record.id), running.process, self.settings.layer)
        self._spawn(self._watch(running))
        await self._tell_room(record)
        return record

    def _config(self, record: StreamRecord, request: StreamRequest) -> LiveConfig:
        outputs: list[dict[str, str]] = []
        for output in request.outputs:
            if output.type == "rtmp" and output.url:
                outputs.append({"type": "rtmp", "url": output.url, "shown": mask_url(output.url)})
            elif output.type == "hls":
                outputs.append({"type": "hls", "directory": str(self.hls_directory(record.id))})
        return LiveConfig(
            width=record.width,
            height=record.height,
            fps=record.fps,
            video_bitrate=record.video_bitrate,
            audio_bitrate=record.audio_bitrate,
            layout=record.layout,
            outputs=outputs,
            give_up_seconds=self.settings.give_up_seconds,
            max_retry_seconds=self.settings.max_retry_seconds,
            hls_segment_seconds=self.settings.hls_segment_seconds,
            hls_list_size=self.settings.hls_list_size,
            preset=self.settings.preset,
        )

    def hls_directory(self, stream_id: int) -> Path:
        return self.root / str(stream_id) / "hls"

    async def stop(self, stream: StreamRecord, reason: str) -> StreamRecord:
        """Stop a running stream, here or on the node that runs it; answers once it has ended."""
        if not stream.running:
            raise not_running()
        if stream.id in self._here:
            return await self._stop_here(stream.id, reason, "stopped")
        await self.hub.bus.publish(CHANNEL, {"event": "stop", "stream_id": stream.id, "reason": reason})
        deadline = time.monotonic() + REMOTE_STOP_SECONDS
        while time.monotonic() < deadline:
            current = await self.store.streams.get(stream.id)
            if current is None or not current.running:
                return current or stream
            await asyncio.sleep(0.2)
        # Its node did not answer (it is gone): the row is settled here.
        stopped = await self.store.streams.update(
            stream.id, RUNNING, status="stopped", stopped_at=utc_now(), stop_reason=reason
        )
        if stopped is None:
            return await self.store.streams.get(stream.id) or stream
        await self._tell_room(stopped)
        return stopped

    async def stop_in(self, meeting_id: int, reason: str) -> None:
        """The meeting is over: its streams end, here and on every other node."""
        await self.hub.bus.publish(CHANNEL, {"event": "meeting-ended", "meeting_id": meeting_id, "reason": reason})
        await self._stop_meeting_here(meeting_id, reason)

    async def _stop_meeting_here(self, meeting_id: int, reason: str) -> None:
        for stream_id, running in list(self._here.items()):
            if running.record.meeting_id == meeting_id:
                with contextlib.suppress(ApiError):
                    await self._stop_here(stream_id, reason, "stopped")

    async def _on_event(self, event: dict[str, Any]) -> None:
        if event.get("event") == "stop" and int(event["stream_id"]) in self._here:
            with contextlib.suppress(ApiError):
                await self._stop_here(int(event["stream_id"]), str(event.get("reason") or "stopped"), "stopped")
        elif event.get("event") == "meeting-ended":
            await self._stop_meeting_here(int(event["meeting_id"]), str(event.get("reason") or "meeting ended"))

    async def _stop_here(self, stream_id: int, reason: str, status: str, error: str | None = None) -> StreamRecord:
        """End a stream this node runs, however many callers ask at once."""
        stopping = self._stopping.get(stream_id)
        if stopping is None:
            stopping = self._stopping[stream_id] = self._spawn(self._end_here(stream_id, reason, status, error))
            stopping.add_done_callback(lambda _: self._stopping.pop(stream_id, None))
        return await asyncio.shield(stopping)

    async def _end_here(self, stream_id: int, reason: str, status: str, error: str | None) -> StreamRecord:
        running = self._here.get(stream_id)
        if running is None:
            raise not_running()
        running.settled.set()  # its reports and its exit are expected from here on
        self.media.stop_stream(str(stream_id), reason)
        await running.process.stop()
        self._here.pop(stream_id, None)
        values: dict[str, Any] = {
            "status": status,
            "stopped_at": utc_now(),
            "stop_reason": reason,
            "stats": self._figures(running),
        }
        if error is not None:
            values["error"] = error[:1000]
        ended = await self.store.streams.update(stream_id, RUNNING, **values)
        log.info("stream %s of meeting %s ended (%s): %s", stream_id, running.record.meeting_id, status, reason)
        if ended is None:
            ended = await self.store.streams.get(stream_id) or running.record
        await self._tell_room(ended)
        return ended

    # the compositor's reports -------------------------------------------------------------------

    def _on_compositor(self, running: _Running, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "keyframe" and running.feed is not None:
            running.feed.request_keyframe(int(event["key"]))
        elif kind in ("status", "ended"):
            self._take_report(running, event)

    def _take_report(self, running: _Running, report: dict[str, Any]) -> None:
        now = time.monotonic()
        frames, sent = int(report.get("frames", 0)), int(report.get("encoded_bytes", 0))
        if running.previous is not None and now > running.previous[0]:
            elapsed = now - running.previous[0]
            running.fps = round((frames - running.previous[1]) / elapsed, 1)
            running.bitrate = round((sent - running.previous[2]) * 8 / elapsed)
        running.previous = (now, frames, sent)
        running.report = report
        running.reports += 1
        if report.get("event") != "status" or running.settled.is_set():
            return
        state = overall_state(report.get("outputs", []))
        if state != running.state:
            running.state = state
            self._spawn(self._state_changed(running, state))
        elif running.reports % STATS_EVERY == 0:
            self._spawn(self.store.streams.update(running.record.id, RUNNING, stats=self._figures(running)))

    async def _state_changed(self, running: _Running, state: str) -> None:
        stream_id = running.record.id
        errors = [f"{o['target']}: {o['error']}" for o in running.report.get("outputs", []) if o.get("error")]
        error = "; ".join(errors)[:1000] or None
        log.info("stream %s is %s%s", stream_id, state, f" ({error})" if error else "")
        if state == "failed":
            await self._stop_here(stream_id, "failed", "failed", error or "every output failed")
            return
        changed = await self.store.streams.update(
            stream_id, RUNNING, status=state, error=error, stats=self._figures(running)
        )
        if changed is not None:
            await self._announce(changed)

    async def _watch(self, running: _Running) -> None:
        """A compositor that exits on its own (a crash) fails its stream."""
        await running.process.ended.wait()
        if not running.settled.is_set() and running.record.id in self._here:
            log.error("the compositor of stream %s exited unexpectedly", running.record.id)
            with contextlib.suppress(ApiError):
                await self._stop_here(running.record.id, "failed", "failed", "the live compositor stopped unexpectedly")

    def _figures(self, running: _Running) -> dict[str, Any]:
        report = running.report
        outputs = report.get("outputs", [])
        fed_dropped = (running.feed.dropped if running.feed is not None else 0) + running.process.refused
        return {
            "frames": int(report.get("frames", 0)),
            "frames_dropped": int(report.get("skipped", 0)) + int(report.get("lost", 0)) + fed_dropped,
            "fps": running.fps if running.state in ("live", "reconnecting") else 0.0,
            "bitrate": running.bitrate if running.state in ("live", "reconnecting") else 0,
            "outputs": [
                {key: output.get(key) for key in ("type", "state", "error", "reconnects", "bytes")}
                for output in outputs
            ],
        }

    def live_figures(self, stream_id: int) -> dict[str, Any] | None:
        """The figures of a stream running on this node, as of its compositor's last report."""
        running = self._here.get(stream_id)
        return self._figures(running) if running is not None else None

    def live_state(self, stream_id: int) -> str | None:
        running = self._here.get(stream_id)
        return running.state if running is not None else None

    async def _tell_room(self, stream: StreamRecord) -> None:
        """``media-state`` with whether the meeting is being streamed (by any stream) now; and the
        stream's new state to the state listeners."""
        streaming = bool(await self.store.streams.running(meeting_id=stream.meeting_id))
        state = {"streaming": streaming, "stream_id": stream.id}
        await self.hub.broadcast(message("media-state", stream.meeting_id, SERVER, state))
        await self._announce(stream)

    async def _announce(self, stream: StreamRecord) -> None:
        for listener in self.state_listeners:
            await listener(stream)
