"""What the media server tells whoever runs it (the control plane's webhooks and metrics), without
knowing who listens: tracks coming and going, and how long a peer waited for its first media.

Called on the event loop, at most a few times per peer: a listener must not block or await."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from sfu.peer import Peer
    from sfu.track import PublishedTrack


class MediaEvents(Protocol):
    def track_published(self, meeting_id: int, track: PublishedTrack) -> None: ...

    def track_unpublished(self, meeting_id: int, track: PublishedTrack, reason: str) -> None: ...

    def media_flowing(self, peer: Peer, seconds: float) -> None:
        """The first media packet went to ``peer``, ``seconds`` after it joined the room's media."""
        ...


class NoListener:
    """The media server's listener until its owner gives it one (tests and tools that run it alone)."""

    def track_published(self, meeting_id: int, track: PublishedTrack) -> None:
        return None

    def track_unpublished(self, meeting_id: int, track: PublishedTrack, reason: str) -> None:
        return None

    def media_flowing(self, peer: Peer, seconds: float) -> None:
        return None
