"""A padding probe: before a subscriber is moved up to a layer its estimate does not yet cover, the
server sends padding on one down-track's RTX stream so the subscriber receives what the higher layer
would take, for ``PROBE_SECONDS``. A link that cannot carry it queues the padding and the receiver's
delay-based estimator lowers its estimate: the probe failed and nothing the viewer sees was at stake
(its layer and key frames never changed). Receivers that report on the RTX stream (aiortc) also
tell of padding the link dropped, which fails the probe too. A probe that neither happens to lets
the layer through (sfu/allocator.py).

Padding packets carry a fresh abs-send-time, so the receiver's estimator measures them like media;
receivers drop them after that (no payload). They are paced by the subscriber's own traffic: each
packet sent to it lets out the padding due since the last one.
"""

from __future__ import annotations

from collections.abc import Callable

from sfu.forwarder import DownTrack

PROBE_SECONDS = 1.0
PADDING_BYTES = 255  # the most one padding-length byte can say
PADDING_PACKET = 12 + 8 + PADDING_BYTES  # header, abs-send-time extension, padding


class Probe:
    __slots__ = ("credit", "down", "last", "layer", "rate", "started")

    def __init__(self, down: DownTrack, layer: int, rate: int, now: float) -> None:
        self.down = down
        self.layer = layer  # the layer the probe is for
        self.rate = rate  # padding, bit/s: what the layer takes above what is sent now
        self.started = self.last = now
        self.credit = 0.0

    def pad(self, now: float, send: Callable[[bytes], None]) -> None:
        """Send the padding due since the last call (at most 50 ms worth: audio alone comes every 20 ms)."""
        self.credit = min(self.credit + self.rate / 8 * (now - self.last), self.rate / 160)
        self.last = now
        while self.credit >= PADDING_PACKET:
            self.credit -= PADDING_PACKET
            packet = self.down.padding_packet(PADDING_BYTES)
            if packet is None:
                return
            send(packet)

    def done(self, now: float) -> bool:
        return now - self.started >= PROBE_SECONDS
