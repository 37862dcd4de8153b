"""What one subscriber received on its video over time, without decoding: complete frames, the size
of each key frame, and the bytes that crossed its link, for the shaped-link mode (bench/shaped.py).

A frame is complete when every packet from the one that starts it (VP8 descriptor: S bit, partition
0) to the one that ends it (RTP marker) arrived, by sequence number: what today's counting calls a
frame (a new RTP timestamp), kept only when nothing of it is missing. A key frame's size is read from
its VP8 payload header (RFC 6386 9.1): the 3-byte frame tag, the start code 9d 01 2a, then 14-bit
width and height, little-endian; delta frames keep the last key frame's size, since a layer switch
(on huiyi and on Janus) happens only at a key frame.

A complete frame is not always one a decoder could show: a delta frame needs the frame before it. So
a frame is also counted decodable when it is complete and is a key frame, or follows the last
decodable frame with no packet missing in between (padding on the video stream included)."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from sfu import rtp

BIN_NS = 250_000_000  # bytes are counted in bins of this many nanoseconds
START_CODE = b"\x9d\x01\x2a"


def keyframe_size(payload: bytes) -> tuple[int, int] | None:
    """Width and height of the VP8 key frame this RTP payload starts, or ``None`` if it starts none."""
    if not payload or not payload[0] & 0x10 or payload[0] & 0x07:  # not the start of partition 0
        return None
    offset = rtp.vp8_descriptor_size(payload)
    header = payload[offset : offset + 10]
    if not offset or len(header) < 10 or header[0] & 0x01 or header[3:6] != START_CODE:
        return None
    width, height = struct.unpack_from("<HH", header, 6)
    return width & 0x3FFF, height & 0x3FFF


@dataclass
class VideoTrace:
    """One subscriber's video over time (monotonic nanoseconds, comparable across the run's processes)."""

    complete: list[int] = field(default_factory=list)  # when each complete frame's last packet arrived
    decodable: list[int] = field(default_factory=list)  # when each decodable frame's last packet arrived
    sizes: list[tuple[int, int, int]] = field(default_factory=list)  # (ns, width, height) of each complete key frame
    bins: dict[int, int] = field(default_factory=dict)  # BIN_NS bin -> bytes received (all RTP: video, audio, padding)
    video_expected: int = 0  # video packets from the first to the highest sequence number, per SSRC
    video_received: int = 0
    # The frame being received: its RTP timestamp, first sequence number (if its start arrived),
    # packets seen, and its key frame size (if it is one).
    _ts: int = -1
    _first: int | None = None
    _count: int = 0
    _size: tuple[int, int] | None = None
    _chain: int | None = None  # the sequence number right after the last decodable frame (and its padding)
    _highest: dict[int, tuple[int, int]] = field(default_factory=dict)  # ssrc -> (first, highest) extended

    def on_bytes(self, size: int, now: int) -> None:
        key = now // BIN_NS
        self.bins[key] = self.bins.get(key, 0) + size

    def on_video(self, packet: rtp.Packet, now: int) -> None:
        """A packet of the video stream (a padding-only one extends the decodable chain, nothing more)."""
        seq = self._extend(packet.ssrc, packet.seq)
        self.video_received += 1
        if not packet.has_payload:
            if seq == self._chain:
                self._chain = seq + 1
            return
        if packet.timestamp != self._ts:
            self._ts, self._first, self._count, self._size = packet.timestamp, None, 0, None
        self._count += 1
        payload = packet.payload
        if payload and payload[0] & 0x10 and not payload[0] & 0x07:
            self._first = seq
            self._size = keyframe_size(payload)
        if packet.marker and self._first is not None and self._count == seq - self._first + 1:
            self.complete.append(now)
            if self._size is not None:
                self.sizes.append((now, *self._size))
            if self._size is not None or self._first == self._chain:
                self.decodable.append(now)
                self._chain = seq + 1

    def _extend(self, ssrc: int, seq: int) -> int:
        first, highest = self._highest.get(ssrc, (seq, seq))
        extended = (highest & ~0xFFFF) | seq
        if extended < highest - 0x8000:
            extended += 0x10000
        elif extended > highest + 0x8000:
            extended -= 0x10000
        highest = max(highest, extended)
        self._highest[ssrc] = (first, highest)
        self.video_expected = sum(top - bottom + 1 for bottom, top in self._highest.values())
        return extended
