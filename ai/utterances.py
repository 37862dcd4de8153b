"""One speaker's live audio cut into utterances, for captions.

Opus frames as the publisher sent them are decoded (PyAV) and resampled to the 16 kHz mono the
engines take, then put through the packaged Silero VAD 32 ms at a time. An utterance starts at the
first window of speech (with a little of the audio before it, so its first sound is whole) and ends
after ``silence_seconds`` without speech, or is cut at ``max_seconds``; while it goes on, a snapshot
every ``partial_seconds`` lets a partial caption be shown. Times are the wall clock (UNIX seconds) of
capture, as the media server's tap stamped the frames, so a caption says when its words were said.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import av
import numpy as np

from ai.audio import SAMPLE_RATE
from ai.vad import THRESHOLD, Vad

OPUS_RATE = 48_000  # the RTP clock of Opus, whatever the rate it was encoded at
PRE_ROLL_SECONDS = 0.2  # audio kept from before the first window of speech
TAIL_SECONDS = 0.15  # silence kept after the last window of speech
MIN_SPEECH_SECONDS = 0.25  # less speech than this (a click, a cough) is no utterance
STAY_THRESHOLD = THRESHOLD - 0.15  # once speaking, a window this likely still counts as speech
SILENT_PEAK = 1e-3  # a window whose loudest sample is under -60 dBFS is silence
MAX_FILLED_GAP = 0.5  # a pause in the stream up to this long is silence; a longer one ends the utterance


@dataclass(frozen=True)
class Utterance:
    number: int  # per stream, from 1: a partial and the final of one utterance share it
    start: float  # wall clock of its first sample
    end: float  # of the end of its last window of speech
    pcm: np.ndarray  # 16 kHz mono float32
    final: bool

    @property
    def seconds(self) -> float:
        return self.pcm.size / SAMPLE_RATE


class OpusDecoder:
    """One stream's Opus frames to 16 kHz mono float32, telling where its RTP clock skipped ahead
    (the publisher was muted, or frames were lost)."""

    def __init__(self) -> None:
        self._codec = av.CodecContext.create("opus", "r")
        self._codec.sample_rate = OPUS_RATE
        self._codec.layout = "stereo"
        self._resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        self._next: int | None = None  # the RTP timestamp that follows on from the last frame
        self.bad_frames = 0

    def decode(self, timestamp: int, data: bytes) -> tuple[float, np.ndarray]:
        """The seconds missing before this frame (0 when it follows on) and its samples; a frame
        that does not decode gives none and is counted."""
        gap = 0.0
        if self._next is not None:
            ahead = (timestamp - self._next) & 0xFFFFFFFF
            gap = ahead / OPUS_RATE if ahead < 0x80000000 else 0.0  # behind: the sender restarted
        try:
            frames = self._codec.decode(av.Packet(data))
        except av.FFmpegError:
            self.bad_frames += 1
            return gap, np.empty(0, np.float32)
        pieces = [out.to_ndarray().reshape(-1) for frame in frames for out in self._resampler.resample(frame)]
        self._next = (timestamp + sum(frame.samples for frame in frames)) & 0xFFFFFFFF
        return gap, np.concatenate(pieces) if pieces else np.empty(0, np.float32)


class Utterances:
    """The endpointer: samples in, finished utterances (and partial snapshots) out."""

    def __init__(self, silence_seconds: float, max_seconds: float, partial_seconds: float) -> None:
        self.vad = Vad()
        self.window = self.vad.window
        self.hop = self.window / SAMPLE_RATE
        self._silence_windows = max(1, math.ceil(silence_seconds / self.hop))
        self._max_windows = max(1, int(max_seconds / self.hop))
        self._partial_windows = int(partial_seconds / self.hop) if partial_seconds > 0 else 0
        self._tail_windows = math.ceil(TAIL_SECONDS / self.hop)
        self._min_speech_windows = math.ceil(MIN_SPEECH_SECONDS / self.hop)
        self._pending = np.empty(0, np.float32)  # samples short of a whole window
        self._pending_wall = 0.0
        self._before: deque[tuple[float, np.ndarray]] = deque(maxlen=math.ceil(PRE_ROLL_SECONDS / self.hop))
        self._windows: list[np.ndarray] = []  # of the utterance going on; empty between utterances
        self._start = 0.0
        self._speech_end = 0.0
        self._speech_windows = 0
        self._kept = 0  # windows of the utterance up to its last one of speech
        self._silent = 0
        self._since_partial = 0
        self.number = 0

    @property
    def speaking(self) -> bool:
        return bool(self._windows)

    def push(self, wallclock: float, pcm: np.ndarray) -> list[Utterance]:
        """Samples captured from ``wallclock`` on, following those pushed before."""
        if self._pending.size == 0:
            self._pending_wall = wallclock
        self._pending = np.concatenate((self._pending, pcm)) if self._pending.size else pcm
        count = self._pending.size // self.window
        found: list[Utterance] = []
        for index in range(count):
            window = self._pending[index * self.window : (index + 1) * self.window]
            found += self._step(self._pending_wall + index * self.hop, window)
        self._pending = self._pending[count * self.window :].copy()
        self._pending_wall += count * self.hop
        return found

    def gap(self, wallclock: float, seconds: float) -> list[Utterance]:
        """The stream skipped ``seconds`` before ``wallclock``: a short pause is silence, a long one
        ends the utterance there."""
        if seconds <= MAX_FILLED_GAP:
            return self.push(wallclock - seconds, np.zeros(round(seconds * SAMPLE_RATE), np.float32))
        found = self.flush()
        self._pending = np.empty(0, np.float32)
        self._before.clear()
        return found

    def flush(self) -> list[Utterance]:
        """The stream ends: the utterance going on, if it holds enough speech."""
        return self._finish() if self._windows else []

    def _step(self, wall: float, window: np.ndarray) -> list[Utterance]:
        # Digital silence (a muted microphone sends it) is no speech: the model is spared it.
        probability = self.vad.probability(window) if np.abs(window).max() >= SILENT_PEAK else 0.0
        if not self._windows:
            if probability < THRESHOLD:
                self._before.append((wall, window))
                return []
            self._start = self._before[0][0] if self._before else wall
            self._windows = [w for _, w in self._before] + [window]
            self._before.clear()
            self.number += 1
            self._speech_windows, self._silent, self._since_partial = 1, 0, 0
            self._kept, self._speech_end = len(self._windows), wall + self.hop
            return []
        self._windows.append(window)
        self._since_partial += 1
        if probability >= STAY_THRESHOLD:
            self._speech_windows += 1
            self._silent = 0
            self._kept, self._speech_end = len(self._windows), wall + self.hop
        else:
            self._silent += 1
        if self._silent >= self._silence_windows or len(self._windows) >= self._max_windows:
            return self._finish()
        if (
            self._partial_windows
            and self._since_partial >= self._partial_windows
            and self._speech_windows >= self._min_speech_windows
        ):
            self._since_partial = 0
            return [Utterance(self.number, self._start, self._speech_end, np.concatenate(self._windows), False)]
        return []

    def _finish(self) -> list[Utterance]:
        kept = self._windows[: self._kept + self._tail_windows]
        utterance = Utterance(self.number, self._start, self._speech_end, np.concatenate(kept), True)
        enough = self._speech_windows >= self._min_speech_windows
        # The silence that ended it may hold the onset of what comes next.
        silence_start = self._speech_end
        for offset, window in enumerate(self._windows[self._kept :]):
            self._before.append((silence_start + offset * self.hop, window))
        self._windows = []
        return [utterance] if enough else []
