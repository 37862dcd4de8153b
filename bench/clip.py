"""The media synthetic publishers replay: a generated clip encoded once with PyAV (VP8 at three
simulcast sizes, Opus), cut into RTP payloads and cached, so a run spends no CPU on encoding."""

from __future__ import annotations

import fractions
import math
import pickle
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

FPS = 30
SECONDS = 4
GOP = FPS  # a key frame every second: what a late joiner waits for at most
MAX_PAYLOAD = 1100
LAYERS = (("l", 4, 150_000), ("m", 2, 500_000), ("h", 1, 1_500_000))  # rid, scale-down, bitrate
AUDIO_FRAME_SAMPLES = 960  # 20 ms at 48 kHz
CACHE_VERSION = 1


@dataclass
class VideoFrame:
    keyframe: bool
    payloads: list[bytes]  # VP8 payload descriptor + partition bytes, one per RTP packet


@dataclass
class Clip:
    width: int
    height: int
    layers: dict[str, list[VideoFrame]]  # rid -> frames, FPS per second
    audio: list[bytes]  # Opus packets, 20 ms each


def _pattern(width: int, height: int, index: int) -> np.ndarray:
    """A moving gradient with a bouncing square: enough motion for realistic delta frames."""
    y, x = np.mgrid[0:height, 0:width]
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[..., 0] = (x + index * 4) % 256
    image[..., 1] = (y + index * 2) % 256
    image[..., 2] = 128
    size = max(8, width // 8)
    left = int((width - size) * (0.5 + 0.5 * math.sin(index / 10)))
    top = int((height - size) * (0.5 + 0.5 * math.cos(index / 13)))
    image[top : top + size, left : left + size] = 255
    return image


def _vp8_payloads(frame: bytes) -> list[bytes]:
    """RFC 7741 packetization: a 1-byte descriptor (S bit on the first packet, partition 0)."""
    chunks = [frame[i : i + MAX_PAYLOAD] for i in range(0, len(frame), MAX_PAYLOAD)] or [b""]
    return [bytes([0x10 if index == 0 else 0x00]) + chunk for index, chunk in enumerate(chunks)]


def _encode_video(width: int, height: int, bitrate: int) -> list[VideoFrame]:
    codec = av.CodecContext.create("libvpx", "w")
    codec.width, codec.height = width, height
    codec.pix_fmt = "yuv420p"
    codec.time_base = fractions.Fraction(1, FPS)
    codec.bit_rate = bitrate
    codec.gop_size = GOP
    codec.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0", "keyint_min": str(GOP)}
    frames: list[VideoFrame] = []
    for index in range(FPS * SECONDS):
        image = av.VideoFrame.from_ndarray(_pattern(width, height, index), format="rgb24").reformat(format="yuv420p")
        image.pts = index
        if index % GOP == 0:
            image.pict_type = av.video.frame.PictureType.I
        for packet in codec.encode(image):
            frames.append(VideoFrame(bool(packet.is_keyframe), _vp8_payloads(bytes(packet))))
    for packet in codec.encode(None):
        frames.append(VideoFrame(bool(packet.is_keyframe), _vp8_payloads(bytes(packet))))
    return frames


def _encode_audio() -> list[bytes]:
    codec = av.CodecContext.create("libopus", "w")
    codec.sample_rate = 48000
    codec.layout = "mono"
    codec.format = "s16"
    codec.bit_rate = 32000
    packets: list[bytes] = []
    for index in range(SECONDS * 50):
        t = (np.arange(AUDIO_FRAME_SAMPLES) + index * AUDIO_FRAME_SAMPLES) / 48000
        wave = (np.sin(2 * math.pi * 300 * t) * 8000).astype(np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(wave, format="s16", layout="mono")
        frame.sample_rate = 48000
        frame.pts = index * AUDIO_FRAME_SAMPLES
        packets.extend(bytes(packet) for packet in codec.encode(frame))
    return packets


WIDTH, HEIGHT = 640, 360  # the top layer's size, unless a clip of another size is asked for


def layer_sizes(width: int = WIDTH, height: int = HEIGHT) -> dict[str, tuple[int, int, int]]:
    """Each simulcast layer's width, height and target bitrate (bit/s), by RID."""
    return {rid: (width // scale // 2 * 2, height // scale // 2 * 2, bitrate) for rid, scale, bitrate in LAYERS}


def load_clip(cache_dir: Path, width: int = WIDTH, height: int = HEIGHT) -> Clip:
    """The clip for this size, encoded on first use and read from ``cache_dir`` after that."""
    path = cache_dir / f"clip-v{CACHE_VERSION}-{width}x{height}.pickle"
    if path.exists():
        with path.open("rb") as handle:
            return pickle.load(handle)
    layers = {rid: _encode_video(*size) for rid, size in layer_sizes(width, height).items()}
    clip = Clip(width, height, layers, _encode_audio())
    cache_dir.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    with temporary.open("wb") as handle:
        pickle.dump(clip, handle)
    temporary.replace(path)
    return clip
