"""Generated media: a short clip with a tone and a moving pattern, so tests and benchmarks need
no fixture files and no download."""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

VIDEO_CODECS = {"mp4": ("libx264", "aac"), "webm": ("libvpx", "libopus"), "mkv": ("libx264", "libopus")}


def write_clip(
    path: Path,
    *,
    seconds: float = 2.0,
    width: int = 320,
    height: int = 240,
    fps: int = 25,
    tone_hz: float = 440.0,
    video: bool = True,
    audio: bool = True,
) -> Path:
    """Write ``path`` (container from its suffix: .mp4, .webm, .mkv, .wav, .ogg, .m4a)."""
    suffix = path.suffix.lstrip(".")
    video_codec, audio_codec = VIDEO_CODECS.get(
        suffix, (None, {"wav": "pcm_s16le", "ogg": "libopus"}.get(suffix, "aac"))
    )
    rate = 48000
    with av.open(str(path), "w") as container:
        picture = None
        if video and video_codec:
            picture = container.add_stream(video_codec, rate=fps)
            picture.width, picture.height, picture.pix_fmt = width, height, "yuv420p"
        sound = container.add_stream(audio_codec, rate=rate, layout="mono") if audio else None
        if picture is not None:
            for index in range(int(seconds * fps)):
                image = np.zeros((height, width, 3), dtype=np.uint8)
                x = int(index * (width - 40) / max(1, seconds * fps - 1))
                image[:, :, 2] = 40
                image[height // 3 : height // 3 + 40, x : x + 40] = (255, 220, 0)
                frame = av.VideoFrame.from_ndarray(image, format="rgb24")
                frame.pts = index
                frame.time_base = Fraction(1, fps)
                container.mux(picture.encode(frame))
            container.mux(picture.encode(None))
        if sound is not None:
            chunk = 960
            for start in range(0, int(seconds * rate), chunk):
                t = (np.arange(start, start + chunk) / rate).astype(np.float32)
                samples = (0.3 * np.sin(2 * math.pi * tone_hz * t)).astype(np.float32).reshape(1, -1)
                frame = av.AudioFrame.from_ndarray(samples, format="flt", layout="mono")
                frame.sample_rate = rate
                frame.pts = start
                frame.time_base = Fraction(1, rate)
                container.mux(sound.encode(frame))
            container.mux(sound.encode(None))
    return path
