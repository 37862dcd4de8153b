"""Material for the denoising and enhancement suites, on top of ``bench.quality`` (noise at a set
SNR, SI-SDR, a noisy clip, PSNR/SSIM): espeak-ng speech at 48 kHz, WAV bytes, files read back."""

from __future__ import annotations

import io
import wave
from pathlib import Path

import numpy as np

from bench import quality
from bench.quality import RATE, noisy_clip, si_sdr, with_noise
from tests.ai_support import speak

__all__ = ["decode_mono", "noisy_clip", "picture_scores", "si_sdr", "speech", "wav_bytes", "with_noise"]


def decode_mono(data: bytes | Path) -> np.ndarray:
    return quality.decode_mono(io.BytesIO(data) if isinstance(data, bytes) else str(data))


def picture_scores(data: bytes) -> tuple[float, float, int]:
    return quality.picture_scores(io.BytesIO(data))


def speech(text: str, work: Path) -> np.ndarray:
    """``text`` spoken by espeak-ng, at 48 kHz."""
    return decode_mono(speak(text, work / f"clean-{abs(hash(text))}.wav"))


def wav_bytes(pcm: np.ndarray, rate: int = RATE) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(rate)
        writer.writeframes((np.clip(pcm, -1, 1) * 32767).astype("<i2").tobytes())
    return out.getvalue()
