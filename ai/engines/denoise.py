"""What every noise suppressor offers, on top of the engine interface: streams.

A denoiser is stateful (recurrent networks, noise estimates that follow the signal), so each
signal it cleans, a channel of a file or one participant's microphone, gets a stream of its own.
Streams take 48 kHz mono float samples in [-1, 1] and give back as many; what comes out lags what
went in by ``delay`` samples, the model's look-ahead, which file jobs cut off and live streams
carry as latency."""

from __future__ import annotations

from abc import abstractmethod

import numpy as np

from ai.engines.base import Engine

SAMPLE_RATE = 48_000


class DenoiseStream:
    """One signal being cleaned. ``process`` takes any number of samples and answers the cleaned
    samples ready so far (a model working on frames keeps a partial frame back until it is full);
    the signal that comes out lags the one that went in by ``delay`` samples. ``close`` frees what
    the stream holds."""

    delay = 0

    def process(self, samples: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def flush(self) -> np.ndarray:
        """The signal has ended: what is still held back or delayed, cleaned."""
        raise NotImplementedError

    def close(self) -> None:
        return None


class FramedStream(DenoiseStream):
    """A stream over a model that works on fixed frames (480 samples, 10 ms, for RNNoise and
    DeepFilterNet). Live audio comes in packets of whole frames, so nothing waits there."""

    frame = 480

    def __init__(self, delay: int) -> None:
        self._pending = np.zeros(0, np.float32)
        self.delay = delay

    @abstractmethod
    def process_frame(self, frame: np.ndarray) -> np.ndarray:
        """One frame of ``self.frame`` float32 samples in, one out."""

    def process(self, samples: np.ndarray) -> np.ndarray:
        pending = np.concatenate([self._pending, samples.astype(np.float32, copy=False)])
        whole = pending.size - pending.size % self.frame
        done = [self.process_frame(pending[start : start + self.frame]) for start in range(0, whole, self.frame)]
        self._pending = pending[whole:]
        return np.concatenate(done) if done else np.zeros(0, np.float32)

    def flush(self) -> np.ndarray:
        return self.process(np.zeros(self.delay + self.frame, np.float32))


class DenoiseEngine(Engine):
    """A denoising model: ``stream`` opens a stream on the loaded model."""

    @abstractmethod
    def stream(self) -> DenoiseStream: ...

    def infer(self, clip: np.ndarray, language: str | None) -> np.ndarray:
        """The whole clip cleaned, aligned with it (the delay cut off)."""
        return denoise_clip(self.stream(), clip)


def denoise_clip(stream: DenoiseStream, clip: np.ndarray) -> np.ndarray:
    """``clip`` through ``stream`` (closed after), the delay cut off: as long as ``clip``."""
    try:
        out = np.concatenate([stream.process(clip), stream.flush()])
    finally:
        stream.close()
    return out[stream.delay : stream.delay + clip.size]
