"""Spectral gating (``noisereduce``): per frequency, whatever stays below a noise threshold that
follows the signal is attenuated. Classic signal processing, no model: quick, but it leaves more
noise in and colours speech more than the networks do (see BENCHMARKS.md).

The algorithm works on whole signals; a stream cleans blocks of a few seconds, each with a second
of the signal before it and half a second after for its noise estimate, so long files need no more
memory than a block and block edges do not show."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ai.engines.base import ModelError
from ai.engines.denoise import SAMPLE_RATE, DenoiseEngine, DenoiseStream

BLOCK = 4 * SAMPLE_RATE
BEFORE = SAMPLE_RATE
AFTER = SAMPLE_RATE // 2


class _GatingStream(DenoiseStream):
    delay = 0

    def __init__(self, reduce: Callable[..., np.ndarray]) -> None:
        self._reduce = reduce
        self._signal = np.zeros(0, np.float32)
        self._next = 0  # index in _signal of the first sample not cleaned yet

    def _clean(self, end: int) -> np.ndarray:
        start, stop = max(0, self._next - BEFORE), min(self._signal.size, end + AFTER)
        piece = self._signal[start:stop]
        cleaned = self._reduce(y=piece, sr=SAMPLE_RATE, stationary=False) if piece.size > 2048 else piece
        out = np.asarray(cleaned, np.float32)[self._next - start : end - start]
        self._next = end
        return out

    def process(self, samples: np.ndarray) -> np.ndarray:
        self._signal = np.concatenate([self._signal, samples.astype(np.float32, copy=False)])
        done = []
        while self._signal.size - self._next >= BLOCK + AFTER:
            done.append(self._clean(self._next + BLOCK))
        keep = max(0, self._next - BEFORE)
        self._signal, self._next = self._signal[keep:], self._next - keep
        return np.concatenate(done) if done else np.zeros(0, np.float32)

    def flush(self) -> np.ndarray:
        return self._clean(self._signal.size) if self._next < self._signal.size else np.zeros(0, np.float32)


class SpectralGatingEngine(DenoiseEngine):
    def load(self) -> None:
        try:
            from noisereduce import reduce_noise
        except ImportError:
            raise ModelError("spectral gating needs noisereduce: pip install 'huiyi[denoise]'") from None
        self._reduce = reduce_noise

    def unload(self) -> None:
        self.__dict__.pop("_reduce", None)

    def stream(self) -> _GatingStream:
        return _GatingStream(self._reduce)
