"""The live compositor: a room's tracks decoded, laid out, mixed and encoded once (H.264 + AAC), then
pushed to every output of the stream (media/push.py). It runs as ``python -m media.live``, a
process of its own started by ``media.live_process.LiveProcess``, so decoding and encoding never
touch the media server's loop and get a core of their own.

Its input (standard input) is the stream's settings, then the room's tracks as they come and go
and their encoded frames stamped with their capture time (sfu/live.py). Its output (standard
output) is one JSON line a second with its status, a line whenever it needs a key frame of a
track, and a last line when it has finished. It logs to the standard error it shares with the
server, and stops when told to, when its input closes, or when the server is gone.

Timing: the composite runs ``DELAY`` seconds behind the capture clock, so that every
participant's frames have arrived (through the SFU's jitter buffers) by the time their moment is
drawn: picture ``i`` shows each video's latest frame captured by ``origin + i / fps`` and the audio
of the same moment is mixed beside it, which keeps everyone in step with each other and with their
sound. Should encoding fall behind, pictures are skipped (and counted), never the sound.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import queue
import signal
import struct
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import IO, Any

import av
import numpy as np

from media.layout import BACKGROUND, Box, Speaker, arrange, even, fit
from media.push import AUDIO, VIDEO, Encoded, HlsOutput, Output, RtmpOutput

log = logging.getLogger("huiyi.media.live")

RATE = 48000
BLOCK = 960  # samples of audio mixed at a time: 20 ms
DELAY = 0.5  # seconds the composite runs behind capture
SPEAKER_WINDOW = 0.5  # seconds of sound weighed to choose the speaker
STATUS_SECONDS = 1.0
SNAP = BLOCK // 2  # an audio frame landing this close to where the previous one ended continues it
INPUT_BACKLOG = 600  # messages read ahead of the compositor before its input pipe fills
OUTPUT_CLOSE_SECONDS = 10.0

# Input messages: a header (kind, body length), then the body.
HEADER = struct.Struct("!BI")
FRAME = struct.Struct("!Id?")  # track key, capture time (UNIX seconds), key frame
KEY = struct.Struct("!I")
CONFIG, TRACK, MEDIA, GONE, STOP = range(5)


Planes = tuple[np.ndarray, np.ndarray, np.ndarray]  # Y, U, V of a 4:2:0 picture


def _yuv(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """A colour in the encoder's terms (BT.601, limited range)."""
    red, green, blue = rgb
    luma = 16 + (65.481 * red + 128.553 * green + 24.966 * blue) / 255
    blue_difference = 128 + (-37.797 * red - 74.203 * green + 112.0 * blue) / 255
    red_difference = 128 + (112.0 * red - 93.786 * green - 18.214 * blue) / 255
    return round(luma), round(blue_difference), round(red_difference)


BACKGROUND_YUV = _yuv(BACKGROUND)


def message(kind: int, body: bytes = b"") -> bytes:
    return HEADER.pack(kind, len(body)) + body


@dataclass
class LiveConfig:
    """What the stream was asked for; ``outputs`` as {"type": "rtmp", "url": ...} or
    {"type": "hls", "directory": ...}."""

    width: int
    height: int
    fps: int
    video_bitrate: int
    audio_bitrate: int
    layout: str
    outputs: list[dict[str, str]]
    give_up_seconds: float = 60.0
    max_retry_seconds: float = 10.0
    hls_segment_seconds: float = 2.0
    hls_list_size: int = 6
    preset: str = "veryfast"


class VideoLane:
    """One video track: frames decoded as they come, held until their moment in the composite."""

    def __init__(self, key: int, user_id: int, codec: str) -> None:
        self.key, self.user_id = key, user_id
        self.decoder = av.CodecContext.create(codec, "r")
        self.pending: deque[tuple[float, av.VideoFrame]] = deque()
        self.current: av.VideoFrame | None = None
        self.broken = False  # a frame did not decode: the rest wait for a key frame
        self._fitted: tuple[int, Box, Planes] | None = None

    def decode(self, data: bytes, wallclock: float, keyframe: bool) -> bool:
        """Whether the frame decoded (False asks the publisher for a key frame)."""
        if self.broken and not keyframe:
            return True
        try:
            frames = self.decoder.decode(av.Packet(data))
        except av.FFmpegError:
            self.broken = True
            return False
        self.broken = False
        for frame in frames:
            self.pending.append((wallclock, frame))
        return True

    def advance(self, moment: float) -> bool:
        """Take the latest frame captured by ``moment``; whether the picture changed."""
        changed = False
        while self.pending and self.pending[0][0] <= moment:
            self.current = self.pending.popleft()[1]
            changed = True
        return changed

    def fitted(self, box: Box) -> Planes:
        """The current frame scaled to fit ``box``, keeping its shape, as 4:2:0 planes."""
        assert self.current is not None
        frame = self.current
        if self._fitted is None or self._fitted[0] != id(frame) or self._fitted[1] != box:
            width, height = fit(frame.width, frame.height, box)
            scaled = frame.reformat(width=width, height=height, format="yuv420p")
            planes = tuple(
                np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[: plane.height, : plane.width]
                for plane in scaled.planes
            )
            self._fitted = (id(frame), box, (planes[0], planes[1], planes[2]))
        return self._fitted[2]


class AudioLane:
    """One audio track as 48 kHz stereo samples placed on the composite's clock."""

    def __init__(self, key: int, user_id: int, codec: str, origin: float) -> None:
        self.key, self.user_id, self.origin = key, user_id, origin
        self.decoder = av.CodecContext.create(codec, "r")
        self.resampler = av.AudioResampler(format="fltp", layout="stereo", rate=RATE)
        self.chunks: deque[tuple[int, np.ndarray]] = deque()
        self.next: int | None = None  # where the last chunk ended

    def decode(self, data: bytes, wallclock: float) -> None:
        try:
            frames = self.decoder.decode(av.Packet(data))
        except av.FFmpegError:
            return  # an Opus frame stands alone: only this one is lost
        position = round((wallclock - self.origin) * RATE)
        if self.next is not None and abs(position - self.next) <= SNAP:
            position = self.next
        for frame in frames:
            frame.pts = None
            for converted in self.resampler.resample(frame):
                samples = converted.to_ndarray()
                self.chunks.append((position, samples))
                position += samples.shape[1]
        self.next = position

    def read(self, start: int, count: int) -> np.ndarray:
        """Samples ``start`` to ``start + count`` (silence where there are none); reads only go forward."""
        window = np.zeros((2, count), dtype=np.float32)
        end = start + count
        while self.chunks and self.chunks[0][0] < end:
            position, samples = self.chunks[0]
            if position + samples.shape[1] <= start:
                self.chunks.popleft()
                continue
            skip = max(0, start - position)
            into = position + skip - start
            take = min(samples.shape[1] - skip, count - into)
            window[:, into : into + take] += samples[:, skip : skip + take]
            if skip + take < samples.shape[1]:
                self.chunks[0] = (position + skip + take, samples[:, skip + take :])
                break
            self.chunks.popleft()
        return window


class Composite:
    """The composite's clock, pictures, sound and encoders, and its outputs."""

    def __init__(self, config: LiveConfig, origin: float) -> None:
        self.config = config
        self.width, self.height, self.fps = even(config.width), even(config.height), config.fps
        self.origin = origin  # capture time of the composite's start
        self.videos: dict[int, VideoLane] = {}
        self.audios: dict[int, AudioLane] = {}
        self.speaker = Speaker()
        self.keyframes_wanted: list[int] = []  # track keys whose video needs a key frame
        self.frame_index = 0  # next picture
        self.block_index = 0  # next 20 ms of sound
        self.frames = 0
        self.skipped = 0  # pictures skipped because encoding fell behind
        self.lost = 0  # input frames that did not decode
        self.encoded_bytes = 0
        self._loudness: dict[int, float] = {}
        self._heard = 0
        self._force_keyframe = threading.Event()
        self._scene: tuple[Any, ...] | None = None
        self._picture: av.VideoFrame | None = None
        # The picture is drawn in 4:2:0 planes (Y, then U and V at half size), as it is encoded.
        self._canvas = np.empty(self.width * self.height * 3 // 2, dtype=np.uint8)
        luma = self.width * self.height
        self._planes = (
            self._canvas[:luma].reshape(self.height, self.width),
            self._canvas[luma : luma * 5 // 4].reshape(self.height // 2, self.width // 2),
            self._canvas[luma * 5 // 4 :].reshape(self.height // 2, self.width // 2),
        )
        # The encoders live in a container that is never written: it gives them the global headers
        # (SPS/PPS, AudioSpecificConfig) that FLV needs, and the streams every output copies.
        self._scratch = av.open(io.BytesIO(), "w", format="flv")
        video = self._scratch.add_stream(
            "libx264", rate=self.fps, options={"preset": config.preset, "tune": "zerolatency"}
        )
        video.width, video.height, video.pix_fmt = self.width, self.height, "yuv420p"
        video.codec_context.bit_rate = config.video_bitrate
        video.codec_context.gop_size = self.fps * 2  # a key frame every 2 s: HLS segments, late joiners
        video.time_base = Fraction(1, self.fps)
        audio = self._scratch.add_stream("aac", rate=RATE, layout="stereo")
        audio.codec_context.bit_rate = config.audio_bitrate
        self._scratch.start_encoding()
        self.video, self.audio = video, audio
        self.outputs: list[Output] = [self._output(spec) for spec in config.outputs]
        for output in self.outputs:
            output.start()

    def _output(self, spec: dict[str, str]) -> Output:
        common: dict[str, Any] = {
            "templates": (self.video, self.audio),
            "request_keyframe": self._force_keyframe.set,
            "give_up_seconds": self.config.give_up_seconds,
            "max_retry_seconds": self.config.max_retry_seconds,
        }
        if spec["type"] == "hls":
            return HlsOutput(
                Path(spec["directory"]), self.config.hls_segment_seconds, self.config.hls_list_size, **common
            )
        return RtmpOutput(spec["url"], spec.get("shown", "rtmp"), **common)

    # input ------------------------------------------------------------------------------------

    def add_track(self, key: int, user_id: int, kind: str, codec: str) -> None:
        if kind == "video":
            self.videos[key] = VideoLane(key, user_id, codec)
        else:
            self.audios[key] = AudioLane(key, user_id, codec, self.origin)

    def remove_track(self, key: int) -> None:
        self.videos.pop(key, None)
        self.audios.pop(key, None)

    def frame(self, key: int, wallclock: float, keyframe: bool, data: bytes) -> None:
        if key in self.videos:
            if not self.videos[key].decode(data, wallclock, keyframe):
                self.lost += 1
                self.keyframes_wanted.append(key)
        elif key in self.audios:
            self.audios[key].decode(data, wallclock)

    # the clock ----------------------------------------------------------------------------------

    def next_due(self) -> float:
        """When the next picture or block of sound is due (UNIX seconds)."""
        picture = self.origin + DELAY + self.frame_index / self.fps
        sound = self.origin + DELAY + (self.block_index + 1) * BLOCK / RATE
        return min(picture, sound)

    def step(self, now: float) -> None:
        """Make everything due by ``now``: the sound in order, pictures (the latest one only when
        behind; those skipped are counted)."""
        while self.origin + DELAY + (self.block_index + 1) * BLOCK / RATE <= now:
            self._mix()
        due = int((now - self.origin - DELAY) * self.fps)  # the latest picture due
        if due < self.frame_index:
            return
        if due > self.frame_index + 1:
            self.skipped += due - self.frame_index
            self.frame_index = due
        while self.frame_index <= due:
            self._draw()

    def _mix(self) -> None:
        start = self.block_index * BLOCK
        mix = np.zeros((2, BLOCK), dtype=np.float32)
        for lane in self.audios.values():
            samples = lane.read(start, BLOCK)
            mix += samples
            level = float(np.mean(np.square(samples)))
            self._loudness[lane.user_id] = max(self._loudness.get(lane.user_id, 0.0), level)
        self._heard += BLOCK
        if self._heard >= SPEAKER_WINDOW * RATE:
            self.speaker.hear({user: float(np.sqrt(level)) for user, level in self._loudness.items()})
            self._loudness.clear()
            self._heard = 0
        frame = av.AudioFrame.from_ndarray(np.clip(mix, -1.0, 1.0), format="fltp", layout="stereo")
        frame.sample_rate, frame.pts, frame.time_base = RATE, start, Fraction(1, RATE)
        self._send(self.audio.encode(frame), AUDIO)
        self.block_index += 1

    def _draw(self) -> None:
        moment = self.origin + self.frame_index / self.fps
        changed = False
        for lane in self.videos.values():
            changed |= lane.advance(moment)
        shown = [lane for lane in self.videos.values() if lane.current is not None]
        featured = next((lane.key for lane in shown if lane.user_id == self.speaker.user_id), None)
        boxes = arrange(self.config.layout, [lane.key for lane in shown], featured, self.width, self.height)
        scene = tuple(boxes)
        if changed or scene != self._scene or self._picture is None:
            for plane, value in zip(self._planes, BACKGROUND_YUV, strict=True):
                plane[:] = value
            for key, box in boxes:
                self._paste(box, self.videos[key].fitted(box))
            packed = self._canvas.reshape(self.height * 3 // 2, self.width)
            self._picture = av.VideoFrame.from_ndarray(packed, format="yuv420p")
            self._scene = scene
        picture = self._picture
        picture.pts, picture.time_base = self.frame_index, Fraction(1, self.fps)
        if self._force_keyframe.is_set():
            self._force_keyframe.clear()
            picture.pict_type = av.video.frame.PictureType.I
        else:
            picture.pict_type = av.video.frame.PictureType.NONE
        self._send(self.video.encode(picture), VIDEO)
        self.frames += 1
        self.frame_index += 1

    def _paste(self, box: Box, image: Planes) -> None:
        """``image`` centred in ``box``, on even rows and columns so its chroma lines up."""
        height, width = image[0].shape
        top = box.y + (box.height - height) // 2
        left = box.x + (box.width - width) // 2
        top, left = top - top % 2, left - left % 2
        self._planes[0][top : top + height, left : left + width] = image[0]
        for plane, chroma in zip(self._planes[1:], image[1:], strict=True):
            plane[top // 2 : top // 2 + height // 2, left // 2 : left // 2 + width // 2] = chroma

    def _send(self, packets: list[av.Packet], media: int) -> None:
        for packet in packets:
            if packet.pts is None or packet.dts is None or packet.time_base is None:
                continue
            data = bytes(packet)
            self.encoded_bytes += len(data)
            encoded = Encoded(media, data, packet.pts, packet.dts, packet.is_keyframe, packet.time_base)
            for output in self.outputs:
                output.put(encoded)

    # status and end -------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            "frames": self.frames,
            "skipped": self.skipped,
            "lost": self.lost,
            "encoded_bytes": self.encoded_bytes,
            "speaker": self.speaker.user_id,
            "tiles": sum(lane.current is not None for lane in self.videos.values()),
            "outputs": [output.status() for output in self.outputs],
        }

    def close(self) -> None:
        """Flush the encoders into the outputs, then finish every output (trailers, playlist end)."""
        try:
            self._send(self.video.encode(None), VIDEO)
            self._send(self.audio.encode(None), AUDIO)
        except av.FFmpegError as exc:
            log.warning("flushing the live encoders failed: %s", exc)
        for output in self.outputs:
            output.finish()
        deadline = time.monotonic() + OUTPUT_CLOSE_SECONDS  # for all of them together
        for output in self.outputs:
            output.wait(deadline - time.monotonic())
        with contextlib.suppress(av.FFmpegError):
            self._scratch.close()


# the child process --------------------------------------------------------------------------------


def _read_exactly(stream: IO[bytes], size: int) -> bytes | None:
    data = stream.read(size) if size else b""
    return data if len(data) == size else None


def _reader(stream: IO[bytes], inbox: queue.Queue[tuple[int, bytes] | None]) -> None:
    """Moves the input into ``inbox`` (blocking when it is full, which fills the pipe and so tells
    the server to drop frames); None once the input is closed."""
    try:
        while (header := _read_exactly(stream, HEADER.size)) is not None:
            kind, size = HEADER.unpack(header)
            body = _read_exactly(stream, size)
            if body is None:
                break
            inbox.put((kind, body))
    finally:
        inbox.put(None)


class _Reporter:
    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def send(self, event: dict[str, Any]) -> None:
        try:
            self.stream.write(json.dumps(event) + "\n")
            self.stream.flush()
        except (BrokenPipeError, ValueError):
            pass  # the server is gone; the parent watch ends this process


def serve(stdin: IO[bytes], stdout: IO[str]) -> int:
    """Compose until told to stop or the input ends; the exit status."""
    reporter = _Reporter(stdout)
    first = _read_exactly(stdin, HEADER.size)
    if first is None:
        return 1
    kind, size = HEADER.unpack(first)
    body = _read_exactly(stdin, size)
    if kind != CONFIG or body is None:
        return 1
    settings = json.loads(body)
    config = LiveConfig(**settings["config"])
    try:
        composite = Composite(config, float(settings.get("origin") or time.time()))
    except Exception as exc:
        reporter.send({"event": "failed", "error": f"the compositor could not start: {exc}"})
        return 1
    reporter.send({"event": "ready", "pid": os.getpid()})
    inbox: queue.Queue[tuple[int, bytes] | None] = queue.Queue(INPUT_BACKLOG)
    threading.Thread(target=_reader, args=(stdin, inbox), name="live input", daemon=True).start()
    next_status = time.monotonic()
    running = True
    while running:
        try:
            item = inbox.get(timeout=max(0.0, composite.next_due() - time.time()))
        except queue.Empty:
            item = (-1, b"")
        while item is not None:
            kind, body = item
            if kind == MEDIA:
                key, wallclock, keyframe = FRAME.unpack_from(body)
                composite.frame(key, wallclock, keyframe, body[FRAME.size :])
            elif kind == TRACK:
                track = json.loads(body)
                composite.add_track(int(track["key"]), int(track["user_id"]), track["kind"], track["codec"])
            elif kind == GONE:
                composite.remove_track(KEY.unpack(body)[0])
            elif kind == STOP:
                running = False
                break
            if composite.next_due() <= time.time():
                break
            try:
                item = inbox.get_nowait()
            except queue.Empty:
                break
        if item is None:
            running = False
        composite.step(time.time())
        for key in composite.keyframes_wanted:
            reporter.send({"event": "keyframe", "key": key})
        composite.keyframes_wanted.clear()
        if time.monotonic() >= next_status:
            next_status += STATUS_SECONDS
            reporter.send({"event": "status", **composite.status()})
    composite.close()
    reporter.send({"event": "ended", **composite.status()})
    return 0


def main() -> int:
    """``python -m media.live``: the server is the parent; the process goes when it does."""
    from media.worker import die_with_parent

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the group; the server decides
    die_with_parent(os.getppid())
    level = os.environ.get("HUIYI_LIVE_LOG_LEVEL", "INFO")
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return serve(sys.stdin.buffer, sys.stdout)


if __name__ == "__main__":
    sys.exit(main())
