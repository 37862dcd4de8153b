"""VP8 descriptors as a receiver sees them through a down-track: picture IDs, TL0PICIDX and KEYIDX
run on across simulcast switches and dropped temporal layers, sequence numbers close up over what
was dropped, and what arrives decodes as the publisher's frames did.

The streams are real: libvpx (through PyAV) encodes two simulcast layers with three temporal layers
(the 0-2-1-2 pattern Chromium uses), aiortc's payload descriptor writes their packets, and aiortc's
jitter buffer, depayloader and VP8 decoder play what the down-track sends."""

from __future__ import annotations

import fractions
import itertools
from collections.abc import Iterable

import av
import numpy
import pytest
from aiortc.codecs.vpx import Vp8Decoder, VpxPayloadDescriptor, vp8_depayload
from aiortc.jitterbuffer import JitterBuffer
from aiortc.rtp import RtpPacket

from sfu import rtp
from sfu.forwarder import DownTrack
from sfu.sdp import Codec
from sfu.track import Layer, PublishedTrack
from sfu.vp8 import ALL_TEMPORAL

PATTERN = (0, 2, 1, 2)  # temporal layer of each frame in a period of four
SYNC = (False, True, True, False)  # frames that refer to the base layer only (the Y bit)
FRAMES = 24
PACKET_SIZE = 300  # small, so most frames take several packets
TEMPORAL = (
    "ts_number_layers=3:ts_target_bitrate=180,240,300:ts_rate_decimator=4,2,1:ts_periodicity=4:"
    "ts_layer_id=0,2,1,2:ts_layering_mode=3"
)


def encode(width: int, height: int, keys: Iterable[int]) -> list[bytes]:
    """``FRAMES`` frames of moving colour, with key frames at ``keys``. Error-resilient mode keeps
    a frame's entropy state to itself, as libwebrtc's temporal layers do, so that frames above the
    base layer can be left out."""
    codec = av.CodecContext.create("libvpx", "w")
    codec.width, codec.height, codec.pix_fmt = width, height, "yuv420p"
    codec.bit_rate = 300_000
    codec.time_base = fractions.Fraction(1, 30)
    codec.options = {
        "deadline": "realtime",
        "lag-in-frames": "0",
        "cpu-used": "-6",
        "error-resilient": "default",
        "ts-parameters": TEMPORAL,
    }
    frames = []
    rows, columns = numpy.mgrid[0:height, 0:width]
    for index in range(FRAMES):
        image = numpy.stack(
            [(columns * 2 + index * 5) % 256, (rows * 3 + index * 7) % 256, (rows + columns + index * 11) % 256],
            axis=-1,
        ).astype(numpy.uint8)
        frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")
        frame.pts, frame.time_base = index, codec.time_base
        if index in keys:
            frame.pict_type = av.video.frame.PictureType.I
        frames.extend(bytes(packet) for packet in codec.encode(frame))
    assert len(frames) == FRAMES
    return frames


def decode(frames: Iterable[bytes]) -> list[numpy.ndarray]:
    decoder = av.CodecContext.create("libvpx", "r")
    return [decoder.decode(av.Packet(data))[0].to_ndarray() for data in frames]


class Stream:
    """One simulcast layer as its publisher sends it: RTP packets per frame, with the descriptor
    counters of its own encoder."""

    def __init__(
        self, frames: list[bytes], ssrc: int, seq: int, picture: int, tl0: int, keyidx: int, size: int = PACKET_SIZE
    ) -> None:
        self.frames = frames
        self.packets: list[list[bytes]] = []
        for index, data in enumerate(frames):
            tid = PATTERN[index % 4]
            if tid == 0 and index:
                tl0 = (tl0 + 1) & 0xFF
            parts = []
            for start in range(0, len(data), size):
                descriptor = VpxPayloadDescriptor(
                    partition_start=int(start == 0),
                    partition_id=0,
                    picture_id=(picture + index) & 0x7FFF,
                    tl0picidx=tl0,
                    tid=(tid, int(SYNC[index % 4])),
                    keyidx=keyidx,
                )
                marker = 0x80 if start + size >= len(data) else 0
                header = rtp.FIXED_HEADER.pack(0x80, 96 | marker, seq & 0xFFFF, index * 3000, ssrc)
                parts.append(header + bytes(descriptor) + data[start : start + size])
                seq += 1
            self.packets.append(parts)


@pytest.fixture(scope="module")
def clips() -> tuple[list[bytes], list[bytes]]:
    return encode(160, 120, keys=(0, 16)), encode(320, 240, keys=(0, 12))


class Receiver:
    """A down-track of a two-layer VP8 track, and what it sent."""

    def __init__(self) -> None:
        self.track = PublishedTrack("p", 1, "video", Codec(96, "vp8", 90000), "1", "s", ["l", "h"], lambda _: None)
        for index, layer in enumerate(self.track.layers):
            layer.bind(1000 + index)
        self.sent: list[bytes] = []
        self.down = DownTrack(self.track, "sub", "0", self.sent.append)
        self.down.paused = False
        self.track.downtracks.append(self.down)

    def forward(self, layer: Layer, packets: Iterable[bytes]) -> None:
        for data in packets:
            self.track.forward(layer, rtp.Packet(data))

    def received(self) -> list[tuple[rtp.Packet, VpxPayloadDescriptor]]:
        packets = [rtp.Packet(data) for data in self.sent]
        return [(packet, VpxPayloadDescriptor.parse(packet.payload)[0]) for packet in packets]

    def frames(self) -> list[VpxPayloadDescriptor]:
        """The descriptor of each frame's first packet, in the order sent."""
        return [descriptor for _, descriptor in self.received() if descriptor.partition_start]

    def played(self) -> list[numpy.ndarray]:
        """What aiortc's receiver decodes of it; any decoding error fails the test."""
        buffer, decoder, pictures = JitterBuffer(capacity=512, is_video=True), Vp8Decoder(), []
        for data in [*self.sent, self.closing_packet()]:
            packet = RtpPacket.parse(data)
            packet._data = vp8_depayload(packet.payload)  # type: ignore[attr-defined]  # as aiortc's receiver does
            _, frame = buffer.add(packet)
            if frame is not None:
                pictures.extend(picture.to_ndarray(format="yuv420p") for picture in decoder.decode(frame))
        return pictures

    def closing_packet(self) -> bytes:
        """A packet after the last one, so the jitter buffer hands over the last frame."""
        packets = [rtp.Packet(data) for data in self.sent]
        last = max(packets, key=lambda packet: (packet.seq - packets[0].seq) & 0xFFFF)
        header = rtp.FIXED_HEADER.pack(0x80, 96, (last.seq + 1) & 0xFFFF, last.timestamp + 3000, last.ssrc)
        return header + b"\x10\x00"


def assert_continuous(receiver: Receiver, wrap: int = 0x8000) -> None:
    """Sequence numbers without a gap, picture IDs one up per frame (modulo ``wrap``), TL0PICIDX one up
    per base frame."""
    received = receiver.received()
    first = received[0][0].seq
    received.sort(key=lambda pair: (pair[0].seq - first) & 0xFFFF)  # repairs are sent late
    assert all((b.seq - a.seq) & 0xFFFF == 1 for (a, _), (b, _) in itertools.pairwise(received))
    frames = [descriptor for _, descriptor in received if descriptor.partition_start]
    assert all((b.picture_id - a.picture_id) % wrap == 1 for a, b in itertools.pairwise(frames))
    base = [frame.tl0picidx for frame in frames if frame.tid[0] == 0 and frame.tl0picidx is not None]
    assert all((b - a) & 0xFF == 1 for a, b in itertools.pairwise(base)), base


def test_switching_layers_keeps_the_descriptor_continuous_and_every_frame_decodes(clips) -> None:
    low_frames, high_frames = clips
    # Each layer's own counters, far apart and about to wrap (picture ID at 15 bits, TL0PICIDX at 8).
    low = Stream(low_frames, 1000, 65500, picture=32760, tl0=250, keyidx=3)
    high = Stream(high_frames, 1001, 200, picture=9000, tl0=17, keyidx=30)
    receiver = Receiver()
    down, (low_layer, high_layer) = receiver.down, receiver.track.layers
    down.target_layer = 0
    for index in range(12):
        receiver.forward(low_layer, low.packets[index])
    down.target_layer = 1
    for index in range(12, 16):  # the high layer's key frame at 12 is where the switch happens
        receiver.forward(high_layer, high.packets[index])
        receiver.forward(low_layer, low.packets[index])
    down.target_layer = 0
    for index in range(16, FRAMES):  # and back at the low layer's key frame at 16
        receiver.forward(low_layer, low.packets[index])
        receiver.forward(high_layer, high.packets[index])
    assert down.switches == 2
    assert_continuous(receiver)
    frames = receiver.frames()
    assert len(frames) == FRAMES
    keys = [frame.keyidx for frame in frames]
    assert keys[11] != keys[12] != keys[16] and len(set(keys[:12])) == len(set(keys[12:16])) == 1
    assert (frames[0].picture_id, frames[0].tl0picidx) == (32760, 250), "the first layer's counters go on as sent"
    played = receiver.played()
    expected = [*decode(low_frames)[:12], *decode(high_frames)[:16][12:], *decode(low_frames)[16:]]
    assert len(played) == FRAMES
    assert all(numpy.array_equal(a, b) for a, b in zip(played, expected, strict=True))


def test_dropped_temporal_layers_leave_no_gap_and_the_frames_kept_decode_as_sent(clips) -> None:
    low_frames, _ = clips
    low = Stream(low_frames, 1000, 65530, picture=32700, tl0=254, keyidx=0)
    receiver = Receiver()
    down, layer = receiver.down, receiver.track.layers[0]
    down.target_layer = 0
    assert down.rewriter is not None
    receiver.forward(layer, low.packets[0])
    down.rewriter.set_temporal(1)  # half the frame rate: no TL2
    for index in range(1, 9):
        receiver.forward(layer, low.packets[index])
    assert down.temporal_layer == 1
    down.rewriter.set_temporal(0)  # a quarter: the base layer only
    for index in range(9, 15):
        receiver.forward(layer, low.packets[index])
    assert down.temporal_layer == 0
    # Raised again before a TL2 frame (15) that refers to a TL1 frame the receiver never got: the
    # higher layers come back at the next base-layer frame (16), not before.
    down.rewriter.set_temporal(ALL_TEMPORAL)
    for index in range(15, FRAMES):
        receiver.forward(layer, low.packets[index])
    assert down.temporal_layer == 2
    kept = [0, 2, 4, 6, 8, 12, *range(16, FRAMES)]
    assert len(receiver.frames()) == len(kept)
    assert_continuous(receiver)
    reference = decode(low_frames)
    played = receiver.played()
    assert len(played) == len(kept)
    assert all(numpy.array_equal(played[n], reference[index]) for n, index in enumerate(kept))
    assert down.packets == len(receiver.sent) == sum(len(low.packets[index]) for index in kept)


def test_a_late_packet_gets_the_numbers_of_its_place_and_nacks_find_rewritten_packets(clips) -> None:
    low_frames, _ = clips
    low = Stream(low_frames, 1000, 7, picture=120, tl0=9, keyidx=1)
    receiver = Receiver()
    down, layer = receiver.down, receiver.track.layers[0]
    down.target_layer = 0
    assert down.rewriter is not None and len(low.packets[2]) > 1
    receiver.forward(layer, low.packets[0])
    down.rewriter.set_temporal(1)
    late = low.packets[2][-1]  # the TL1 frame's last packet comes after the TL2 and TL0 frames behind it
    for index in range(1, 5):
        receiver.forward(layer, low.packets[index] if index != 2 else low.packets[2][:-1])
    receiver.forward(layer, [late])
    seqs = [rtp.Packet(data).seq for data in receiver.sent]
    assert sorted((seq - seqs[0]) & 0xFFFF for seq in seqs) == list(range(len(seqs))), "it fills its own place"
    last = rtp.Packet(receiver.sent[-1])
    assert last.payload.endswith(late[-20:]) and last.marker
    frame_start = next(packet for packet, descriptor in receiver.received() if packet.timestamp == last.timestamp)
    descriptor = VpxPayloadDescriptor.parse(last.payload)[0]
    assert descriptor.picture_id == VpxPayloadDescriptor.parse(frame_start.payload)[0].picture_id
    # The receiver asks for the late packet and for one of the base frame after it: each answer is
    # what it was sent under that number.
    resent: list[bytes] = []
    down.on_nack([last.seq, seqs[-2]], resent.append)
    assert resent == [receiver.sent[-1], receiver.sent[-2]]


def test_packets_lost_on_the_way_in_from_dropped_frames_leave_no_gap(clips) -> None:
    """A packet the publisher's stream lacks, in a frame the receiver does not get, must not show
    as a gap either: aiortc's jitter buffer would wait for it (and its repair is dropped anyway)."""
    low_frames, _ = clips
    low = Stream(low_frames, 1000, 65520, picture=40, tl0=1, keyidx=1, size=40)
    receiver = Receiver()
    down, layer = receiver.down, receiver.track.layers[0]
    down.target_layer = 0
    assert down.rewriter is not None and min(len(low.packets[index]) for index in (1, 3, 5)) >= 3
    receiver.forward(layer, low.packets[0])
    down.rewriter.set_temporal(1)
    lost = [low.packets[1][1], low.packets[3][-1], low.packets[5][0]]  # inside, at the end, at the start
    for index in range(1, 8):
        receiver.forward(layer, [data for data in low.packets[index] if data not in lost])
    receiver.forward(layer, lost)  # their repairs, late
    assert_continuous(receiver)
    assert len(receiver.sent) == sum(len(low.packets[index]) for index in (0, 2, 4, 6))
    assert numpy.array_equal(receiver.played()[-1], decode(low_frames)[6])


def test_a_frame_lost_whole_on_the_way_in_is_forwarded_when_its_repair_comes(clips) -> None:
    low_frames, _ = clips
    low = Stream(low_frames, 1000, 300, picture=500, tl0=3, keyidx=2)
    receiver = Receiver()
    down, layer = receiver.down, receiver.track.layers[0]
    down.target_layer = 0
    assert down.rewriter is not None
    down.rewriter.set_temporal(1)
    receiver.forward(layer, low.packets[0])
    for index in (1, 3, 4, 5):  # frame 2 (TL1) lost whole, the TL2 frames around it dropped
        receiver.forward(layer, low.packets[index])
    receiver.forward(layer, low.packets[2])  # its repair
    assert_continuous(receiver)
    assert len(receiver.sent) == sum(len(low.packets[index]) for index in (0, 2, 4))
    played = receiver.played()
    assert len(played) == 3 and numpy.array_equal(played[-1], decode(low_frames)[4])


def test_seven_bit_picture_ids_wrap_at_128_and_descriptors_without_them_pass() -> None:
    def packet(seq: int, picture: int | None, tid: int, key: bool = False) -> bytes:
        # X and S; then I (a 7-bit picture ID) and T, or T alone
        descriptor = bytes((0x90, 0x20, tid << 6)) if picture is None else bytes((0x90, 0xA0, picture, tid << 6))
        frame = (b"\x00" if key else b"\x01") + bytes(20)
        header = rtp.FIXED_HEADER.pack(0x80, 0xE0, seq, seq * 3000, 1000)
        return header + descriptor + frame

    receiver = Receiver()
    down, layer = receiver.down, receiver.track.layers[0]
    down.target_layer = 0
    assert down.rewriter is not None
    receiver.forward(layer, [packet(1, 125, 0, key=True)])
    down.rewriter.set_temporal(1)
    receiver.forward(layer, [packet(2 + n, (126 + n) & 0x7F, PATTERN[(n + 1) % 4]) for n in range(7)])
    pictures = [rtp.Packet(data).payload[2] for data in receiver.sent]
    assert pictures == [125, 126, 127, 0], "one up per frame kept, 7 bits wide"
    assert_continuous(receiver, wrap=0x80)
    # Without picture IDs a frame above the layers let through is still dropped, and nothing else changes.
    before = len(receiver.sent)
    receiver.forward(layer, [packet(9, None, 2), packet(10, None, 0)])
    assert len(receiver.sent) == before + 1 and receiver.sent[-1].endswith(packet(10, None, 0)[12:])


def test_the_lowest_layer_drops_temporal_layers_before_video_is_paused(clips) -> None:
    low_frames, _ = clips
    receiver = Receiver()
    down, layers = receiver.down, receiver.track.layers
    down.target_layer = 0
    receiver.forward(layers[0], Stream(low_frames, 1000, 1, 5, 5, 5).packets[0])
    assert down.rewriter is not None and down.rewriter.temporal_layers == 1
    receiver.forward(layers[0], Stream(low_frames, 1000, 1, 5, 5, 5).packets[1])  # a TL2 frame: three layers
    assert down.rewriter.temporal_layers == 3
    layers[0].bitrate, layers[1].bitrate = 150_000, 600_000
    for layer in layers:
        layer.last_arrival = 1e12  # both layers are sending
    down.congested = True  # an estimate brought down by congestion: a hard limit
    expected = {1_000_000: ALL_TEMPORAL, 400_000: ALL_TEMPORAL, 130_000: 1, 100_000: 0, 80_000: 0}
    for bandwidth, temporal in expected.items():
        down.bandwidth = bandwidth
        down.choose_layer()
        assert down.rewriter.target_temporal == temporal, bandwidth
        assert down.target_layer == (1 if bandwidth >= 600_000 else 0)
        assert down.held_back == (bandwidth < 600_000)
        assert down.next_layer_up() == (0 if temporal < ALL_TEMPORAL else 1 if bandwidth < 600_000 else None)
    # A climb (after a probe, sfu/allocator.py) brings the whole layer back; so does calm.
    down.climb()
    assert down.rewriter.target_temporal == ALL_TEMPORAL and down.target_layer == 0
    down.climbed, down.congested = -1, False
    down.choose_layer()
    assert down.rewriter.target_temporal == ALL_TEMPORAL


def test_packets_lost_before_a_switch_come_back_as_fillers_and_the_new_layer_plays(clips) -> None:
    """Packets of the layer left behind, lost on the way to the receiver, are no use to its decoder
    once it has the new layer's key frame, but aiortc's jitter buffer waits for every number: they
    are answered with fillers (their numbers, no payload). A frame lost whole gets its first packet
    back as it was, for a frame made only of fillers would reach FFmpeg empty, which it takes for
    the end of the stream: nothing would decode after it."""
    low_frames, high_frames = clips
    low = Stream(low_frames, 1000, 300, picture=50, tl0=5, keyidx=1, size=60)
    high = Stream(high_frames, 1001, 9000, picture=700, tl0=70, keyidx=2)
    receiver = Receiver()
    down, (low_layer, high_layer) = receiver.down, receiver.track.layers
    down.target_layer = 0
    counts = []
    for index in range(12):
        receiver.forward(low_layer, low.packets[index])
        counts.append(len(receiver.sent))
    assert len(low.packets[9]) > 1 and len(low.packets[10]) > 1
    # The link drops all but the first packet of frame 9 and the whole of frame 10.
    lost = receiver.sent[counts[8] + 1 : counts[10]]
    opening = receiver.sent[counts[9]]
    down.target_layer = 1
    receiver.forward(high_layer, high.packets[12])  # the high layer's key frame: the switch
    assert down.switches == 1
    switched = len(receiver.sent)
    resent: list[bytes] = []
    down.on_nack([rtp.Packet(data).seq for data in lost], resent.append)
    for index in range(13, FRAMES):
        receiver.forward(low_layer, low.packets[index])
        receiver.forward(high_layer, high.packets[index])
    assert [rtp.Packet(data).seq for data in resent] == [rtp.Packet(data).seq for data in lost]
    for original, answer in zip(lost, resent, strict=True):
        if original is opening:
            assert answer == original, "the first packet of a frame lost whole is sent again as it was"
        else:
            packet = rtp.Packet(answer)
            assert answer[0] & 0x20 and not packet.has_payload, "a filler: padding only"
            assert packet.timestamp == rtp.Packet(original).timestamp
    # aiortc's receiver plays what arrived, the answers after the key frame, and keeps decoding through
    # the broken frames of the layer left behind (as its receiver does: errors are logged and skipped).
    buffer, decoder, pictures = JitterBuffer(capacity=512, is_video=True), Vp8Decoder(), []
    arrived = [data for data in receiver.sent[:switched] if data not in set(lost)]
    for data in [*arrived, *resent, *receiver.sent[switched:], receiver.closing_packet()]:
        packet = RtpPacket.parse(data)
        packet._data = vp8_depayload(packet.payload) if packet.payload else b""  # type: ignore[attr-defined]
        _, frame = buffer.add(packet)
        if frame is not None:
            try:
                pictures.extend(picture.to_ndarray(format="yuv420p") for picture in decoder.decode(frame))
            except av.FFmpegError:
                continue
    expected = decode(high_frames)[12:]
    assert len(pictures) >= len(expected)
    assert all(numpy.array_equal(a, b) for a, b in zip(pictures[-len(expected) :], expected, strict=True))
