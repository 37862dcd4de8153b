"""Log-mel statistics: the fixed-length description of a clip the packaged-format classifiers take."""

from __future__ import annotations

import functools

import numpy as np

from ai.audio import SAMPLE_RATE

N_FFT = 512
HOP = 160  # 10 ms
WIN = 400  # 25 ms
N_MELS = 40
FEATURES = 2 * N_MELS  # the mean and the standard deviation of each band


@functools.cache
def mel_filters() -> np.ndarray:
    def to_mel(hz: np.ndarray) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + hz / 700.0)

    edges_mel = np.linspace(to_mel(np.array(20.0)), to_mel(np.array(SAMPLE_RATE / 2)), N_MELS + 2)
    edges = 700.0 * (10 ** (edges_mel / 2595.0) - 1.0)
    bins = np.fft.rfftfreq(N_FFT, 1 / SAMPLE_RATE)
    filters = np.zeros((N_MELS, bins.size), np.float32)
    for band in range(N_MELS):
        low, centre, high = edges[band : band + 3]
        rising = (bins - low) / (centre - low)
        falling = (high - bins) / (high - centre)
        filters[band] = np.maximum(0.0, np.minimum(rising, falling))
    return filters


def log_mel(pcm: np.ndarray) -> np.ndarray:
    """(frames, N_MELS) log energies; clips shorter than one window are padded."""
    if pcm.size < WIN:
        pcm = np.pad(pcm, (0, WIN - pcm.size))
    frames = 1 + (pcm.size - WIN) // HOP
    index = np.arange(WIN)[None, :] + HOP * np.arange(frames)[:, None]
    windowed = pcm[index] * np.hanning(WIN).astype(np.float32)
    power = np.abs(np.fft.rfft(windowed, N_FFT)) ** 2
    return np.log(power @ mel_filters().T + 1e-6).astype(np.float32)


def mel_statistics(pcm: np.ndarray) -> np.ndarray:
    mel = log_mel(pcm)
    return np.concatenate([mel.mean(axis=0), mel.std(axis=0)]).astype(np.float32)
