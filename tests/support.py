"""Small pieces shared by the suites: the envelope every JSON answer must be, waiting for a condition
with a deadline, times relative to now, tiny valid media to upload (made here, so no fixture files
are needed), and the calls that drive the in-process app (``tests.conftest.Api``): meetings,
signaling sockets, uploads and media jobs. Helpers for a server process are in
``tests.server_process``, for aiortc participants in ``tests.rtc_clients``."""

from __future__ import annotations

import asyncio
import inspect
import io
import json
import os
import re
import signal
import struct
import time
import wave
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from aiohttp import ClientWebSocketResponse, FormData, WSMsgType
from PIL import Image

from control.context import STORAGE, STORE
from tests.conftest import Account, Api
from tests.server_process import ServerProcess

ENVELOPE_KEYS = {"code", "message", "data", "timestamp", "request_id"}
MEETINGS = "/api/v1/meetings"
SOCKET_TIMEOUT = 5.0
JOB_DEADLINE = 90.0


def envelope_problem(body: Any, headers: Mapping[str, str]) -> str | None:
    """Why ``body`` is not the API's JSON envelope (None when it is)."""
    if not isinstance(body, dict) or set(body) != ENVELOPE_KEYS:
        return f"not the envelope: {str(body)[:300]}"
    if not isinstance(body["code"], int) or not isinstance(body["message"], str):
        return f"envelope code/message of the wrong type: {body}"
    if headers.get("X-Request-ID") != body["request_id"]:
        return f"X-Request-ID {headers.get('X-Request-ID')!r} differs from request_id {body['request_id']!r}"
    return None


async def until(check: Callable[[], Any], what: str, timeout: float = 10.0, interval: float = 0.02) -> Any:
    """The first truthy value of ``check`` (a plain or an async callable), tried every ``interval``
    seconds until ``timeout`` seconds have passed; then the test fails naming ``what``. Awaiting a
    condition with a deadline keeps a test both fast and free of fixed sleeps."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(interval)


def at(hours: float) -> str:
    """A time ``hours`` from now, whole seconds (the API answers at second precision)."""
    return (datetime.now(UTC) + timedelta(hours=hours)).replace(microsecond=0).isoformat()


# --- media made on the spot ----------------------------------------------------------------------


def wav_bytes(seconds: float = 0.2, rate: int = 8000) -> bytes:
    """A short mono 16-bit WAV (a rising tone), which the upload probe accepts as audio."""
    frames = int(seconds * rate)
    samples = b"".join(struct.pack("<h", (i * 1200) % 20000 - 10000) for i in range(frames))
    out = io.BytesIO()
    with wave.open(out, "wb") as sound:
        sound.setnchannels(1)
        sound.setsampwidth(2)
        sound.setframerate(rate)
        sound.writeframes(samples)
    return out.getvalue()


def image_bytes(fmt: str = "PNG", size: tuple[int, int] = (8, 8), color: str = "teal") -> bytes:
    """A picture of one colour in ``fmt`` (any format Pillow writes: PNG, JPEG, BMP...)."""
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format=fmt)
    return out.getvalue()


def video_bytes(frames: int = 6, size: int = 32) -> bytes:
    """A tiny silent VP8 WebM (0.6 s), which the upload probe accepts as video."""
    out = io.BytesIO()
    with av.open(out, "w", format="webm") as container:
        stream = container.add_stream("libvpx", rate=10)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(frames):
            image = np.full((size, size, 3), i * 40, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return out.getvalue()


def file_form(
    data: bytes,
    filename: str,
    *,
    field: str = "file",
    content_type: str = "application/octet-stream",
    **fields: Any,
) -> FormData:
    """A multipart upload: the plain ``fields`` first, then ``data`` as the file part ``field``."""
    form = FormData()
    for key, value in fields.items():
        form.add_field(key, str(value))
    form.add_field(field, data, filename=filename, content_type=content_type)
    return form


# --- meetings ------------------------------------------------------------------------------------


def refused(body: dict[str, Any], status: int, code: int | None = None) -> None:
    """The answer is a refusal with ``status`` and ``code`` (the status itself when not given)."""
    assert (body["status"], body["code"]) == (status, code or status), body


async def create(api: Api, owner: Account, **fields: Any) -> dict[str, Any]:
    """A meeting ``owner`` created (titled "Standup" unless ``fields`` say otherwise), as answered."""
    body = await api.call("POST", MEETINGS, token=owner.access, json={"title": "Standup", **fields}, expect=201)
    return body["data"]


async def join(api: Api, meeting_id: int, account: Account, **payload: Any) -> dict[str, Any]:
    """The answer to ``account`` joining the meeting with ``payload`` (invite code, password)."""
    return await api.call("POST", f"{MEETINGS}/{meeting_id}/join", token=account.access, json=payload)


async def meeting_with(api: Api, host: Account, *guests: Account, **fields: Any) -> int:
    """A meeting ``host`` created, joined by the host and by ``guests`` through its invite link."""
    created = await create(api, host, **fields)
    meeting_id = created["meeting_id"]
    await api.call("POST", f"{MEETINGS}/{meeting_id}/join", token=host.access, json={}, expect=200)
    link = {"invite_code": created["invite_code"]}
    for account in guests:
        await api.call("POST", f"{MEETINGS}/{meeting_id}/join", token=account.access, json=link, expect=200)
    return meeting_id


async def invite_code(api: Api, meeting_id: int, host: Account) -> str:
    """The meeting's invite code, as its host reads it from the meeting view."""
    meeting = await api.call("GET", f"{MEETINGS}/{meeting_id}", token=host.access, expect=200)
    return meeting["data"]["invite_code"]


async def add(api: Api, meeting_id: int, by: Account, user_id: int, **extra: Any) -> dict[str, Any]:
    """The answer to ``by`` adding a user to the meeting (``extra``: e.g. the role)."""
    return await api.call(
        "POST", f"{MEETINGS}/{meeting_id}/participants", token=by.access, json={"user_id": user_id, **extra}
    )


async def set_role(api: Api, meeting_id: int, by: Account, user_id: int, role: str) -> dict[str, Any]:
    """The answer to ``by`` giving a participant ``role``."""
    path = f"{MEETINGS}/{meeting_id}/participants/{user_id}/role"
    return await api.call("PUT", path, token=by.access, json={"role": role})


async def people(api: Api, meeting_id: int, viewer: Account) -> dict[int, dict[str, Any]]:
    """The meeting's participants as ``viewer`` sees them, by user id."""
    body = await api.call("GET", f"{MEETINGS}/{meeting_id}/participants", token=viewer.access, expect=200)
    return {p["user_id"]: p for p in body["data"]}


async def post_chat(api: Api, meeting_id: int, account: Account, text: str) -> dict[str, Any]:
    """The answer to ``account`` posting ``text`` to the meeting's chat over REST."""
    return await api.call("POST", f"{MEETINGS}/{meeting_id}/messages", token=account.access, json={"text": text})


# --- signaling sockets ---------------------------------------------------------------------------


async def receive(socket: ClientWebSocketResponse, timeout: float = SOCKET_TIMEOUT) -> dict[str, Any]:
    """The next message on the socket, which must be a text frame."""
    frame = await socket.receive(timeout=timeout)
    assert frame.type == WSMsgType.TEXT, (frame.type, frame.data, frame.extra)
    return json.loads(frame.data)


async def receive_type(socket: ClientWebSocketResponse, kind: str, timeout: float = SOCKET_TIMEOUT) -> dict[str, Any]:
    """The next message of ``kind``, skipping others (e.g. user-joined from an earlier join)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        remaining = deadline - asyncio.get_running_loop().time()
        assert remaining > 0, f"no {kind} message within {timeout} s"
        incoming = await receive(socket, remaining)
        if incoming["type"] == kind:
            return incoming


async def closed_with(socket: ClientWebSocketResponse) -> int:
    """Read until the server closes; the close code."""
    while True:
        frame = await socket.receive(timeout=SOCKET_TIMEOUT)
        if frame.type == WSMsgType.CLOSE:
            return frame.data  # the code the server sent, whatever became of the closing handshake
        if frame.type in {WSMsgType.CLOSED, WSMsgType.CLOSING}:
            return socket.close_code or frame.data


async def connect(api: Api, meeting_id: int, account: Account, *, header: bool = False) -> ClientWebSocketResponse:
    """A signaling socket of ``account`` for the meeting, its token in the query (or, with
    ``header``, in the Authorization header)."""
    if header:
        return await api.client.ws_connect(
            f"/ws/signaling?meeting_id={meeting_id}&user_id={account.id}", headers=account.auth
        )
    return await api.client.ws_connect(
        f"/ws/signaling?meeting_id={meeting_id}&user_id={account.id}&token={account.access}"
    )


async def enter(
    api: Api, meeting_id: int, account: Account, *, header: bool = False
) -> tuple[ClientWebSocketResponse, dict[str, Any]]:
    """A socket that joined the meeting's room, and the server's join answer."""
    socket = await connect(api, meeting_id, account, header=header)
    await socket.send_json({"type": "join", "data": {}})
    return socket, await receive_type(socket, "join")


# --- uploads and media jobs ----------------------------------------------------------------------


async def upload(api: Api, account: Account, data: bytes, name: str, **fields: Any) -> dict[str, Any]:
    """The answer to ``account`` uploading ``data`` as the file ``name`` (``fields``: meeting_id...)."""
    return await api.call("POST", "/api/v1/media/upload", token=account.access, data=file_form(data, name, **fields))


async def uploaded(api: Api, account: Account, data: bytes, name: str, **fields: Any) -> dict[str, Any]:
    """The stored file's record after an upload that must succeed."""
    body = await upload(api, account, data, name, **fields)
    assert body["status"] == 201, body
    return body["data"]


async def finished(api: Api, account: Account, job_id: str) -> dict[str, Any]:
    """The job's status once it has ended (succeeded, failed or cancelled)."""

    async def ended() -> dict[str, Any] | None:
        body = await api.call("GET", f"/api/v1/ffmpeg/job/{job_id}/status", token=account.access, expect=200)
        return body["data"] if body["data"]["status"] in {"succeeded", "failed", "cancelled"} else None

    return await until(ended, f"job {job_id} finished", JOB_DEADLINE, interval=0.1)


async def result_path(api: Api, job: dict[str, Any]) -> Path:
    """Where the single output of a succeeded job is stored."""
    assert job["status"] == "succeeded", job
    (file_id,) = job["result_file_ids"]
    record = await api.app[STORE].media.get(file_id)
    assert record is not None
    return api.app[STORAGE].local_path(record.storage_key)


def streams(path: Path) -> tuple[list[tuple[str, str, int | None, int | None]], float]:
    """The streams of a media file (type, codec, width, height) and its duration in seconds."""
    with av.open(str(path)) as container:
        found = [
            (
                s.type,
                s.codec_context.name,
                getattr(s.codec_context, "width", None),
                getattr(s.codec_context, "height", None),
            )
            for s in container.streams
        ]
        return found, container.duration / av.time_base


MS = Fraction(1, 1000)


def video_track_file(
    path: Path, colour: tuple[int, int, int], start_ms: int, seconds: float, size: tuple[int, int] = (160, 120)
) -> None:
    """A VP8 WebM of one colour at 15 frame/s, as the media server records a track: timestamps in
    milliseconds since the recording started (``start_ms`` for its first frame)."""
    with av.open(str(path), "w", format="webm") as container:
        stream = container.add_stream("libvpx", rate=15)
        stream.width, stream.height, stream.pix_fmt = *size, "yuv420p"
        stream.time_base = MS
        image = np.full((size[1], size[0], 3), colour, dtype=np.uint8)
        for n in range(round(seconds * 15)):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = start_ms + round(n * 1000 / 15), MS
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def audio_track_file(path: Path, pitch: float, level: float, start_ms: int, seconds: float) -> None:
    """An Opus WebM in 20 ms frames, timed like ``video_track_file``: a tone at ``level`` of full scale."""
    with av.open(str(path), "w", format="webm") as container:
        stream = container.add_stream("libopus", rate=48000, layout="mono")
        stream.time_base = MS
        for n in range(round(seconds * 50)):
            t = (np.arange(960) + n * 960) / 48000
            samples = (level * np.sin(2 * np.pi * pitch * t)).astype(np.float32).reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(samples, format="flt", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = 48000, start_ms + n * 20, MS
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


async def media_status(server: ServerProcess) -> dict[str, int]:
    """The counters of the server's media status line, asked for with SIGUSR1."""
    seen = server.log.read_text().count("media server status:")
    os.kill(server.process.pid, signal.SIGUSR1)
    await until(lambda: server.log.read_text().count("media server status:") > seen, "the media status line")
    line = [line for line in server.log.read_text().splitlines() if "media server status:" in line][-1]
    return {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", line)}
