"""Transport-wide congestion control feedback (draft-holmer-rmcat-transport-wide-cc-extensions-01):
the server tells a publisher when each of its packets arrived, so the publisher's own send-side
estimator (Chromium's Google Congestion Control) measures its uplink from queuing delay and loss,
instead of waiting for the server's loss-driven REMB invitation.

Every packet the publisher sends carries a transport-wide sequence number in a header extension.
``ArrivalLog`` notes each one's arrival (two list appends per packet, no objects made) and, about
ten times a second, ``feedback`` turns what arrived since the last report into one RTCP RTPFB
packet (FMT 15): a base sequence number, a reference time, two-bit status chunks (not received,
small delta, large delta) and the arrival deltas in 250 µs ticks. ``parse_feedback`` reads what a
subscriber sends back about the packets the server sent it (sfu/gcc.py estimates from it).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

RTPFB = 205  # RTCP transport-layer feedback (RFC 4585)
FMT_TRANSPORT_CC = 15
FEEDBACK_INTERVAL = 0.1  # seconds between two feedback packets while packets arrive
MAX_PACKETS = 1000  # sequence numbers one feedback packet covers at most; a larger gap starts over
TICK = 0.00025  # delta unit, seconds
REFERENCE_UNIT = 0.064  # reference time unit, seconds
SYMBOL_LOST, SYMBOL_SMALL, SYMBOL_LARGE = 0, 1, 2


@dataclass(slots=True)
class TransportFeedback:
    """What a receiver said of a run of transport sequence numbers: ``arrivals[i]`` is when the packet
    numbered ``base + i`` arrived (seconds on the receiver's clock, only differences mean anything),
    or ``None`` if it did not."""

    media_ssrc: int
    base: int
    count: int  # the feedback packet's own counter
    arrivals: list[float | None]


def parse_feedback(body: bytes) -> TransportFeedback:
    """The FCI of an RTPFB FMT 15 packet (``body``: from the sender SSRC on, padding removed).
    Raises ``struct.error`` or ``IndexError`` when it is cut short."""
    _, media, base, count, times = struct.unpack_from("!IIHHI", body)
    symbols: list[int] = []
    offset = 16
    while len(symbols) < count:
        (chunk,) = struct.unpack_from("!H", body, offset)
        offset += 2
        if not chunk & 0x8000:  # run length: one symbol, repeated
            symbols.extend([(chunk >> 13) & 3] * (chunk & 0x1FFF))
        elif chunk & 0x4000:  # seven two-bit symbols
            symbols.extend((chunk >> shift) & 3 for shift in (12, 10, 8, 6, 4, 2, 0))
        else:  # fourteen one-bit symbols
            symbols.extend((chunk >> shift) & 1 for shift in range(13, -1, -1))
    moment = (times >> 8) * REFERENCE_UNIT
    arrivals: list[float | None] = []
    for symbol in symbols[:count]:
        if symbol == SYMBOL_LOST:
            arrivals.append(None)
            continue
        if symbol == SYMBOL_SMALL:
            ticks = body[offset]
            offset += 1
        else:
            (ticks,) = struct.unpack_from("!h", body, offset)
            offset += 2
        moment += ticks * TICK
        arrivals.append(moment)
    return TransportFeedback(media, base, times & 0xFF, arrivals)


class ArrivalLog:
    """Arrivals noted since the last feedback, by unwrapped transport-wide sequence number."""

    __slots__ = ("_highest", "_last_raw", "count", "last_sent", "next_seq", "seqs", "times")

    def __init__(self) -> None:
        self.seqs: list[int] = []
        self.times: list[float] = []
        self.next_seq: int | None = None  # the first sequence number the next feedback reports
        self._highest = -1
        self._last_raw: int | None = None
        self.count = 0  # feedback packet count, modulo 256
        self.last_sent = 0.0

    def note(self, raw: int, now: float) -> None:
        """A packet with 16-bit transport sequence number ``raw`` arrived at ``now`` (seconds)."""
        if self._last_raw is None:
            seq = raw
        else:
            step = (raw - self._last_raw) & 0xFFFF
            seq = self._highest + step if step < 0x8000 else self._highest - (0x10000 - step)
            if seq < self._highest - 0x8000:
                return
        if seq > self._highest:
            self._highest, self._last_raw = seq, raw
        if self.next_seq is None:
            self.next_seq = seq
        elif seq < self.next_seq:
            return  # reported missing already; a late arrival is not news to the sender's estimator
        self.seqs.append(seq)
        self.times.append(now)

    def due(self, now: float) -> bool:
        return bool(self.seqs) and now - self.last_sent >= FEEDBACK_INTERVAL

    def feedback(self, sender_ssrc: int, media_ssrc: int, now: float) -> bytes | None:
        """One feedback packet covering everything noted since the last one; ``None`` if nothing was."""
        if not self.seqs or self.next_seq is None:
            return None
        arrivals = dict(zip(self.seqs, self.times, strict=True))
        self.seqs.clear()
        self.times.clear()
        self.last_sent = now
        end = max(arrivals)
        base = max(self.next_seq, end - MAX_PACKETS + 1)
        self.next_seq = end + 1
        first = min(arrivals[seq] for seq in arrivals if seq >= base)
        reference = int(first / REFERENCE_UNIT)
        previous = reference * REFERENCE_UNIT
        symbols: list[int] = []
        deltas = bytearray()
        for seq in range(base, end + 1):
            arrival = arrivals.get(seq)
            if arrival is None:
                symbols.append(SYMBOL_LOST)
                continue
            ticks = max(-0x8000, min(0x7FFF, round((arrival - previous) / TICK)))
            previous += ticks * TICK
            if 0 <= ticks <= 0xFF:
                symbols.append(SYMBOL_SMALL)
                deltas.append(ticks)
            else:
                symbols.append(SYMBOL_LARGE)
                deltas += struct.pack("!h", ticks)
        chunks = bytearray()
        for start in range(0, len(symbols), 7):
            group = symbols[start : start + 7]
            word = 0xC000  # status vector chunk, two-bit symbols
            for index, symbol in enumerate(group):
                word |= symbol << (12 - 2 * index)
            chunks += struct.pack("!H", word)
        times = (reference & 0xFFFFFF) << 8 | self.count
        body = struct.pack("!IIHHI", sender_ssrc, media_ssrc, base & 0xFFFF, len(symbols), times) + chunks + deltas
        self.count = (self.count + 1) & 0xFF
        padding = -len(body) % 4
        if padding:
            body += bytes(padding - 1) + bytes((padding,))
        header = struct.pack("!BBH", 0x80 | (0x20 if padding else 0) | FMT_TRANSPORT_CC, RTPFB, len(body) // 4)
        return header + body
