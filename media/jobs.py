"""The media jobs a worker process runs: transcode, extract-audio, extract-video, merge, thumbnail.

Each takes input file paths and job parameters, writes its outputs into a scratch directory and
reports progress as a fraction; bad input raises JobFailed with a message fit for the user."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
from PIL import Image

Progress = Callable[[float], None]

# format -> (container, video codec by name, audio codec, audio sample rate)
VIDEO_PRESETS: dict[str, tuple[str, dict[str, str], str, int]] = {
    "mp4": ("mp4", {"h264": "libx264"}, "aac", 48000),
    "webm": ("webm", {"vp8": "libvpx", "vp9": "libvpx-vp9"}, "libopus", 48000),
}
AUDIO_PRESETS: dict[str, tuple[str, str, str, int]] = {
    "opus": ("ogg", "libopus", ".opus", 48000),
    "aac": ("ipod", "aac", ".m4a", 48000),
    "wav": ("wav", "pcm_s16le", ".wav", 48000),
}
MAX_DIMENSION = 3840


class JobFailed(Exception):
    """The job cannot be done with these inputs; the message is shown to the user. ``kind`` says
    why: "input" (the file or the parameters) or "unavailable" (nothing could run the work)."""

    def __init__(self, message: str, kind: str = "input") -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class VideoSpec:
    codec: str
    width: int
    height: int
    fps: int
    bitrate: int | None = None


@dataclass(frozen=True)
class AudioSpec:
    codec: str
    rate: int
    bitrate: int | None = None


def _even(value: int) -> int:
    return max(2, value - value % 2)


def _open(path: str, label: str) -> av.container.InputContainer:
    try:
        return av.open(path, metadata_errors="ignore")
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        raise JobFailed(f"{label} is not readable media ({exc.__class__.__name__})") from None


def _duration(container: av.container.InputContainer) -> float:
    return container.duration / av.time_base if container.duration else 0.0


def _first_video(container: av.container.InputContainer) -> av.VideoStream | None:
    streams = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
    return streams[0] if streams else None


class Encoder:
    """Writes decoded frames into one output, rescaling, resampling and re-timing them so
    inputs of any size, rate or timestamps (one after another, for concatenation) fit."""

    def __init__(self, path: Path, container_format: str, video: VideoSpec | None, audio: AudioSpec | None) -> None:
        self.output = av.open(str(path), "w", format=container_format)
        self.video: av.VideoStream | None = None
        self.audio: av.AudioStream | None = None
        self.resampler: av.AudioResampler | None = None
        self.last_video_pts = -1
        self.audio_samples = 0
        if video is not None:
            self.video = self.output.add_stream(video.codec, rate=video.fps)
            self.video.width, self.video.height, self.video.pix_fmt = video.width, video.height, "yuv420p"
            if video.bitrate:
                self.video.bit_rate = video.bitrate
            self.fps = video.fps
        if audio is not None:
            self.audio = self.output.add_stream(audio.codec, rate=audio.rate, layout="stereo")
            if audio.bitrate:
                self.audio.bit_rate = audio.bitrate
            self.resampler = av.AudioResampler(format=self.audio.format.name, layout="stereo", rate=audio.rate)

    def add_video(self, frame: av.VideoFrame, offset: float) -> None:
        if self.video is None or frame.time is None:
            return
        pts = round((frame.time + offset) * self.fps)
        if pts <= self.last_video_pts:
            return  # faster than the output rate: drop, as a frame-rate converter would
        self.last_video_pts = pts
        scaled = frame.reformat(width=self.video.width, height=self.video.height, format="yuv420p")
        scaled.pts, scaled.time_base = pts, Fraction(1, self.fps)
        self.output.mux(self.video.encode(scaled))

    def add_audio(self, frame: av.AudioFrame) -> None:
        if self.audio is None or self.resampler is None:
            return
        frame.pts = None
        for resampled in self.resampler.resample(frame):
            resampled.pts, resampled.time_base = self.audio_samples, Fraction(1, self.audio.rate)
            self.audio_samples += resampled.samples
            self.output.mux(self.audio.encode(resampled))

    def close(self) -> None:
        for stream in (self.video, self.audio):
            if stream is not None:
                self.output.mux(stream.encode(None))
        self.output.close()


def _feed(encoder: Encoder, path: str, label: str, offset: float, progress: Callable[[float], None]) -> float:
    """Decode one input into the encoder; its duration, to offset the next input."""
    with _open(path, label) as source:
        streams = []
        video = _first_video(source)
        if video is not None and encoder.video is not None:
            streams.append(video)
        if source.streams.audio and encoder.audio is not None:
            streams.append(source.streams.audio[0])
        if not streams:
            raise JobFailed(f"{label} has no stream this job can use")
        total = _duration(source)
        try:
            for packet in source.demux(streams):
                for frame in packet.decode():
                    if isinstance(frame, av.VideoFrame):
                        encoder.add_video(frame, offset)
                    else:
                        encoder.add_audio(frame)
                if total and packet.pts is not None and packet.time_base is not None:
                    progress(min(1.0, float(packet.pts * packet.time_base) / total))
        except av.FFmpegError as exc:
            raise JobFailed(f"{label} is damaged: decoding failed ({exc.__class__.__name__})") from None
        return total


def _video_spec(params: dict[str, Any], codec: str, source: av.container.InputContainer | None) -> VideoSpec:
    width, height, fps = 640, 360, 25
    stream = _first_video(source) if source is not None else None
    if stream is not None:
        width, height = stream.codec_context.width, stream.codec_context.height
        fps = round(float(stream.average_rate)) if stream.average_rate else 25
    if params.get("width") and params.get("height"):
        width, height = params["width"], params["height"]
    elif params.get("width"):
        width, height = params["width"], round(params["width"] * height / width)
    elif params.get("height"):
        width, height = round(params["height"] * width / height), params["height"]
    if max(width, height) > MAX_DIMENSION:
        raise JobFailed(f"output larger than {MAX_DIMENSION} pixels on a side")
    return VideoSpec(codec, _even(width), _even(height), max(1, min(fps, 60)), params.get("video_bitrate"))


def _encode(
    inputs: list[str], output: Path, params: dict[str, Any], progress: Progress, *, audio_only: bool = False
) -> None:
    """Decode every input in turn into one output of the requested format."""
    if audio_only:
        container, codec, _, rate = AUDIO_PRESETS[params["format"]]
        video, audio = None, AudioSpec(codec, rate, params.get("audio_bitrate"))
    else:
        container, codecs, audio_codec, rate = VIDEO_PRESETS[params["format"]]
        video_codec = codecs[params.get("video_codec") or next(iter(codecs))]
        with _open(inputs[0], "input 1") as first:
            has_video = _first_video(first) is not None
            video = _video_spec(params, video_codec, first) if has_video else None
            has_audio = any(bool(_open(path, f"input {n + 1}").streams.audio) for n, path in enumerate(inputs))
        audio = AudioSpec(audio_codec, rate, params.get("audio_bitrate")) if has_audio else None
        if video is None and audio is None:
            raise JobFailed("input 1 has neither video nor audio")
    encoder = Encoder(output, container, video, audio)
    try:
        offset = 0.0
        share = 1.0 / len(inputs)
        for index, path in enumerate(inputs):
            offset += _feed(
                encoder, path, f"input {index + 1}", offset, lambda done, i=index: progress((i + done) * share)
            )
        encoder.close()
    except BaseException:
        encoder.output.close()
        raise


def transcode(inputs: list[str], scratch: Path, params: dict[str, Any], progress: Progress) -> list[tuple[Path, str]]:
    output = scratch / f"transcoded.{params['format']}"
    _encode(inputs[:1], output, params, progress)
    return [(output, output.name)]


def extract_audio(
    inputs: list[str], scratch: Path, params: dict[str, Any], progress: Progress
) -> list[tuple[Path, str]]:
    with _open(inputs[0], "input") as source:
        if not source.streams.audio:
            raise JobFailed("input has no audio stream")
    output = scratch / f"audio{AUDIO_PRESETS[params['format']][2]}"
    _encode(inputs[:1], output, params, progress, audio_only=True)
    return [(output, output.name)]


def extract_video(
    inputs: list[str], scratch: Path, params: dict[str, Any], progress: Progress
) -> list[tuple[Path, str]]:
    """The video stream alone, copied packet for packet (no re-encoding)."""
    with _open(inputs[0], "input") as source:
        stream = _first_video(source)
        if stream is None:
            raise JobFailed("input has no video stream")
        suffix = {"h264": "mp4", "hevc": "mp4", "vp8": "webm", "vp9": "webm", "av1": "webm"}.get(
            stream.codec_context.name, "mkv"
        )
        output = scratch / f"video.{suffix}"
        _copy_streams([(source, stream)], output, _duration(source), progress)
    return [(output, output.name)]


def _copy_streams(
    sources: list[tuple[av.container.InputContainer, av.stream.Stream]], output: Path, total: float, progress: Progress
) -> None:
    with av.open(str(output), "w") as target:
        mapping = {id(stream): target.add_stream_from_template(stream) for _, stream in sources}
        try:
            for container, stream in sources:
                for packet in container.demux(stream):
                    if packet.dts is None:
                        continue
                    packet.stream = mapping[id(stream)]
                    target.mux(packet)
                    if total and packet.pts is not None and packet.time_base is not None:
                        progress(min(1.0, float(packet.pts * packet.time_base) / total))
        except av.FFmpegError as exc:
            raise JobFailed(f"input is damaged: copying failed ({exc.__class__.__name__})") from None


def merge(inputs: list[str], scratch: Path, params: dict[str, Any], progress: Progress) -> list[tuple[Path, str]]:
    if params["mode"] == "concat":
        output = scratch / f"merged.{params['format']}"
        _encode(inputs, output, params, progress)
        return [(output, output.name)]
    with _open(inputs[0], "the video input") as video_source, _open(inputs[1], "the audio input") as audio_source:
        video = _first_video(video_source)
        if video is None:
            raise JobFailed("the video input has no video stream")
        if not audio_source.streams.audio:
            raise JobFailed("the audio input has no audio stream")
        audio = audio_source.streams.audio[0]
        pair = (video.codec_context.name, audio.codec_context.name)
        suffix = (
            "mp4"
            if pair[0] == "h264" and pair[1] == "aac"
            else "webm"
            if pair[0] in {"vp8", "vp9"} and pair[1] in {"opus", "vorbis"}
            else "mkv"
        )
        output = scratch / f"muxed.{suffix}"
        total = max(_duration(video_source), _duration(audio_source))
        _copy_streams([(video_source, video), (audio_source, audio)], output, total, progress)
    return [(output, output.name)]


def _frames_from(container: av.container.InputContainer, stream: av.VideoStream, at: float) -> Iterator[av.VideoFrame]:
    if at > 0 and stream.time_base is not None:
        container.seek(int(at / stream.time_base), stream=stream, backward=True)
    yield from container.decode(stream)


def thumbnail(inputs: list[str], scratch: Path, params: dict[str, Any], progress: Progress) -> list[tuple[Path, str]]:
    with _open(inputs[0], "input") as source:
        stream = _first_video(source)
        if stream is None:
            raise JobFailed("input has no video stream")
        at = min(params.get("time", 0.0), max(0.0, _duration(source) - 0.05))
        chosen: av.VideoFrame | None = None
        try:
            for frame in _frames_from(source, stream, at):
                chosen = frame
                if frame.time is not None and frame.time + 1e-6 >= at:
                    break
        except av.FFmpegError as exc:
            raise JobFailed(f"input is damaged: decoding failed ({exc.__class__.__name__})") from None
        if chosen is None:
            raise JobFailed("no frame could be decoded")
        image: Image.Image = chosen.to_image()
    width, height = params.get("width"), params.get("height")
    if width or height:
        if not (width and height):
            ratio = image.width / image.height
            width, height = (width, round(width / ratio)) if width else (round(height * ratio), height)
        image = image.resize((max(1, width), max(1, height)), Image.Resampling.LANCZOS)
    suffix = "png" if params.get("format") == "png" else "jpg"
    output = scratch / f"thumbnail.{suffix}"
    image.save(output, format="PNG" if suffix == "png" else "JPEG", quality=90)
    progress(1.0)
    return [(output, output.name)]


JOBS: dict[str, Callable[[list[str], Path, dict[str, Any], Progress], list[tuple[Path, str]]]] = {
    "transcode": transcode,
    "extract-audio": extract_audio,
    "extract-video": extract_video,
    "merge": merge,
    "thumbnail": thumbnail,
}
