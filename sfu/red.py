"""Redundant audio (RFC 2198, ``red/48000/2``): Opus packets that carry copies of earlier ones.

A publisher that offers RED (Chromium does, with Opus inside) is answered with RED before Opus, so
it sends every audio packet as RED: the new Opus frame (the primary block) behind one or two
earlier frames, so a receiver rebuilds a lost packet from the next one without waiting for a
retransmission. Subscribers that accepted RED in their answer get those packets as they are (only
the payload type changes to the server's); the others, and the server's own readers of the audio
(recording and streaming taps, noise suppression), get the primary block alone as a plain Opus
packet with the same sequence number and timestamp.

A RED payload is a chain of block headers, then the blocks in the same order: a redundant block's
header is four bytes (F bit set, payload type, timestamp offset, length), the last (the primary's)
is one byte (F bit clear, payload type) and its block runs to the end of the payload.
"""

from __future__ import annotations

from sfu import rtp

RED_NAME = "red"


def primary_block(data: bytes, start: int, end: int) -> tuple[int, int, int] | None:
    """The primary block of the RED payload ``data[start:end]``: (payload type, start, end), or
    ``None`` if the headers run past the payload."""
    offset = start
    redundant = 0
    while offset < end and data[offset] & 0x80:
        if offset + 4 > end:
            return None
        redundant += ((data[offset + 2] & 0x03) << 8) | data[offset + 3]
        offset += 4
    if offset >= end:
        return None
    payload_type = data[offset] & 0x7F
    first = offset + 1 + redundant
    if first > end:
        return None
    return payload_type, first, end


def primary_packet(packet: rtp.Packet) -> rtp.Packet | None:
    """The RED packet's primary block as a plain packet (the same buffer, other payload bounds), or
    ``None`` when the payload is malformed."""
    block = primary_block(packet.data, packet.payload_start, packet.payload_end)
    if block is None:
        return None
    plain = rtp.Packet.__new__(rtp.Packet)
    plain.data, plain.extensions, plain.marker = packet.data, packet.extensions, packet.marker
    plain.seq, plain.timestamp, plain.ssrc = packet.seq, packet.timestamp, packet.ssrc
    plain.payload_type, plain.payload_start, plain.payload_end = block
    return plain


def renumbered(packet: rtp.Packet, inner_payload_type: int) -> rtp.Packet:
    """The RED packet with every block header naming ``inner_payload_type`` (the subscribers' Opus
    payload type), if the publisher's differs."""
    data, start, end = packet.data, packet.payload_start, packet.payload_end
    headers = bytearray()
    offset = start
    while offset < end and data[offset] & 0x80:
        headers += bytes((0x80 | inner_payload_type,)) + data[offset + 1 : offset + 4]
        offset += 4
    if offset >= end or data[offset] & 0x7F == inner_payload_type:
        return packet
    headers.append(inner_payload_type)
    copy = rtp.Packet.__new__(rtp.Packet)
    copy.data = data[:start] + bytes(headers) + data[offset + 1 : end]
    copy.extensions, copy.marker, copy.seq, copy.timestamp = (
        packet.extensions,
        packet.marker,
        packet.seq,
        packet.timestamp,
    )
    copy.ssrc, copy.payload_type, copy.payload_start, copy.payload_end = (
        packet.ssrc,
        packet.payload_type,
        start,
        len(copy.data),
    )
    return copy
