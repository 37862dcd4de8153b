"""RTCP on bytes: parse the feedback the SFU acts on and build what it sends (RFC 3550, 4585, 5104,
draft-alvestrand-rmcat-remb; transport-wide feedback is in sfu/twcc.py). Unknown packet types are
skipped, malformed ones end the parse."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from sfu.twcc import FMT_TRANSPORT_CC, TransportFeedback, parse_feedback

SR, RR, SDES, BYE, RTPFB, PSFB = 200, 201, 202, 203, 205, 206
FMT_NACK, FMT_PLI, FMT_FIR, FMT_AFB = 1, 1, 4, 15

NTP_EPOCH_OFFSET = 2208988800


class MalformedRtcp(ValueError):
    """The compound packet could not be walked; what was read before the fault is still used."""


@dataclass(slots=True)
class ReportBlock:
    ssrc: int
    fraction_lost: int  # out of 256
    packets_lost: int
    highest_seq: int
    jitter: int
    lsr: int
    dlsr: int


@dataclass(slots=True)
class SenderReport:
    ssrc: int
    ntp: int  # 64-bit NTP timestamp
    rtp_timestamp: int
    packets: int
    octets: int
    reports: list[ReportBlock] = field(default_factory=list)


@dataclass(slots=True)
class ReceiverReport:
    ssrc: int
    reports: list[ReportBlock]


@dataclass(slots=True)
class Nack:
    media_ssrc: int
    lost: list[int]


@dataclass(slots=True)
class KeyFrameRequest:
    """A PLI, or an FIR (one per requested SSRC)."""

    media_ssrc: int
    full: bool


@dataclass(slots=True)
class Remb:
    bitrate: int
    ssrcs: list[int]


Feedback = SenderReport | ReceiverReport | Nack | KeyFrameRequest | Remb | TransportFeedback


def parse(data: bytes) -> list[Feedback]:
    found: list[Feedback] = []
    offset = 0
    while offset + 4 <= len(data):
        first, packet_type, words = struct.unpack_from("!BBH", data, offset)
        end = offset + 4 + 4 * words
        if first >> 6 != 2 or end > len(data):
            raise MalformedRtcp("bad RTCP header or length")
        count = first & 0x1F
        body = data[offset + 4 : end]
        if first & 0x20 and body:
            body = body[: len(body) - body[-1]]
        found.extend(_parse_one(packet_type, count, body))
        offset = end
    return found


def _parse_one(packet_type: int, count: int, body: bytes) -> list[Feedback]:
    try:
        if packet_type == SR:
            ssrc, ntp, rtp_ts, packets, octets = struct.unpack_from("!IQIII", body)
            return [SenderReport(ssrc, ntp, rtp_ts, packets, octets, _report_blocks(body, 24, count))]
        if packet_type == RR:
            (ssrc,) = struct.unpack_from("!I", body)
            return [ReceiverReport(ssrc, _report_blocks(body, 4, count))]
        if packet_type == RTPFB and count == FMT_NACK:
            _, media = struct.unpack_from("!II", body)
            lost: list[int] = []
            for index in range(8, len(body) - 3, 4):
                pid, bitmask = struct.unpack_from("!HH", body, index)
                lost.append(pid)
                lost.extend((pid + bit + 1) & 0xFFFF for bit in range(16) if bitmask >> bit & 1)
            return [Nack(media, lost)]
        if packet_type == RTPFB and count == FMT_TRANSPORT_CC:
            return [parse_feedback(body)]
        if packet_type == PSFB and count == FMT_PLI:
            _, media = struct.unpack_from("!II", body)
            return [KeyFrameRequest(media, full=False)]
        if packet_type == PSFB and count == FMT_FIR:
            return [KeyFrameRequest(ssrc, full=True) for (ssrc,) in _fir_entries(body)]
        if packet_type == PSFB and count == FMT_AFB and body[8:12] == b"REMB":
            entries, exp_mantissa = body[12], int.from_bytes(body[13:16], "big")
            bitrate = (exp_mantissa & 0x3FFFF) << (exp_mantissa >> 18)
            ssrcs = [struct.unpack_from("!I", body, 16 + 4 * i)[0] for i in range(entries)]
            return [Remb(bitrate, ssrcs)]
    except (struct.error, IndexError) as exc:
        raise MalformedRtcp(f"truncated RTCP packet type {packet_type}") from exc
    return []


def _report_blocks(body: bytes, offset: int, count: int) -> list[ReportBlock]:
    blocks = []
    for index in range(count):
        ssrc, lost_word, highest, jitter, lsr, dlsr = struct.unpack_from("!IIIIII", body, offset + 24 * index)
        lost = lost_word & 0xFFFFFF
        if lost & 0x800000:
            lost -= 0x1000000
        blocks.append(ReportBlock(ssrc, lost_word >> 24, lost, highest, jitter, lsr, dlsr))
    return blocks


def _fir_entries(body: bytes) -> list[tuple[int]]:
    return [struct.unpack_from("!I", body, index) for index in range(8, len(body) - 7, 8)]


def _header(count: int, packet_type: int, body_length: int) -> bytes:
    return struct.pack("!BBH", 0x80 | count, packet_type, body_length // 4)


def pli(sender_ssrc: int, media_ssrc: int) -> bytes:
    return _header(FMT_PLI, PSFB, 8) + struct.pack("!II", sender_ssrc, media_ssrc)


def fir(sender_ssrc: int, media_ssrc: int, sequence: int) -> bytes:
    return _header(FMT_FIR, PSFB, 16) + struct.pack("!IIIB3x", sender_ssrc, 0, media_ssrc, sequence & 0xFF)


def nack(sender_ssrc: int, media_ssrc: int, lost: list[int]) -> bytes:
    """Generic NACK, packing each run of up to 17 sequence numbers into one (PID, BLP) pair."""
    pairs: list[bytes] = []
    remaining = sorted(set(lost), key=lambda seq: (seq - lost[0]) & 0xFFFF)
    while remaining:
        pid, bitmask = remaining[0], 0
        rest = []
        for seq in remaining[1:]:
            distance = (seq - pid - 1) & 0xFFFF
            if distance < 16:
                bitmask |= 1 << distance
            else:
                rest.append(seq)
        pairs.append(struct.pack("!HH", pid, bitmask))
        remaining = rest
    body = struct.pack("!II", sender_ssrc, media_ssrc) + b"".join(pairs)
    return _header(FMT_NACK, RTPFB, len(body)) + body


def remb(sender_ssrc: int, bitrate: int, ssrcs: list[int]) -> bytes:
    exponent = 0
    while bitrate >> exponent > 0x3FFFF:
        exponent += 1
    mantissa = bitrate >> exponent
    body = struct.pack("!II4sB", sender_ssrc, 0, b"REMB", len(ssrcs))
    body += ((exponent << 18) | mantissa).to_bytes(3, "big")
    body += b"".join(struct.pack("!I", ssrc) for ssrc in ssrcs)
    return _header(FMT_AFB, PSFB, len(body)) + body


def receiver_report(sender_ssrc: int, blocks: list[ReportBlock]) -> bytes:
    body = struct.pack("!I", sender_ssrc)
    for block in blocks:
        lost = max(-0x800000, min(0x7FFFFF, block.packets_lost)) & 0xFFFFFF
        body += struct.pack(
            "!IIIIII",
            block.ssrc,
            (block.fraction_lost << 24) | lost,
            block.highest_seq,
            block.jitter,
            block.lsr,
            block.dlsr,
        )
    return _header(len(blocks), RR, len(body)) + body


def sender_report(ssrc: int, ntp: int, rtp_timestamp: int, packets: int, octets: int) -> bytes:
    body = struct.pack("!IQIII", ssrc, ntp, rtp_timestamp & 0xFFFFFFFF, packets & 0xFFFFFFFF, octets & 0xFFFFFFFF)
    return _header(0, SR, len(body)) + body


def bye(ssrcs: list[int]) -> bytes:
    body = b"".join(struct.pack("!I", ssrc) for ssrc in ssrcs)
    return _header(len(ssrcs), BYE, len(body)) + body


def ntp_now(now: float) -> int:
    """64-bit NTP timestamp of a ``time.time()`` moment."""
    seconds = now + NTP_EPOCH_OFFSET
    return (int(seconds) << 32) | int((seconds % 1) * (1 << 32))


def middle_ntp(ntp: int) -> int:
    """The 32 middle bits of an NTP timestamp, as LSR fields carry them."""
    return (ntp >> 16) & 0xFFFFFFFF


def ntp_to_unix(ntp: int) -> float:
    """The ``time.time()`` moment of a 64-bit NTP timestamp."""
    return (ntp >> 32) - NTP_EPOCH_OFFSET + (ntp & 0xFFFFFFFF) / (1 << 32)
