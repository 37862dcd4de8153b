"""Dynacast's decisions on the media clock, without media: which layers a track's receivers and taps
want, pausing only after the hysteresis, resuming at once with a key-frame request, and what a
paused layer is to the receivers that choose among layers."""

from __future__ import annotations

import time
from typing import Any

from sfu.dynacast import PAUSE_AFTER, Dynacast
from sfu.forwarder import DownTrack
from sfu.sdp import Codec
from sfu.taps import SenderClock, Tap
from sfu.track import RESUME_GRACE, PublishedTrack


class Publisher:
    """What the server would tell the publisher's client."""

    def __init__(self) -> None:
        self.told: list[dict[str, bool]] = []

    def signal(self, kind: str, data: dict[str, Any]) -> None:
        assert kind == "media-state"
        self.told.append(data["publish_layers"]["rids"])


def camera() -> tuple[PublishedTrack, list[int]]:
    requests: list[int] = []
    track = PublishedTrack(
        "pub",
        1,
        "video",
        Codec(96, "vp8", 90000),
        "1",
        "s",
        ["l", "m", "h"],
        lambda layer: requests.append(layer.index),
    )
    for layer, rate in zip(track.layers, (150_000, 500_000, 1_500_000), strict=True):
        layer.bind(1000 + layer.index)
        layer.bitrate = rate
    arriving(track, 0, 1, 2)
    return track, requests


def arriving(track: PublishedTrack, *indexes: int) -> None:
    now = time.monotonic()
    for index in indexes:
        track.layers[index].last_arrival = now


def viewer(track: PublishedTrack, preferred: int) -> DownTrack:
    down = DownTrack(track, "sub", "0", lambda data: None)
    down.paused, down.preferred_layer = False, preferred
    track.downtracks.append(down)
    down.choose_layer()
    return down


def test_layers_nobody_takes_are_paused_after_the_hysteresis_and_resumed_at_once() -> None:
    track, requests = camera()
    publisher, dynacast = Publisher(), Dynacast()
    down = viewer(track, preferred=0)
    start = time.monotonic()

    def review(at: float) -> None:
        dynacast.review([track], lambda peer_id: publisher.signal, start + at)

    review(0)
    review(PAUSE_AFTER - 0.25)
    assert publisher.told == [] and not any(layer.held for layer in track.layers)
    # A receiver's dip to a layer for a moment restarts the wait for that layer only.
    down.target_layer = 1
    review(PAUSE_AFTER - 0.1)
    down.target_layer = 0
    review(PAUSE_AFTER)
    assert publisher.told == [{"l": True, "m": True, "h": False}]
    review(PAUSE_AFTER + PAUSE_AFTER - 0.2)
    assert len(publisher.told) == 1
    review(2 * PAUSE_AFTER)
    assert publisher.told[-1] == {"l": True, "m": False, "h": False}

    # The paused layers stop arriving but stay selectable, at the rate they had.
    track.layers[1].last_arrival = track.layers[2].last_arrival = 0.0
    assert track.active_layers() == [0, 1, 2] and track.layers[2].bitrate == 1_500_000
    track.layers[2].roll_window(time.monotonic())
    assert track.layers[2].bitrate == 1_500_000

    # The viewer asks for the best layer: it targets the paused high layer, which resumes on the
    # next tick with a key-frame request; it keeps receiving the low layer until that key frame.
    requests.clear()
    down.preferred_layer = 2
    down.choose_layer()
    assert (down.target_layer, down.current_layer) == (2, -1)
    review(2 * PAUSE_AFTER + 0.25)
    assert publisher.told[-1] == {"l": True, "m": False, "h": True}
    assert 2 in requests and not track.layers[2].held


def test_a_layer_the_publisher_dropped_is_not_paused_and_a_resumed_one_that_never_comes_is_dropped() -> None:
    track, _ = camera()
    publisher, dynacast = Publisher(), Dynacast()
    viewer(track, preferred=0)
    start = time.monotonic()
    track.layers[2].last_arrival = 0.0  # the publisher's encoder stopped it (bandwidth, CPU)
    for at in (0, PAUSE_AFTER, 2 * PAUSE_AFTER):
        dynacast.review([track], lambda peer_id: publisher.signal, start + at)
    assert publisher.told == [{"l": True, "m": False, "h": True}]  # the browser stays free to bring it back
    assert track.active_layers() == [0, 1]

    # Resumed, but it does not come: once the grace is over, receivers stop choosing it.
    layer = track.layers[1]
    layer.held, layer.resumed_at, layer.last_arrival = False, time.monotonic(), 0.0
    assert track.active_layers() == [0, 1]
    layer.resumed_at -= RESUME_GRACE
    assert track.active_layers() == [0]


def test_a_recording_keeps_the_best_layer_and_a_live_composite_its_own() -> None:
    track, _ = camera()
    publisher, dynacast = Publisher(), Dynacast()
    recording = Tap(track, lambda frame: None, SenderClock())
    composite = Tap(track, lambda frame: None, SenderClock(), ceiling=1)
    track.taps += [recording, composite]
    start = time.monotonic()
    for at in (0, PAUSE_AFTER, 2 * PAUSE_AFTER):
        for tap in track.taps:
            tap.tick()
        dynacast.review([track], lambda peer_id: publisher.signal, start + at)
    assert publisher.told == []  # high for the recording, medium for the composite, low always
    track.taps.remove(recording)
    for at in (3 * PAUSE_AFTER, 4 * PAUSE_AFTER):
        composite.tick()
        dynacast.review([track], lambda peer_id: publisher.signal, start + at)
    assert publisher.told == [{"l": True, "m": True, "h": False}]


def test_tracks_without_rids_and_publishers_gone_are_left_alone() -> None:
    track, _ = camera()
    for layer in track.layers:
        layer.rid = ""  # simulcast signalled by SSRC: encodings cannot be named to the client
    dynacast = Dynacast()
    start = time.monotonic()
    for at in (0, PAUSE_AFTER):
        dynacast.review([track], lambda peer_id: None, start + at)
    assert not any(layer.held for layer in track.layers)
    named, _ = camera()
    for at in (0, PAUSE_AFTER):
        dynacast.review([named], lambda peer_id: None, start + at)  # its publisher has left: nobody to tell
    assert [layer.held for layer in named.layers] == [False, True, True]
