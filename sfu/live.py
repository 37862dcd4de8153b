"""A live stream's feed: every track of a room, as encoded frames, handed to the stream's compositor.

The feed taps each track the room has and each one published while it runs (a video at a small
simulcast layer, ``medium`` by default: the composite shrinks every picture into a tile anyway, and
the compositor decodes every track it is fed), and passes the tap's frames, stamped with their
capture time, to an ``Outlet``: the compositor process's input. Nothing is decoded here; the
media server's loop only copies frames into the outlet's buffer. When the outlet is backed up
(the compositor cannot keep up), frames are dropped and a video waits for its next key frame,
which it asks the publisher for, since the frames after a hole cannot be decoded.
"""

from __future__ import annotations

import itertools
import logging
from typing import Protocol

from media.mux import EncodedFrame
from sfu.taps import SenderClock, Tap
from sfu.track import PublishedTrack

log = logging.getLogger("huiyi.sfu.live")

DECODABLE = ("vp8", "vp9", "h264", "opus")  # what the compositor decodes (VP9: its base spatial layer)
LAYER_RANK = {"low": 0, "medium": 1, "high": 2}


class Outlet(Protocol):
    """The compositor's input (``media.live_process.LiveProcess``)."""

    def add_track(self, key: int, user_id: int, kind: str, codec: str) -> None: ...

    def frame(self, key: int, frame: EncodedFrame) -> bool:
        """Take a frame; False when it could not (its buffer is full) and the frame is lost."""
        ...

    def remove_track(self, key: int) -> None: ...


def ceiling_for(track: PublishedTrack, layer: str) -> int:
    """The highest of the track's layers no better than ``layer`` (its lowest when all are)."""
    wanted = LAYER_RANK[layer]
    fitting = [each.index for each in track.layers if LAYER_RANK.get(each.name, 2) <= wanted]
    return fitting[-1] if fitting else 0


class _Fed:
    """One track being fed: its key on the outlet, its tap, and whether it waits for a key frame."""

    __slots__ = ("dropped", "key", "skipping", "tap", "track")

    def __init__(self, key: int, track: PublishedTrack) -> None:
        self.key, self.track = key, track
        self.tap: Tap | None = None
        self.skipping = False
        self.dropped = 0


class LiveFeed:
    def __init__(self, meeting_id: int, stream_id: str, outlet: Outlet, layer: str = "medium") -> None:
        if layer not in LAYER_RANK:
            raise ValueError(f"layer must be one of {', '.join(LAYER_RANK)}")
        self.meeting_id = meeting_id
        self.stream_id = stream_id
        self.outlet = outlet
        self.layer = layer
        self._keys = itertools.count(1)
        self._fed: dict[str, _Fed] = {}  # by track id
        self._by_key: dict[int, _Fed] = {}
        self._clocks: dict[str, SenderClock] = {}  # by publisher (peer) id
        self._gone_dropped = 0  # frames dropped on tracks no longer fed

    @property
    def dropped(self) -> int:
        """Frames lost before the compositor: holes not repaired in time, or its input backed up."""
        return self._gone_dropped + sum(fed.dropped + (fed.tap.dropped if fed.tap else 0) for fed in self._fed.values())

    def attach(self, track: PublishedTrack) -> None:
        if track.id in self._fed or track.codec.name not in DECODABLE:
            return
        fed = _Fed(next(self._keys), track)
        clock = self._clocks.setdefault(track.publisher_id, SenderClock())
        ceiling = ceiling_for(track, self.layer) if track.kind == "video" else None
        fed.tap = Tap(track, lambda frame: self._deliver(fed, frame), clock, ceiling)
        self._fed[track.id] = fed
        self._by_key[fed.key] = fed
        self.outlet.add_track(fed.key, track.user_id, track.kind, track.codec.name)
        track.taps.append(fed.tap)
        fed.tap.request_keyframe()
        log.info("stream %s: track %s (%s of user %s) fed", self.stream_id, track.id, track.kind, track.user_id)

    def detach(self, track: PublishedTrack, reason: str) -> None:
        fed = self._fed.pop(track.id, None)
        if fed is None:
            return
        self._by_key.pop(fed.key, None)
        assert fed.tap is not None
        fed.tap.close()
        self._gone_dropped += fed.dropped + fed.tap.dropped
        self.outlet.remove_track(fed.key)
        log.info("stream %s: track %s no longer fed (%s)", self.stream_id, track.id, reason)

    def _deliver(self, fed: _Fed, frame: EncodedFrame) -> None:
        if fed.skipping and not frame.keyframe:
            fed.dropped += 1
            return
        if self.outlet.frame(fed.key, frame):
            fed.skipping = False
            return
        fed.dropped += 1
        if fed.track.kind == "video":
            fed.skipping = True
            assert fed.tap is not None
            fed.tap.request_keyframe()

    def request_keyframe(self, key: int) -> None:
        """The compositor lost a video's thread (a frame it could not decode): a key frame restarts it."""
        fed = self._by_key.get(key)
        if fed is not None and fed.tap is not None:
            fed.tap.request_keyframe()

    def tick(self) -> None:
        for fed in list(self._fed.values()):
            assert fed.tap is not None
            fed.tap.tick()

    def close(self, reason: str = "stopped") -> None:
        for fed in list(self._fed.values()):
            self.detach(fed.track, reason)
