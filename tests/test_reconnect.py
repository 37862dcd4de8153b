"""A reconnect that races the previous socket's close: the user is either still in the meeting with
the new socket recorded, or out of it with the new socket refused, never offline with a socket open."""

from __future__ import annotations

import secrets

from control.context import STORE
from tests.conftest import Api
from tests.support import meeting_with


def _session(meeting_id: int, user_id: int) -> dict[str, object]:
    return {
        "session_id": secrets.token_hex(16),
        "meeting_id": meeting_id,
        "user_id": user_id,
        "node_id": "node-a",
        "client_address": "127.0.0.1",
    }


async def test_a_socket_recorded_first_keeps_its_user_in_the_meeting(api: Api) -> None:
    host, guest = await api.account(), await api.account()
    meeting_id = await meeting_with(api, host, guest)
    store = api.app[STORE]
    assert await store.sessions.open(**_session(meeting_id, guest.id))
    assert not await store.participants.went_offline(meeting_id, guest.id), "a socket of theirs is open"
    assert (await store.participants.get(meeting_id, guest.id)).status == "online"


async def test_a_socket_admitted_as_the_user_went_offline_is_not_recorded(api: Api) -> None:
    host, guest, other = await api.account(), await api.account(), await api.account()
    meeting_id = await meeting_with(api, host, guest, other)
    store = api.app[STORE]
    assert await store.participants.went_offline(meeting_id, guest.id)
    session = _session(meeting_id, guest.id)
    assert not await store.sessions.open(**session), "offline: the new socket must join again first"
    assert await store.sessions.get(session["session_id"]) is None

    # Removed participants cannot slip a socket in either.
    removed = await api.call("DELETE", f"/api/v1/meetings/{meeting_id}/participants/{other.id}", token=host.access)
    assert removed["status"] == 200, removed
    assert not await store.sessions.open(**_session(meeting_id, other.id))
