"""A room composite: every recorded track decoded, lined up on one clock, the videos laid out (a
grid, or the active speaker large) and every audio track mixed, encoded into one H.264 + AAC MP4.

Inputs are track files as the media server writes them, one track each. A file's first frame
happened at its ``started_at`` (wall clock): the composite starts at the earliest of those and
places each file at its own offset from there, whatever timestamps the file carries inside.
Everything is streamed a window at a time (audio mixed, the speaker chosen, video frames drawn),
so memory stays flat however long the meeting was."""

from __future__ import annotations

from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from media.jobs import JobFailed, Progress
from media.layout import BACKGROUND, Box, Speaker, even, fit, grid, paste, speaker_view

RATE = 48000
WINDOW_SECONDS = 0.5  # audio is mixed, and the speaker chosen, this much at a time
HOLD_SECONDS = 1.0  # a video's last frame stays on screen this long after its track ends
DEFAULT_SIZE = (1280, 720)
DEFAULT_FPS = 25


def _open(path: str, label: str) -> av.container.InputContainer:
    try:
        return av.open(path, metadata_errors="ignore")
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        raise JobFailed(f"{label} is not readable media ({exc.__class__.__name__})") from None


def _decoded(container: av.container.InputContainer, stream: av.stream.Stream) -> Iterator[Any]:
    """Frames until the stream ends or turns unreadable (the tail of a file cut short)."""
    try:
        for frame in container.decode(stream):
            if frame.time is not None:
                yield frame
    except av.FFmpegError:
        return


class VideoSource:
    """One video track: the frame on screen at a given composite time, fitted to a box."""

    def __init__(self, path: str, label: str, offset: float, user_id: int) -> None:
        self.user_id = user_id
        self.container = _open(path, label)
        streams = self.container.streams.video
        self._frames = self._timed(_decoded(self.container, streams[0]), offset) if streams else iter(())
        self.current: tuple[float, av.VideoFrame] | None = None
        self.upcoming = next(self._frames, None)
        self._fitted: tuple[int, int, int, np.ndarray] | None = None

    @staticmethod
    def _timed(frames: Iterator[av.VideoFrame], offset: float) -> Iterator[tuple[float, av.VideoFrame]]:
        first: float | None = None
        for frame in frames:
            first = frame.time if first is None else first
            yield offset + frame.time - first, frame

    def advance(self, moment: float) -> None:
        while self.upcoming is not None and self.upcoming[0] <= moment:
            self.current, self.upcoming = self.upcoming, next(self._frames, None)

    def shown(self, moment: float) -> bool:
        """Started, and not ended more than HOLD_SECONDS ago."""
        if self.current is None:
            return False
        return self.upcoming is not None or moment <= self.current[0] + HOLD_SECONDS

    @property
    def exhausted(self) -> bool:
        return self.upcoming is None

    @property
    def end(self) -> float:
        """When its latest frame so far was shown (its last, once exhausted)."""
        return self.current[0] if self.current is not None else 0.0

    def fitted(self, width: int, height: int) -> np.ndarray:
        """The current frame scaled to fit ``width`` x ``height``, keeping its shape (RGB)."""
        assert self.current is not None
        frame = self.current[1]
        if self._fitted is None or self._fitted[:3] != (id(frame), width, height):
            size = fit(frame.width, frame.height, Box(0, 0, width, height))
            image = frame.reformat(width=size[0], height=size[1], format="rgb24").to_ndarray()
            self._fitted = (id(frame), width, height, image)
        return self._fitted[3]


class AudioSource:
    """One audio track as 48 kHz stereo samples on the composite's clock, read window by window."""

    def __init__(self, path: str, label: str, offset: float, user_id: int) -> None:
        self.user_id = user_id
        self.container = _open(path, label)
        streams = self.container.streams.audio
        self._chunks = self._placed(_decoded(self.container, streams[0]), offset) if streams else iter(())
        self.end = 0.0  # seconds: where the samples read so far end (the track's end, once exhausted)
        self._pending = self._next()

    def _next(self) -> tuple[int, np.ndarray] | None:
        chunk = next(self._chunks, None)
        if chunk is not None:
            self.end = max(self.end, (chunk[0] + chunk[1].shape[1]) / RATE)
        return chunk

    @staticmethod
    def _placed(frames: Iterator[av.AudioFrame], offset: float) -> Iterator[tuple[int, np.ndarray]]:
        """Each frame goes at the sample its timestamp says: a gap in the file (silence the sender
        did not send) stays silent rather than pulling later sound forward."""
        resampler = av.AudioResampler(format="fltp", layout="stereo", rate=RATE)
        first: float | None = None
        position = 0
        for frame in frames:
            first = frame.time if first is None else first
            position = round((offset + frame.time - first) * RATE)
            frame.pts = None
            for converted in resampler.resample(frame):
                samples = converted.to_ndarray()
                yield position, samples
                position += samples.shape[1]
        for converted in resampler.resample(None):
            samples = converted.to_ndarray()
            yield position, samples
            position += samples.shape[1]

    @property
    def exhausted(self) -> bool:
        return self._pending is None

    def read(self, start: int, count: int) -> np.ndarray:
        """Samples ``start`` to ``start + count`` (silence where the track has none); reads only
        go forward."""
        window = np.zeros((2, count), dtype=np.float32)
        end = start + count
        while self._pending is not None and self._pending[0] < end:
            position, samples = self._pending
            if position + samples.shape[1] <= start:
                self._pending = self._next()
                continue
            skip = max(0, start - position)
            into = position + skip - start
            take = min(samples.shape[1] - skip, count - into)
            window[:, into : into + take] += samples[:, skip : skip + take]
            if skip + take < samples.shape[1]:
                self._pending = (position + skip + take, samples[:, skip + take :])
                break
            self._pending = self._next()
        return window


def _draw(canvas: np.ndarray, boxes: list[Box], videos: list[VideoSource]) -> None:
    canvas[:] = BACKGROUND
    for box, video in zip(boxes, videos, strict=True):
        paste(canvas, box, video.fitted(box.width, box.height))


class Composer:
    """Writes the composite a window at a time: the video frames that fall in it, then its audio
    mixed; finished once every track is read to its end and ``total`` seconds are written."""

    def __init__(
        self, output: Path, videos: list[VideoSource], audios: list[AudioSource], params: dict[str, Any], total: float
    ) -> None:
        self.videos, self.audios, self.total = videos, audios, total
        self.layout = params.get("layout", "grid")
        self.width = even(int(params.get("width", DEFAULT_SIZE[0])))
        self.height = even(int(params.get("height", DEFAULT_SIZE[1])))
        self.fps = int(params.get("fps", DEFAULT_FPS))
        self.container = av.open(str(output), "w", format="mp4")
        self.video: av.VideoStream | None = None
        self.audio: av.AudioStream | None = None
        if videos:
            options = {"preset": "veryfast", "crf": "23"}
            self.video = self.container.add_stream("libx264", rate=self.fps, options=options)
            self.video.width, self.video.height, self.video.pix_fmt = self.width, self.height, "yuv420p"
        if audios:
            self.audio = self.container.add_stream("aac", rate=RATE, layout="stereo")
        self.canvas = np.zeros((self.height, self.width, 3), dtype=np.uint8)
        self.speaker = Speaker()
        self.frame_index = 0
        self.scene: tuple[Any, ...] | None = None
        self.picture: av.VideoFrame | None = None
        self.finished = False

    @property
    def exhausted(self) -> bool:
        return all(source.exhausted for source in (*self.videos, *self.audios))

    @property
    def end(self) -> float:
        """Where the composite ends, as far as the tracks read so far tell."""
        ends = [source.end + 1 / self.fps for source in self.videos] + [source.end for source in self.audios]
        return max([self.total, *ends])

    def window(self, index: int) -> None:
        start = round(index * WINDOW_SECONDS * RATE)
        count = round((index + 1) * WINDOW_SECONDS * RATE) - start
        heard = [(source, source.read(start, count)) for source in self.audios]
        loudness: dict[int, float] = {}
        for source, samples in heard:
            level = float(np.sqrt(np.mean(np.square(samples))))
            loudness[source.user_id] = max(loudness.get(source.user_id, 0.0), level)
        self.speaker.hear(loudness)
        until = (index + 1) * WINDOW_SECONDS
        while self.video is not None and self.frame_index / self.fps < until:
            moment = self.frame_index / self.fps
            for video in self.videos:
                video.advance(moment)
            if self.exhausted and moment >= self.end:
                break
            self._picture(moment)
            self.frame_index += 1
        if self.exhausted and until >= self.end:
            self.finished = True
            count = max(0, min(count, round(self.end * RATE) - start))
        if self.audio is not None and count:
            mix = np.zeros((2, count), dtype=np.float32)
            for _, samples in heard:
                mix += samples[:, :count]
            frame = av.AudioFrame.from_ndarray(np.clip(mix, -1.0, 1.0), format="fltp", layout="stereo")
            frame.sample_rate, frame.pts, frame.time_base = RATE, start, Fraction(1, RATE)
            self.container.mux(self.audio.encode(frame))

    def _picture(self, moment: float) -> None:
        assert self.video is not None
        shown = [source for source in self.videos if source.shown(moment)]
        if self.layout == "speaker":
            speaking = [source for source in shown if source.user_id == self.speaker.user_id][:1]
            shown = speaking + [source for source in shown if source not in speaking]
            boxes = speaker_view(len(shown), self.width, self.height) if shown else []
        else:
            boxes = grid(len(shown), self.width, self.height) if shown else []
        scene = tuple((id(source), id(source.current[1]) if source.current else None) for source in shown)
        if scene != self.scene or self.picture is None:
            _draw(self.canvas, boxes, shown)
            self.picture = av.VideoFrame.from_ndarray(self.canvas, format="rgb24").reformat(format="yuv420p")
            self.scene = scene
        self.picture.pts, self.picture.time_base = self.frame_index, Fraction(1, self.fps)
        self.container.mux(self.video.encode(self.picture))

    def close(self) -> None:
        for stream in (self.video, self.audio):
            if stream is not None:
                self.container.mux(stream.encode(None))
        self.container.close()


def composite(inputs: list[str], scratch: Path, params: dict[str, Any], progress: Progress) -> list[tuple[Path, str]]:
    """``params["tracks"]`` describes each input, in order: ``kind`` (audio | video), ``user_id``,
    ``started_at`` (wall clock of its first frame) and optionally ``duration`` (seconds from its
    first frame to its last, for progress; the composite lasts until every track is read to its
    end, however long they said they were). ``layout`` is grid (default) or speaker; ``width``,
    ``height`` and ``fps`` default to 1280 x 720 at 25."""
    tracks = params.get("tracks") or []
    if len(tracks) != len(inputs) or not inputs:
        raise JobFailed("nothing was recorded")
    origin = min(float(track["started_at"]) for track in tracks)
    videos: list[VideoSource] = []
    audios: list[AudioSource] = []
    total = 0.0
    try:
        for number, (path, track) in enumerate(zip(inputs, tracks, strict=True), start=1):
            offset = float(track["started_at"]) - origin
            if track["kind"] == "video":
                videos.append(VideoSource(path, f"track {number}", offset, int(track["user_id"])))
            else:
                audios.append(AudioSource(path, f"track {number}", offset, int(track["user_id"])))
            total = max(total, offset + float(track.get("duration") or 0.0))
        name = f"recording-{params['recording_id']}.mp4" if "recording_id" in params else "composite.mp4"
        output = scratch / name
        composer = Composer(output, videos, audios, params, total)
        try:
            index = 0
            while not composer.finished:
                composer.window(index)
                index += 1
                if total:
                    progress(min(1.0, index * WINDOW_SECONDS / total))
            composer.close()
        except BaseException:
            composer.container.close()
            raise
    finally:
        for source in (*videos, *audios):
            source.container.close()
    return [(output, name)]
