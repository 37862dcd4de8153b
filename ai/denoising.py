"""Denoising a media file on a worker node: its first audio track cleaned, everything else kept.

The output is a new file of the same container family (WAV stays WAV, MP4 stays MP4, ...) at the
input's sample rate and channel count; a video stream is copied packet for packet, untouched.
Each channel is cleaned by a stream of its own at 48 kHz and resampled back, the model's delay
cut off so the cleaned sound stays in step with the picture. The answer carries the levels of the
sound before and after, measured the same way on both."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from ai.engines import DenoiseEngine, DenoiseStream, ModelError
from ai.engines.denoise import SAMPLE_RATE
from media.jobs import JobFailed

Progress = Callable[[int], None]
LEVEL_BLOCK = SAMPLE_RATE // 20  # 50 ms: levels are measured per block
SILENCE_DB = -120.0
OPUS_RATES = {8000, 12000, 16000, 24000, 48000}


def encoder_frame(codec: str, rate: int) -> int | None:
    """Samples per frame the encoder insists on (None: any)."""
    return {"aac": 1024, "libmp3lame": 1152, "libopus": rate // 50}.get(codec)


_WEBM_VIDEO = {"vp8", "vp9", "av1"}


@dataclass(frozen=True)
class OutputFormat:
    container: str
    codec: str
    suffix: str


def output_format(container: str, audio_codec: str, video_codec: str | None) -> OutputFormat:
    """The same family as the input: a format that takes the video stream as it is, and an audio
    encoder that format takes."""
    names = set(container.split(","))
    if "wav" in names:
        return OutputFormat("wav", "pcm_s16le", ".wav")
    if "flac" in names:
        return OutputFormat("flac", "flac", ".flac")
    if "mp3" in names:
        return OutputFormat("mp3", "libmp3lame", ".mp3")
    if "ogg" in names:
        return OutputFormat("ogg", "libopus", ".opus" if audio_codec == "opus" else ".ogg")
    if "aac" in names:
        return OutputFormat("adts", "aac", ".aac")
    if names & {"mp4", "mov", "m4a"}:
        return OutputFormat("mp4", "aac", ".mp4" if video_codec else ".m4a")
    if "webm" in names and (video_codec is None or video_codec in _WEBM_VIDEO):
        return OutputFormat("webm", "libopus", ".webm")
    return OutputFormat("matroska", "libopus", ".mkv" if video_codec else ".mka")


class Levels:
    """Running level statistics of a signal: RMS over all of it, the peak, and the noise floor
    (the 10th percentile of 50 ms block levels: the quiet between words)."""

    def __init__(self) -> None:
        self.squares = 0.0
        self.count = 0
        self.peak = 0.0
        self.blocks: list[float] = []
        self._partial = np.zeros(0, np.float32)

    def add(self, samples: np.ndarray) -> None:
        if not samples.size:
            return
        self.squares += float(np.dot(samples, samples))
        self.count += samples.size
        self.peak = max(self.peak, float(np.abs(samples).max()))
        joined = np.concatenate([self._partial, samples])
        whole = joined.size - joined.size % LEVEL_BLOCK
        if whole:
            blocks = joined[:whole].reshape(-1, LEVEL_BLOCK)
            self.blocks.extend(np.sqrt(np.mean(blocks * blocks, axis=1)).tolist())
        self._partial = joined[whole:]

    def describe(self) -> dict[str, float]:
        rms = np.sqrt(self.squares / self.count) if self.count else 0.0
        floor = float(np.percentile(self.blocks, 10)) if self.blocks else rms
        return {"rms_dbfs": _db(rms), "peak_dbfs": _db(self.peak), "noise_floor_dbfs": _db(floor)}


def _db(value: float) -> float:
    return round(max(SILENCE_DB, 20 * float(np.log10(value))) if value > 0 else SILENCE_DB, 2)


class _Channels:
    """One denoise stream per channel with its delay cut off, and, when an attenuation limit is
    asked for, that much of the input mixed back in."""

    def __init__(self, engine: DenoiseEngine, channels: int, keep: float) -> None:
        self.streams: list[DenoiseStream] = [engine.stream() for _ in range(channels)]
        self.delay = self.streams[0].delay
        self.keep = keep  # share of the noisy input kept (0: none)
        self.noisy = np.zeros((channels, 0), np.float32)
        self.skipped = 0

    def process(self, planes: np.ndarray, flush: bool = False) -> np.ndarray:
        outs = [stream.flush() if flush else stream.process(planes[i]) for i, stream in enumerate(self.streams)]
        length = min(out.size for out in outs)
        cleaned = np.stack([out[:length] for out in outs])
        cut = min(length, self.delay - self.skipped)
        self.skipped += cut
        cleaned = cleaned[:, cut:]
        if self.keep:
            if not flush:
                self.noisy = np.concatenate([self.noisy, planes], axis=1)
            count = cleaned.shape[1]
            held = np.zeros_like(cleaned)
            taken = min(count, self.noisy.shape[1])
            held[:, :taken] = self.noisy[:, :taken]
            self.noisy = self.noisy[:, taken:]
            cleaned = cleaned + self.keep * (held - cleaned)
        return cleaned

    def close(self) -> None:
        for stream in self.streams:
            stream.close()


def denoise_file(
    engine: DenoiseEngine,
    model_id: str,
    source: Path,
    target_dir: Path,
    name: str,
    options: dict[str, Any],
    progress: Progress,
) -> dict[str, Any]:
    started = time.monotonic()
    limit = options.get("attenuation_limit_db")
    keep = 10 ** (-float(limit) / 20) if limit is not None else 0.0
    try:
        container = av.open(str(source), metadata_errors="ignore")
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        raise JobFailed(f"the file is not media this server can read ({type(exc).__name__})") from None
    with container:
        if not container.streams.audio:
            raise JobFailed("the file has no audio track")
        audio = container.streams.audio[0]
        videos = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
        video = videos[0] if videos else None
        fmt = output_format(
            container.format.name, audio.codec_context.name, video.codec_context.name if video else None
        )
        rate = audio.codec_context.sample_rate or SAMPLE_RATE
        if fmt.codec == "libopus" and rate not in OPUS_RATES:
            rate = SAMPLE_RATE
        # More than two channels are mixed down to stereo.
        channels = 1 if (audio.codec_context.channels or 1) == 1 else 2
        layout = "mono" if channels == 1 else "stereo"
        target = target_dir / f"{Path(name).stem[:100] or 'audio'}-denoised{fmt.suffix}"
        total = container.duration / av.time_base if container.duration else 0.0
        result = _run(container, audio, video, target, fmt, rate, channels, layout, engine, keep, total, progress)
    elapsed = time.monotonic() - started
    duration = result.pop("duration")
    return result | {
        "model": model_id,
        "duration": round(duration, 3),
        "sample_rate": rate,
        "channels": channels,
        "video_copied": video is not None,
        "processing_seconds": round(elapsed, 3),
        "realtime_factor": round(elapsed / duration, 4) if duration else None,
        "output": {"path": str(target), "name": target.name},
    }


def _run(
    container: av.container.InputContainer,
    audio: av.AudioStream,
    video: av.VideoStream | None,
    target: Path,
    fmt: OutputFormat,
    rate: int,
    channels: int,
    layout: str,
    engine: DenoiseEngine,
    keep: float,
    total: float,
    progress: Progress,
) -> dict[str, Any]:
    to_model = av.AudioResampler(format="fltp", layout=layout, rate=SAMPLE_RATE)
    before, after = Levels(), Levels()
    written = 0
    with av.open(str(target), "w", format=fmt.container) as output:
        copied = output.add_stream_from_template(video) if video is not None else None
        encoder = output.add_stream(fmt.codec, rate=rate, layout=layout)
        from_model = av.AudioResampler(
            format=encoder.format.name, layout=layout, rate=rate, frame_size=encoder_frame(fmt.codec, rate)
        )
        band = _Channels(engine, channels, keep)
        first_pts: Fraction | None = None

        def emit(planes: np.ndarray) -> None:
            nonlocal written
            if not planes.shape[1]:
                return
            if written == 0 and first_pts:
                # The sound starts where it started in the input, in step with the copied video.
                written = round(first_pts * rate)
            after.add(planes.mean(axis=0))
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(np.clip(planes, -1, 1), np.float32), format="fltp", layout=layout
            )
            frame.sample_rate = SAMPLE_RATE
            for out in from_model.resample(frame):
                out.pts, out.time_base = written, Fraction(1, rate)
                written += out.samples
                output.mux(encoder.encode(out))

        try:
            streams = [audio] if copied is None else [audio, video]
            for packet in container.demux(streams):
                if packet.stream is video:
                    if packet.dts is not None:
                        packet.stream = copied
                        output.mux(packet)
                    continue
                for frame in packet.decode():
                    if first_pts is None and frame.pts is not None and frame.time_base is not None:
                        first_pts = frame.pts * frame.time_base
                    for resampled in to_model.resample(frame):
                        planes = resampled.to_ndarray().reshape(channels, -1)
                        before.add(planes.mean(axis=0))
                        emit(band.process(planes))
                if total and packet.pts is not None and packet.time_base is not None:
                    progress(min(99, int(100 * float(packet.pts * packet.time_base) / total)))
            for resampled in to_model.resample(None):
                planes = resampled.to_ndarray().reshape(channels, -1)
                before.add(planes.mean(axis=0))
                emit(band.process(planes))
            # The model's delay: what it still holds, up to the length that went in.
            tail = band.process(np.zeros((channels, 0), np.float32), flush=True)
            emit(tail[:, : max(0, before.count - after.count)])
            for out in from_model.resample(None):
                out.pts, out.time_base = written, Fraction(1, rate)
                written += out.samples
                output.mux(encoder.encode(out))
            output.mux(encoder.encode(None))
        except av.FFmpegError as exc:
            raise JobFailed(f"the file is damaged: decoding failed ({type(exc).__name__})") from None
        except ModelError:
            raise
        finally:
            band.close()
    if before.count == 0:
        target.unlink(missing_ok=True)
        raise JobFailed("the audio track is empty")
    levels_in, levels_out = before.describe(), after.describe()
    return {
        "duration": before.count / SAMPLE_RATE,
        "input_levels": levels_in,
        "output_levels": levels_out,
        "noise_reduction_db": round(levels_in["noise_floor_dbfs"] - levels_out["noise_floor_dbfs"], 2),
    }
