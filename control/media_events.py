"""What the control plane does with the media server's news (sfu/events.py, as plain data from
``sfu.local``): tracks published and withdrawn become webhook events, a peer's wait for its first
media a join-time observation."""

from __future__ import annotations

from typing import Any

from control.metrics.instruments import Metrics
from control.webhooks.dispatcher import Webhooks
from control.webhooks.events import TRACK_PUBLISHED, TRACK_UNPUBLISHED


class MediaListener:
    def __init__(self, webhooks: Webhooks, metrics: Metrics) -> None:
        self.webhooks = webhooks
        self.metrics = metrics

    def track_published(self, view: dict[str, Any]) -> None:
        self.webhooks.emit(TRACK_PUBLISHED, view)

    def track_unpublished(self, view: dict[str, Any], reason: str) -> None:
        self.webhooks.emit(TRACK_UNPUBLISHED, {**view, "reason": reason})

    def media_flowing(self, seconds: float) -> None:
        self.metrics.join_seconds.observe(seconds)
