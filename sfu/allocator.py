"""Sharing a subscriber's downstream bandwidth among its video down-tracks, and climbing back up.

A receiver's REMB estimate is bounded by what it has been receiving (Chromium and aiortc let it grow
to about 1.5 times the incoming rate, 8 % a second): once a subscriber is held on a low layer, for a
cap it has since lifted or for a congestion that has passed, its estimate never says a higher layer
fits. So the estimate is a hard budget only while it shows congestion (it fell below what is being
sent, or receivers report sustained loss); otherwise the allocator lets one down-track at a time try
the next layer up and keeps it there while no congestion follows. A climb that is followed by
congestion is undone, and the next try waits twice as long (up to ``CLIMB_BACKOFF_MAX``), so a link
that really is narrow is probed rarely.

A down-track whose subscriber accepted RTX is not moved up blindly: the allocator first probes the
link with padding at the higher layer's rate (sfu/probe.py). A probe that the receiver's estimate
backs away from (any decrease: its estimator lowers it only on overuse) failed, and cost at most a
short queue on the link; the viewer's layer never changed, so nothing froze. Failed probes are
cheap, so they are retried sooner (up to ``PROBE_BACKOFF_MAX``) and the subscriber is back up soon
after its link recovers. A probe that ends without a decrease lets the layer through.
"""

from __future__ import annotations

from collections.abc import Iterable

from sfu.forwarder import HEAVY_LOSS, DownTrack
from sfu.probe import Probe

CLIMB_INTERVAL = 2.0  # seconds between two climbs while none fails: the estimate needs time to react
CLIMB_VERIFY_SECONDS = 4.0  # congestion this soon after a climb blames the climb
CLIMB_BACKOFF_MIN = 2.0
CLIMB_BACKOFF_MAX = 32.0
CALM_RESET_SECONDS = 30.0  # this long without congestion forgets earlier failed climbs
ESTIMATE_DROP = 0.9  # an estimate below this fraction of the previous one is a decrease, not noise
STARVED_FRACTION = 0.5  # a congested share below half the lowest layer's rate leaves audio only
PROBE_BACKOFF_MAX = 4.0  # a failed probe cost little: try again at least this often
# ... except on a link too narrow for any video, where every probe overfills it at the expense of the
# audio that is all the viewer gets: probed at most every 8 s there.
STARVED_PROBE_BACKOFF_MAX = 8.0
PROBE_MARGIN = 1.5  # probe for this much more than the layer's rate: encoders overshoot, key frames burst
PROBE_SUCCESS_INTERVAL = 0.5  # after a probe let a layer through, the next one may start this soon


class BandwidthAllocator:
    __slots__ = ("backoff", "calm_since", "estimate", "last_climb", "next_climb", "probe", "verified")

    def __init__(self) -> None:
        self.estimate: int | None = None  # the subscriber's latest REMB, bit/s
        self.backoff = CLIMB_BACKOFF_MIN
        self.next_climb = 0.0
        self.last_climb = float("-inf")
        self.calm_since = 0.0
        self.probe: Probe | None = None  # padding being sent to try a layer before switching to it
        self.verified = False  # the last climb followed a probe

    def on_estimate(self, bitrate: int, downtracks: Iterable[DownTrack], now: float) -> None:
        """A new REMB. The receiver's estimator lowers its estimate only on overuse, and then to below
        what it receives: a drop under what is being sent is congestion."""
        downs = list(downtracks)
        previous, self.estimate = self.estimate, bitrate
        if previous is None:
            self.next_climb = now + CLIMB_INTERVAL  # the first estimate is acted on before any climb
        elif self.probe is not None and bitrate < previous:
            self._probe_failed(now)
        elif bitrate < previous * ESTIMATE_DROP and bitrate < sum(d.bitrate for d in downs):
            self._congestion(downs, now)
        self.allocate(downs, now)

    def allocate(self, downtracks: Iterable[DownTrack], now: float) -> None:
        """Give each video down-track its share of the estimate, then maybe let one of them climb."""
        downs = list(downtracks)
        video = [down for down in downs if down.track.kind == "video" and not down.paused]
        if not video:
            return
        if any(down.smoothed_loss > HEAVY_LOSS for down in video):
            self._congestion(video, now)
        elif now - self.calm_since > CALM_RESET_SECONDS:
            self.backoff = CLIMB_BACKOFF_MIN
        share = None
        if self.estimate is not None:
            audio = sum(down.bitrate for down in downs if down.track.kind == "audio")
            share = max(0, self.estimate - audio) // len(video)
        # Only an estimate that congestion brought down says the link cannot carry the lowest layer.
        congested = self.calm_since > 0 and now - self.calm_since < CALM_RESET_SECONDS
        for down in video:
            down.bandwidth = share
            down.congested = congested
            lowest = down.track.rung_rate(0)
            down.starved = congested and share is not None and share < lowest * STARVED_FRACTION
            down.choose_layer()
        # RED adds about as much again as the audio it protects: a link that is congested, not just
        # lossy, gets plain Opus until it has been calm for CALM_RESET_SECONDS (DownTrack.takes_red).
        for down in downs:
            if down.track.kind == "audio":
                down.starved = congested
        if self.probe is not None:
            self._end_probe(video, now)
        if share is None or now < self.next_climb or self.probe is not None:
            return
        held_back = [down for down in video if down.held_back]
        if not held_back:
            return
        lowest = min(held_back, key=lambda down: down.target_layer)
        above = lowest.next_layer_up()
        if lowest.rtx_payload_type is not None and above is not None:
            track = lowest.track
            # What it receives now: the layer, or the part of it its temporal layers take.
            sent = track.rung_rate(lowest.current_layer) if lowest.current_layer >= 0 else 0
            if above == lowest.current_layer:
                sent = lowest.bitrate
            rate = int(track.rung_rate(above) * PROBE_MARGIN) - sent
            if rate > 0:
                self.probe = Probe(lowest, above, rate, now)
                return
        lowest.climb()
        self.verified = False
        self.last_climb = now
        self.next_climb = now + CLIMB_INTERVAL

    def _end_probe(self, video: list[DownTrack], now: float) -> None:
        """A probe that lasted its time without a decrease in the estimate lets its layer through."""
        probe = self.probe
        assert probe is not None
        if probe.down not in video or not probe.down.held_back:
            self.probe = None
        elif probe.expired(now) or probe.failed():
            self._probe_failed(now)
        elif probe.passed(now):
            self.probe = None
            probe.down.climb(probe.layer)
            self.verified = True
            self.last_climb = now
            self.next_climb = now + PROBE_SUCCESS_INTERVAL

    def on_loss_report(self, now: float) -> None:
        """A receiver reports loss on a media stream while a probe runs: the probe overfilled the link."""
        if self.probe is not None:
            self._probe_failed(now)

    def on_rtx_report(self, down: DownTrack, fraction_lost: int, now: float) -> None:
        """The receiver reports on the stream probes pad: losses fail a probe, a clean report vouches."""
        if self.probe is None or self.probe.down is not down:
            return
        if fraction_lost:
            self._probe_failed(now)
        else:
            self.probe.on_clean_report(now)

    def _probe_failed(self, now: float) -> None:
        starved = self.probe is not None and self.probe.down.starved
        self.probe = None
        self.backoff = min(self.backoff * 2, STARVED_PROBE_BACKOFF_MAX if starved else PROBE_BACKOFF_MAX)
        self.next_climb = now + self.backoff

    def _congestion(self, downs: list[DownTrack], now: float) -> None:
        """Undo the climbs; blame the last one if it was recent, and wait longer before the next."""
        if self.probe is not None:
            self._probe_failed(now)
        if now - self.last_climb < CLIMB_VERIFY_SECONDS:
            self.backoff = min(self.backoff * 2, PROBE_BACKOFF_MAX if self.verified else CLIMB_BACKOFF_MAX)
            self.last_climb = float("-inf")
        self.next_climb = max(self.next_climb, now + self.backoff)
        self.calm_since = now
        for down in downs:
            down.climbed = -1
