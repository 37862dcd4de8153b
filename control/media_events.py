"""What the control plane does with the media server's news (sfu/events.py): tracks published and
withdrawn become webhook events, a peer's wait for its first media a join-time observation."""

from __future__ import annotations

from typing import Any

from control.metrics.instruments import Metrics
from control.webhooks.dispatcher import Webhooks
from control.webhooks.events import TRACK_PUBLISHED, TRACK_UNPUBLISHED
from sfu.peer import Peer
from sfu.track import PublishedTrack


def track_view(meeting_id: int, track: PublishedTrack) -> dict[str, Any]:
    return {
        "meeting_id": meeting_id,
        "user_id": track.user_id,
        "peer_id": track.publisher_id,
        "track_id": track.id,
        "kind": track.kind,
        "codec": track.codec.name,
        "layers": [layer.name for layer in track.layers],
    }


class MediaListener:
    def __init__(self, webhooks: Webhooks, metrics: Metrics) -> None:
        self.webhooks = webhooks
        self.metrics = metrics

    def track_published(self, meeting_id: int, track: PublishedTrack) -> None:
        self.webhooks.emit(TRACK_PUBLISHED, track_view(meeting_id, track))

    def track_unpublished(self, meeting_id: int, track: PublishedTrack, reason: str) -> None:
        self.webhooks.emit(TRACK_UNPUBLISHED, {**track_view(meeting_id, track), "reason": reason})

    def media_flowing(self, peer: Peer, seconds: float) -> None:
        self.metrics.join_seconds.observe(seconds)
