"""The events a deployment tells its webhook receivers about, and the document each is sent as:

``{"id": "evt_…", "type": "participant.joined", "created_at": "…Z", "node_id": "…", "data": {…}}``

``id`` names the event for ever (a receiver that gets it twice, after a retry, can tell); ``data``
holds the ids a receiver needs to look the rest up through the API."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from typing import Any

from control.store.webhooks import QueuedEvent

MEETING_STARTED = "meeting.started"  # meeting_id, title, creator_id
MEETING_ENDED = "meeting.ended"  # meeting_id, reason ("ended" or "deleted")
PARTICIPANT_JOINED = "participant.joined"  # meeting_id, user_id, role: went online in the meeting
PARTICIPANT_LEFT = "participant.left"  # meeting_id, user_id, reason: went offline (left, lost, removed)
TRACK_PUBLISHED = "track.published"  # meeting_id, user_id, peer_id, track_id, kind, codec, layers
TRACK_UNPUBLISHED = "track.unpublished"  # the same, and reason ("unpublished" or "left")
RECORDING_READY = "recording.ready"  # recording_id, meeting_id, duration, size, composite_file_id
STREAM_STATE_CHANGED = "stream.state_changed"  # stream_id, meeting_id, state (live streaming)

EVENT_TYPES = (
    MEETING_STARTED,
    MEETING_ENDED,
    PARTICIPANT_JOINED,
    PARTICIPANT_LEFT,
    TRACK_PUBLISHED,
    TRACK_UNPUBLISHED,
    RECORDING_READY,
    STREAM_STATE_CHANGED,
)


def make_event(event_type: str, data: dict[str, Any], node_id: str) -> QueuedEvent:
    """The event as every receiver will be sent it, stamped now."""
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown webhook event type {event_type!r}")
    now = datetime.now(UTC)
    event_id = "evt_" + os.urandom(12).hex()
    document = {
        "id": event_id,
        "type": event_type,
        "created_at": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "node_id": node_id,
        "data": data,
    }
    body = json.dumps(document, ensure_ascii=False, separators=(",", ":"))
    return QueuedEvent(event_id=event_id, event_type=event_type, body=body, created_at=now)
