"""Real encoded media for the recording tests: frames from PyAV's encoders, packetized into RTP by
aiortc's own packetizers (what an aiortc publisher would send), and files decoded back."""

from __future__ import annotations

import fractions
import functools
import math
import random
import struct
import time
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.vpx import Vp8Encoder

from sfu import rtcp, rtp
from sfu.track import PublishedTrack

VIDEO_CLOCK = 90000
FPS = 15
STEP = VIDEO_CLOCK // FPS


@functools.cache
def texture(width: int, height: int) -> np.ndarray:
    return np.random.default_rng(width * height).integers(0, 256, (height, width, 3), dtype=np.uint8)


def pattern(index: int, width: int, height: int) -> av.VideoFrame:
    """A detailed picture that moves a little each frame: big key frames, no scene cuts."""
    image = np.roll(texture(width, height), 2 * index, axis=1)
    image[(index * 4) % height :, : width // 2, 1] = 200
    frame = av.VideoFrame.from_ndarray(image, format="rgb24")
    frame.pts = index
    return frame


class VideoEncoder:
    """libvpx (VP8) or libx264 (H.264) as a WebRTC sender sets them up: real time, no B-frames, key
    frames only when asked (or every ``gop`` frames)."""

    def __init__(self, codec: str, width: int, height: int, gop: int = 1000) -> None:
        self.codec = codec
        self.width, self.height = width, height
        self.context = av.CodecContext.create("libvpx" if codec == "vp8" else "libx264", "w")
        self.context.width, self.context.height, self.context.pix_fmt = width, height, "yuv420p"
        self.context.time_base = fractions.Fraction(1, FPS)
        self.context.bit_rate = 600_000
        self.context.gop_size = gop
        if codec == "vp8":
            self.context.options = {"deadline": "realtime", "lag-in-frames": "0", "cpu-used": "8"}
        else:
            self.context.options = {"tune": "zerolatency", "x264-params": "scenecut=0"}
            self.context.profile = "Baseline"
        self.count = 0

    def encode(self, keyframe: bool = False) -> bytes:
        frame = pattern(self.count, self.width, self.height)
        if keyframe:
            frame.pict_type = av.video.frame.PictureType.I
        self.count += 1
        return b"".join(bytes(packet) for packet in self.context.encode(frame))


def payloads(codec: str, data: bytes) -> list[bytes]:
    """aiortc's packetization of one encoded frame."""
    packet = av.Packet(data)
    packet.pts, packet.time_base = 0, fractions.Fraction(1, VIDEO_CLOCK)
    packer = Vp8Encoder() if codec == "vp8" else H264Encoder()
    return packer.pack(packet)[0]


def rtp_bytes(seq: int, timestamp: int, ssrc: int, payload: bytes, marker: bool, payload_type: int = 96) -> bytes:
    second = payload_type | (0x80 if marker else 0)
    return struct.pack("!BBHII", 0x80, second, seq & 0xFFFF, timestamp & 0xFFFFFFFF, ssrc) + payload


class RtpSender:
    """One RTP stream: sequence numbers and timestamps from random starting points, marker on the
    last packet of each frame."""

    def __init__(self, codec: str, ssrc: int, clock: int = VIDEO_CLOCK) -> None:
        self.codec, self.ssrc, self.clock = codec, ssrc, clock
        self.seq = random.getrandbits(16)
        self.base = random.getrandbits(32)

    def packets(self, data: bytes, timestamp: int) -> list[rtp.Packet]:
        parts = [data] if self.codec == "opus" else payloads(self.codec, data)
        out = []
        for index, part in enumerate(parts):
            out.append(rtp.Packet(rtp_bytes(self.seq, self.base + timestamp, self.ssrc, part, index == len(parts) - 1)))
            self.seq = (self.seq + 1) & 0xFFFF
        return out

    def padding(self, timestamp: int) -> rtp.Packet:
        """A padding-only packet (a bandwidth probe sent on the media stream) between frames."""
        data = rtp_bytes(self.seq, self.base + timestamp, self.ssrc, bytes(31) + b"\x20", False)
        self.seq = (self.seq + 1) & 0xFFFF
        return rtp.Packet(bytes([data[0] | 0x20]) + data[1:])

    def sender_report(self, wallclock: float, timestamp: int) -> rtcp.SenderReport:
        """What the publisher's RTCP would say: ``timestamp`` (from the stream's start) was captured at
        ``wallclock``."""
        return rtcp.SenderReport(self.ssrc, rtcp.ntp_now(wallclock), (self.base + timestamp) & 0xFFFFFFFF, 0, 0)


@dataclass
class LayerSource:
    encoder: VideoEncoder
    sender: RtpSender


class SimulcastPublisher:
    """A publisher's simulcast VP8 with one real encoder per layer, handed to the track the way the
    publisher connection hands over decrypted packets. Key frames come when the server asks."""

    def __init__(self, sizes: list[tuple[int, int]], start: float) -> None:
        self.sources = [
            LayerSource(VideoEncoder("vp8", w, h), RtpSender("vp8", 1000 + i)) for i, (w, h) in enumerate(sizes)
        ]
        self.start = start  # capture time of frame 0
        self.keyframe_requests: list[int] = []
        self.lose: set[tuple[int, int]] = set()  # (layer, frame index) whose first packet goes missing

    def request_keyframe(self, layer) -> None:
        self.keyframe_requests.append(layer.index)

    def bind(self, track: PublishedTrack) -> None:
        for layer, source in zip(track.layers, self.sources, strict=True):
            layer.bind(source.sender.ssrc)
            layer.sender_report = source.sender.sender_report(self.start, 0)

    def encode(self, layer_index: int, index: int) -> list[rtp.Packet]:
        """Frame ``index`` of a layer (a key frame if one was asked for), as the packets that arrive."""
        source = self.sources[layer_index]
        pending = layer_index in self.keyframe_requests
        data = source.encoder.encode(keyframe=pending)
        if pending:
            self.keyframe_requests = [i for i in self.keyframe_requests if i != layer_index]
        packets = source.sender.packets(data, index * STEP)
        return packets[1:] if (layer_index, index) in self.lose else packets

    def deliver(self, track: PublishedTrack, layer_index: int, packets: list[rtp.Packet]) -> None:
        layer = track.layers[layer_index]
        for packet in packets:
            layer.note(packet, time.monotonic(), VIDEO_CLOCK)
            track.forward(layer, packet)

    def send(self, track: PublishedTrack, layer_index: int, index: int) -> None:
        self.deliver(track, layer_index, self.encode(layer_index, index))


def opus_packets(seconds: float, frequency: float = 440.0) -> list[bytes]:
    """A sine tone encoded by libopus in 20 ms frames."""
    encoder = av.CodecContext.create("libopus", "w")
    encoder.sample_rate, encoder.layout, encoder.format = 48000, "stereo", "s16"
    encoder.bit_rate = 64000
    out: list[bytes] = []
    for index in range(int(seconds * 50)):
        t = (np.arange(960) + index * 960) / 48000
        wave = (np.sin(2 * math.pi * frequency * t) * 12000).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(np.stack([wave, wave]).reshape(1, -1), format="s16", layout="stereo")
        frame.sample_rate, frame.pts = 48000, index * 960
        out.extend(bytes(packet) for packet in encoder.encode(frame))
    return out


@dataclass
class Decoded:
    pts: list[int]  # milliseconds
    sizes: list[tuple[int, int]]
    rms: float  # audio only, on a 0..1 scale


def decode_file(path: Path) -> Decoded:
    """Every frame of the file's one stream, decoded by PyAV; a decoding error fails the test."""
    pts: list[int] = []
    sizes: list[tuple[int, int]] = []
    squares, samples = 0.0, 0
    with av.open(str(path)) as container:
        stream = container.streams[0]
        for frame in container.decode(stream):
            pts.append(round(frame.pts * frame.time_base * 1000))
            if isinstance(frame, av.VideoFrame):
                sizes.append((frame.width, frame.height))
            else:
                values = frame.to_ndarray().astype(np.float64)
                squares += float((values**2).sum())
                samples += values.size
    return Decoded(pts, sizes, math.sqrt(squares / samples) if samples else 0.0)


def first_channel(frame: av.AudioFrame) -> np.ndarray:
    """The first channel of a decoded audio frame, as floats on a -1..1 scale."""
    samples = frame.to_ndarray()
    scale = 32768.0 if samples.dtype == np.int16 else 1.0
    first = samples[0] if frame.format.is_planar else samples[0, :: len(frame.layout.channels)]
    return first.astype(np.float64) / scale


def flashes(path: Path, share: float = 0.5) -> list[float]:
    """When the picture turns white (``tests.rtc_clients.Cues``), in seconds of the file's own
    timestamps: the first frame of each run of frames with more than ``share`` of their pixels
    white (the moving pattern itself is never brighter than light grey)."""
    onsets: list[float] = []
    before: bool | None = None
    with av.open(str(path)) as container:
        for frame in container.decode(container.streams.video[0]):
            bright = float((frame.to_ndarray(format="gray") > 230).mean()) > share
            if bright and before is False:
                onsets.append(float(frame.time))
            before = bright
    return onsets


def beeps(path: Path, threshold: float = 0.25, window: float = 0.005) -> list[float]:
    """When a loud beep starts (``tests.rtc_clients.Cues``), in seconds of the file's own
    timestamps, to ``window``: each block of samples is placed at its own timestamp, so a gap in
    the file does not shift what follows."""
    onsets: list[float] = []
    before: bool | None = None
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        for frame in container.decode(stream):
            mono = first_channel(frame)
            size = max(1, round(window * frame.sample_rate))
            for start in range(0, len(mono) - size + 1, size):
                loud = float(np.sqrt(np.mean(mono[start : start + size] ** 2))) > threshold
                if loud and before is False:
                    onsets.append(float(frame.time) + start / frame.sample_rate)
                before = loud
    return onsets


def drift(pictures: list[float], sounds: list[float]) -> list[float]:
    """For each flash, how far after the nearest beep it came (negative: before), in seconds."""
    return [min((flash - beep for beep in sounds), key=abs) for flash in pictures] if sounds else []
