"""Live noise suppression as the room hears of it (behaviour: docs/enhancement.md#live-noise-suppression).

The switches themselves live on the media server (``sfu/denoise.py``): a peer's own, or a room's
for everyone. Whoever flips one — a participant on the socket or over REST, a host or moderator for
someone else or for the whole room — the room is told with a server ``media-state``, so every page
can show whose microphone is being cleaned; a socket that joins hears the switches that are on
after its ``join``."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from control.context import HUB
from control.signaling.hub import SERVER, message
from sfu.pool import MediaServer


def participant_state(user_id: int, enabled: bool, by: int | None) -> dict[str, Any]:
    """The ``media-state`` data for a participant's own switch."""
    return {"noise_suppression": enabled, "scope": "participant", "user_id": user_id, "by": by}


def room_state(enabled: bool, model: str | None, by: int | None) -> dict[str, Any]:
    """The ``media-state`` data for the room's switch (off also clears everyone's own)."""
    return {"noise_suppression": enabled, "scope": "room", "model": model, "by": by}


async def announce(app: web.Application, meeting_id: int, state: dict[str, Any]) -> None:
    await app[HUB].broadcast(message("media-state", meeting_id, SERVER, state))


async def current_states(media: MediaServer, meeting_id: int) -> list[dict[str, Any]]:
    """The switches that are on in the room, on this node's media server, for a socket joining."""
    switches = await media.noise_switches(meeting_id)
    states = []
    if switches["room"] is not None:
        states.append(room_state(True, switches["room"], None))
    states += [participant_state(user_id, True, None) for user_id in switches["users"]]
    return states
