"""A padding probe: before a subscriber is moved up to a layer its estimate does not yet cover, the
server sends padding on one down-track's RTX stream so the subscriber receives what the higher layer
would take, for ``PROBE_SECONDS``. A link that cannot carry it queues the padding and the receiver's
delay-based estimator lowers its estimate: the probe failed and nothing the viewer sees was at stake
(its layer and key frames never changed). Receivers that report on the RTX stream (aiortc) also
tell of padding the link dropped, which fails the probe too; from them, a probe passes only once
such a report, sent late enough into the probe, shows no loss (their estimators react to a queue
more slowly than Chromium's). A probe that passes lets the layer through (sfu/allocator.py).

Padding packets carry a fresh abs-send-time, so the receiver's estimator measures them like media;
receivers drop them after that (no payload). They are paced by the subscriber's own traffic: each
packet sent to it lets out the padding due since the last one.
"""

from __future__ import annotations

from collections.abc import Callable

from sfu.forwarder import DownTrack

PROBE_SECONDS = 1.0
# With transport-wide feedback the server measures the probe itself (sfu/gcc.py): a short burst of
# padding is enough to see whether the path delivers it at the rate it was sent (long enough to
# overflow the token bucket of a shaped link, which lets a short burst through at any rate).
MEASURED_SECONDS = 0.3
# A receiver that reports on the RTX stream vouches for a probe only with a report this far into it
# (time for a queue that overflows to have overflowed), and gives one within PROBE_MAX_SECONDS.
PROBE_REPORT_DELAY = 0.8
PROBE_MAX_SECONDS = 3.0
PADDING_BYTES = 255  # the most one padding-length byte can say
PADDING_PACKET = 12 + 8 + PADDING_BYTES  # header, abs-send-time extension, padding


class Probe:
    __slots__ = ("credit", "down", "last", "layer", "length", "rate", "started", "vouched")

    def __init__(self, down: DownTrack, layer: int, rate: int, now: float) -> None:
        self.down = down
        self.layer = layer  # the layer the probe is for
        self.rate = rate  # padding, bit/s: what the layer takes above what is sent now
        self.started = self.last = now
        self.credit = 0.0
        self.vouched = False  # a report on the RTX stream, late enough into the probe, showed no loss
        self.length = PROBE_SECONDS
        if down.estimator is not None:
            self.length = MEASURED_SECONDS
            down.estimator.start_probe(now, now + MEASURED_SECONDS)

    def pad(self, now: float, send: Callable[[bytes], None]) -> None:
        """Send the padding due since the last call (at most 50 ms worth: audio alone comes every 20 ms)."""
        if now - self.started > self.length:
            return
        self.credit = min(self.credit + self.rate / 8 * (now - self.last), self.rate / 160)
        self.last = now
        while self.credit >= PADDING_PACKET:
            self.credit -= PADDING_PACKET
            packet = self.down.padding_packet(PADDING_BYTES)
            if packet is None:
                return
            send(packet)

    def on_clean_report(self, now: float) -> None:
        if now - self.started >= PROBE_REPORT_DELAY:
            self.vouched = True

    def passed(self, now: float) -> bool:
        """The probe was measured as delivered; or, without that measure, it lasted its time (and,
        from a receiver reporting on RTX, was vouched for)."""
        if self.down.estimator is not None:
            return self.down.estimator.probe_result is True
        return now - self.started >= PROBE_SECONDS and (self.vouched or not self.down.reports_rtx)

    def failed(self) -> bool:
        return self.down.estimator is not None and self.down.estimator.probe_result is False

    def expired(self, now: float) -> bool:
        return now - self.started >= PROBE_MAX_SECONDS
