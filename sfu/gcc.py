"""A send-side bandwidth estimate for one subscriber, from its transport-wide feedback (sfu/twcc.py),
in the spirit of Google Congestion Control (draft-ietf-rmcat-gcc): a delay-based part that watches
the queue on the path grow (a trendline over the delay variation of packet groups, against an
adaptive threshold) and an AIMD rate that backs off to 85 % of what was delivered when it does, and
a loss-based part that cuts the rate when more than 10 % of the packets are lost.

The server records each packet it sends to the subscriber (send time and size, in two preallocated
rings indexed by the 16-bit transport sequence number: no object per packet); the feedback says when
each arrived. Like a receiver's REMB, this estimate only grows to 1.5 times what is delivered, so
climbing to a higher layer still goes through padding probes (sfu/probe.py, sfu/allocator.py); but
here every probe packet's fate and delay is known within a tenth of a second.
"""

from __future__ import annotations

from sfu.twcc import TransportFeedback

RING = 1 << 16  # one slot per 16-bit sequence number
GROUP_SPAN = 0.005  # packets sent within 5 ms form one group (a burst the pacer sent together)
TRENDLINE_WINDOW = 20  # groups in the delay trend's regression
SMOOTHING = 0.9
THRESHOLD_GAIN = 4.0
THRESHOLD_START, THRESHOLD_MIN, THRESHOLD_MAX = 12.5, 6.0, 600.0  # milliseconds
K_UP, K_DOWN = 0.0087, 0.039
OVERUSE_TIME = 0.01  # seconds above the threshold before it counts as overuse
BACKOFF = 0.85
INCREASE_PER_SECOND = 1.08
ACKED_WINDOW = 0.5  # seconds of delivered bytes behind the delivered rate
RECENT_WINDOW = 0.15  # the current window's rate counts once it is this long
LOSS_HIGH, LOSS_LOW = 0.1, 0.02
LOSS_WINDOW = 20  # packets: loss is judged over at least this many ...
LOSS_PERIOD = 0.5  # ... and this many seconds, so one burst of loss is one decrease
START_BITRATE = 300_000
PROBE_DELIVERED = 0.85  # a probe passes if the path delivered its packets at this fraction of their rate
PROBE_LOSS = 0.05
MIN_BITRATE = 50_000

NORMAL, OVERUSING, UNDERUSING = 0, 1, -1


class SendSideEstimator:
    """Stamps outgoing packets with transport sequence numbers and estimates the subscriber's path."""

    __slots__ = (
        "_acked_bytes",
        "_acked_last",
        "_acked_start",
        "_group_arrival",
        "_group_send",
        "_last_update",
        "_loss_lost",
        "_loss_since",
        "_loss_total",
        "_overuse_count",
        "_overuse_since",
        "_prev_group_arrival",
        "_prev_group_send",
        "_prev_trend",
        "_probe",
        "_threshold_at",
        "_trend_points",
        "accumulated",
        "acked_rate",
        "estimate",
        "next_seq",
        "probe_result",
        "sent_at",
        "sizes",
        "smoothed",
        "state",
        "threshold",
    )

    def __init__(self) -> None:
        self.sent_at = [0.0] * RING
        self.sizes = [0] * RING
        self.next_seq = 0
        self.estimate = START_BITRATE
        self.acked_rate: int | None = None
        self.state = NORMAL
        self.threshold = THRESHOLD_START
        self.accumulated = self.smoothed = 0.0
        self._trend_points: list[tuple[float, float]] = []
        self._group_send = self._group_arrival = -1.0
        self._prev_group_send = self._prev_group_arrival = -1.0
        self._prev_trend = 0.0
        self._overuse_since = -1.0
        self._overuse_count = 0
        self._threshold_at = -1.0
        self._acked_bytes = 0
        self._acked_start = self._acked_last = -1.0
        self._loss_lost = self._loss_total = 0
        self._loss_since = -1.0
        self._last_update = -1.0
        # the probe window being measured: [start, end, bytes sent, bytes received, packets received,
        # packets lost, first and last arrival, latest send time reported], or None
        self._probe: list[float] | None = None
        self.probe_result: bool | None = None

    def stamp(self, size: int, now: float) -> int:
        """The next transport sequence number, its packet of ``size`` bytes sent at ``now``."""
        seq = self.next_seq
        self.sent_at[seq] = now
        self.sizes[seq] = size
        self.next_seq = (seq + 1) & 0xFFFF
        return seq

    def on_feedback(self, feedback: TransportFeedback, now: float) -> int:
        """Take one feedback packet in; the estimate after it, bit/s."""
        arrivals = feedback.arrivals
        probe = self._probe
        for index, arrival in enumerate(arrivals):
            seq = (feedback.base + index) & 0xFFFF
            if probe is not None:
                self._probe_packet(probe, self.sent_at[seq], self.sizes[seq], arrival)
            self._loss_total += 1
            if arrival is None:
                self._loss_lost += 1
                continue
            self._delivered(self.sizes[seq], arrival)
            self._delay(self.sent_at[seq], arrival)
        if probe is not None and probe[8] > probe[1]:
            self._judge_probe(probe)
        self._update(now)
        return self.estimate

    # probes --------------------------------------------------------------------------------------

    def start_probe(self, start: float, end: float) -> None:
        """Measure how the path delivers what is sent between ``start`` and ``end`` (a padding probe
        on top of the media): ``probe_result`` says, once the feedback has covered it."""
        self._probe = [start, end, 0.0, 0.0, 0.0, 0.0, -1.0, -1.0, -1.0]
        self.probe_result = None

    def _probe_packet(self, probe: list[float], sent: float, size: int, arrival: float | None) -> None:
        probe[8] = max(probe[8], sent)
        if not probe[0] <= sent <= probe[1]:
            return
        probe[2] += size
        if arrival is None:
            probe[5] += 1
            return
        probe[3] += size
        probe[4] += 1
        probe[6] = arrival if probe[6] < 0 else min(probe[6], arrival)
        probe[7] = max(probe[7], arrival)

    def _judge_probe(self, probe: list[float]) -> None:
        """A path that carries the probe's rate delivers it as fast as it was sent; a narrower one
        spreads it out in its queue (or drops it)."""
        start, end, sent, received, packets, lost, first, last, _ = probe
        self._probe = None
        span = last - first
        if lost > PROBE_LOSS * (packets + lost) or packets < 2 or span <= 0:
            self.probe_result = False
            return
        self.probe_result = received * 8 / span >= PROBE_DELIVERED * sent * 8 / (end - start)

    # delivered rate ------------------------------------------------------------------------------

    def _delivered(self, size: int, arrival: float) -> None:
        if self._acked_start < 0:
            self._acked_start = arrival
        self._acked_bytes += size
        self._acked_last = arrival
        elapsed = arrival - self._acked_start
        if elapsed >= ACKED_WINDOW:
            self.acked_rate = int(self._acked_bytes * 8 / elapsed)
            self._acked_bytes, self._acked_start = 0, arrival

    def _recent_delivery(self) -> int:
        """The delivered rate to back off from: the last full window's, or the current one's if that is
        lower and long enough to tell (a path that just narrowed shows there first)."""
        assert self.acked_rate is not None
        elapsed = self._acked_last - self._acked_start
        if elapsed >= RECENT_WINDOW:
            return min(self.acked_rate, int(self._acked_bytes * 8 / elapsed))
        return self.acked_rate

    # delay-based ---------------------------------------------------------------------------------

    def _delay(self, sent: float, arrival: float) -> None:
        if self._group_send < 0:
            self._group_send, self._group_arrival = sent, arrival
            return
        if sent - self._group_send <= GROUP_SPAN and sent >= self._group_send:
            self._group_arrival = max(self._group_arrival, arrival)
            return
        if self._prev_group_send >= 0:
            variation = (self._group_arrival - self._prev_group_arrival) - (self._group_send - self._prev_group_send)
            self._trend(variation * 1000, self._group_arrival)
        self._prev_group_send, self._prev_group_arrival = self._group_send, self._group_arrival
        self._group_send, self._group_arrival = sent, arrival

    def _trend(self, variation_ms: float, arrival: float) -> None:
        """Least-squares slope of the smoothed accumulated delay over the last groups (the trendline
        filter), compared with the adaptive threshold."""
        self.accumulated += variation_ms
        self.smoothed = SMOOTHING * self.smoothed + (1 - SMOOTHING) * self.accumulated
        points = self._trend_points
        points.append((arrival * 1000, self.smoothed))
        if len(points) > TRENDLINE_WINDOW:
            del points[0]
        if len(points) < TRENDLINE_WINDOW:
            return
        mean_x = sum(x for x, _ in points) / len(points)
        mean_y = sum(y for _, y in points) / len(points)
        numerator = sum((x - mean_x) * (y - mean_y) for x, y in points)
        denominator = sum((x - mean_x) ** 2 for x, _ in points)
        slope = numerator / denominator if denominator else 0.0
        trend = slope * TRENDLINE_WINDOW * THRESHOLD_GAIN
        if trend > self.threshold:
            if self._overuse_since < 0:
                self._overuse_since = arrival
            self._overuse_count += 1
            if arrival - self._overuse_since >= OVERUSE_TIME and self._overuse_count > 1 and trend >= self._prev_trend:
                self.state = OVERUSING
        elif trend < -self.threshold:
            self._overuse_since, self._overuse_count = -1.0, 0
            self.state = UNDERUSING
        else:
            self._overuse_since, self._overuse_count = -1.0, 0
            self.state = NORMAL
        self._prev_trend = trend
        self._adapt_threshold(trend, arrival)

    def _adapt_threshold(self, trend: float, arrival: float) -> None:
        """The threshold follows the trend slowly up and quickly down, so that a path with steady jitter
        is not read as congestion and a queue that really grows still is."""
        if self._threshold_at < 0:
            self._threshold_at = arrival
        magnitude = abs(trend)
        if magnitude > self.threshold + 15:
            self._threshold_at = arrival
            return
        k = K_DOWN if magnitude < self.threshold else K_UP
        elapsed_ms = min((arrival - self._threshold_at) * 1000, 100.0)
        self.threshold += k * (magnitude - self.threshold) * elapsed_ms
        self.threshold = min(max(self.threshold, THRESHOLD_MIN), THRESHOLD_MAX)
        self._threshold_at = arrival

    # the rate ------------------------------------------------------------------------------------

    def _update(self, now: float) -> None:
        elapsed = 0.0 if self._last_update < 0 else min(now - self._last_update, 1.0)
        self._last_update = now
        rate = self.estimate
        if self.state == OVERUSING and self.acked_rate is not None:
            rate = min(rate, int(self._recent_delivery() * BACKOFF))
            self.state = NORMAL  # one backoff per detected overuse; the trend must show it again
            self.accumulated = self.smoothed = 0.0
            self._trend_points.clear()
        elif self.state == NORMAL:
            increased = int(rate * INCREASE_PER_SECOND**elapsed)
            if self.acked_rate is not None:
                # Grow no further than half again what is delivered (an increase is capped, never undone).
                increased = min(increased, max(rate, int(1.5 * self.acked_rate) + 10_000))
            rate = increased
        if self._loss_since < 0:
            self._loss_since = now
        if self._loss_total >= LOSS_WINDOW and now - self._loss_since >= LOSS_PERIOD:
            loss = self._loss_lost / self._loss_total
            if loss > LOSS_HIGH:
                rate = min(rate, int(self.estimate * (1 - 0.5 * loss)))
            self._loss_lost = self._loss_total = 0
            self._loss_since = now
        self.estimate = max(MIN_BITRATE, rate)
