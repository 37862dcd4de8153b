"""The SFU's packet, RTCP and SDP handling on its own: what it reads from publishers, what it writes
for receivers, and that hostile bytes are refused the way the transport counts them."""

from __future__ import annotations

import contextlib
import fractions
import itertools
import random
import struct

import av
import numpy as np
import pytest
from aiortc.rtp import RtcpPacket as AiortcRtcp
from aiortc.sdp import SessionDescription as AiortcSdp

from config.settings import SfuSettings
from sfu import rtcp, rtp
from sfu.forwarder import DownTrack
from sfu.negotiation import OfferSlot, accept_publisher_offer, outgoing_codec, publisher_answer, subscriber_offer
from sfu.sdp import Codec, LocalTransport, SdpError, parse
from sfu.server import Sfu
from sfu.track import PublishedTrack

LOCAL = LocalTransport("ufrag", "p" * 22, [("sha-256", "AB:CD")], ["1 1 udp 2130706431 127.0.0.1 5000 typ host"], "")


def rtp_packet(seq: int, ts: int, ssrc: int, payload: bytes, pt: int = 96, marker: bool = False, ext=b"") -> bytes:
    first = 0x80 | (0x10 if ext else 0)
    return struct.pack("!BBHII", first, pt | (0x80 if marker else 0), seq, ts, ssrc) + ext + payload


# RTP ------------------------------------------------------------------------------------------------


def test_rtp_header_and_one_byte_extensions_are_read() -> None:
    ext = rtp.extension_block([(1, b"0"), (2, b"h"), (3, b"\x01\x02\x03")])
    packet = rtp.Packet(rtp_packet(65535, 90000, 0xDEADBEEF, b"payload", marker=True, ext=ext))
    assert (packet.seq, packet.timestamp, packet.ssrc, packet.payload_type) == (65535, 90000, 0xDEADBEEF, 96)
    assert packet.marker and packet.extensions == {1: b"0", 2: b"h", 3: b"\x01\x02\x03"}
    assert packet.payload == b"payload"


def test_two_byte_extensions_csrcs_and_padding() -> None:
    block = bytes([5, 2, 0xAA, 0xBB, 0, 0, 0, 0])
    header = struct.pack("!BBHII", 0xB1, 96, 1, 2, 3) + struct.pack("!I", 77)  # X, P, one CSRC
    data = header + struct.pack("!HH", 0x1000, 2) + block + b"abc" + b"\x00\x00\x03"
    packet = rtp.Packet(data)
    assert packet.extensions == {5: b"\xaa\xbb"} and packet.payload == b"abc"
    padding_only = rtp.Packet(struct.pack("!BBHII", 0xA0, 96, 1, 2, 3) + b"\x00" * 3 + b"\x04")
    assert not padding_only.has_payload


@pytest.mark.parametrize(
    "data",
    [b"", b"\x80" * 11, b"\x40" + b"\x00" * 20, struct.pack("!BBHII", 0x90, 96, 1, 2, 3) + b"\xbe\xde\x00\x05"],
)
def test_malformed_rtp_is_a_value_error(data: bytes) -> None:
    with pytest.raises(ValueError):
        rtp.Packet(data)


def test_sequence_order_across_wrap_around() -> None:
    assert rtp.seq_newer(2, 65530) and not rtp.seq_newer(65530, 2) and not rtp.seq_newer(7, 7)
    assert len(rtp.abs_send_time()) == 3


def _vp8_frames() -> list[tuple[bool, bytes]]:
    codec = av.CodecContext.create("libvpx", "w")
    codec.width, codec.height, codec.pix_fmt = 64, 48, "yuv420p"
    codec.time_base = fractions.Fraction(1, 30)
    frames = []
    for index in range(3):
        image = av.VideoFrame.from_ndarray(np.full((48, 64, 3), index * 40, np.uint8), format="rgb24")
        image = image.reformat(format="yuv420p")
        image.pts = index
        frames += [(bool(p.is_keyframe), bytes(p)) for p in codec.encode(image)]
    return frames + [(bool(p.is_keyframe), bytes(p)) for p in codec.encode(None)]


def test_vp8_key_frames_are_recognised_behind_any_payload_descriptor() -> None:
    frames = _vp8_frames()
    assert frames[0][0] and not all(key for key, _ in frames)
    descriptors = [b"\x10", b"\x90\x80\x05", b"\x90\x80\x81\x05", b"\x90\xf0\x81\x05\x01\x20"]
    for key, data in frames:
        for descriptor in descriptors:
            assert rtp.is_vp8_keyframe(descriptor + data) is key
        assert not rtp.is_vp8_keyframe(b"\x00" + data), "not the start of partition 0"


def test_h264_key_frames_alone_aggregated_or_fragmented() -> None:
    assert rtp.is_h264_keyframe(b"\x65idr") and rtp.is_h264_keyframe(b"\x67sps")
    assert not rtp.is_h264_keyframe(b"\x41slice")
    assert rtp.is_h264_keyframe(b"\x18" + b"\x00\x03\x67ab" + b"\x00\x02\x68c")
    assert rtp.is_h264_keyframe(b"\x7c\x85rest") and not rtp.is_h264_keyframe(b"\x7c\x05rest")


# RTCP -----------------------------------------------------------------------------------------------


def test_built_feedback_parses_back_and_aiortc_agrees() -> None:
    block = rtcp.ReportBlock(ssrc=9, fraction_lost=25, packets_lost=-3, highest_seq=70000, jitter=12, lsr=5, dlsr=6)
    compound = (
        rtcp.sender_report(1, ntp=rtcp.ntp_now(1.7e9), rtp_timestamp=1234, packets=10, octets=1000)
        + rtcp.receiver_report(2, [block])
        + rtcp.nack(3, 4, [100, 101, 105, 120, 200])
        + rtcp.pli(5, 6)
        + rtcp.fir(5, 6, 7)
        + rtcp.remb(7, 2_500_000, [11, 12])
        + rtcp.bye([13])
    )
    ours = rtcp.parse(compound)
    assert isinstance(ours[0], rtcp.SenderReport) and ours[0].rtp_timestamp == 1234
    assert ours[1].reports == [block]
    assert sorted(ours[2].lost) == [100, 101, 105, 120, 200]
    assert ours[3] == rtcp.KeyFrameRequest(6, full=False) and ours[4] == rtcp.KeyFrameRequest(6, full=True)
    assert ours[5].ssrcs == [11, 12] and abs(ours[5].bitrate - 2_500_000) < 2_500_000 / 100_000
    theirs = AiortcRtcp.parse(compound)
    assert [type(p).__name__ for p in theirs] == [
        "RtcpSrPacket", "RtcpRrPacket", "RtcpRtpfbPacket", "RtcpPsfbPacket", "RtcpPsfbPacket", "RtcpPsfbPacket",
        "RtcpByePacket",
    ]  # fmt: skip
    assert sorted(theirs[2].lost) == [100, 101, 105, 120, 200]
    assert theirs[1].reports[0].fraction_lost == 25 and theirs[1].reports[0].highest_sequence == 70000


@pytest.mark.parametrize("data", [b"\x40\xc8\x00\x01abcd", b"\x80\xc9\x00\x09short"])
def test_malformed_rtcp_is_a_value_error(data: bytes) -> None:
    with pytest.raises(ValueError):
        rtcp.parse(data)


# SDP ------------------------------------------------------------------------------------------------

CHROMIUM_OFFER = "\r\n".join(
    [
        "v=0",
        "o=- 4611731400430051336 2 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0 1 2",
        "a=msid-semantic: WMS stream",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0",
        "c=IN IP4 0.0.0.0",
        "a=rtcp:9 IN IP4 0.0.0.0",
        "a=candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host generation 0",
        "a=ice-ufrag:Abcd",
        "a=ice-pwd:0123456789012345678901",
        "a=fingerprint:sha-256 12:34:56",
        "a=setup:actpass",
        "a=mid:0",
        "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
        "a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
        "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid",
        "a=sendonly",
        "a=msid:stream audio1",
        "a=rtcp-mux",
        "a=rtpmap:111 opus/48000/2",
        "a=rtcp-fb:111 transport-cc",
        "a=fmtp:111 minptime=10;useinbandfec=1",
        "a=rtpmap:63 red/48000/2",
        "a=rtpmap:9 G722/8000",
        "a=rtpmap:0 PCMU/8000",
        "a=ssrc:1111 cname:abc",
        "m=video 9 UDP/TLS/RTP/SAVPF 96 97 98 99 102 103",
        "c=IN IP4 0.0.0.0",
        "a=ice-ufrag:Abcd",
        "a=ice-pwd:0123456789012345678901",
        "a=fingerprint:sha-256 12:34:56",
        "a=setup:actpass",
        "a=mid:1",
        "a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
        "a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
        "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid",
        "a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
        "a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id",
        "a=sendonly",
        "a=msid:stream video1",
        "a=rtcp-mux",
        "a=rtcp-rsize",
        "a=rtpmap:96 VP8/90000",
        "a=rtcp-fb:96 goog-remb",
        "a=rtcp-fb:96 transport-cc",
        "a=rtcp-fb:96 ccm fir",
        "a=rtcp-fb:96 nack",
        "a=rtcp-fb:96 nack pli",
        "a=rtpmap:97 rtx/90000",
        "a=fmtp:97 apt=96",
        "a=rtpmap:98 VP9/90000",
        "a=rtpmap:99 rtx/90000",
        "a=fmtp:99 apt=98",
        "a=rtpmap:102 H264/90000",
        "a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
        "a=rtpmap:103 rtx/90000",
        "a=fmtp:103 apt=102",
        "a=rid:l send",
        "a=rid:m send",
        "a=rid:h send",
        "a=simulcast:send l;m;h",
        "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
        "c=IN IP4 0.0.0.0",
        "a=mid:2",
        "a=sctp-port:5000",
        "",
    ]
)


def test_a_chromium_simulcast_offer_is_accepted_as_two_tracks_with_three_layers() -> None:
    offer = parse(CHROMIUM_OFFER)
    audio, video, data = accept_publisher_offer(offer)
    assert data is None
    assert audio.codec.name == "opus" and audio.codec.payload_type == 111 and audio.rids == []
    assert video.codec.name == "vp8" and video.rtx_payload_type == 97 and video.rids == ["l", "m", "h"]
    assert video.extension_ids[rtp.URI_TRANSPORT_CC] == 3  # transport-wide feedback for its estimator
    assert video.extension_ids[rtp.URI_RID] == 10 and video.stream_id == "stream"
    answer = publisher_answer(
        offer, [audio, video, data], LocalTransport("u", "p" * 22, [("sha-256", "AA")], [], "passive"), 1
    )
    assert "a=group:BUNDLE 0 1\r\n" in answer and "a=ice-lite" in answer and "a=setup:passive" in answer
    assert "a=rid:l recv" in answer and "a=simulcast:recv l;m;h" in answer
    assert "a=rtcp-fb:96 transport-cc" in answer and f"a=extmap:3 {rtp.URI_TRANSPORT_CC}" in answer
    assert "m=application 0 " in answer and "a=mid:2" in answer
    # every section has a connection line, the rejected one too
    assert answer.count("\r\nc=IN IP4 0.0.0.0\r\n") == answer.count("\r\nm=")
    assert "a=recvonly" in answer
    parsed = AiortcSdp.parse(answer)  # an independent parser accepts it
    assert [media.kind for media in parsed.media] == ["audio", "video", "application"]


def test_ssrc_signalled_simulcast_and_rejections() -> None:
    offer = parse(
        CHROMIUM_OFFER.replace("a=rid:l send\r\na=rid:m send\r\na=rid:h send\r\na=simulcast:send l;m;h\r\n", "")
        .replace("a=rtpmap:96 VP8/90000", "a=ssrc-group:SIM 1 2 3\r\na=ssrc-group:FID 1 4\r\na=rtpmap:96 VP8/90000")
        .replace("a=sendonly", "a=recvonly", 1)
    )
    audio, video, _ = accept_publisher_offer(offer)
    assert audio is None, "a section the client only wants to receive on is not published"
    assert video.ssrc_layers == [1, 2, 3] and video.rtx_of == {4: 1}


def test_a_video_section_marked_as_slides_is_a_shared_screen() -> None:
    offer = parse(CHROMIUM_OFFER.replace("a=msid:stream video1\r\n", "a=msid:stream video1\r\na=content:slides\r\n"))
    audio, video, _ = accept_publisher_offer(offer)
    assert (audio.source, video.source) == ("camera", "screen")
    assert accept_publisher_offer(parse(CHROMIUM_OFFER))[1].source == "camera"


@pytest.mark.parametrize(
    "text", ["hello", "v=0\r\n", CHROMIUM_OFFER.replace("a=mid:1\r\n", ""), CHROMIUM_OFFER.replace("ice-ufrag", "x")]
)
def test_unusable_descriptions_are_sdp_errors(text: str) -> None:
    with pytest.raises(SdpError):
        offer = parse(text)
        accept_publisher_offer(offer)
        offer.ice_credentials()


def test_subscriber_offers_signal_ssrcs_and_fixed_payload_types() -> None:
    vp8 = outgoing_codec(Codec(120, "vp8", 90000, fmtp="x-google-start-bitrate=800"))
    slots = [
        OfferSlot("0", "video", vp8, 10, 11, "streamA", "trackA"),
        OfferSlot("1", "audio", outgoing_codec(Codec(109, "opus", 48000, 2)), 12, 0, "streamA", "trackB"),
        OfferSlot("2", "video"),
    ]
    text = subscriber_offer(slots, LocalTransport("u", "p" * 22, [("sha-256", "AA")], [], "actpass"), 1, 3)
    assert "m=video 9 UDP/TLS/RTP/SAVPF 96 97" in text and "a=ssrc-group:FID 10 11" in text
    assert "a=msid:streamA trackA" in text and "a=rtpmap:111 opus/48000/2" in text and "x-google" not in text
    assert text.count("a=sendonly") == 2 and text.count("a=inactive") == 1
    parsed = AiortcSdp.parse(text)
    assert [media.direction for media in parsed.media] == ["sendonly", "sendonly", "inactive"]
    assert parsed.media[0].ssrc[0].ssrc == 10


# the media path -------------------------------------------------------------------------------------


async def test_hostile_bytes_only_ever_raise_value_errors() -> None:
    sfu = Sfu(SfuSettings(ipv6=False, publish_bitrate=3_000_000, simulated_loss=0.0))
    peer = sfu.peer(1, "a" * 32, 1, lambda kind, data: None)
    generator = random.Random(7)
    valid = rtp_packet(1, 2, 3, b"\x10" + bytes(50), ext=rtp.extension_block([(1, b"0")]))
    feedback = rtcp.receiver_report(1, [rtcp.ReportBlock(2, 1, 1, 1, 1, 1, 1)]) + rtcp.nack(1, 2, [5, 6])
    for _ in range(3000):
        base = generator.choice([valid, feedback, bytes(generator.randrange(40))])
        mutated = bytearray(base)
        for _ in range(generator.randrange(1, 6)):
            if mutated:
                mutated[generator.randrange(len(mutated))] = generator.randrange(256)
        data = bytes(mutated[: generator.randrange(len(mutated) + 1)])
        for handler in (peer.publisher.on_rtp, peer.publisher.on_rtcp, peer.subscriber.on_rtcp):
            with contextlib.suppress(ValueError):
                handler(data)
    await sfu.close()


def _track(layers: int = 3) -> tuple[PublishedTrack, list[int]]:
    requests: list[int] = []
    track = PublishedTrack("p", 1, "video", Codec(96, "vp8", 90000), "1", "s", ["l", "m", "h"][:layers],
                           lambda layer: requests.append(layer.index))  # fmt: skip
    for index, layer in enumerate(track.layers):
        layer.bind(1000 + index)
    return track, requests


def _vp8(key: bool) -> bytes:
    return b"\x10" + (b"\x00" if key else b"\x01") + bytes(30)


def test_a_layer_switch_keeps_the_receivers_stream_continuous() -> None:
    track, _requests = _track()
    sent: list[bytes] = []
    down = DownTrack(track, "sub", "0", sent.append)
    down.paused, down.target_layer = False, 0
    track.downtracks.append(down)
    low, high = track.layers[0], track.layers[2]
    for step in range(5):
        track.forward(low, rtp.Packet(rtp_packet(100 + step, 9000 + step * 3000, low.ssrc, _vp8(step == 0))))
    down.target_layer = 2
    track.forward(high, rtp.Packet(rtp_packet(60000, 777, high.ssrc, _vp8(False))))  # not a key frame: held back
    track.forward(low, rtp.Packet(rtp_packet(105, 24000, low.ssrc, _vp8(False))))
    for step in range(4):
        track.forward(high, rtp.Packet(rtp_packet(60001 + step, 1000 + step * 3000, high.ssrc, _vp8(step == 0))))
    track.forward(low, rtp.Packet(rtp_packet(106, 27000, low.ssrc, _vp8(False))))  # old layer: no longer sent
    packets = [rtp.Packet(data) for data in sent]
    assert len(packets) == 10 and {p.ssrc for p in packets} == {down.ssrc}
    assert all((b.seq - a.seq) & 0xFFFF == 1 for a, b in itertools.pairwise(packets))
    assert all(0 < (b.timestamp - a.timestamp) & 0xFFFFFFFF < 0x80000000 for a, b in itertools.pairwise(packets))
    assert down.current_layer == 2 and down.switches == 1

    resent: list[bytes] = []
    down.on_nack([packets[7].seq], resent.append)
    assert resent == [sent[7]]
    down.on_nack([packets[7].seq], resent.append)
    assert resent == [sent[7]], "a repeated NACK within the round trip is not answered twice"
    down.rtx_payload_type = 97
    down.on_nack([packets[8].seq], resent.append)
    rtx = rtp.Packet(resent[1])
    assert rtx.payload_type == 97 and rtx.ssrc == down.rtx_ssrc
    assert rtx.payload[:2] == packets[8].seq.to_bytes(2, "big") and rtx.payload[2:] == packets[8].payload


def test_sustained_loss_steps_the_layer_down_but_one_bad_report_does_not() -> None:
    track, _ = _track()
    down = DownTrack(track, "sub", "0", lambda data: None)
    down.paused = False
    for layer, bitrate in zip(track.layers, (100_000, 300_000, 1_000_000), strict=True):
        layer.bitrate, layer.last_arrival = bitrate, 1e12
    down.choose_layer()
    down.current_layer = down.target_layer
    assert down.target_layer == 2
    lossy = rtcp.ReportBlock(down.ssrc, 64, 50, 0, 0, 0, 0)  # a quarter lost
    down.on_report(lossy, 0)
    down.choose_layer()
    assert down.target_layer == 2
    for _ in range(4):
        down.on_report(lossy, 0)
    down.choose_layer()
    assert down.target_layer < 2


def test_a_receiver_of_a_single_layer_track_asks_for_a_key_frame_until_it_starts() -> None:
    """A shared screen sends key frames rarely: one that went by before this receiver came is no use."""
    track, requests = _track(layers=1)
    sent: list[bytes] = []
    down = DownTrack(track, "sub", "0", sent.append)
    down.paused = False
    track.downtracks.append(down)
    down.choose_layer()
    assert requests == [0]
    layer = track.layers[0]
    track.forward(layer, rtp.Packet(rtp_packet(10, 3000, layer.ssrc, _vp8(False))))
    assert sent == [], "nothing before a key frame"
    track.forward(layer, rtp.Packet(rtp_packet(11, 6000, layer.ssrc, _vp8(True))))
    assert len(sent) == 1 and down.current_layer == 0
    layer.last_keyframe_request = 0.0
    down.choose_layer()
    assert requests == [0], "once forwarding, no more requests"


def test_a_bundle_only_section_is_bundled_not_rejected() -> None:
    """Firefox offers every bundled section after the first with port 0 and a=bundle-only."""
    firefox_like = CHROMIUM_OFFER.replace("m=video 9 ", "m=video 0 ").replace(
        "a=mid:1\r\n", "a=mid:1\r\na=bundle-only\r\n"
    )
    _audio, video, _ = accept_publisher_offer(parse(firefox_like))
    assert video is not None and video.rids == ["l", "m", "h"]
    rejected = CHROMIUM_OFFER.replace("m=video 9 ", "m=video 0 ")
    assert accept_publisher_offer(parse(rejected))[1] is None
