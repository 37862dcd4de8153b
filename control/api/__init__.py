"""REST API v1, one module per area; ``GROUPS`` lists them for routing and the OpenAPI document."""

from control.api import (
    admin,
    auth,
    captions,
    ffmpeg,
    media,
    meetings,
    meta,
    models,
    my,
    nodes,
    recording,
    sessions,
    speech,
    streaming,
    users,
    webhooks,
    webrtc,
)
from control.endpoints import EndpointGroup

GROUPS: list[EndpointGroup] = [
    meta.group,
    auth.group,
    users.group,
    admin.group,
    webhooks.group,
    meetings.group,
    recording.meeting_group,
    captions.meeting_group,
    my.group,
    sessions.group,
    media.group,
    ffmpeg.group,
    webrtc.group,
    recording.group,
    streaming.group,
    speech.group,
    models.group,
    nodes.group,
]
