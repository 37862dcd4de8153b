"""Enhancing a video file on a worker node: the operations asked for, in their order, as one FFmpeg
filter graph run through PyAV; the picture is re-encoded, the sound copied untouched.

Operations (parameters and ranges in docs/enhancement.md, checked by the API):
denoise (nlmeans, atadenoise, fftdnoiz, and hqdn3d where the FFmpeg build has it: the wheels PyAV
ships are LGPL builds without it), sharpen (unsharp), color (brightness, contrast, saturation),
auto_levels (normalize), deinterlace (bwdif, yadif), upscale (lanczos, or ``superres``: a
super-resolution model run on each frame between the filter graphs before and after it, its
output scaled with lanczos to the size asked when that is not the model's own factor)."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import numpy as np

from ai.engines import UpscaleEngine
from media.jobs import JobFailed

Progress = Callable[[int], None]
Filters = list[tuple[str, str]]
MAX_SIDE = 3840
DENOISE_METHODS = ("nlmeans", "atadenoise", "fftdnoiz", "hqdn3d")


def available(filter_name: str) -> bool:
    return filter_name in av.filter.filters_available


def filters_for(operation: dict[str, Any], width: int, height: int) -> tuple[list[tuple[str, str]], int, int]:
    """The filters (name, arguments) doing one operation on frames of ``width`` x ``height``, and
    the size of the frames it gives."""
    op = operation["op"]
    if op == "denoise":
        # strength: about the standard deviation of the noise, in 8-bit levels.
        method, strength = operation.get("method", "nlmeans"), float(operation.get("strength", 10.0))
        if not available(method):
            raise JobFailed(f"this node's FFmpeg has no {method} filter; use one of {', '.join(usable_denoisers())}")
        if method == "nlmeans":
            return [("nlmeans", f"s={max(1.0, strength / 3):g}:p=7:r=9")], width, height
        if method == "fftdnoiz":
            return [("fftdnoiz", f"sigma={strength:g}")], width, height
        if method == "hqdn3d":
            return [("hqdn3d", f"luma_spatial={0.4 * strength:g}")], width, height
        threshold = min(0.3, 0.008 * strength)
        arguments = f"0a={threshold:g}:1a={threshold:g}:2a={threshold:g}:0b={2 * threshold:g}"
        return [("atadenoise", arguments)], width, height
    if op == "sharpen":
        size, amount = int(operation.get("size", 5)), float(operation.get("amount", 1.0))
        return [("unsharp", f"luma_msize_x={size}:luma_msize_y={size}:luma_amount={amount:g}")], width, height
    if op == "color":
        brightness = float(operation.get("brightness", 0.0))
        contrast = float(operation.get("contrast", 1.0))
        saturation = float(operation.get("saturation", 1.0))
        luma = f"clip((val-128)*{contrast:g}+128+{brightness * 255:g}\\,0\\,255)"
        chroma = f"clip((val-128)*{saturation:g}+128\\,0\\,255)"
        return [("lutyuv", f"y={luma}:u={chroma}:v={chroma}")], width, height
    if op == "auto_levels":
        strength, smoothing = float(operation.get("strength", 1.0)), int(operation.get("smoothing", 25))
        return [("normalize", f"smoothing={smoothing}:independence=0:strength={strength:g}")], width, height
    if op == "deinterlace":
        return [(operation.get("method", "bwdif"), "mode=send_frame:parity=auto:deint=all")], width, height
    if op == "upscale":
        new_width, new_height = upscaled_size(operation, width, height)
        return [("scale", f"{new_width}:{new_height}:flags=lanczos")], new_width, new_height
    raise JobFailed(f"unknown operation {op}")


def upscaled_size(operation: dict[str, Any], width: int, height: int) -> tuple[int, int]:
    """The size an upscale operation asks for (a factor, or a width and/or height), made even."""
    factor = operation.get("factor")
    new_width, new_height = operation.get("width"), operation.get("height")
    if factor:
        new_width, new_height = round(width * float(factor)), round(height * float(factor))
    elif new_width and not new_height:
        new_height = round(height * new_width / width)
    elif new_height and not new_width:
        new_width = round(width * new_height / height)
    new_width, new_height = _even(int(new_width or width)), _even(int(new_height or height))
    if max(new_width, new_height) > MAX_SIDE:
        raise JobFailed(f"upscaling {width}x{height} so gives {new_width}x{new_height}, over {MAX_SIDE} on a side")
    return new_width, new_height


def usable_denoisers() -> list[str]:
    return [method for method in DENOISE_METHODS if available(method)]


def _even(value: int) -> int:
    return max(2, value - value % 2)


def _encoder(container: str) -> tuple[str, str, str, dict[str, str]]:
    """Output container, suffix, video encoder and its options, in the family of the input."""
    names = set(container.split(","))
    if names & {"mp4", "mov"}:
        return "mp4", ".mp4", "libx264", {"crf": "18", "preset": "veryfast"}
    if "webm" in names:
        return "webm", ".webm", "libvpx", {"crf": "8", "b": "4M", "deadline": "realtime", "cpu-used": "8"}
    return "matroska", ".mkv", "libx264", {"crf": "18", "preset": "veryfast"}


def enhance_file(
    source: Path,
    target_dir: Path,
    name: str,
    operations: list[dict[str, Any]],
    progress: Progress,
    upscaler: UpscaleEngine | None = None,
) -> dict[str, Any]:
    """``upscaler``: the loaded model that ``superres`` upscale operations run."""
    started = time.monotonic()
    try:
        container = av.open(str(source), metadata_errors="ignore")
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        raise JobFailed(f"the file is not media this server can read ({type(exc).__name__})") from None
    with container:
        videos = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
        if not videos:
            raise JobFailed("the file has no video track")
        video = videos[0]
        audio = container.streams.audio[0] if container.streams.audio else None
        width, height = video.codec_context.width, video.codec_context.height
        if not width or not height:
            raise JobFailed("the video track has no picture size")
        # Filter graphs with a model step between each two: the graph before a step ends in RGB,
        # the one after it starts by scaling the model's output to the size asked.
        segments: list[Filters] = [[]]
        steps: list[Callable[[av.VideoFrame], av.VideoFrame]] = []
        for operation in operations:
            if operation["op"] == "upscale" and operation.get("method") == "superres":
                if upscaler is None:
                    raise JobFailed("super-resolution was asked for without a model")
                new_width, new_height = upscaled_size(operation, width, height)
                segments[-1].append(("format", "rgb24"))
                steps.append(_model_step(upscaler))
                scale = upscaler.scale
                resize = (width * scale, height * scale) != (new_width, new_height)
                segments.append([("scale", f"{new_width}:{new_height}:flags=lanczos")] if resize else [])
                width, height = new_width, new_height
                continue
            filters, width, height = filters_for(operation, width, height)
            segments[-1] += filters
        segments[-1].append(("format", "yuv420p"))
        kind, suffix, codec, codec_options = _encoder(container.format.name)
        target = target_dir / f"{Path(name).stem[:100] or 'video'}-enhanced{suffix}"
        total = container.duration / av.time_base if container.duration else 0.0
        chain = _Chain([_Segment(filters) for filters in segments], steps)
        frames = _run(
            container, video, audio, chain, target, kind, codec, codec_options, (width, height), total, progress
        )
    elapsed = time.monotonic() - started
    return {
        "operations": operations,
        "width": width,
        "height": height,
        "frames": frames,
        "audio_copied": audio is not None,
        "processing_seconds": round(elapsed, 3),
        "output": {"path": str(target), "name": target.name},
    }


def _model_step(upscaler: UpscaleEngine) -> Callable[[av.VideoFrame], av.VideoFrame]:
    def step(frame: av.VideoFrame) -> av.VideoFrame:
        picture = upscaler.infer(frame.to_ndarray(format="rgb24"), None)
        out = av.VideoFrame.from_ndarray(np.ascontiguousarray(picture), format="rgb24")
        out.pts, out.time_base = frame.pts, frame.time_base
        return out

    return step


class _Segment:
    """One filter graph, built for the frames of the first one pushed in (their size, format and
    time base are only known then when a model step comes before it)."""

    def __init__(self, filters: Filters) -> None:
        self.filters = filters
        self.graph: av.filter.Graph | None = None

    def _build(self, frame: av.VideoFrame) -> av.filter.Graph:
        graph = av.filter.Graph()
        nodes = [
            graph.add_buffer(width=frame.width, height=frame.height, format=frame.format, time_base=frame.time_base)
        ]
        for filter_name, arguments in self.filters:
            try:
                nodes.append(graph.add(filter_name, arguments))
            except (av.FFmpegError, ValueError) as exc:
                raise JobFailed(f"the {filter_name} filter refused its parameters ({exc})") from None
        nodes.append(graph.add("buffersink"))
        for before, after in itertools.pairwise(nodes):
            before.link_to(after)
        graph.configure()
        return graph

    def push(self, frame: av.VideoFrame | None) -> list[av.VideoFrame]:
        """The frames the graph gives for ``frame`` (None: the end, the frames it still holds)."""
        if self.graph is None:
            if frame is None:
                return []
            self.graph = self._build(frame)
        self.graph.vpush(frame)
        out = []
        while True:
            try:
                out.append(self.graph.vpull())
            except (av.BlockingIOError, av.EOFError):
                return out


class _Chain:
    def __init__(self, segments: list[_Segment], steps: list[Callable[[av.VideoFrame], av.VideoFrame]]) -> None:
        self.segments, self.steps = segments, steps

    def push(self, frame: av.VideoFrame | None) -> list[av.VideoFrame]:
        """The frames ready for the encoder after ``frame`` (None: the end of the input)."""
        pending: list[av.VideoFrame | None] = [frame]
        for index, segment in enumerate(self.segments):
            out = [result for item in pending for result in segment.push(item)]
            if index < len(self.steps):
                out = [self.steps[index](result) for result in out]
            pending = [*out, None] if frame is None else list(out)
        return [item for item in pending if item is not None]


def _run(
    container: av.container.InputContainer,
    video: av.VideoStream,
    audio: av.AudioStream | None,
    chain: _Chain,
    target: Path,
    kind: str,
    codec: str,
    codec_options: dict[str, str],
    size: tuple[int, int],
    total: float,
    progress: Progress,
) -> int:
    frames = 0
    with av.open(str(target), "w", format=kind) as output:
        rate = video.average_rate or video.guessed_rate or 25
        encoder = output.add_stream(codec, rate=rate, options=codec_options)
        encoder.width, encoder.height, encoder.pix_fmt = size[0], size[1], "yuv420p"
        encoder.time_base = video.time_base
        copied = output.add_stream_from_template(audio) if audio is not None else None

        def encode(ready: list[av.VideoFrame]) -> None:
            nonlocal frames
            for out in ready:
                out.pict_type = av.video.frame.PictureType.NONE
                output.mux(encoder.encode(out))
                frames += 1

        try:
            for packet in container.demux([video] if audio is None else [video, audio]):
                if packet.stream is audio:
                    if packet.dts is not None:
                        packet.stream = copied
                        output.mux(packet)
                    continue
                for frame in packet.decode():
                    encode(chain.push(frame))
                    if total and frame.time is not None:
                        progress(min(99, int(100 * frame.time / total)))
            encode(chain.push(None))
            output.mux(encoder.encode(None))
        except av.FFmpegError as exc:
            raise JobFailed(f"the file is damaged: decoding failed ({type(exc).__name__})") from None
    if not frames:
        target.unlink(missing_ok=True)
        raise JobFailed("no frame of the video could be decoded")
    return frames
