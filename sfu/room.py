"""A meeting's media: its peers, their published tracks, and who is speaking."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from sfu.counters import MediaTotals
from sfu.events import MediaEvents
from sfu.track import PublishedTrack

if TYPE_CHECKING:
    from sfu.peer import Peer

SPEAKING_LEVEL = 60  # -dBov: quieter than this is not speech worth announcing
SPEAKER_HOLD_TICKS = 2  # a new loudest speaker must stay loudest this many ticks to be announced
# How much of a track's loudness carries over to the next tick: speech has gaps between syllables
# and words (and a test tone may beep for 20 ms every 500 ms); its peaks must hold across them.
LOUDNESS_CARRY = 0.85


class TrackFeed(Protocol):
    """Something that taps every track of a room as it comes and goes: a recording
    (``sfu.recording.RoomRecording``) or a live stream's feed (``sfu.live.LiveFeed``)."""

    meeting_id: int

    def attach(self, track: PublishedTrack) -> None: ...

    def detach(self, track: PublishedTrack, reason: str) -> None: ...


class Room:
    def __init__(self, room_id: int, events: MediaEvents, retired: MediaTotals) -> None:
        self.id = room_id
        self.events = events
        self.retired = retired  # the media server's totals, which a track's counts join when it goes
        self.peers: dict[str, Peer] = {}
        self.tracks: dict[str, PublishedTrack] = {}
        self.feeds: list[TrackFeed] = []  # recordings and streams running here; they outlive the room if it empties
        self.active_speaker: str | None = None  # peer id
        self.speaker_announcement: dict[str, Any] | None = None  # as last sent, while that speaker is here
        self._candidate: str | None = None
        self._candidate_ticks = 0
        self._loudness: dict[str, float] = {}  # audio track id → recent loudness (127 - dBov, decaying)

    def add_peer(self, peer: Peer) -> None:
        self.peers[peer.id] = peer
        for track in self.tracks.values():
            if track.publisher_id != peer.id:
                peer.subscriber.add(track)

    def remove_peer(self, peer: Peer) -> None:
        self.peers.pop(peer.id, None)
        if self.active_speaker == peer.id:
            self.active_speaker = self.speaker_announcement = None

    def add_track(self, track: PublishedTrack) -> None:
        self.tracks[track.id] = track
        for peer in self.peers.values():
            if peer.id != track.publisher_id:
                peer.subscriber.add(track)
        for feed in self.feeds:
            feed.attach(track)
        self.events.track_published(self.id, track)

    def remove_track(self, track: PublishedTrack, reason: str = "unpublished") -> None:
        """The track is gone: ``reason`` ("unpublished", or "left" with its publisher) ends its files
        and takes it out of the room's live streams."""
        if self.tracks.pop(track.id, None) is None:
            return
        for peer in self.peers.values():
            peer.subscriber.remove(track)
        track.downtracks.clear()
        for feed in self.feeds:
            feed.detach(track, reason)
        self.retired.add_track(track)
        self.events.track_unpublished(self.id, track, reason)

    def add_feed(self, feed: TrackFeed) -> None:
        """Tap every track the room has now, and each one published later."""
        self.feeds.append(feed)
        for track in self.tracks.values():
            feed.attach(track)

    def remove_feed(self, feed: TrackFeed) -> None:
        if feed in self.feeds:
            self.feeds.remove(feed)

    def detect_speaker(self) -> dict[str, Any] | None:
        """The loudest audio of the last ticks (peaks held, fading); an announcement when the
        speaker changes."""
        loudest: PublishedTrack | None = None
        top = 127.0 - SPEAKING_LEVEL  # the least loudness announced
        loudness = {}
        for track in self.tracks.values():
            if track.kind != "audio":
                continue
            now = 0.0 if track.muted else 127.0 - track.audio_level
            loudness[track.id] = level = max(now, self._loudness.get(track.id, 0.0) * LOUDNESS_CARRY)
            if not track.muted and level >= top:
                loudest, top = track, level
        self._loudness = loudness
        announcement = None
        candidate = loudest.publisher_id if loudest is not None else None
        if candidate == self._candidate:
            self._candidate_ticks += 1
        else:
            self._candidate, self._candidate_ticks = candidate, 1
        # Holding guards a change of speaker; with nobody named (the room's first sound, or the last
        # speaker gone), the loudest is named at once: two people beeping or talking in turn would
        # otherwise never stay loudest two ticks running, and nobody would be shown speaking.
        hold = SPEAKER_HOLD_TICKS if self.active_speaker is not None else 1
        if candidate is not None and candidate != self.active_speaker and self._candidate_ticks >= hold:
            self.active_speaker = candidate
            assert loudest is not None
            announcement = {"user_id": loudest.user_id, "peer_id": candidate, "level": round(127 - top)}
            self.speaker_announcement = announcement
        for track in self.tracks.values():
            track.audio_level = 127
        return announcement

    @property
    def empty(self) -> bool:
        return not self.peers
