"""The send-side estimate on synthetic arrivals: packets through a simulated bottleneck (a rate and a
FIFO queue with a drop limit, as ``tc tbf`` makes one), feedback every 100 ms as a receiver sends it.
Below the bottleneck the estimate grows with what is delivered; above it, the queue's growth is seen
before the queue overflows and the estimate falls under the bottleneck; heavy loss cuts it too."""

from __future__ import annotations

from sfu.gcc import START_BITRATE, SendSideEstimator
from sfu.twcc import TransportFeedback

PACKET = 1000  # bytes
INTERVAL = 0.1  # feedback


class Bottleneck:
    """Serialises packets at ``rate`` bit/s; a packet that would wait longer than ``limit`` s is dropped."""

    def __init__(self, rate: int, limit: float = 0.4) -> None:
        self.rate, self.limit = rate, limit
        self.free_at = 0.0

    def arrival(self, sent: float, size: int) -> float | None:
        start = max(sent, self.free_at)
        if start - sent > self.limit:
            return None
        self.free_at = start + size * 8 / self.rate
        return self.free_at + 0.02  # plus propagation


def run(estimator: SendSideEstimator, link: Bottleneck, send_rate: int, seconds: float, start: float) -> list[int]:
    """Send ``send_rate`` bit/s for ``seconds`` from ``start``; the estimates after each feedback."""
    gap = PACKET * 8 / send_rate
    estimates = []
    now, next_feedback = start, start + INTERVAL
    base, arrivals = estimator.next_seq, []
    while now < start + seconds:
        seq = estimator.stamp(PACKET, now)
        arrivals.append(link.arrival(now, PACKET))
        now += gap
        if now >= next_feedback:
            estimates.append(estimator.on_feedback(TransportFeedback(0, base, 0, arrivals), now))
            base, arrivals = (seq + 1) & 0xFFFF, []
            next_feedback += INTERVAL
    return estimates


def test_below_the_bottleneck_the_estimate_grows_with_what_is_delivered() -> None:
    estimator = SendSideEstimator()
    estimates = run(estimator, Bottleneck(2_000_000), 500_000, 10, 100.0)
    assert min(estimates) >= START_BITRATE * 0.95, "no congestion: no decrease"
    assert 600_000 < estimates[-1] <= 1.5 * 500_000 + 10_000, estimates[-1]


def test_a_rate_above_the_bottleneck_is_seen_in_the_delay_before_the_queue_drops() -> None:
    estimator = SendSideEstimator()
    link = Bottleneck(300_000)
    run(estimator, link, 200_000, 5, 100.0)
    before = estimator.estimate
    estimates = run(estimator, link, 450_000, 1.0, 105.0)  # a probe half again above the link
    assert min(estimates) < before, "the growing queue lowered the estimate within the second"
    # ... and it falls below the bottleneck, to what was being delivered
    assert min(estimates) <= 300_000, estimates


class LossyLink(Bottleneck):
    """A fast link that drops every fourth packet (a radio link's loss, not a queue's)."""

    def __init__(self) -> None:
        super().__init__(10_000_000)
        self.count = 0

    def arrival(self, sent: float, size: int) -> float | None:
        self.count += 1
        arrival = super().arrival(sent, size)
        return None if self.count % 4 == 0 else arrival


def test_heavy_loss_cuts_the_estimate() -> None:
    estimator = SendSideEstimator()
    run(estimator, Bottleneck(2_000_000), 800_000, 3, 100.0)
    estimates = run(estimator, LossyLink(), 800_000, 1.2, 103.0)
    peak = estimates.index(max(estimates))
    # A quarter lost: the estimate is cut by an eighth (at most once per half second), however fast the link.
    assert min(estimates[peak:]) <= 0.9 * estimates[peak], estimates


def probe(link: Bottleneck) -> bool | None:
    """Media at 200 kbit/s, then 300 ms of media and padding at 600 kbit/s through ``link``."""
    estimator = SendSideEstimator()
    run(estimator, link, 200_000, 2, 100.0)
    estimator.start_probe(102.0, 102.3)
    run(estimator, link, 600_000, 0.3, 102.0)
    run(estimator, link, 200_000, 0.3, 102.3)
    return estimator.probe_result


def test_a_short_probe_is_judged_by_the_rate_the_path_delivered_it_at() -> None:
    assert probe(Bottleneck(2_000_000)) is True, "a wide path delivers the burst as fast as it was sent"
    assert probe(Bottleneck(300_000)) is False, "a narrow one spreads it out in its queue"
