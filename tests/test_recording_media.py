"""Recording without re-encoding, on real encoders' output: RTP back into the encoder's frames, the
jitter buffer in front of that, the per-file writer, and recordings of a track that loses a packet
for good or switches simulcast layers."""

from __future__ import annotations

import asyncio
import fractions
import functools
import itertools
import random
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path

import av
import pytest
from aiortc.codecs.h264 import H264Encoder

from config.settings import SfuSettings
from media.mux import EncodedFrame, TrackWriter
from media.probe import end_time
from sfu import rtp
from sfu.depacketize import DEPACKETIZERS, sps_dimensions
from sfu.jitter import JitterBuffer
from sfu.peer import Peer
from sfu.sdp import Codec
from sfu.server import Sfu
from sfu.track import PublishedTrack
from tests.recording_media import (
    FPS,
    STEP,
    RtpSender,
    SimulcastPublisher,
    VideoEncoder,
    decode_file,
    opus_packets,
    rtp_bytes,
)
from tests.support import until


@functools.cache
def encoded_stream(
    codec: str, count: int = 30, size: tuple[int, int] = (320, 240), keyframes: tuple[int, ...] = (0, 12, 24)
) -> tuple[list[bytes], list[rtp.Packet]]:
    """``count`` frames from a real encoder and the RTP packets aiortc would send for them (made
    once per test run: nothing that reads them changes them)."""
    encoder, sender = VideoEncoder(codec, *size), RtpSender(codec, 1)
    encoded: list[bytes] = []
    packets: list[rtp.Packet] = []
    for index in range(count):
        encoded.append(encoder.encode(keyframe=index in keyframes))
        packets.extend(sender.packets(encoded[-1], index * STEP))
    return encoded, packets


def depacketize(codec: str, packets: list[rtp.Packet]) -> list[EncodedFrame]:
    frames: list[EncodedFrame] = []
    depacketizer = DEPACKETIZERS[codec](frames.append)
    for packet in packets:
        depacketizer.push(packet, 0.0)
    return frames


def decode(codec: str, frames: list[EncodedFrame]) -> list[tuple[int, int]]:
    """Sizes of the pictures a fresh decoder makes of ``frames``."""
    decoder = av.CodecContext.create(codec, "r")
    pictures = [picture for frame in frames for picture in decoder.decode(av.Packet(frame.data))]
    pictures.extend(decoder.decode(None))
    return [(picture.width, picture.height) for picture in pictures]


# depacketizers ----------------------------------------------------------------------------------


def test_vp8_frames_come_back_whole_from_aiortc_packets() -> None:
    encoded, packets = encoded_stream("vp8")
    assert len(packets) > len(encoded), "key frames span several packets"
    frames = depacketize("vp8", packets)
    assert [frame.data for frame in frames] == encoded
    assert [index for index, frame in enumerate(frames) if frame.keyframe] == [0, 12, 24]
    assert {(frame.width, frame.height) for frame in frames if frame.keyframe} == {(320, 240)}
    assert decode("vp8", frames) == [(320, 240)] * 30


def test_h264_nal_units_stap_a_and_fu_a_become_an_annex_b_stream_that_decodes() -> None:
    encoded, packets = encoded_stream("h264")
    packetizations = {packet.payload[0] & 0x1F for packet in packets}
    assert {24, 28} <= packetizations, "aiortc aggregated the parameter sets and fragmented the slices"
    frames = depacketize("h264", packets)
    assert all(frame.data.startswith(b"\x00\x00\x00\x01") for frame in frames)
    nal_units = [list(H264Encoder._split_bitstream(data)) for data in encoded]
    assert [list(H264Encoder._split_bitstream(frame.data)) for frame in frames] == nal_units
    assert [index for index, frame in enumerate(frames) if frame.keyframe] == [0, 12, 24]
    assert {(frame.width, frame.height) for frame in frames if frame.keyframe} == {(320, 240)}
    assert decode("h264", frames) == [(320, 240)] * 30


def test_an_h264_key_frame_sent_without_parameter_sets_gets_the_last_ones() -> None:
    encoder, sender = VideoEncoder("h264", 320, 240), RtpSender("h264", 1)
    first, delta, second = encoder.encode(keyframe=True), encoder.encode(), encoder.encode(keyframe=True)
    bare = b"".join(
        b"\x00\x00\x00\x01" + nal for nal in H264Encoder._split_bitstream(second) if nal[0] & 0x1F not in (7, 8)
    )
    alone = depacketize("h264", sender.packets(bare, 0))
    assert not alone[0].keyframe, "an IDR with no parameter set known cannot start a file"
    frames = depacketize(
        "h264", sender.packets(first, 0) + sender.packets(delta, STEP) + sender.packets(bare, 2 * STEP)
    )
    assert frames[2].keyframe and (frames[2].width, frames[2].height) == (320, 240)
    # A decoder starting there (a file's first frame, or a layer switch) decodes it on its own.
    assert decode("h264", frames[2:]) == [(320, 240)]


def test_sps_dimensions_include_cropping_and_high_profile_fields() -> None:
    for profile, (width, height) in (("High", (170, 98)), ("Baseline", (1280, 720))):
        encoder = av.CodecContext.create("libx264", "w")
        encoder.width, encoder.height, encoder.pix_fmt, encoder.profile = width, height, "yuv420p", profile
        encoder.time_base = fractions.Fraction(1, 30)
        frame = av.VideoFrame(width, height, "yuv420p")
        frame.pts = 0
        data = b"".join(bytes(packet) for packet in [*encoder.encode(frame), *encoder.encode(None)])
        [sps] = [nal for nal in H264Encoder._split_bitstream(data) if nal[0] & 0x1F == 7]
        assert sps_dimensions(sps) == (width, height), profile


def test_opus_packets_are_one_frame_each() -> None:
    encoded = opus_packets(0.5)
    sender = RtpSender("opus", 5, clock=48000)
    packets = [packet for index, data in enumerate(encoded) for packet in sender.packets(data, index * 960)]
    frames = depacketize("opus", packets)
    assert [frame.data for frame in frames] == encoded and all(frame.keyframe for frame in frames)
    assert [(frame.timestamp - frames[0].timestamp) & 0xFFFFFFFF for frame in frames] == [
        index * 960 for index in range(len(encoded))
    ]


@pytest.mark.parametrize("codec", ["vp8", "vp9", "h264", "opus"])
def test_hostile_payloads_are_dropped_never_raised(codec: str) -> None:
    generator = random.Random(11)
    frames: list[EncodedFrame] = []
    depacketizer = DEPACKETIZERS[codec](frames.append)
    firsts = [0x10, 0x90, 0x80, 0x00, 0x18, 0x1C, 0x7C, 0x5C, 0x67, 0x65, 0x19, 0x1D]
    for seq in range(4000):
        size = generator.randrange(0, 24)
        payload = bytes([generator.choice(firsts)] * (size > 0)) + generator.randbytes(max(0, size - 1))
        packet = rtp.Packet(rtp_bytes(seq, seq // 3, 1, payload, marker=generator.random() < 0.3))
        depacketizer.push(packet, 0.0)
        if generator.random() < 0.01:
            depacketizer.reset()
    for _ in range(2000):
        sps_dimensions(b"\x67" + generator.randbytes(generator.randrange(30)))


# jitter buffer ----------------------------------------------------------------------------------


def through_jitter(
    packets: list[rtp.Packet], order: list[int], gap: float = 0.005
) -> tuple[list[EncodedFrame], list[int], JitterBuffer]:
    """VP8 ``packets`` pushed in ``order``, one every ``gap`` seconds, into a buffer waiting 150 ms;
    a hole given up on resets the depacketizer, as a tap does."""
    frames: list[EncodedFrame] = []
    lost: list[int] = []
    depacketizer = DEPACKETIZERS["vp8"](frames.append)

    def on_lost(count: int) -> None:
        lost.append(count)
        depacketizer.reset()

    buffer = JitterBuffer(0.15, depacketizer.push, on_lost)
    for moment, index in enumerate(order):
        buffer.push(packets[index], moment * gap)
    return frames, lost, buffer


def test_reordered_packets_come_out_in_order() -> None:
    encoded, packets = encoded_stream("vp8")
    order = list(range(len(packets)))
    generator = random.Random(5)
    for start in range(0, len(order), 4):  # each run of four arrives shuffled
        window = order[start : start + 4]
        generator.shuffle(window)
        order[start : start + 4] = window
    frames, lost, buffer = through_jitter(packets, order)
    assert [frame.data for frame in frames] == encoded and not lost and not buffer.held


def test_a_hole_repaired_within_the_wait_loses_nothing() -> None:
    encoded, packets = encoded_stream("vp8")
    order = list(range(len(packets)))
    order.remove(1)
    order.insert(20, 1)  # a retransmission arriving 100 ms after the packets behind it
    frames, lost, _ = through_jitter(packets, order)
    assert [frame.data for frame in frames] == encoded and not lost


def test_a_hole_not_repaired_is_given_up_on_after_the_wait() -> None:
    encoded, packets = encoded_stream("vp8", keyframes=(0,))
    first_of_frame = [
        index for index, packet in enumerate(packets) if index == 0 or packet.timestamp != packets[index - 1].timestamp
    ]
    hole = first_of_frame[10]  # frame 10 loses its first packet for good
    order = [index for index in range(len(packets)) if index != hole]
    frames, lost, buffer = through_jitter(packets, order, gap=0.001)  # everything within the wait
    assert [frame.data for frame in frames] == encoded[:10] and not lost, "held, waiting for the repair"
    buffer.drain(len(order) * 0.001 + 0.15)
    assert lost == [1]
    assert [frame.data for frame in frames] == encoded[:10] + encoded[11:], "the broken frame alone is gone"
    buffer.push(packets[hole], 1.0)
    assert buffer.late == 1 and len(frames) == 29, "a repair after giving up is dropped"


def test_a_jump_in_sequence_numbers_starts_the_stream_afresh() -> None:
    released: list[int] = []
    lost: list[int] = []
    buffer = JitterBuffer(0.15, lambda packet, arrival: released.append(packet.seq), lost.append)
    for seq in (100, 101, 100, 40000, 40001, 39990):  # a duplicate, then minutes later (a mute)
        buffer.push(rtp.Packet(rtp_bytes(seq, 0, 1, b"\x10", False)), 0.0)
    assert released == [100, 101, 40000, 40001] and lost == [0] and buffer.late == 2


# the file writer --------------------------------------------------------------------------------


def vp8_frames(count: int, origin: float, keyframes: tuple[int, ...] = (0,)) -> list[EncodedFrame]:
    encoder = VideoEncoder("vp8", 320, 240)
    frames = []
    for index in range(count):
        key = index in keyframes
        size = (320, 240) if key else (0, 0)
        data = encoder.encode(keyframe=key)
        frames.append(EncodedFrame(data, index * STEP, key, origin, *size, wallclock=origin + index / FPS))
    return frames


async def test_a_file_copied_while_being_written_plays_up_to_its_last_second(tmp_path: Path) -> None:
    origin = time.time()
    path = tmp_path / "video.webm"
    writer = TrackWriter(path, "vp8", origin, lambda: None, lambda: None)
    frames = vp8_frames(4 * FPS, origin)
    for frame in frames:
        writer.put(frame)
    await until(lambda: writer.frames == len(frames), "the writer to take 4 s of video")
    shutil.copy(path, tmp_path / "copy.webm")  # what a kill at this moment would leave
    copy = decode_file(tmp_path / "copy.webm")
    last = round((len(frames) - 1) * 1000 / FPS)
    assert copy.pts[0] == 0 and copy.pts == sorted(copy.pts) and set(copy.sizes) == {(320, 240)}
    assert copy.pts[-1] >= last - 1100, f"the copy plays to {copy.pts[-1]} ms of {last} ms written"
    # Its header states no duration; its packets tell how long it is.
    with av.open(str(tmp_path / "copy.webm")) as container:
        assert not container.duration
    assert end_time(tmp_path / "copy.webm") == pytest.approx(copy.pts[-1] / 1000, abs=0.07)

    await asyncio.to_thread(writer.close)
    whole = decode_file(path)
    assert whole.pts == [round(index * 1000 / FPS) for index in range(len(frames))]
    with av.open(str(path)) as container:
        assert abs(container.duration / av.time_base - last / 1000) < 0.1
    assert writer.started_at == origin and abs(writer.ended_at - (origin + last / 1000)) < 0.002
    assert (writer.width, writer.height, writer.frames, writer.dropped) == (320, 240, len(frames), 0)
    assert writer.bytes_written == path.stat().st_size > 0 and writer.failure is None


async def test_a_writer_that_falls_behind_drops_frames_and_resumes_at_a_key_frame(tmp_path: Path) -> None:
    origin = time.time()
    path = tmp_path / "video.webm"
    requests: list[int] = []
    writer = TrackWriter(path, "vp8", origin, lambda: requests.append(1), lambda: None, capacity=4)
    frames = vp8_frames(16, origin, keyframes=(0, 12))
    for frame in frames[:12]:  # a burst far faster than a file is written: the queue overflows
        writer.put(frame)
    assert writer.dropped > 0 and requests == [1], "one key-frame request when the queue overflowed"
    kept = 12 - writer.dropped
    await until(lambda: writer.frames == kept, "the writer to catch up")
    for frame in frames[12:]:
        writer.put(frame)
    await asyncio.to_thread(writer.close)
    moments = [round(index * 1000 / FPS) for index in range(16)]
    assert decode_file(path).pts == moments[:kept] + moments[12:], "after the drop, nothing until a key frame"
    assert writer.frames == kept + 4 and writer.dropped == 12 - kept


# recordings of a track ------------------------------------------------------------------------


@pytest.fixture
async def sfu() -> AsyncIterator[Sfu]:
    server = Sfu(SfuSettings(ipv6=False, publish_bitrate=3_000_000, simulated_loss=0.0, bind_addresses=["127.0.0.1"]))
    yield server
    await server.close()


def video_track(peer: Peer, publisher: SimulcastPublisher) -> PublishedTrack:
    """A video track with the publisher's layers, as ``peer``'s connection would make it."""
    rids = ["l", "m", "h"][: len(publisher.sources)] if len(publisher.sources) > 1 else []
    track = PublishedTrack(
        peer.id, peer.user_id, "video", Codec(96, "vp8", 90000), "0", peer.id, rids, publisher.request_keyframe
    )
    publisher.bind(track)
    return track


def publish(peer: Peer, publisher: SimulcastPublisher) -> PublishedTrack:
    return add_to_room(peer, video_track(peer, publisher))


def add_to_room(peer: Peer, track: PublishedTrack) -> PublishedTrack:
    peer.publisher.tracks[track.mid] = track
    peer.room.add_track(track)
    return track


async def test_a_hole_not_repaired_in_time_skips_to_a_requested_key_frame(sfu: Sfu, tmp_path: Path) -> None:
    peer = sfu.peer(8, "b" * 32, 43, lambda kind, data: None)
    publisher = SimulcastPublisher([(320, 240)], start=time.time())
    track = publish(peer, publisher)
    closed = []
    sfu.start_recording(8, "rec-hole", tmp_path / "rec", closed.append)  # taps the track already there
    publisher.lose = {(0, 4)}
    frames = [publisher.encode(0, index) for index in range(8)]
    for packets in frames:  # arriving together, well within the wait for the hole's repair
        publisher.deliver(track, 0, packets)
    await sfu.start()
    await until(lambda: publisher.keyframe_requests, "a key-frame request once the hole is given up on")
    for index in range(8, 13):  # the requested key frame comes first
        publisher.send(track, 0, index)

    await sfu.remove_peer(peer.id)  # the publisher leaves: its file is closed, the recording goes on
    await until(lambda: closed, "the file to be closed")
    [video] = closed
    assert video.closed and video.reason == "left" and sfu.recordings() == ["rec-hole"]
    assert video.path == tmp_path / "rec" / f"43-video-{track.id}.webm" and video.mime_type == "video/webm"
    assert (video.frames, video.dropped_frames) == (9, 4), "frame 4 and the three behind it until a key frame"
    decoded = decode_file(video.path)
    assert [round((moment - decoded.pts[0]) * FPS / 1000) for moment in decoded.pts] == [0, 1, 2, 3, 8, 9, 10, 11, 12]
    assert set(decoded.sizes) == {(320, 240)}
    assert await sfu.stop_recording("rec-hole") == [video] and sfu.recordings() == []


async def test_a_simulcast_layer_switch_mid_recording_plays_through(sfu: Sfu, tmp_path: Path) -> None:
    await sfu.start()
    closed = []
    sfu.start_recording(7, "rec-switch", tmp_path / "rec", closed.append)
    assert (tmp_path / "rec").stat().st_mode & 0o777 == 0o700
    peer = sfu.peer(7, "a" * 32, 42, lambda kind, data: None)
    start = time.time() + 0.2
    publisher = SimulcastPublisher([(160, 120), (320, 240)], start=start)
    track = publish(peer, publisher)  # published after the recording started: tapped too
    low, high = 0, 1
    sent = itertools.count()

    def send(layers: list[int], frames: int) -> None:
        for _ in range(frames):
            index = next(sent)
            for layer in layers:
                publisher.send(track, layer, index)

    send([high, low], 15)  # recorded from the best layer
    track.layers[high].last_arrival = 0.0  # the publisher stops its top layer (its uplink shrank)
    await until(lambda: low in publisher.keyframe_requests, "a key-frame request on the low layer")
    send([low], 15)
    send([high, low], 1)  # the top layer is back
    await until(lambda: high in publisher.keyframe_requests, "a key-frame request on the high layer")
    send([high, low], 15)

    [video] = await sfu.stop_recording("rec-switch")
    assert closed == [video] and video.reason == "stopped"
    decoded = decode_file(video.path)
    runs = [size for size, _ in itertools.groupby(decoded.sizes)]
    assert runs == [(320, 240), (160, 120), (320, 240)], "both switches decode"
    assert len(decoded.pts) == video.frames == 46 and video.dropped_frames == 0
    assert max(b - a for a, b in itertools.pairwise(decoded.pts)) < 100, "time runs on across the switches"
    assert abs(video.started_at - start) < 0.002 and (video.width, video.height) == (320, 240)
    assert abs(decoded.pts[-1] - decoded.pts[0] - 45 * 1000 / FPS) < 2


async def test_a_sender_report_written_late_does_not_move_the_frames(sfu: Sfu, tmp_path: Path) -> None:
    peer = sfu.peer(11, "e" * 32, 46, lambda kind, data: None)
    start = time.time() + 0.2  # after the recording's start
    publisher = SimulcastPublisher([(320, 240)], start=start)
    track = publish(peer, publisher)
    sfu.start_recording(11, "rec-late-report", tmp_path / "rec", lambda file: None)
    sender, layer = publisher.sources[0].sender, track.layers[0]
    for index in range(45):
        if index == 20:  # the sender's host stalled: its report places every frame a second late
            layer.sender_report = sender.sender_report(start + 1.0, 0)
        elif index == 35:  # and then it is on time again
            layer.sender_report = sender.sender_report(start, 0)
        publisher.send(track, 0, index)
    [video] = await sfu.stop_recording("rec-late-report")
    decoded = decode_file(video.path)
    assert len(decoded.pts) == 45 and abs(video.started_at - start) < 0.002
    steps = [b - a for a, b in itertools.pairwise(decoded.pts)]
    assert max(abs(step - 1000 / FPS) for step in steps) <= 1, f"frames kept their capture times: {steps}"


async def test_before_any_sender_report_a_held_up_key_frame_does_not_make_the_track_late(
    sfu: Sfu, tmp_path: Path
) -> None:
    await sfu.start()
    sfu.start_recording(12, "rec-no-report", tmp_path / "rec", lambda file: None)
    peer = sfu.peer(12, "f" * 32, 47, lambda kind, data: None)
    publisher = SimulcastPublisher([(320, 240)], start=time.time())
    track = publish(peer, publisher)
    track.layers[0].sender_report = None  # none has come yet
    frames = [publisher.encode(0, index) for index in range(15)]
    start = time.time() + 0.05  # frame 0 is captured then
    for index, packets in enumerate(frames):
        # The key frame is 150 ms on its way (encoding it took that long); the frames behind it
        # come as soon as it is through, then each on time.
        await asyncio.sleep(max(0.0, start + max(index / FPS, 0.15) - time.time()))
        publisher.deliver(track, 0, packets)
    [video] = await sfu.stop_recording("rec-no-report")
    decoded = decode_file(video.path)
    assert video.started_at is not None and len(decoded.pts) == 15
    late = [
        video.started_at + (pts - decoded.pts[0]) / 1000 - (start + index / FPS)
        for index, pts in enumerate(decoded.pts)
    ]
    assert all(-0.002 < delay < 0.04 for delay in late[3:]), f"placed after their capture by {late}"


async def test_padding_on_the_media_stream_leaves_no_hole_in_the_recording(sfu: Sfu, tmp_path: Path) -> None:
    peer = sfu.peer(10, "d" * 32, 45, lambda kind, data: None)
    publisher = SimulcastPublisher([(320, 240)], start=time.time())
    track = add_to_room(peer, video_track(peer, publisher))
    sender = publisher.sources[0].sender
    peer.publisher.routes[sender.ssrc] = (track, track.layers[0], False)
    sfu.start_recording(10, "rec-padding", tmp_path / "rec", lambda file: None)
    for index in range(10):  # each frame followed by padding, through the publisher connection's path
        for packet in [*publisher.encode(0, index), sender.padding(index * STEP)]:
            peer.publisher.on_rtp(packet.data)
    [video] = await sfu.stop_recording("rec-padding")
    assert (video.frames, video.dropped_frames) == (10, 0)
    assert len(decode_file(video.path).pts) == 10


async def test_a_full_disk_ends_the_file_and_the_recording_goes_on(sfu: Sfu, tmp_path: Path) -> None:
    closed = []
    sfu.start_recording(9, "rec-full", tmp_path / "rec", closed.append)
    peer = sfu.peer(9, "c" * 32, 44, lambda kind, data: None)
    publisher = SimulcastPublisher([(320, 240)], start=time.time())
    track = video_track(peer, publisher)
    (tmp_path / "rec" / f"44-video-{track.id}.webm").symlink_to("/dev/full")  # writes fail: no space left
    add_to_room(peer, track)
    for index in range(3):
        publisher.send(track, 0, index)
    await until(lambda: closed, "the file to be given up")
    [video] = closed
    assert video.closed and video.reason == "disk" and video.frames == 0 and not track.taps
    assert sfu.recordings() == ["rec-full"] and await sfu.stop_recording("rec-full") == [video]
