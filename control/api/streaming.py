"""/api/v1/streaming: push a meeting out as a live stream (docs/streaming.md).

The host or a moderator of an ongoing meeting starts and stops its streams; its participants (and
admins) see their status and watch their HLS. To anyone else a stream does not exist, except
through the unguessable public HLS address of a stream started as public."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from aiohttp import web
from pydantic import BaseModel, Field, field_validator, model_validator

from control.api.schemas import RequestModel
from control.context import SETTINGS, STORE, STREAMS, current_user
from control.endpoints import Access, EndpointGroup, path_int
from control.envelope import iso_utc
from control.errors import forbidden
from control.rooms import load_meeting, require_moderator
from control.store.streams import StreamRecord
from control.streams import OutputRequest, StreamRequest, stream_not_found
from media.push import PLAYLIST

group = EndpointGroup("/api/v1/streaming", "streaming")
STREAM_ID = r"{stream_id:\d+}"
# The playlist, and the segments the HLS muxer names (media/push.py).
# (No braces in these patterns: the declarations' path syntax takes them for parameters.)
HLS_FILE = r"{name:(index\.m3u8|seg\d+\.ts)}"
PUBLIC_TOKEN = r"{token:[A-Za-z0-9_-]+}"
MAX_ID = 2**63 - 1
State = Literal["starting", "live", "reconnecting", "stopped", "failed"]
Layout = Literal["grid", "speaker"]
PUSH_URL = re.compile(r"^rtmps?://[^\s/?#]+/\S+$")
HLS_TYPES = {".m3u8": "application/vnd.apple.mpegurl", ".ts": "video/mp2t"}


class OutputIn(RequestModel):
    type: Literal["rtmp", "hls"] = Field(description="rtmp: push to an RTMP/RTMPS ingest; hls: served by this server")
    url: str | None = Field(
        None,
        max_length=2048,
        description="rtmp only: rtmp:// or rtmps:// URL of the ingest, with the stream key (never shown whole again)",
    )
    public: bool = Field(False, description="hls only: also serve it to anyone with the unguessable public URL")

    @field_validator("url")
    @classmethod
    def _push_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if not PUSH_URL.match(value):
            raise ValueError("must be an rtmp:// or rtmps:// URL with a host and a path (app/stream key)")
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018  (a port that is not a number is refused here)
        except ValueError:
            raise ValueError("is not a valid URL") from None
        if not parts.hostname:
            raise ValueError("must name a host")
        return value

    @model_validator(mode="after")
    def _fits_type(self) -> OutputIn:
        if self.type == "rtmp" and self.url is None:
            raise ValueError("an rtmp output needs its url")
        if self.type == "hls" and self.url is not None:
            raise ValueError("an hls output has no url: the server serves it")
        if self.type == "rtmp" and self.public:
            raise ValueError("public applies to hls outputs only")
        return self


class StreamStartIn(RequestModel):
    meeting_id: int = Field(ge=1, le=MAX_ID)
    outputs: list[OutputIn] = Field(min_length=1, max_length=5, description="where the composite goes, at once")
    layout: Layout = Field("grid", description="grid, or the active speaker large")
    width: int | None = Field(None, ge=160, le=1920, description="pixels; the server's default (1280) when absent")
    height: int | None = Field(None, ge=90, le=1080, description="pixels; default 720")
    fps: int | None = Field(None, ge=5, le=60, description="frames a second; default 30")
    video_bitrate: int | None = Field(None, ge=100_000, le=10_000_000, description="bit/s; default 2500000")
    audio_bitrate: int | None = Field(None, ge=32_000, le=320_000, description="bit/s; default 128000")

    @model_validator(mode="after")
    def _distinct(self) -> StreamStartIn:
        urls = [output.url for output in self.outputs if output.url]
        if len(set(urls)) != len(urls):
            raise ValueError("each rtmp url once")
        if sum(output.type == "hls" for output in self.outputs) > 1:
            raise ValueError("at most one hls output")
        return self


class StreamStopIn(RequestModel):
    stream_id: int = Field(ge=1, le=MAX_ID)


class StreamOutputOut(BaseModel):
    type: Literal["rtmp", "hls"]
    url: str | None = Field(description="rtmp: the URL with its stream key masked; hls: null")
    public: bool
    state: State | None = Field(description="starting, live, reconnecting, failed, stopped; null before reported")
    error: str | None = Field(description="why it is reconnecting or failed")
    reconnects: int
    bytes: int = Field(description="sent so far")


class StreamOut(BaseModel):
    stream_id: int
    meeting_id: int
    started_by: int
    state: State
    error: str | None = Field(description="the last error: an output's, or why the stream failed")
    layout: Layout
    width: int
    height: int
    fps: int = Field(description="asked for")
    video_bitrate: int = Field(description="asked for, bit/s")
    audio_bitrate: int
    started_at: str
    stopped_at: str | None
    stop_reason: str | None = Field(description="stopped, meeting ended, server shutdown, failed, ...")
    uptime: float = Field(description="seconds since it started (until it ended)")
    output_fps: float = Field(description="pictures encoded a second, lately")
    output_bitrate: int = Field(description="bit/s encoded, lately")
    frames: int = Field(description="pictures encoded")
    frames_dropped: int = Field(description="pictures skipped or lost on the way (input and composite)")
    outputs: list[StreamOutputOut]
    playlist_url: str | None = Field(description="HLS playlist for the meeting's participants (bearer token)")
    public_playlist_url: str | None = Field(description="HLS playlist for anyone: only for public streams")


def _view(request: web.Request, stream: StreamRecord) -> StreamOut:
    streamer = request.app[STREAMS]
    figures = streamer.live_figures(stream.id) or stream.stats
    state = streamer.live_state(stream.id) if stream.running else None
    reported = figures.get("outputs") or []
    outputs = []
    for index, output in enumerate(stream.outputs):
        live = reported[index] if index < len(reported) else {}
        outputs.append(
            StreamOutputOut(
                type=output["type"],
                url=output.get("url"),
                public=bool(output.get("public")),
                state=live.get("state"),
                error=live.get("error"),
                reconnects=int(live.get("reconnects") or 0),
                bytes=int(live.get("bytes") or 0),
            )
        )
    end = stream.stopped_at or None
    uptime = ((end.timestamp() if end else time.time()) - stream.started_at.timestamp()) if stream.started_at else 0.0
    hls = any(output["type"] == "hls" for output in stream.outputs)
    return StreamOut(
        stream_id=stream.id,
        meeting_id=stream.meeting_id,
        started_by=stream.started_by,
        state=(state or stream.status),  # type: ignore[arg-type]
        error=stream.error,
        layout=stream.layout,  # type: ignore[arg-type]
        width=stream.width,
        height=stream.height,
        fps=stream.fps,
        video_bitrate=stream.video_bitrate,
        audio_bitrate=stream.audio_bitrate,
        started_at=iso_utc(stream.started_at),
        stopped_at=iso_utc(stream.stopped_at) if stream.stopped_at else None,
        stop_reason=stream.stop_reason,
        uptime=round(max(0.0, uptime), 1),
        output_fps=float(figures.get("fps") or 0.0),
        output_bitrate=int(figures.get("bitrate") or 0),
        frames=int(figures.get("frames") or 0),
        frames_dropped=int(figures.get("frames_dropped") or 0),
        outputs=outputs,
        playlist_url=f"{group.prefix}/{stream.id}/hls/{PLAYLIST}" if hls else None,
        public_playlist_url=f"{group.prefix}/public/{stream.public_token}/{PLAYLIST}" if stream.public_token else None,
    )


async def _visible(request: web.Request, stream_id: int) -> StreamRecord:
    """A stream the caller may see: its meeting's participants' and admins'; unknown to others."""
    user = current_user(request)
    stream = await request.app[STORE].streams.get(stream_id)
    if stream is None:
        raise stream_not_found()
    if not user.is_admin:
        participant = await request.app[STORE].participants.get(stream.meeting_id, user.id)
        if participant is None or not participant.is_member:
            raise stream_not_found()
    return stream


async def _hls_file(request: web.Request, stream: StreamRecord) -> web.StreamResponse:
    if not any(output["type"] == "hls" for output in stream.outputs):
        raise stream_not_found()
    name = request.match_info["name"]
    path: Path = request.app[STREAMS].hls_directory(stream.id) / name
    if not path.is_file():
        raise stream_not_found()
    headers = {
        "Content-Type": HLS_TYPES[path.suffix],
        "Cache-Control": "no-cache" if path.suffix == ".m3u8" else "private, max-age=60",
        "X-Content-Type-Options": "nosniff",
    }
    try:
        data = await asyncio.to_thread(path.read_bytes)  # small: a playlist, or a few seconds of video
    except OSError:  # deleted meanwhile (it fell out of the playlist)
        raise stream_not_found() from None
    return web.Response(body=data, headers=headers)


@group.route(
    "POST",
    "/start",
    name="start",
    summary=(
        "Start pushing a meeting out as a live stream: RTMP/RTMPS and/or HLS (host or moderator; the meeting "
        "ongoing; 5102 when a URL is pushed to already, 5007, 2002, 5104)"
    ),
    access=Access.USER,
    limit="10/minute",
    body=StreamStartIn,
    response=StreamOut,
    status=201,
    errors=(503,),
)
async def start(request: web.Request, body: StreamStartIn) -> StreamOut:
    user = current_user(request)
    meeting = await load_meeting(request.app, body.meeting_id)
    await require_moderator(request.app, meeting, user)
    defaults = request.app[SETTINGS].streaming
    stream = await request.app[STREAMS].begin(
        meeting,
        user.id,
        StreamRequest(
            outputs=[OutputRequest(output.type, output.url, output.public) for output in body.outputs],
            layout=body.layout,
            width=body.width or defaults.width,
            height=body.height or defaults.height,
            fps=body.fps or defaults.fps,
            video_bitrate=body.video_bitrate or defaults.video_bitrate,
            audio_bitrate=body.audio_bitrate or defaults.audio_bitrate,
        ),
    )
    return _view(request, stream)


@group.route(
    "POST",
    "/stop",
    name="stop",
    summary="Stop a live stream (host or moderator; 5103 when it is not running); answers once its outputs are closed",
    access=Access.USER,
    limit="10/minute",
    body=StreamStopIn,
    response=StreamOut,
)
async def stop(request: web.Request, body: StreamStopIn) -> StreamOut:
    stream = await _visible(request, body.stream_id)
    participant = await request.app[STORE].participants.get(stream.meeting_id, current_user(request).id)
    if participant is None or not participant.can_moderate:
        raise forbidden("Only the meeting's host or a moderator may do this")
    return _view(request, await request.app[STREAMS].stop(stream, "stopped"))


@group.route(
    "GET",
    "/" + STREAM_ID + "/status",
    name="status",
    summary="A live stream's state, uptime, bit and frame rates, drops, last error, HLS address (participants; 5101)",
    access=Access.USER,
    limit="50/minute",
    response=StreamOut,
)
async def status(request: web.Request) -> StreamOut:
    return _view(request, await _visible(request, path_int(request, "stream_id", stream_not_found())))


@group.route(
    "GET",
    "/" + STREAM_ID + "/hls/" + HLS_FILE,
    name="hls",
    summary="The stream's HLS playlist (index.m3u8) and segments, for the meeting's participants (5101)",
    access=Access.USER,
    limit="600/minute",
    raw_response=(tuple(HLS_TYPES.values()), {"type": "string", "format": "binary"}),
)
async def hls(request: web.Request) -> web.StreamResponse:
    stream = await _visible(request, path_int(request, "stream_id", stream_not_found()))
    return await _hls_file(request, stream)


@group.route(
    "GET",
    "/public/" + PUBLIC_TOKEN + "/" + HLS_FILE,
    name="public_hls",
    summary="A public stream's HLS playlist and segments, for anyone with its address (5101)",
    access=Access.PUBLIC,
    limit="600/minute",
    raw_response=(tuple(HLS_TYPES.values()), {"type": "string", "format": "binary"}),
)
async def public_hls(request: web.Request) -> web.StreamResponse:
    stream = await request.app[STORE].streams.by_public_token(request.match_info["token"])
    if stream is None:
        raise stream_not_found()
    return await _hls_file(request, stream)
