"""AV1 SVC on its own: the dependency descriptor read from packets Chromium sent
(tests/av1_capture.py), one receiver's cut of that stream (sfu/svc.py through the real PublishedTrack
and DownTrack, the descriptor forwarded with the id subscribers agree to), and the negotiation that
takes AV1 from a publisher that puts it first."""

from __future__ import annotations

import itertools
import random
import time

import pytest

from sfu import av1dd, rtp
from sfu.forwarder import DownTrack
from sfu.gcc import SendSideEstimator
from sfu.negotiation import OfferSlot, accept_publisher_offer, outgoing_codec, publisher_answer, subscriber_offer
from sfu.sdp import Codec, LocalTransport, parse
from tests.av1_capture import EXTENSION_ID, L1T3, SSRC, packets
from tests.svc_support import RUNG, forward, svc_receiver
from tests.test_sfu_packets import CHROMIUM_OFFER

KEY_PICTURES = (0, 91, 173, 203, 251)  # indexes of the capture's key pictures' first packets
TWO_LAYERS = (range(86, 91), range(161, 173))  # the encoder says only two spatial layers are active


def read_all(captured: list[rtp.Packet]) -> list[av1dd.Descriptor]:
    reader = av1dd.DependencyReader(EXTENSION_ID)
    return [reader.read(packet) for packet in captured]


def test_chromium_l3t3_key_dependency_descriptors_are_read() -> None:
    captured = packets()
    read = read_all(captured)
    structure = read[0].structure
    assert structure is not None and read[0].keyframe
    assert structure.sizes == [(320, 180), (640, 360), (1280, 720)]
    assert (structure.spatial_layers, structure.temporal_layers, structure.decode_targets) == (3, 3, 9)
    assert structure.decode_target_layers() == [(sid, tid) for sid in range(3) for tid in range(3)]
    assert structure.chains == 3 and structure.protected_by == (0, 0, 0, 1, 1, 1, 2, 2, 2)
    assert [index for index, each in enumerate(read) if each.keyframe] == list(KEY_PICTURES)
    assert {(each.sid, each.tid) for each in read} == {(sid, tid) for sid in range(3) for tid in range(3)}
    # Six decode targets (two spatial layers) active, until the next structure makes all nine so again.
    for stretch in TWO_LAYERS:
        assert read[stretch[0]].active_decode_targets == 0b111111
        assert all(each.sid < 2 for each in read[stretch.start : stretch.stop])
    # Frames run from a start packet to an end packet, numbered one after another; the last packet
    # of a picture (that of its highest spatial layer) has the marker.
    for (a, da), (b, db) in itertools.pairwise(zip(captured, read, strict=True)):
        assert da.end == db.begin
        assert db.frame_number == (da.frame_number + (1 if db.begin else 0)) & 0xFFFF
        assert bool(a.marker) == (a.timestamp != b.timestamp)
        if a.timestamp == b.timestamp and db.begin:
            assert db.sid == da.sid + 1  # a picture's frames go up the spatial layers
    # The base temporal layer's frames are switching points for the others.
    assert all(each.switch_up for each in read if each.tid == 0)


def test_a_structure_cut_short_or_missing_is_an_error() -> None:
    first = packets()[0].extensions[EXTENSION_ID]
    for cut in range(len(first) - 1):
        if cut == av1dd.MANDATORY_SIZE:
            continue  # the mandatory fields alone: a packet needing a structure, of which there is none
        with pytest.raises(av1dd.DependencyError):
            av1dd.parse(first[:cut], None)
    with pytest.raises(av1dd.DependencyError, match="no template structure"):
        av1dd.parse(first[: av1dd.MANDATORY_SIZE], None)
    structure = av1dd.parse(first, None).structure
    # A template id past the structure's templates.
    with pytest.raises(av1dd.DependencyError, match="outside"):
        av1dd.parse(bytes([0x80 | len(structure.templates), 0, 1]), structure)


def _receiver(rung: str) -> tuple[DownTrack, list[bytes], list[int]]:
    return svc_receiver(Codec(45, "av1", 90000, fmtp="profile=0"), SSRC, rung, dependency_extension_id=EXTENSION_ID)


def _sent(sent: list[bytes]) -> list[tuple[rtp.Packet, av1dd.Descriptor]]:
    """The media packets sent, with their descriptors read as a subscriber reads them (the id it agreed)."""
    reader = av1dd.DependencyReader(rtp.OUT_ID_DEPENDENCY_DESCRIPTOR)
    return [(packet, reader.read(packet)) for packet in map(rtp.Packet, sent) if packet.has_payload]


def _assert_continuous_with_pictures_marked(sent: list[bytes]) -> None:
    ordered = sorted(map(rtp.Packet, sent), key=lambda packet: (packet.seq - rtp.Packet(sent[0]).seq) & 0xFFFF)
    assert all((b.seq - a.seq) & 0xFFFF == 1 for a, b in itertools.pairwise(ordered))
    media = [packet for packet in ordered if packet.has_payload]
    for a, b in itertools.pairwise(media):
        assert bool(a.marker) == (a.timestamp != b.timestamp), a.seq
    assert media[-1].marker


@pytest.mark.parametrize(
    ("rung", "sids", "tids"),
    [("low", {0}, {0, 1, 2}), ("low-t0", {0}, {0}), ("medium", {0, 1}, {0, 1, 2}), ("high", {0, 1, 2}, {0, 1, 2})],
)
def test_a_receiver_gets_only_the_layers_of_its_rung(rung: str, sids: set[int], tids: set[int]) -> None:
    down, sent, _ = _receiver(rung)
    captured = packets()
    forward(down, captured)
    out = _sent(sent)
    assert {d.sid for _, d in out} == sids and {d.tid for _, d in out} == tids
    read = read_all(captured)
    expected = [p for p, d in zip(captured, read, strict=True) if d.sid in sids and d.tid in tids]
    assert [p.payload for p, _ in out] == [p.payload for p in expected]
    # The descriptor goes on as the publisher wrote it, under the subscriber's id.
    assert [p.extensions[rtp.OUT_ID_DEPENDENCY_DESCRIPTOR] for p, _ in out] == [
        p.extensions[EXTENSION_ID] for p in expected
    ]
    _assert_continuous_with_pictures_marked(sent)
    assert down.current_layer == RUNG[rung] and down.svc.dropped == len(captured) - len(expected)


@pytest.mark.parametrize(("rung", "tids"), [("low-t0", {0}), ("low-t1", {0, 1}), ("low", {0, 1, 2})])
def test_l1t3_a_receiver_gets_the_frame_rate_of_its_rung(rung: str, tids: set[int]) -> None:
    """One spatial layer, three temporal ones: the rungs above ``low`` are never active."""
    down, sent, _ = _receiver(rung)
    captured = packets(L1T3)
    read = read_all(captured)
    assert read[0].structure is not None and read[0].structure.sizes == [(640, 360)]
    assert {(d.sid, d.tid) for d in read} == {(0, 0), (0, 1), (0, 2)}
    forward(down, captured)
    assert down.track.active_rungs() == [RUNG["low-t0"], RUNG["low-t1"], RUNG["low"]]
    out = _sent(sent)
    expected = [p for p, d in zip(captured, read, strict=True) if d.tid in tids]
    assert {d.tid for _, d in out} == tids and [p.payload for p, _ in out] == [p.payload for p in expected]
    _assert_continuous_with_pictures_marked(sent)


def test_up_waits_for_a_key_picture_and_asks_for_one() -> None:
    down, sent, requests = _receiver("low")
    captured = packets()
    track = down.track
    forward(down, captured[:60])
    assert track.svc is not None
    track.svc.roll_window(time.monotonic())
    rates = {name: track.rung_rate(index) for name, index in RUNG.items()}
    assert rates["low-t0"] < rates["low-t1"] < rates["low"] < rates["medium"] < rates["high"], rates
    down.max_bitrate = (rates["low"] + rates["medium"]) // 2
    down.choose_layer()
    assert down.target_layer == RUNG["low"] and requests == []
    down.max_bitrate = None
    down.choose_layer()
    assert down.target_layer == RUNG["high"] and requests == [0], "going up needs a key picture: asked for"
    forward(down, captured[60 : KEY_PICTURES[1]])
    assert {d.sid for _, d in _sent(sent)} == {0}, "no upper layer before a key picture"
    before = len(sent)
    forward(down, captured[KEY_PICTURES[1] : KEY_PICTURES[2]])
    out = _sent(sent)[before:]
    assert out[0][1].keyframe and {d.sid for _, d in out} == {0, 1, 2}
    assert down.current_layer == RUNG["high"]
    _assert_continuous_with_pictures_marked(sent)


def test_stamped_for_transport_feedback_and_repaired_in_two_byte_headers() -> None:
    """The key frame's descriptor needs two-byte extension headers: each receiver's transport
    sequence number is written into that form, and a retransmission gets a number of its own."""
    down, sent, _ = _receiver("medium")
    down.estimator = SendSideEstimator()
    forward(down, packets()[:40])
    numbers = []
    for data in sent:
        assert data[12:14] == b"\x10\x00"
        packet = rtp.Packet(data)
        numbers.append(int.from_bytes(packet.extensions[rtp.OUT_ID_TRANSPORT_CC], "big"))
        assert rtp.OUT_ID_DEPENDENCY_DESCRIPTOR in packet.extensions
    assert numbers == list(range(numbers[0], numbers[0] + len(sent)))
    assert len(rtp.Packet(sent[0]).extensions[rtp.OUT_ID_DEPENDENCY_DESCRIPTOR]) > rtp.ONE_BYTE_MAX
    resent: list[bytes] = []
    down.on_nack([rtp.Packet(sent[0]).seq], resent.append)
    again = rtp.Packet(resent[0])
    assert int.from_bytes(again.extensions[rtp.OUT_ID_TRANSPORT_CC], "big") == numbers[-1] + 1
    assert again.payload == rtp.Packet(sent[0]).payload


def test_hostile_descriptors_are_dropped_never_raised() -> None:
    """Random descriptors, many opening like real ones, through an AV1 track to a receiver."""
    generator = random.Random(1)
    down, sent, _ = _receiver("medium")
    captured = packets()
    real = [packet.extensions[EXTENSION_ID] for packet in captured]
    hostile = []
    for seq in range(4000):
        base = generator.choice(real)
        if generator.random() < 0.5:
            value = bytearray(base[: generator.randrange(0, len(base) + 1)])
            for _ in range(generator.randrange(0, 4)):
                if value:
                    value[generator.randrange(len(value))] = generator.randrange(256)
        else:
            value = bytearray(generator.randbytes(generator.randrange(0, 40)))
        elements = [(EXTENSION_ID, bytes(value))] if value else []
        block = rtp.extension_block(elements, wide=True)
        head = rtp.FIXED_HEADER.pack(0x90 if block else 0x80, 45, seq, seq // 3 * 3000, SSRC)
        hostile.append(rtp.Packet(head + block + b"payload"))
    forward(down, captured[:100] + hostile[:2000] + captured[100:] + hostile[2000:])
    assert down.track.svc is not None and down.track.svc.malformed > 0
    _sent(sent)  # whatever is forwarded reads as a descriptor against the structure it came after


def _av1_offer(allow_mixed: bool = True, descriptor: bool = True) -> str:
    single = "\r\n".join(line for line in CHROMIUM_OFFER.split("\r\n") if not line.startswith(("a=rid", "a=simulcast")))
    offer = single.replace("SAVPF 96 97 98 99 102 103", "SAVPF 45 46 96 97 98 99 102 103").replace(
        "a=rtpmap:96 VP8/90000",
        "a=rtpmap:45 AV1/90000\r\na=fmtp:45 level-idx=5;profile=0;tier=0\r\na=rtpmap:46 rtx/90000\r\n"
        "a=fmtp:46 apt=45\r\na=rtpmap:96 VP8/90000",
    )
    if descriptor:
        offer = offer.replace("a=extmap:10 urn", f"a=extmap:12 {rtp.URI_DEPENDENCY_DESCRIPTOR}\r\na=extmap:10 urn")
    if allow_mixed:
        offer = offer.replace("a=msid-semantic", "a=extmap-allow-mixed\r\na=msid-semantic")
    return offer


def test_av1_is_taken_when_first_with_its_descriptor_and_offered_with_it() -> None:
    offer = parse(_av1_offer())
    audio, video, _ = accept_publisher_offer(offer)
    assert video is not None and video.codec.name == "av1" and video.rtx_payload_type == 46
    assert video.extension_ids[rtp.URI_DEPENDENCY_DESCRIPTOR] == 12
    assert rtp.URI_DEPENDENCY_DESCRIPTOR not in audio.extension_ids
    local = LocalTransport("u", "p" * 22, [("sha-256", "12:34")], [], "passive")
    answer = publisher_answer(offer, [audio, video, None], local, 1)
    assert "a=extmap-allow-mixed" in answer and f"a=extmap:12 {rtp.URI_DEPENDENCY_DESCRIPTOR}" in answer
    # Without two-byte headers (no a=extmap-allow-mixed) or without the descriptor: VP8, as before.
    assert accept_publisher_offer(parse(_av1_offer(allow_mixed=False)))[1].codec.name == "vp8"
    assert accept_publisher_offer(parse(_av1_offer(descriptor=False)))[1].codec.name == "vp8"
    assert accept_publisher_offer(parse(_av1_offer().replace("profile=0", "profile=1")))[1].codec.name == "vp8"

    codec = outgoing_codec(video.codec)
    assert (codec.payload_type, codec.fmtp) == (45, "level-idx=5;profile=0;tier=0")
    slots = [OfferSlot("0", "video", codec, 1, 2, "s", "t")]
    text = subscriber_offer(slots, local, 1, 1)
    assert "a=extmap-allow-mixed" in text and "a=rtpmap:45 AV1/90000" in text
    assert f"a=extmap:{rtp.OUT_ID_DEPENDENCY_DESCRIPTOR} {rtp.URI_DEPENDENCY_DESCRIPTOR}" in text
    vp8_slot = OfferSlot("0", "video", outgoing_codec(Codec(96, "vp8", 90000)), 1, 2, "s", "t")
    vp8 = subscriber_offer([vp8_slot], local, 1, 1)
    assert rtp.URI_DEPENDENCY_DESCRIPTOR not in vp8
