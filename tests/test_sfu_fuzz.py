"""Property-based fuzzing of everything the SFU parses from the network: arbitrary and mutated-valid
RTP, AV1 dependency descriptors, RTCP, STUN datagrams and session descriptions. Each parser may
refuse input only with its documented exception (``rtp.MalformedPacket``, ``av1dd.DependencyError``,
``rtcp.MalformedRtcp``, ``SdpError`` for descriptions; ``parse_stun`` answers ``None``); anything
else escaping is a crash the fuzzer reports."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Iterator

import pytest
from aioice import Candidate, stun
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from config.settings import SfuSettings
from sfu import av1dd, rtcp, rtp
from sfu.negotiation import accept_publisher_offer, accepted_in_answer, publisher_answer
from sfu.network import LOOPBACK, MediaProtocol, gather, parse_stun
from sfu.sdp import LocalTransport, SdpError, parse
from sfu.server import Sfu
from sfu.transport import parse_candidate
from tests import av1_capture
from tests.test_sfu_packets import CHROMIUM_OFFER, rtp_packet

FUZZ = settings(
    max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
LOCAL = LocalTransport("ufrag", "p" * 22, [("sha-256", "AB:CD")], ["1 1 udp 2130706431 127.0.0.1 5000 typ host"], "")


@st.composite
def mutated(draw: st.DrawFn, valid: st.SearchStrategy[bytes]) -> bytes:
    """A valid message with a few bytes changed, inserted or removed, and maybe cut short."""
    data = bytearray(draw(valid))
    for _ in range(draw(st.integers(0, 6))):
        action = draw(st.sampled_from(["set", "insert", "delete"]))
        position = draw(st.integers(0, len(data)))
        if action == "set" and position < len(data):
            data[position] = draw(st.integers(0, 255))
        elif action == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=8))
        elif action == "delete" and position < len(data):
            del data[position : position + draw(st.integers(1, 8))]
    return bytes(data[: draw(st.integers(0, len(data)))] if draw(st.booleans()) else data)


# RTP ----------------------------------------------------------------------------------------------

extension_elements = st.lists(
    st.tuples(st.integers(1, 14), st.binary(min_size=1, max_size=16)), max_size=4, unique_by=lambda e: e[0]
)
valid_rtp = st.builds(
    lambda seq, ts, ssrc, payload, pt, marker, elements: rtp_packet(
        seq, ts, ssrc, payload, pt, marker, rtp.extension_block(elements) if elements else b""
    ),
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFFFFFF),
    st.integers(0, 0xFFFFFFFF),
    st.binary(max_size=64),
    st.integers(0, 127),
    st.booleans(),
    extension_elements,
)


def check_rtp(data: bytes) -> None:
    try:
        packet = rtp.Packet(data)
    except rtp.MalformedPacket:
        return
    assert 12 <= packet.payload_start <= packet.payload_end <= len(data)
    for detector in rtp.KEYFRAME_DETECTORS.values():
        detector(data, packet.payload_start, packet.payload_end)


@FUZZ
@given(st.binary(max_size=200))
def test_rtp_parser_on_arbitrary_bytes(data: bytes) -> None:
    check_rtp(data)
    check_rtp(b"\x80" + data)  # past the version check more often


@FUZZ
@given(mutated(valid_rtp))
def test_rtp_parser_on_mutated_packets(data: bytes) -> None:
    check_rtp(data)


@FUZZ
@given(valid_rtp)
def test_valid_rtp_parses(data: bytes) -> None:
    packet = rtp.Packet(data)
    assert packet.payload_end == len(data)


# AV1 dependency descriptors ------------------------------------------------------------------------

CHROMIUM_DESCRIPTORS = [packet.extensions[av1_capture.EXTENSION_ID] for packet in av1_capture.packets()]
CHROMIUM_STRUCTURE = av1dd.parse(CHROMIUM_DESCRIPTORS[0], None).structure


@FUZZ
@given(st.one_of(st.binary(max_size=120), mutated(st.sampled_from(CHROMIUM_DESCRIPTORS))), st.booleans())
def test_dependency_descriptors_parse_or_are_refused(data: bytes, known_structure: bool) -> None:
    with contextlib.suppress(av1dd.DependencyError):
        read = av1dd.parse(data, CHROMIUM_STRUCTURE if known_structure else None)
        structure = read.structure or CHROMIUM_STRUCTURE
        assert structure is not None and 0 <= read.sid < structure.spatial_layers


# RTCP ---------------------------------------------------------------------------------------------

ssrcs = st.integers(0, 0xFFFFFFFF)
blocks = st.lists(
    st.builds(
        rtcp.ReportBlock,
        ssrcs,
        st.integers(0, 255),
        st.integers(-0x800000, 0x7FFFFF),
        ssrcs,
        ssrcs,
        ssrcs,
        ssrcs,
    ),
    max_size=3,
)
one_rtcp = st.one_of(
    st.builds(rtcp.receiver_report, ssrcs, blocks),
    st.builds(rtcp.sender_report, ssrcs, st.integers(0, 2**64 - 1), ssrcs, ssrcs, ssrcs),
    st.builds(rtcp.nack, ssrcs, ssrcs, st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=40)),
    st.builds(rtcp.pli, ssrcs, ssrcs),
    st.builds(rtcp.fir, ssrcs, ssrcs, st.integers(0, 255)),
    st.builds(rtcp.remb, ssrcs, st.integers(0, 2**40), st.lists(ssrcs, max_size=4)),
    st.builds(rtcp.bye, st.lists(ssrcs, min_size=1, max_size=4)),
)
valid_rtcp = st.lists(one_rtcp, min_size=1, max_size=4).map(b"".join)


def check_rtcp(data: bytes) -> None:
    with contextlib.suppress(rtcp.MalformedRtcp):
        rtcp.parse(data)


@FUZZ
@given(st.binary(max_size=200))
def test_rtcp_parser_on_arbitrary_bytes(data: bytes) -> None:
    check_rtcp(data)
    check_rtcp(b"\x81\xcd" + data)  # a feedback header in front


@FUZZ
@given(mutated(valid_rtcp))
def test_rtcp_parser_on_mutated_compounds(data: bytes) -> None:
    check_rtcp(data)


@FUZZ
@given(valid_rtcp)
def test_valid_rtcp_parses(data: bytes) -> None:
    rtcp.parse(data)


# STUN, and the media socket that reads it -----------------------------------------------------------

stun_attributes = st.lists(
    st.tuples(st.sampled_from(sorted(stun.ATTRIBUTES_BY_TYPE)), st.binary(max_size=24)), max_size=5
)


def stun_message(message_type: int, transaction: bytes, attributes: list[tuple[int, bytes]]) -> bytes:
    body = b"".join(struct.pack("!HH", kind, len(value)) + value + bytes(-len(value) % 4) for kind, value in attributes)
    return struct.pack("!HHI12s", message_type, len(body), stun.COOKIE, transaction) + body


valid_looking_stun = st.builds(
    stun_message,
    st.sampled_from([0x0001, 0x0101, 0x0111, 0x0011]),
    st.binary(min_size=12, max_size=12),
    stun_attributes,
)
binding_request = bytes(
    stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST, transaction_id=b"x" * 12)
)


@FUZZ
@given(
    st.one_of(
        st.binary(max_size=120), valid_looking_stun, mutated(valid_looking_stun), mutated(st.just(binding_request))
    )
)
def test_stun_messages_parse_or_are_refused(data: bytes) -> None:
    message = parse_stun(data)
    assert message is None or bytes(message)[:2] == data[:2]


@pytest.fixture(scope="module")
def media_socket() -> Iterator[tuple[asyncio.AbstractEventLoop, MediaProtocol]]:
    """A real media socket on 127.0.0.1 whose connection has a client address on its check list."""
    loop = asyncio.new_event_loop()
    connection = loop.run_until_complete(gather(LOOPBACK))
    connection.remote_username, connection.remote_password = "rufr", "r" * 22
    loop.run_until_complete(connection.add_remote_candidate(Candidate("1", 1, "udp", 100, "127.0.0.1", 9, "host")))
    (protocol,) = connection._protocols
    assert isinstance(protocol, MediaProtocol)
    yield loop, protocol
    loop.run_until_complete(connection.close())
    loop.close()


@FUZZ
@given(
    data=st.one_of(
        st.binary(max_size=120),
        valid_looking_stun,
        mutated(valid_looking_stun),
        mutated(st.just(binding_request)),
        mutated(valid_rtp),
        mutated(valid_rtcp),
        st.binary(max_size=60).map(lambda tail: bytes([22, 0xFE, 0xFD]) + tail),  # DTLS-looking
    ),
    client=st.booleans(),
)
def test_the_media_socket_takes_any_datagram(media_socket, data: bytes, client: bool) -> None:
    loop, protocol = media_socket
    connection = protocol.receiver
    queued, dropped = connection._queue.qsize(), protocol.dropped
    source = ("127.0.0.1", 9) if client else ("127.0.0.1", 10)
    loop.run_until_complete(asyncio.sleep(0))  # responses it sent leave on the loop
    protocol.datagram_received(data, source)
    passed = connection._queue.qsize() - queued
    if not data or not (19 < data[0] < 64 or 127 < data[0] < 192):
        assert passed == 0, "only DTLS, RTP and RTCP reach the DTLS transport"
    if not client and data and data[0] >= 4:
        assert passed == 0 and protocol.dropped == dropped + 1, "strangers' media is dropped and counted"
    while not connection._queue.empty():
        connection._queue.get_nowait()


# SDP and candidates ---------------------------------------------------------------------------------

OFFER_LINES = CHROMIUM_OFFER.split("\r\n")
sdp_line = st.one_of(
    st.sampled_from(OFFER_LINES),
    st.text(max_size=60),
    st.sampled_from(OFFER_LINES).flatmap(
        lambda line: st.integers(0, len(line)).map(lambda cut: line[:cut])  # a line cut short
    ),
    st.builds(
        lambda name, value: f"a={name}:{value}",
        st.sampled_from(
            [
                *("rtpmap", "fmtp", "rtcp-fb", "extmap", "ssrc", "ssrc-group", "rid", "simulcast", "mid", "msid"),
                *("candidate", "fingerprint", "ice-ufrag", "setup"),
            ]
        ),
        st.text(max_size=40),
    ),
)


@st.composite
def mutated_offer(draw: st.DrawFn) -> str:
    lines = list(OFFER_LINES)
    for _ in range(draw(st.integers(1, 8))):
        action = draw(st.sampled_from(["replace", "insert", "delete", "duplicate"]))
        position = draw(st.integers(1, len(lines) - 1))
        if action == "replace":
            lines[position] = draw(sdp_line)
        elif action == "insert":
            lines.insert(position, draw(sdp_line))
        elif action == "delete":
            del lines[position]
        else:
            lines.insert(position, lines[position])
    return draw(st.sampled_from(["\r\n", "\n"])).join(lines)


@pytest.fixture(scope="module")
def sfu() -> Iterator[tuple[asyncio.AbstractEventLoop, Sfu]]:
    loop = asyncio.new_event_loop()
    server = Sfu(SfuSettings(ipv6=False, publish_bitrate=3_000_000, simulated_loss=0.0, bind_addresses=["127.0.0.1"]))
    yield loop, server
    loop.run_until_complete(server.close())
    loop.close()


def check_offer(loop: asyncio.AbstractEventLoop, server: Sfu, text: str) -> None:
    """What the server does with a publisher offer short of opening sockets: parse, accept, answer,
    and apply the accepted sections to a publisher's tracks."""
    try:
        offer = parse(text)
        accepted = accept_publisher_offer(offer)
        offer.ice_credentials()
        offer.dtls_fingerprints()
    except SdpError:
        return
    publisher_answer(offer, accepted, LOCAL, 1)
    accepted_in_answer(offer)
    for line in offer.all_candidates():
        parse_candidate(line)
    peer = server.peer(1, "f" * 32, 1, lambda kind, data: None)
    try:
        peer.publisher._apply(accepted)
    finally:
        loop.run_until_complete(server.remove_peer(peer.id))


@FUZZ
@given(mutated_offer())
def test_mutated_offers_are_handled_or_refused(sfu, text: str) -> None:
    check_offer(*sfu, text)


@FUZZ
@given(st.lists(sdp_line, max_size=30).map(lambda lines: "v=0\r\n" + "\r\n".join(lines)))
def test_arbitrary_descriptions_are_handled_or_refused(sfu, text: str) -> None:
    check_offer(*sfu, text)


@FUZZ
@given(
    st.one_of(
        st.text(max_size=100),
        st.lists(st.sampled_from(["1", "udp", "2130706431", "127.0.0.1", "5000", "typ", "host", "raddr", "x"])).map(
            " ".join
        ),
    )
)
def test_candidate_lines_parse_or_are_ignored(line: str) -> None:
    candidate = parse_candidate("candidate:" + line)
    assert candidate is None or isinstance(candidate, Candidate)
