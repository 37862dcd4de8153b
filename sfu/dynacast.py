"""Dynacast: a publisher sends only the simulcast layers someone receives.

Each simulcast video track's layers are wanted by the down-tracks that forward them or are waiting
to switch to them (their current and target layers) and by the taps of recordings and live streams
(the layer each takes or is about to take). The lowest layer is always wanted: it is what a new
receiver starts on and what a congested one falls back to. A layer nobody has wanted for
``PAUSE_AFTER`` seconds is paused: the server tells the publisher in a ``media-state``
``publish_layers`` message (docs/sfu.md), and the browser SDK sets that encoding inactive. A paused
layer that becomes wanted is resumed at once, with a key-frame request, since receivers switch at
key frames only.

A layer paused here stays selectable: down-tracks and taps choose among the available layers
(``Layer.available``), which are those arriving, those held by dynacast (at the bitrate they had when
paused, so a capped or narrow receiver does not choose them) and those resumed less than
``RESUME_GRACE`` ago. A receiver that would take a paused layer targets it, and that target resumes
it; until its first key frame arrives the receiver keeps what it had. A layer the publisher stopped
on its own (its encoder's bandwidth or CPU limits) is not available: nobody targets it, and it is
never paused here either, only layers that are arriving are, so the browser stays free to bring it
back when it can. A resumed layer that has not arrived when the grace ends is such a layer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from sfu.forwarder import NO_LAYER
from sfu.track import RESUME_GRACE, PublishedTrack

if TYPE_CHECKING:
    from sfu.peer import Signal

log = logging.getLogger("huiyi.sfu.dynacast")

PAUSE_AFTER = 4.0  # seconds a layer must go unwanted before it is paused: a receiver's dip does not flap it


def wanted_layers(track: PublishedTrack) -> set[int]:
    """The layers of ``track`` something forwards, records or is about to switch to, and the lowest."""
    wanted = {0}
    for down in track.downtracks:
        wanted.update((down.current_layer, down.target_layer))
    for tap in track.taps:
        wanted.update((tap.layer, tap.target))
    wanted.discard(NO_LAYER)
    return wanted


class _TrackState:
    __slots__ = ("unwanted_since",)

    def __init__(self, count: int) -> None:
        self.unwanted_since: list[float | None] = [None] * count


class Dynacast:
    """The pause and resume decisions for every simulcast track of the media server."""

    def __init__(self) -> None:
        self._states: dict[str, _TrackState] = {}

    def review(
        self, tracks: Iterable[PublishedTrack], signal_publisher: Callable[[str], Signal | None], now: float
    ) -> None:
        """Pause the layers unwanted for long enough, resume the wanted ones (on the media clock);
        ``signal_publisher`` gives a publisher peer's way to its client, or ``None`` if it has gone."""
        seen: set[str] = set()
        for track in tracks:
            if track.kind != "video" or not track.simulcast or not all(layer.rid for layer in track.layers):
                continue  # only encodings named by a rid can be paused one by one
            seen.add(track.id)
            state = self._states.get(track.id)
            if state is None:
                state = self._states[track.id] = _TrackState(len(track.layers))
            if self._review_track(track, state, now):
                sent = [layer.name for layer in track.layers if not layer.held]
                log.info("peer %s track %s: publisher asked to send %s", track.publisher_id, track.id, sent)
                signal = signal_publisher(track.publisher_id)
                if signal is not None:
                    signal("media-state", {"publish_layers": publish_layers(track)})
        for track_id in [track_id for track_id in self._states if track_id not in seen]:
            del self._states[track_id]

    @staticmethod
    def _review_track(track: PublishedTrack, state: _TrackState, now: float) -> bool:
        """Update the track's layers; whether the publisher must be told."""
        wanted = wanted_layers(track)
        changed = False
        for layer in track.layers:
            if layer.index in wanted:
                state.unwanted_since[layer.index] = None
                if layer.held:
                    layer.held = False
                    layer.resumed_at = now
                    changed = True
                if not layer.active and now - layer.resumed_at < RESUME_GRACE:
                    track.request_keyframe(layer.index)  # rate-limited: until its encoder is back
                continue
            since = state.unwanted_since[layer.index]
            if since is None:
                state.unwanted_since[layer.index] = now
            # Only a layer whose rate is measured: receivers weigh a paused layer by the rate it had.
            elif not layer.held and layer.active and layer.bitrate and now - since >= PAUSE_AFTER:
                layer.held = True
                changed = True
        return changed


def publish_layers(track: PublishedTrack) -> dict[str, Any]:
    """The ``publish_layers`` of a ``media-state`` message: which of the track's encodings to send."""
    return {"mid": track.mid, "track_id": track.id, "rids": {layer.rid: not layer.held for layer in track.layers}}
