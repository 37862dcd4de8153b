"""Audio on bad links without media: Opus FEC and DTX in what the server answers and offers, RED
negotiated only where both sides offer it, and RED packets going as they are to receivers that
accepted RED and as their primary Opus frame to everyone else, recordings included."""

from __future__ import annotations

import struct

from aiortc.sdp import SessionDescription as AiortcSdp

from media.mux import EncodedFrame
from sfu import red, rtp
from sfu.forwarder import DownTrack
from sfu.negotiation import (
    OUTGOING_RED_PAYLOAD_TYPE,
    OfferSlot,
    accept_publisher_offer,
    outgoing_codec,
    publisher_answer,
    subscriber_offer,
)
from sfu.sdp import LocalTransport, parse
from sfu.taps import SenderClock, Tap
from sfu.track import PublishedTrack

LOCAL = LocalTransport("u", "p" * 22, [("sha-256", "AA")], [], "passive")


def audio_offer(formats: str, *codec_lines: str) -> str:
    return "\r\n".join(
        [
            "v=0",
            "o=- 1 2 IN IP4 127.0.0.1",
            "s=-",
            "t=0 0",
            "a=group:BUNDLE 0",
            f"m=audio 9 UDP/TLS/RTP/SAVPF {formats}",
            "c=IN IP4 0.0.0.0",
            "a=ice-ufrag:abcd",
            "a=ice-pwd:" + "x" * 22,
            "a=fingerprint:sha-256 AA",
            "a=setup:actpass",
            "a=mid:0",
            "a=sendonly",
            "a=msid:stream audio1",
            *codec_lines,
            "",
        ]
    )


CHROMIUM_AUDIO = audio_offer(
    "111 63 9",
    "a=rtpmap:111 opus/48000/2",
    "a=fmtp:111 minptime=10;useinbandfec=1;usedtx=1",
    "a=rtpmap:63 red/48000/2",
    "a=fmtp:63 111/111",
    "a=rtpmap:9 G722/8000",
)


def audio_lines(answer: str) -> list[str]:
    return [line for line in answer.split("\r\n") if line.startswith(("m=audio", "a=rtpmap", "a=fmtp"))]


def test_a_publisher_offering_red_is_answered_red_first_with_its_opus_parameters_and_fec() -> None:
    offer = parse(CHROMIUM_AUDIO)
    (audio,) = accept_publisher_offer(offer)
    assert audio.codec.name == "opus" and audio.red_payload_type == 63
    answer = publisher_answer(offer, [audio], LOCAL, 1)
    assert audio_lines(answer) == [
        "m=audio 9 UDP/TLS/RTP/SAVPF 63 111",  # RED first: what Chromium sends
        "a=rtpmap:63 red/48000/2",
        "a=fmtp:63 111/111",
        "a=rtpmap:111 opus/48000/2",
        "a=fmtp:111 minptime=10;useinbandfec=1;usedtx=1",
    ]
    assert [media.fmt for media in AiortcSdp.parse(answer).media] == [[63, 111]]  # an independent parser agrees


def test_without_red_on_offer_none_is_answered_and_fec_is_asked_for() -> None:
    offer = parse(audio_offer("109", "a=rtpmap:109 opus/48000/2", "a=fmtp:109 minptime=10"))
    (audio,) = accept_publisher_offer(offer)
    assert audio.red_payload_type is None
    answer = publisher_answer(offer, [audio], LOCAL, 1)
    assert audio_lines(answer) == [
        "m=audio 9 UDP/TLS/RTP/SAVPF 109",
        "a=rtpmap:109 opus/48000/2",
        "a=fmtp:109 minptime=10;useinbandfec=1",  # no DTX unless the publisher asks for it
    ]
    # RED around some other codec than the Opus taken is not RED with Opus.
    other = audio_offer("111 63 0", "a=rtpmap:111 opus/48000/2", "a=rtpmap:63 red/48000/2", "a=fmtp:63 0/0")
    assert accept_publisher_offer(parse(other))[0].red_payload_type is None


def test_subscribers_are_offered_red_only_for_a_red_track_and_the_publishers_opus_parameters() -> None:
    (audio,) = accept_publisher_offer(parse(CHROMIUM_AUDIO))
    codec = outgoing_codec(audio.codec)
    slots = [
        OfferSlot("0", "audio", codec, 12, 0, "streamA", "trackA", red=True),
        OfferSlot("1", "audio", codec, 13, 0, "streamB", "trackB"),
    ]
    text = subscriber_offer(slots, LOCAL, 1, 2)
    red_section, plain_section = text.split("\r\nm=")[1:]
    assert red_section.startswith(f"audio 9 UDP/TLS/RTP/SAVPF 111 {OUTGOING_RED_PAYLOAD_TYPE}\r\n")
    assert f"a=rtpmap:{OUTGOING_RED_PAYLOAD_TYPE} red/48000/2" in red_section
    assert f"a=fmtp:{OUTGOING_RED_PAYLOAD_TYPE} 111/111" in red_section
    assert plain_section.startswith("audio 9 UDP/TLS/RTP/SAVPF 111\r\n") and "red/" not in plain_section
    for section in (red_section, plain_section):
        assert "a=fmtp:111 minptime=10;useinbandfec=1;usedtx=1" in section
    assert [media.fmt for media in AiortcSdp.parse(text).media] == [[111, 63], [111]]


# packets ------------------------------------------------------------------------------------------


def red_payload(primary: bytes, *earlier: tuple[int, bytes], payload_type: int = 111) -> bytes:
    """RFC 2198: four-byte headers of the earlier (offset, block) pairs, the primary's one byte, blocks."""
    headers = b"".join(
        struct.pack("!BH", 0x80 | payload_type, offset << 2 | len(block) >> 8) + bytes((len(block) & 0xFF,))
        for offset, block in earlier
    )
    return headers + bytes((payload_type,)) + b"".join(block for _, block in earlier) + primary


def rtp_packet(seq: int, ts: int, payload: bytes, pt: int = 63) -> rtp.Packet:
    return rtp.Packet(struct.pack("!BBHII", 0x80, pt, seq, ts, 5555) + payload)


def test_the_primary_block_is_found_behind_any_number_of_redundant_ones() -> None:
    for earlier in ([], [(960, b"b" * 40)], [(1920, b"a" * 300), (960, b"b" * 41)]):
        packet = rtp_packet(7, 96000, red_payload(b"primary frame", *earlier))
        plain = red.primary_packet(packet)
        assert plain is not None
        assert plain.payload == b"primary frame" and plain.payload_type == 111
        assert (plain.seq, plain.timestamp, plain.ssrc) == (7, 96000, 5555)
    # headers or lengths that run past the payload
    for broken in (b"", b"\xef\x00", red_payload(b"", (960, b"x" * 10))[:-5]):
        assert red.primary_packet(rtp_packet(1, 0, broken)) is None


def test_red_block_headers_are_renumbered_to_the_subscribers_opus_type() -> None:
    packet = rtp_packet(1, 0, red_payload(b"new", (960, b"old"), payload_type=109))
    renumbered = red.renumbered(packet, 111)
    assert renumbered.payload == red_payload(b"new", (960, b"old"), payload_type=111)
    assert red.renumbered(renumbered, 111) is renumbered  # already right: not copied


def test_red_receivers_get_red_the_others_and_recordings_get_the_primary_opus() -> None:
    (section,) = accept_publisher_offer(parse(CHROMIUM_AUDIO))
    track = PublishedTrack("pub", 1, "audio", section.codec, "0", "stream", [], lambda layer: None)
    track.red_payload_type = 63
    received: dict[str, list[bytes]] = {"red": [], "plain": []}
    for name in received:
        down = DownTrack(track, name, "0", received[name].append)
        down.paused, down.red = False, name == "red"
        down.choose_layer()
        track.downtracks.append(down)
    frames: list[EncodedFrame] = []
    tap = Tap(track, frames.append, SenderClock())
    track.taps.append(tap)
    layer = track.layers[0]
    primaries = [f"frame {index}".encode() for index in range(5)]
    for index, primary in enumerate(primaries):
        earlier = [(960, primaries[index - 1])] if index else []
        track.forward(layer, rtp_packet(100 + index, 960 * index, red_payload(primary, *earlier)))
    tap.jitter.flush()

    red_packets = [rtp.Packet(data) for data in received["red"]]
    plain_packets = [rtp.Packet(data) for data in received["plain"]]
    assert [p.payload_type for p in red_packets] == [OUTGOING_RED_PAYLOAD_TYPE] * 5
    assert [red.primary_packet(p).payload for p in red_packets] == primaries
    assert red_packets[1].payload == red_payload(primaries[1], (960, primaries[0]))
    assert [p.payload_type for p in plain_packets] == [111] * 5
    assert [p.payload for p in plain_packets] == primaries
    assert [frame.data for frame in frames] == primaries


def test_a_subscriber_starved_of_video_gets_plain_opus_even_if_it_accepted_red() -> None:
    (section,) = accept_publisher_offer(parse(CHROMIUM_AUDIO))
    track = PublishedTrack("pub", 1, "audio", section.codec, "0", "stream", [], lambda layer: None)
    track.red_payload_type = 63
    sent: list[bytes] = []
    down = DownTrack(track, "sub", "0", sent.append)
    down.paused, down.red = False, True
    down.choose_layer()
    track.downtracks.append(down)
    payload = red_payload(b"now", (960, b"before"))
    track.forward(track.layers[0], rtp_packet(1, 960, payload))
    down.starved = True  # the allocator: this subscriber's link carries no video (sfu/allocator.py)
    track.forward(track.layers[0], rtp_packet(2, 1920, payload))
    down.starved = False
    track.forward(track.layers[0], rtp_packet(3, 2880, payload))
    packets = [rtp.Packet(data) for data in sent]
    assert [(p.payload_type, p.payload) for p in packets] == [
        (OUTGOING_RED_PAYLOAD_TYPE, payload),
        (111, b"now"),
        (OUTGOING_RED_PAYLOAD_TYPE, payload),
    ]
    assert [p.seq for p in packets] == [packets[0].seq, packets[0].seq + 1, packets[0].seq + 2]
