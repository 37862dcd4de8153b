"""How a subscriber's bandwidth estimate moves its video layers: a hard budget while it shows
congestion, a limit the subscriber climbs past one layer at a time while it does not, with climbs
that meet congestion undone and retried ever more rarely."""

from __future__ import annotations

from sfu.allocator import CLIMB_BACKOFF_MIN, CLIMB_INTERVAL, BandwidthAllocator
from sfu.forwarder import DownTrack
from sfu.sdp import Codec
from sfu.track import PublishedTrack

RATES = (100_000, 300_000, 1_000_000)


def _video_down() -> DownTrack:
    track = PublishedTrack("p", 1, "video", Codec(96, "vp8", 90000), "1", "s", ["l", "m", "h"], lambda layer: None)
    for index, (layer, rate) in enumerate(zip(track.layers, RATES, strict=True)):
        layer.bind(1000 + index)
        layer.bitrate, layer.last_arrival = rate, 1e12  # active for the test's lifetime
    down = DownTrack(track, "sub", "0", lambda data: None)
    down.paused = False
    return down


def _sending(down: DownTrack) -> None:
    """The down-track has switched to its target and sends at that layer's rate."""
    down.current_layer = down.target_layer
    down.bitrate = RATES[down.target_layer]


def test_an_estimate_bounded_by_what_arrives_does_not_keep_a_subscriber_low() -> None:
    down, allocator = _video_down(), BandwidthAllocator()
    allocator.on_estimate(150_000, [down], 0.0)  # 1.5 times the low layer: all a receiver can prove
    _sending(down)
    assert down.target_layer == 0 and down.held_back

    allocator.allocate([down], CLIMB_INTERVAL / 2)
    assert down.target_layer == 0, "a first estimate is acted on before any climb"
    allocator.allocate([down], CLIMB_INTERVAL)
    assert down.target_layer == 1, "no congestion: the next layer up is tried"
    _sending(down)
    allocator.allocate([down], 1.5 * CLIMB_INTERVAL)
    assert down.target_layer == 1, "one layer at a time, the estimate gets time to react"
    allocator.on_estimate(160_000, [down], 1.6 * CLIMB_INTERVAL)
    assert down.target_layer == 1, "an estimate that lags behind is no reason to step back down"
    allocator.allocate([down], 2 * CLIMB_INTERVAL)
    _sending(down)
    assert down.target_layer == 2 and not down.held_back


def test_a_climb_met_by_congestion_is_undone_and_retried_later_and_later() -> None:
    down, allocator = _video_down(), BandwidthAllocator()
    allocator.on_estimate(350_000, [down], 0.0)
    _sending(down)
    assert down.target_layer == 1
    allocator.allocate([down], CLIMB_INTERVAL)
    _sending(down)
    assert down.target_layer == 2

    # The receiver's estimator backs off below what is sent: congestion, the climb is undone.
    now = CLIMB_INTERVAL + 1
    allocator.on_estimate(1_200_000, [down], now - 0.5)
    allocator.on_estimate(850_000, [down], now)
    assert down.target_layer == 1
    _sending(down)
    waits = []
    for estimate in (750_000, 650_000, 550_000):
        start = now
        while down.target_layer == 1:
            now += 0.25
            allocator.allocate([down], now)
            assert now - start < 100, "the climb is retried"
        waits.append(now - start)
        _sending(down)
        now += 0.5
        allocator.on_estimate(estimate, [down], now)  # ... and fails again
        assert down.target_layer == 1
        _sending(down)
    assert waits[0] >= CLIMB_BACKOFF_MIN and waits[1] > waits[0] * 1.5 and waits[2] > waits[1] * 1.5, waits


def test_a_subscribers_own_cap_is_never_climbed_past() -> None:
    down, allocator = _video_down(), BandwidthAllocator()
    down.max_bitrate = 400_000
    allocator.on_estimate(150_000, [down], 0.0)
    for step in range(40):
        allocator.allocate([down], step * 0.25)
        _sending(down)
    assert down.target_layer == 1 and not down.held_back


def test_sustained_loss_is_congestion_even_when_the_estimate_holds() -> None:
    down, allocator = _video_down(), BandwidthAllocator()
    allocator.on_estimate(150_000, [down], 0.0)
    allocator.allocate([down], CLIMB_INTERVAL)
    _sending(down)
    assert down.target_layer == 1
    down.smoothed_loss = 0.3
    allocator.allocate([down], CLIMB_INTERVAL + 0.5)
    assert down.target_layer == 0


def test_a_congested_estimate_far_below_the_lowest_layer_leaves_audio_only_until_a_climb() -> None:
    down, allocator = _video_down(), BandwidthAllocator()
    allocator.on_estimate(150_000, [down], 0.0)
    _sending(down)
    assert down.target_layer == 0 and not down.starved, "an estimate with no congestion behind it pauses nothing"
    allocator.on_estimate(40_000, [down], 1.0)  # congestion: the estimate fell below what is sent
    assert down.starved and down.target_layer == down.current_layer == -1
    now = 1.0
    while down.target_layer == -1:  # no RTX: the lowest layer is tried again, without a probe
        now += 0.25
        allocator.allocate([down], now)
        assert now < 40, "video is tried again"
    assert down.target_layer == 0


def test_a_probe_lets_through_the_layer_it_probed_and_no_higher() -> None:
    """A probe for the whole of the lowest layer (its temporal layers held back) passes; meanwhile a
    dip in that layer's own rate let its temporal layers through, so the next layer up is now the
    middle one, which nothing has shown the link carries: the subscriber stays where it is."""
    down, allocator = _video_down(), BandwidthAllocator()
    down.rtx_payload_type = 97  # probes go on the RTX stream
    assert down.rewriter is not None
    down.rewriter.temporal_layers = 3
    allocator.on_estimate(150_000, [down], 0.0)
    _sending(down)
    allocator.on_estimate(60_000, [down], 1.0)  # congestion: room for the base temporal layer only
    assert down.target_layer == 0 and down.temporal_held
    now = 1.0
    while allocator.probe is None:
        now += 0.25
        allocator.allocate([down], now)
        assert now < 40, "the rest of the layer is probed for"
    assert allocator.probe.layer == 0
    down.track.layers[0].bitrate = 50_000  # the encoder's rate dips under the share
    while allocator.probe is not None:
        now += 0.25
        allocator.allocate([down], now)
    assert down.climbed == 0 and down.target_layer == 0 and not down.temporal_held
