"""VP9 SVC on its own: the payload descriptor read from packets Chromium sent (tests/vp9_capture.py),
and one receiver's cut of that stream (sfu/svc.py through the real PublishedTrack and DownTrack):
which layers it gets, where it may change layer, the marker that ends its pictures, sequence numbers
without holes and repairs answered from the renumbered history; and a VP9 track's recording (its
base spatial layer, from libvpx's frames)."""

from __future__ import annotations

import asyncio
import fractions
import itertools
import random
import time
from pathlib import Path

import av
import pytest

from media.mux import EncodedFrame, TrackWriter
from sfu import rtp, vp9
from sfu.depacketize import Vp9Depacketizer, vp9_keyframe_size
from sfu.forwarder import DownTrack
from sfu.negotiation import accept_publisher_offer, outgoing_codec
from sfu.sdp import Codec, parse
from tests.recording_media import FPS, STEP, decode_file, pattern, rtp_bytes
from tests.support import until
from tests.svc_support import RUNG, forward, svc_receiver
from tests.test_sfu_packets import CHROMIUM_OFFER
from tests.vp9_capture import SSRC, packets

KEY_PICTURES = (0, 61, 126, 186)  # indexes of the capture's key pictures' first packets
FEWER_LAYERS_FROM = 156  # the encoder sends two spatial layers from this packet on


def descriptor(packet: rtp.Packet) -> vp9.Descriptor:
    return vp9.parse(packet.data, packet.payload_start, packet.payload_end)


def test_chromium_l3t3_key_descriptors_are_read() -> None:
    captured = packets()
    read = [descriptor(packet) for packet in captured]
    key = read[0]
    assert key.keyframe and key.flexible and key.picture_id >= 0 and key.structure is not None
    assert key.structure.spatial_layers == 3 and key.structure.sizes == [(320, 180), (640, 360), (1280, 720)]
    assert [index for index, each in enumerate(read) if each.keyframe] == list(KEY_PICTURES)
    assert read[FEWER_LAYERS_FROM].structure is not None and read[FEWER_LAYERS_FROM].structure.spatial_layers == 2
    assert {(each.sid, each.tid) for each in read} == {(sid, tid) for sid in range(3) for tid in range(3)}
    for each in read:
        # L3T3_KEY: upper spatial layers lean on the one below only in key pictures, and every
        # other picture names the earlier one it is predicted from (flexible mode's P_DIFF).
        key_picture = not read[0].inter_picture and each.picture_id in {read[i].picture_id for i in KEY_PICTURES}
        assert each.inter_layer == (key_picture and each.sid > 0)
        assert bool(each.references) == each.inter_picture
        assert each.tl0picidx == vp9.NO_TL0PICIDX  # flexible mode has none
    # Each layer frame runs from a B packet to an E packet; the picture's last packet has the marker.
    for (a, da), (b, db) in itertools.pairwise(zip(captured, read, strict=True)):
        assert da.end == db.begin
        assert bool(a.marker) == (a.timestamp != b.timestamp)
    # The descriptor ends where the VP9 frame starts: a key frame's uncompressed header opens with
    # the frame marker (2) and, after the profile and show bits, the sync code 0x49 0x83 0x42.
    frame = captured[0].data[captured[0].payload_start + key.size :]
    assert frame[0] >> 6 == 2 and frame[1:4] == b"\x49\x83\x42"


def test_a_non_flexible_descriptor_and_short_ones() -> None:
    # I, L, B, E and V set: 15-bit picture id 0x1234, TID 2, U, SID 1, D, TL0PICIDX 7, then a
    # scalability structure of two spatial layers with sizes and a two-picture group of frames.
    data = bytes([0xAE, 0x80 | 0x12, 0x34, 0x40 | 0x10 | 0x02 | 0x01, 7])
    data += bytes([0x20 | 0x10 | 0x08, 0x01, 0x40, 0x00, 0xB4, 0x02, 0x80, 0x01, 0x68])
    data += bytes([2, 0x00 | 0x10 | 0x04, 2, 0x20 | 0x04, 1])
    read = vp9.parse(data + b"frame")
    assert (read.picture_id, read.tid, read.switch_up, read.sid, read.inter_layer) == (0x1234, 2, True, 1, True)
    assert not read.flexible and read.tl0picidx == 7 and read.begin and read.end and not read.inter_picture
    assert read.structure == vp9.ScalabilityStructure(2, [(320, 180), (640, 360)], [(0, True, (2,)), (1, False, (1,))])
    assert read.structure.temporal_layers == 2
    assert read.size == len(data) and not read.keyframe  # SID 1: not the base of a key picture
    for cut in range(len(data)):
        with pytest.raises(vp9.Vp9Error):
            vp9.parse(data[:cut])
    assert vp9.is_vp9_keyframe(bytes([0x08, 0x9D]))  # B, not P, no layer indices: a plain key frame
    assert not vp9.is_vp9_keyframe(bytes([0x48, 0x9D]))


def _receiver(rung: str) -> tuple[DownTrack, list[bytes], list[int]]:
    return svc_receiver(Codec(98, "vp9", 90000, fmtp="profile-id=0"), SSRC, rung)


def _sent(sent: list[bytes]) -> list[tuple[rtp.Packet, vp9.Descriptor]]:
    """The media packets sent (not padding), with their descriptors."""
    return [(packet, descriptor(packet)) for packet in map(rtp.Packet, sent) if packet.has_payload]


def _assert_continuous_with_pictures_marked(sent: list[bytes]) -> None:
    """In the order of their numbers, the packets run without a hole, and the last packet of each
    picture (and only it) has the marker."""
    ordered = sorted(map(rtp.Packet, sent), key=lambda packet: (packet.seq - rtp.Packet(sent[0]).seq) & 0xFFFF)
    assert all((b.seq - a.seq) & 0xFFFF == 1 for a, b in itertools.pairwise(ordered))
    media = [packet for packet in ordered if packet.has_payload]
    for a, b in itertools.pairwise(media):
        assert bool(a.marker) == (a.timestamp != b.timestamp), a.seq
    assert media[-1].marker


@pytest.mark.parametrize(
    ("rung", "sids", "tids"), [("low", {0}, {0, 1, 2}), ("low-t0", {0}, {0}), ("medium", {0, 1}, {0, 1, 2})]
)
def test_a_receiver_gets_only_the_layers_of_its_rung(rung: str, sids: set[int], tids: set[int]) -> None:
    down, sent, _ = _receiver(rung)
    captured = packets()
    forward(down, captured)
    out = _sent(sent)
    assert {d.sid for _, d in out} == sids and {d.tid for _, d in out} == tids
    expected = [p for p in captured if descriptor(p).sid in sids and descriptor(p).tid in tids]
    assert [p.payload for p, _ in out] == [p.payload for p in expected]
    _assert_continuous_with_pictures_marked(sent)
    assert down.current_layer == RUNG[rung] and down.svc.dropped == len(captured) - len(expected)


def test_up_waits_for_a_key_picture_and_asks_for_one_down_starts_with_the_next_picture() -> None:
    down, sent, requests = _receiver("low")
    captured = packets()
    track = down.track
    forward(down, captured[:30])
    assert track.svc is not None
    track.svc.roll_window(time.monotonic())
    rates = {name: track.rung_rate(index) for name, index in RUNG.items()}
    assert rates["low-t0"] < rates["low-t1"] < rates["low"] < rates["medium"] < rates["high"], rates

    # A cap between the smallest and the middle picture's rates: the smallest at full frame rate.
    down.max_bitrate = (rates["low"] + rates["medium"]) // 2
    down.choose_layer()
    assert down.target_layer == RUNG["low"] and requests == []
    down.max_bitrate = None
    down.choose_layer()
    assert down.target_layer == RUNG["high"] and requests == [0], "going up needs a key picture: asked for"
    forward(down, captured[30 : KEY_PICTURES[1]])
    assert {descriptor(rtp.Packet(data)).sid for data in sent} == {0}, "no upper layer before a key picture"
    key_picture = [p for p in captured if p.timestamp == captured[KEY_PICTURES[1]].timestamp]
    forward(down, key_picture)
    assert [descriptor(rtp.Packet(data)).sid for data in sent[-len(key_picture) :]] == [
        descriptor(p).sid for p in key_picture
    ]
    assert {descriptor(p).sid for p in key_picture} == {0, 1, 2}
    assert down.current_layer == RUNG["high"]

    # Down in the middle of a picture: the picture is finished as it began, the next one is smaller.
    middle = next(i for i in range(KEY_PICTURES[1] + len(key_picture), 120) if descriptor(captured[i]).sid == 1)
    forward(down, captured[KEY_PICTURES[1] + len(key_picture) : middle])
    down.max_bitrate = (rates["low"] + rates["medium"]) // 2
    down.choose_layer()
    before = len(sent)
    rest = next(i for i in range(middle, 120) if captured[i].timestamp != captured[middle].timestamp)
    forward(down, captured[middle:120])
    out = _sent(sent[before:])
    assert [d.sid for _, d in out[: rest - middle]] == [descriptor(p).sid for p in captured[middle:rest]]
    assert {d.sid for _, d in out[rest - middle :]} == {0}
    _assert_continuous_with_pictures_marked(sent)
    assert down.current_layer == RUNG["low"]


def test_a_receiver_paused_and_back_asks_for_a_key_picture_and_starts_there() -> None:
    down, sent, requests = _receiver("high")
    captured = packets()
    cut = next(index for index in range(30, 60) if captured[index].marker) + 1  # after a whole picture
    forward(down, captured[:cut])
    down.set_paused(True)
    before = len(sent)
    forward(down, captured[cut:40])
    assert len(sent) == before and requests == []
    down.set_paused(False)
    assert requests == [0], "a receiver starting again needs a key picture: asked for"
    forward(down, captured[40 : KEY_PICTURES[1]])
    assert len(sent) == before, "nothing before the key picture"
    forward(down, captured[KEY_PICTURES[1] : KEY_PICTURES[2]])
    assert descriptor(rtp.Packet(sent[before])).keyframe
    _assert_continuous_with_pictures_marked(sent)


def test_late_repairs_fill_their_gap_and_nacks_are_answered_from_the_renumbered_history() -> None:
    down, sent, _ = _receiver("low")
    captured = packets()
    lost_base = next(i for i in range(10, 60) if descriptor(captured[i]).sid == 0)  # forwarded to this receiver
    lost_top = next(i for i in range(10, 60) if descriptor(captured[i]).sid == 2)  # not forwarded to it
    order = [p for i, p in enumerate(captured[:60]) if i not in (lost_base, lost_top)]
    forward(down, order[:50])
    forward(down, [captured[lost_top], captured[lost_base]])  # repairs, after the packets that followed
    forward(down, order[50:])
    # In the order of the numbers it was given, what the receiver got is the base layer as sent:
    # the base layer's repair took the number left for it, the top layer's became padding in its own.
    by_seq = sorted(_sent(sent), key=lambda entry: entry[0].seq)
    assert [p.payload for p, _ in by_seq] == [p.payload for p in captured[:60] if descriptor(p).sid == 0]
    assert sum(not rtp.Packet(data).has_payload for data in sent) == 1
    _assert_continuous_with_pictures_marked(sent)
    forward(down, [captured[lost_top], captured[lost_base]])  # sent again upstream: not again here
    assert len(sent) == len(by_seq) + 1

    resent: list[bytes] = []
    for index in (0, 7, len(sent) - 1):
        down.on_nack([rtp.Packet(sent[index]).seq], resent.append)
        assert resent[-1] == sent[index]


def test_vp9_is_taken_when_the_publisher_puts_profile_0_first() -> None:
    single = "\r\n".join(line for line in CHROMIUM_OFFER.split("\r\n") if not line.startswith(("a=rid", "a=simulcast")))
    vp9_first = single.replace("SAVPF 96 97 98 99 102 103", "SAVPF 98 99 96 97 102 103").replace(
        "a=rtpmap:98 VP9/90000", "a=rtpmap:98 VP9/90000\r\na=fmtp:98 profile-id=0"
    )
    video = accept_publisher_offer(parse(vp9_first))[1]
    assert video is not None and video.codec.name == "vp9" and video.rtx_payload_type == 99 and video.rids == []
    offered = outgoing_codec(video.codec)
    assert (offered.payload_type, offered.fmtp) == (98, "profile-id=0")
    assert accept_publisher_offer(parse(single))[1].codec.name == "vp8", "VP8 first: VP8, as before"
    profile_2 = vp9_first.replace("profile-id=0", "profile-id=2")
    assert accept_publisher_offer(parse(profile_2))[1].codec.name == "vp8", "profile 2 is not every receiver's"


def test_hostile_descriptors_are_dropped_never_raised() -> None:
    """Random payloads, many with plausible first bytes, through a VP9 track to a receiver."""
    generator = random.Random(9)
    down, sent, _ = _receiver("medium")
    firsts = [0xBE, 0xFD, 0xF9, 0x08, 0x0C, 0xAE, 0x12, 0x02, 0xFF]
    captured = packets()
    hostile = []
    for seq in range(5000):
        size = generator.randrange(0, 40)
        payload = bytes([generator.choice(firsts)] * (size > 0)) + generator.randbytes(max(0, size - 1))
        hostile.append(rtp.Packet(rtp_bytes(seq, seq // 3 * STEP, SSRC, payload, generator.random() < 0.3, 98)))
    forward(down, captured[:20] + hostile[:2500] + captured[20:] + hostile[2500:])
    assert down.track.svc is not None and down.track.svc.malformed > 0
    for data in sent:
        packet = rtp.Packet(data)
        if packet.has_payload:
            descriptor(packet)  # whatever is forwarded reads as VP9


def _vp9_encoder(width: int, height: int) -> av.CodecContext:
    context = av.CodecContext.create("libvpx-vp9", "w")
    context.width, context.height, context.pix_fmt = width, height, "yuv420p"
    context.time_base = fractions.Fraction(1, FPS)
    context.bit_rate = 400_000
    context.gop_size = 1000
    context.options = {"deadline": "realtime", "lag-in-frames": "0", "cpu-used": "8"}
    return context


def _layered_packets(frames: list[bytes], upper: bytes) -> list[rtp.Packet]:
    """Each frame as the base spatial layer of a picture (split in 900-byte packets, the descriptor's
    I, P, L, B, E bits set as a sender would), followed by an upper layer frame of ``upper``."""
    out, seq = [], 1000
    for index, frame in enumerate(frames):
        key = index in KEYS
        chunks = [frame[start : start + 900] for start in range(0, len(frame), 900)]
        layer_frames = [(0, chunks), (1, [upper])]
        for sid, parts in layer_frames:
            for number, part in enumerate(parts):
                flags = vp9.FLAG_I | vp9.FLAG_L | (0 if key and sid == 0 else vp9.FLAG_P)
                flags |= (vp9.FLAG_B if number == 0 else 0) | (vp9.FLAG_E if number == len(parts) - 1 else 0)
                head = bytes([flags, index & 0x7F, sid << 1 | (1 if key and sid else 0), index & 0xFF])
                marker = sid == 1 and number == len(parts) - 1
                out.append(rtp.Packet(rtp_bytes(seq, index * STEP, SSRC, head + part, marker, 98)))
                seq += 1
    return out


KEYS = (0, 15)


async def test_a_vp9_track_is_recorded_at_its_base_spatial_layer(tmp_path: Path) -> None:
    encoder = _vp9_encoder(320, 180)
    frames = []
    for index in range(30):
        picture = pattern(index, 320, 180)
        if index in KEYS:
            picture.pict_type = av.video.frame.PictureType.I
        frames.append(b"".join(bytes(packet) for packet in encoder.encode(picture)))
    assert [vp9_keyframe_size(frame) for frame in frames] == [(320, 180) if i in KEYS else None for i in range(30)]

    emitted: list[EncodedFrame] = []
    depacketizer = Vp9Depacketizer(emitted.append)
    for packet in _layered_packets(frames, b"\x87upper layer, not recorded"):
        depacketizer.push(packet, time.time())
    assert [bytes(frame.data) for frame in emitted] == frames
    assert [index for index, frame in enumerate(emitted) if frame.keyframe] == list(KEYS)
    assert (emitted[0].width, emitted[0].height) == (320, 180)

    origin = time.time()
    writer = TrackWriter(tmp_path / "vp9.webm", "vp9", origin, lambda: None, lambda: None)
    for index, frame in enumerate(emitted):
        frame.wallclock = origin + index / FPS
        writer.put(frame)
    await until(lambda: writer.frames == len(frames), "the writer to take the frames")
    await asyncio.to_thread(writer.close)
    decoded = decode_file(tmp_path / "vp9.webm")
    assert len(decoded.pts) == 30 and set(decoded.sizes) == {(320, 180)}

    # Chromium's own packets: the base layer's frames come out, one per picture, upper layers left out.
    emitted.clear()
    captured = packets()
    for packet in captured:
        depacketizer.push(packet, time.time())
    pictures = sorted({packet.timestamp for packet in captured})
    assert [frame.timestamp for frame in emitted] == pictures
    assert [frame.keyframe for frame in emitted].count(True) == len(KEY_PICTURES)
