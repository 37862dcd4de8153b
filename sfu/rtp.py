"""RTP on bytes: just enough parsing to route, rewrite and spot key frames.

The forwarding path touches every packet once per receiver, so nothing here builds objects per
receiver: an incoming packet is parsed once into a ``Packet`` and each receiver gets a fresh
12-byte fixed header glued to a shared tail (header extensions and payload).
"""

from __future__ import annotations

import struct
import time

from sfu.vp9 import is_vp9_keyframe

FIXED_HEADER = struct.Struct("!BBHII")
STAMP_PREFIX = struct.Struct("!HHBH")
WIDE_STAMP_PREFIX = struct.Struct("!HHBBH")
RTP_VERSION_BITS = 0x80

# Extension URIs the server understands on publishers' packets.
URI_MID = "urn:ietf:params:rtp-hdrext:sdes:mid"
URI_RID = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
URI_REPAIRED_RID = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"
URI_AUDIO_LEVEL = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
URI_ABS_SEND_TIME = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
URI_TRANSPORT_CC = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
URI_DEPENDENCY_DESCRIPTOR = "https://aomediacodec.github.io/av1-rtp-spec/#dependency-descriptor-rtp-header-extension"

# The ids the server uses on what it sends; every subscriber offer declares exactly these.
OUT_ID_AUDIO_LEVEL = 1
OUT_ID_ABS_SEND_TIME = 2
OUT_ID_TRANSPORT_CC = 3  # offered to subscribers; first in the block, so it can be stamped per receiver
OUT_ID_DEPENDENCY_DESCRIPTOR = 4  # AV1 tracks only (sfu/av1dd.py), forwarded as the publisher sent it
# A block that opens with the transport sequence number: profile, length, element header, two bytes.
STAMP_START, STAMP_END = 5, 7
# The same in the two-byte-header form (RFC 8285 section 4.3), which an element over 16 bytes needs
# (an AV1 key frame's dependency descriptor): the element header is an id byte and a length byte.
WIDE_STAMP_START, WIDE_STAMP_END = 6, 8
ONE_BYTE_MAX = 16


class MalformedPacket(ValueError):
    """Raised for bytes that cannot be an RTP packet; the caller drops and counts them."""


class Packet:
    """One received RTP packet, parsed once and shared by every receiver it is forwarded to."""

    __slots__ = (
        "data",
        "extensions",
        "marker",
        "payload_end",
        "payload_start",
        "payload_type",
        "seq",
        "ssrc",
        "timestamp",
    )

    def __init__(self, data: bytes) -> None:
        if len(data) < 12:
            raise MalformedPacket("shorter than an RTP header")
        first, second, self.seq, self.timestamp, self.ssrc = FIXED_HEADER.unpack_from(data)
        if first & 0xC0 != RTP_VERSION_BITS:
            raise MalformedPacket("not RTP version 2")
        self.data = data
        self.marker = second & 0x80
        self.payload_type = second & 0x7F
        offset = 12 + 4 * (first & 0x0F)
        self.extensions: dict[int, bytes] = {}
        if first & 0x10:
            if len(data) < offset + 4:
                raise MalformedPacket("truncated header extension")
            profile, words = struct.unpack_from("!HH", data, offset)
            start, offset = offset + 4, offset + 4 + 4 * words
            if offset > len(data):
                raise MalformedPacket("header extension runs past the packet")
            self.extensions = _parse_extensions(profile, data[start:offset])
        end = len(data)
        if first & 0x20:
            end -= data[-1]
        if end < offset:
            raise MalformedPacket("padding runs into the header")
        self.payload_start = offset
        self.payload_end = end

    @property
    def payload(self) -> bytes:
        return self.data[self.payload_start : self.payload_end]

    @property
    def has_payload(self) -> bool:
        """Padding-only packets (bandwidth probes) carry nothing worth forwarding."""
        return self.payload_end > self.payload_start


def _parse_extensions(profile: int, block: bytes) -> dict[int, bytes]:
    found: dict[int, bytes] = {}
    index, size = 0, len(block)
    if profile == 0xBEDE:
        while index < size:
            head = block[index]
            if head == 0:
                index += 1
                continue
            ext_id, length = head >> 4, (head & 0x0F) + 1
            if ext_id == 15:
                break
            found[ext_id] = block[index + 1 : index + 1 + length]
            index += 1 + length
    elif profile & 0xFFF0 == 0x1000:
        while index + 1 < size:
            ext_id = block[index]
            if ext_id == 0:
                index += 1
                continue
            length = block[index + 1]
            found[ext_id] = block[index + 2 : index + 2 + length]
            index += 2 + length
    if index > size:
        raise MalformedPacket("header extension element runs past its block")
    return found


def abs_send_time(now: float | None = None) -> bytes:
    """24-bit 6.18 fixed-point seconds: what a receiver's delay-based estimator reads."""
    moment = time.time() if now is None else now
    return (int(moment * (1 << 18)) & 0xFFFFFF).to_bytes(3, "big")


def stamp_prefix(words: int, seq: int, wide: bool = False) -> bytes:
    """The opening of an extension block of ``words`` 32-bit words whose first element is the
    transport-wide sequence number ``seq`` (the rest of the block follows it unchanged); ``wide``:
    in the two-byte-header form."""
    if wide:
        return WIDE_STAMP_PREFIX.pack(0x1000, words, OUT_ID_TRANSPORT_CC, 2, seq)
    return STAMP_PREFIX.pack(0xBEDE, words, (OUT_ID_TRANSPORT_CC << 4) | 1, seq)


def stamp_span(block: bytes) -> tuple[int, int] | None:
    """Where the transport sequence number sits in an extension block that opens with it (see
    ``stamp_prefix``), in either form; ``None`` when the block does not open with it."""
    if len(block) >= STAMP_END and block[:2] == b"\xbe\xde" and block[4] == (OUT_ID_TRANSPORT_CC << 4) | 1:
        return STAMP_START, STAMP_END
    if len(block) >= WIDE_STAMP_END and block[:2] == b"\x10\x00" and block[4:6] == bytes((OUT_ID_TRANSPORT_CC, 2)):
        return WIDE_STAMP_START, WIDE_STAMP_END
    return None


def extension_block(elements: list[tuple[int, bytes]], wide: bool = False) -> bytes:
    """An extension block (RFC 8285) holding ``elements``, padded to 32 bits: one-byte headers, or
    two-byte ones if ``wide`` or an element is longer than one-byte headers allow."""
    if not elements:
        return b""
    if wide or any(len(value) > ONE_BYTE_MAX for _, value in elements):
        body = b"".join(bytes((ext_id, len(value))) + value for ext_id, value in elements)
        profile = 0x1000
    else:
        body = b"".join(bytes([(ext_id << 4) | (len(value) - 1)]) + value for ext_id, value in elements)
        profile = 0xBEDE
    body += b"\x00" * (-len(body) % 4)
    return struct.pack("!HH", profile, len(body) // 4) + body


def vp8_descriptor_size(payload: bytes | memoryview) -> int:
    """Length of the VP8 payload descriptor (RFC 7741) opening ``payload``; 0 when it is cut short."""
    if not payload:
        return 0
    offset = 1
    if payload[0] & 0x80:
        if len(payload) < 2:
            return 0
        flags = payload[1]
        offset = 2
        if flags & 0x80:
            if len(payload) <= offset:
                return 0
            offset += 2 if payload[offset] & 0x80 else 1
        if flags & 0x40:
            offset += 1
        if flags & 0x30:
            offset += 1
    return offset if offset <= len(payload) else 0


def is_vp8_keyframe(data: bytes, start: int = 0, end: int | None = None) -> bool:
    """Whether this packet starts a VP8 key frame (RFC 7741 payload descriptor, then the frame tag)."""
    payload = memoryview(data)[start:end]
    if not payload:
        return False
    first = payload[0]
    if not first & 0x10 or first & 0x07:  # not the start of partition 0
        return False
    offset = vp8_descriptor_size(payload)
    return 0 < offset < len(payload) and not payload[offset] & 0x01


def is_h264_keyframe(data: bytes, start: int = 0, end: int | None = None) -> bool:
    """Whether this packet starts an H.264 key frame: an IDR or SPS, alone, aggregated or fragmented."""
    payload = memoryview(data)[start:end]
    if not payload:
        return False
    nal_type = payload[0] & 0x1F
    if nal_type in (5, 7):
        return True
    if nal_type == 24:  # STAP-A
        offset = 1
        while offset + 2 < len(payload):
            size = (payload[offset] << 8) | payload[offset + 1]
            if payload[offset + 2] & 0x1F in (5, 7):
                return True
            offset += 2 + size
        return False
    if nal_type == 28 and len(payload) > 1:  # FU-A
        return bool(payload[1] & 0x80) and payload[1] & 0x1F in (5, 7)
    return False


KEYFRAME_DETECTORS = {"vp8": is_vp8_keyframe, "vp9": is_vp9_keyframe, "h264": is_h264_keyframe}


def seq_newer(a: int, b: int) -> bool:
    """Whether 16-bit sequence number ``a`` comes after ``b``, across wrap-around."""
    return a != b and (a - b) & 0xFFFF < 0x8000
