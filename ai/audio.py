"""Any audio or video file to the one form every engine takes: 16 kHz mono float32 samples."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

SAMPLE_RATE = 16_000


class BadAudio(Exception):
    """The input cannot be used as speech; the message is safe to show the caller."""


def decode(path: Path, max_seconds: float) -> np.ndarray:
    """The first audio track of ``path``, resampled to 16 kHz mono. Files with no audio track,
    damaged or empty ones, and ones longer than ``max_seconds`` are refused with a reason."""
    max_samples = int(max_seconds * SAMPLE_RATE)
    chunks: list[np.ndarray] = []
    total = 0
    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise BadAudio("the file has no audio track")
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    samples = out.to_ndarray().reshape(-1)
                    total += samples.size
                    if total > max_samples:
                        raise BadAudio(f"the audio is longer than the {max_seconds:g} s allowed")
                    chunks.append(samples)
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
    except av.FFmpegError as exc:
        if not chunks:
            raise BadAudio(
                f"the file is not audio this server can read ({exc.strerror or type(exc).__name__})"
            ) from None
        # A file cut short: keep what decoded, as players do, unless nothing did.
    if not chunks:
        raise BadAudio("the audio is empty")
    pcm = np.concatenate(chunks).astype(np.float32, copy=False)
    if pcm.size < SAMPLE_RATE // 10:
        raise BadAudio("the audio is shorter than 0.1 s")
    if not np.isfinite(pcm).all():
        raise BadAudio("the audio holds invalid samples")
    return pcm
