"""A meeting's caption feed on the media server: a tap on each of its audio tracks, whose Opus frames
go, as the publishers encoded them, to a sink (this node's caption worker, ``ai/captions.py``, which
decodes them in a process of its own; nothing is decoded here).

The feed follows its room at every ``tick``: a track published since gets a tap, one unpublished or
whose publisher left is closed (what its speaker was saying is still captioned), and a room that
emptied and filled again is found again by its meeting id. Following the room from here, rather than
being told by it, leaves the room's own bookkeeping as it is; a tick every 100 ms loses at most the
first moments of a track, before anyone speaks. A track the host muted feeds its taps nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from media.mux import EncodedFrame
from sfu.room import Room
from sfu.taps import SenderClock, Tap
from sfu.track import PublishedTrack

CAPTIONED_CODECS = ("opus",)


class CaptionSink(Protocol):
    """Where a feed's frames go; each call only queues (it runs on the media loop)."""

    def open(self, stream_id: str, user_id: int, peer_id: str) -> None: ...

    def frame(self, stream_id: str, timestamp: int, wallclock: float, data: bytes) -> None: ...

    def close(self, stream_id: str, flush: bool) -> None: ...


class RoomCaptions:
    def __init__(self, rooms: Mapping[int, Room], meeting_id: int, sink: CaptionSink) -> None:
        self.rooms = rooms  # the media server's rooms, by meeting id
        self.meeting_id = meeting_id
        self.sink = sink
        self._taps: dict[str, Tap] = {}  # by track id, which is the stream id
        self._clocks: dict[str, SenderClock] = {}  # by publisher (peer) id

    def tick(self) -> None:
        room = self.rooms.get(self.meeting_id)
        audio: dict[str, PublishedTrack] = {}
        if room is not None:
            audio = {
                track.id: track
                for track in room.tracks.values()
                if track.kind == "audio" and track.codec.name in CAPTIONED_CODECS
            }
        for track_id in [t for t in self._taps if t not in audio]:
            self._detach(track_id, flush=True)
        for track in audio.values():
            if track.id not in self._taps:
                self._attach(track)
        for tap in self._taps.values():
            tap.tick()

    def _attach(self, track: PublishedTrack) -> None:
        stream_id, sink = track.id, self.sink

        def forward(frame: EncodedFrame) -> None:
            sink.frame(stream_id, frame.timestamp, frame.wallclock, frame.data)

        self.sink.open(stream_id, track.user_id, track.publisher_id)
        tap = Tap(track, forward, self._clocks.setdefault(track.publisher_id, SenderClock()))
        self._taps[stream_id] = tap
        track.taps.append(tap)

    def _detach(self, stream_id: str, flush: bool) -> None:
        tap = self._taps.pop(stream_id)
        tap.close()  # what is in order still goes out, before the stream closes
        self.sink.close(stream_id, flush)
        if not any(t.track.publisher_id == tap.track.publisher_id for t in self._taps.values()):
            self._clocks.pop(tap.track.publisher_id, None)

    def close(self) -> None:
        """Captions are off: every tap goes, and what the sink still had of them is forgotten."""
        for stream_id in list(self._taps):
            self._detach(stream_id, flush=False)
