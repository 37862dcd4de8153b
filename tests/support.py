"""Small pieces shared by the suites: the envelope every JSON answer must be, waiting for a condition
with a deadline, and tiny valid media to upload (made here, so no fixture files are needed)."""

from __future__ import annotations

import asyncio
import inspect
import io
import struct
import time
import wave
from collections.abc import Callable, Mapping
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import Image

ENVELOPE_KEYS = {"code", "message", "data", "timestamp", "request_id"}


def envelope_problem(body: Any, headers: Mapping[str, str]) -> str | None:
    """Why ``body`` is not the API's JSON envelope (None when it is)."""
    if not isinstance(body, dict) or set(body) != ENVELOPE_KEYS:
        return f"not the envelope: {str(body)[:300]}"
    if not isinstance(body["code"], int) or not isinstance(body["message"], str):
        return f"envelope code/message of the wrong type: {body}"
    if headers.get("X-Request-ID") != body["request_id"]:
        return f"X-Request-ID {headers.get('X-Request-ID')!r} differs from request_id {body['request_id']!r}"
    return None


async def until(check: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    """The first truthy value of ``check`` (a plain or an async callable), polled until ``timeout``
    seconds have passed; then the test fails naming ``what``. Awaiting a condition with a deadline
    keeps a test both fast and free of fixed sleeps."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.02)


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


def png_bytes(size: int = 8) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), (40, 120, 200)).save(out, format="PNG")
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
