"""Who may enter a meeting, act as its host and see what: invite codes, the participant cap under
concurrent joins, host powers from the participant row, personal data and waiting users."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from control.context import SFU
from tests.conftest import Account, Api
from tests.support import (
    MEETINGS,
    SOCKET_TIMEOUT,
    add,
    closed_with,
    create,
    enter,
    join,
    people,
    post_chat,
    receive,
    receive_type,
    refused,
    set_role,
    until,
)


async def online(api: Api, meeting_id: int, viewer: Account) -> set[int]:
    return {uid for uid, p in (await people(api, meeting_id, viewer)).items() if p["status"] == "online"}


# --- the cap under concurrency ---------------------------------------------------------------------------


async def test_concurrent_joins_fill_a_meeting_exactly_to_its_cap(api: Api) -> None:
    host = await api.account()
    crowd = [await api.stored_account() for _ in range(50)]
    meeting = await create(api, host, max_participants=5)
    meeting_id = meeting["meeting_id"]

    answers = await asyncio.gather(*(join(api, meeting_id, who, invite_code=meeting["invite_code"]) for who in crowd))
    admitted = [who.id for who, answer in zip(crowd, answers, strict=True) if answer["status"] == 200]
    turned_away = [answer for answer in answers if answer["status"] != 200]
    assert len(admitted) == 5, [(a["status"], a["code"]) for a in answers]
    assert len(turned_away) == 45
    assert {(a["status"], a["code"]) for a in turned_away} == {(400, 2003)}
    assert await online(api, meeting_id, host) == set(admitted)
    refused(await join(api, meeting_id, host), 400, 2003)


async def test_admitting_from_the_waiting_room_respects_the_cap(api: Api) -> None:
    host, bob, carol = await api.account(), await api.account(), await api.account()
    meeting = await create(api, host, max_participants=2, settings={"enable_waiting_room": True})
    meeting_id, code = meeting["meeting_id"], meeting["invite_code"]
    await join(api, meeting_id, host)
    for who in (bob, carol):
        waiting = await join(api, meeting_id, who, invite_code=code)
        assert waiting["data"]["participant"]["status"] == "waiting"
    assert (await add(api, meeting_id, host, bob.id))["status"] == 201
    refused(await add(api, meeting_id, host, carol.id), 400, 2003)
    refused(await set_role(api, meeting_id, host, carol.id, "moderator"), 400, 2003)
    listing = await people(api, meeting_id, host)
    assert listing[carol.id]["status"] == "waiting" and listing[carol.id]["role"] == "participant"
    assert await online(api, meeting_id, host) == {host.id, bob.id}


# --- host powers come from the participant row ---------------------------------------------------------


@pytest.mark.parametrize("how", ["demoted", "removed"])
async def test_a_creator_without_the_host_role_has_no_host_powers(api: Api, how: str) -> None:
    alice, bob, carol = await api.account(), await api.account(), await api.account()
    meeting_id = (await create(api, alice, title="Mine"))["meeting_id"]
    path = f"{MEETINGS}/{meeting_id}"
    await add(api, meeting_id, alice, bob.id)
    await add(api, meeting_id, alice, carol.id)
    assert (await set_role(api, meeting_id, alice, bob.id, "host"))["status"] == 200
    if how == "removed":
        removal = await api.call("DELETE", f"{path}/participants/{alice.id}", token=bob.access)
        assert removal["status"] == 200, removal

    refused(await api.call("PUT", path, token=alice.access, json={"title": "Hijacked"}), 403)
    refused(await api.call("POST", f"{path}/start", token=alice.access), 403)
    refused(await api.call("POST", f"{path}/end", token=alice.access), 403)
    refused(await api.call("POST", f"{path}/invite-code", token=alice.access), 403)
    refused(await set_role(api, meeting_id, alice, alice.id, "host"), 403)
    refused(await set_role(api, meeting_id, alice, carol.id, "host"), 403)
    refused(await api.call("DELETE", path, token=alice.access), 403)
    if how == "removed":
        refused(await add(api, meeting_id, alice, carol.id, role="moderator"), 403)
        refused(await api.call("GET", path, token=alice.access), 403)
        assert (await api.call("GET", MEETINGS, token=alice.access, expect=200))["data"]["items"] == []
        assert (await api.call("GET", "/api/v1/my/meetings", token=alice.access, expect=200))["data"]["total"] == 0

    got = await api.call("GET", path, token=bob.access, expect=200)
    assert got["data"]["title"] == "Mine" and got["data"]["status"] == "scheduled"
    roles = {uid: p["role"] for uid, p in (await people(api, meeting_id, bob)).items()}
    assert roles[bob.id] == "host" and roles[carol.id] == "participant"
    assert (alice.id in roles) == (how == "demoted")


async def test_racing_hand_overs_leave_exactly_one_host(api: Api) -> None:
    host = await api.account()
    crowd = [await api.stored_account() for _ in range(10)]
    meeting_id = (await create(api, host))["meeting_id"]
    for who in crowd:
        await add(api, meeting_id, host, who.id)
    answers = await asyncio.gather(*(set_role(api, meeting_id, host, who.id, "host") for who in crowd))
    assert sorted(a["status"] for a in answers) == [200] + [403] * 9, [(a["status"], a["message"]) for a in answers]
    winner = next(who for who, a in zip(crowd, answers, strict=True) if a["status"] == 200)
    roles = {uid: p["role"] for uid, p in (await people(api, meeting_id, host)).items()}
    assert [uid for uid, role in roles.items() if role == "host"] == [winner.id]
    assert roles[host.id] == "moderator"


# --- what lands while a join checks the password is kept ----------------------------------------------
# Checking a password takes ~100 ms (Argon2): a removal, hand-over or admission lands in that window.


async def _password_meeting(api: Api, host: Account, guest: Account, **settings: bool) -> int:
    meeting_id = (await create(api, host, password="open-sesame", settings=settings))["meeting_id"]
    assert (await join(api, meeting_id, guest, password="open-sesame"))["status"] == 200
    return meeting_id


async def test_a_removal_during_a_join_is_not_undone(api: Api) -> None:
    host, guest = await api.account(), await api.account()
    meeting_id = await _password_meeting(api, host, guest)
    removal = f"{MEETINGS}/{meeting_id}/participants/{guest.id}"
    joined, removed = await asyncio.gather(
        join(api, meeting_id, guest, password="open-sesame"), api.call("DELETE", removal, token=host.access)
    )
    assert removed["status"] == 200, removed
    assert joined["status"] in {200, 403}, joined
    assert guest.id not in await people(api, meeting_id, host)
    answer = await join(api, meeting_id, guest, password="open-sesame")
    refused(answer, 403)
    assert "removed" in answer["message"]


async def test_a_hand_over_during_a_join_keeps_the_new_host(api: Api) -> None:
    host, guest = await api.account(), await api.account()
    meeting_id = await _password_meeting(api, host, guest)
    joined, handed = await asyncio.gather(
        join(api, meeting_id, guest, password="open-sesame"), set_role(api, meeting_id, host, guest.id, "host")
    )
    assert joined["status"] == 200 and handed["status"] == 200, (joined, handed)
    roles = {uid: p["role"] for uid, p in (await people(api, meeting_id, host)).items()}
    assert roles == {host.id: "moderator", guest.id: "host"}


async def test_an_admission_during_a_join_is_not_sent_back_to_the_waiting_room(api: Api) -> None:
    host, guest = await api.account(), await api.account()
    meeting_id = await _password_meeting(api, host, guest, enable_waiting_room=True)
    assert (await people(api, meeting_id, host))[guest.id]["status"] == "waiting"
    joined, admitted = await asyncio.gather(
        join(api, meeting_id, guest, password="open-sesame"), add(api, meeting_id, host, guest.id)
    )
    assert joined["status"] == 200 and admitted["status"] == 201, (joined, admitted)
    assert (await people(api, meeting_id, host))[guest.id]["status"] == "online"


@pytest.mark.parametrize("other", ["removal", "re-adding"])
async def test_a_hand_over_racing_a_moderator_leaves_one_host(api: Api, other: str) -> None:
    """A moderator removes or re-adds the user the host is handing the role to, in several
    meetings at once: every meeting ends with exactly one host who is still in it."""
    host, moderator = await api.account(), await api.account()
    targets = [await api.stored_account() for _ in range(8)]
    meetings = []
    for target in targets:
        meeting_id = (await create(api, host))["meeting_id"]
        await add(api, meeting_id, host, moderator.id, role="moderator")
        await add(api, meeting_id, host, target.id)
        meetings.append(meeting_id)

    async def moderate(meeting_id: int, target: Account) -> dict[str, Any]:
        if other == "removal":
            return await api.call("DELETE", f"{MEETINGS}/{meeting_id}/participants/{target.id}", token=moderator.access)
        return await add(api, meeting_id, moderator, target.id)

    answers = await asyncio.gather(
        *(set_role(api, m, host, t.id, "host") for m, t in zip(meetings, targets, strict=True)),
        *(moderate(m, t) for m, t in zip(meetings, targets, strict=True)),
    )
    assert {a["status"] for a in answers} <= {200, 201, 403, 404}, [(a["status"], a["message"]) for a in answers]
    for meeting_id, target in zip(meetings, targets, strict=True):
        listing = await people(api, meeting_id, moderator)
        hosts = [uid for uid, p in listing.items() if p["role"] == "host"]
        assert len(hosts) == 1 and hosts[0] in {host.id, target.id}, listing


# --- joining needs an invitation, the password or the invite code -----------------------------------------


async def test_a_meeting_number_alone_does_not_let_anyone_in(api: Api) -> None:
    host, invited, stranger = await api.account(), await api.account(), await api.account()
    meeting = await create(api, host)
    meeting_id = meeting["meeting_id"]
    for attempt in ({}, {"invite_code": "guess"}, {"invite_code": ""}, {"password": "open-sesame"}):
        answer = await join(api, meeting_id, stranger, **attempt)
        refused(answer, 403)
        assert "invite" in answer["message"]
    assert stranger.id not in await people(api, meeting_id, host)
    refused(await api.call("GET", f"{MEETINGS}/{meeting_id}", token=stranger.access), 403)
    refused(await join(api, meeting_id, stranger, invite_code="x" * 65), 400)

    await add(api, meeting_id, host, invited.id)
    assert (await join(api, meeting_id, invited))["status"] == 200, "an invitation is enough"
    by_link = await join(api, meeting_id, stranger, invite_code=meeting["invite_code"])
    assert by_link["status"] == 200 and by_link["data"]["participant"]["role"] == "participant"


async def test_the_invite_code_or_the_password_opens_a_protected_meeting(api: Api) -> None:
    host, by_code, by_password = await api.account(), await api.account(), await api.account()
    meeting = await create(api, host, password="open-sesame")
    meeting_id = meeting["meeting_id"]
    refused(await join(api, meeting_id, by_code), 400, 2004)
    refused(await join(api, meeting_id, by_code, invite_code="guess"), 400, 2004)
    refused(await join(api, meeting_id, by_code, password="wrong-one"), 400, 2004)
    assert (await join(api, meeting_id, by_code, invite_code=meeting["invite_code"]))["status"] == 200
    assert (await join(api, meeting_id, by_password, password="open-sesame"))["status"] == 200
    assert await online(api, meeting_id, host) == {by_code.id, by_password.id}


async def test_the_invite_code_is_shown_to_members_only(api: Api) -> None:
    host, moderator, member, waiting, outsider = [await api.account() for _ in range(5)]
    admin = await api.admin()
    created = await create(api, host, settings={"enable_waiting_room": True})
    meeting_id, code = created["meeting_id"], created["invite_code"]
    assert isinstance(code, str) and len(code) >= 22
    path = f"{MEETINGS}/{meeting_id}"
    await add(api, meeting_id, host, moderator.id, role="moderator")
    await add(api, meeting_id, host, member.id)
    lobby = await join(api, meeting_id, waiting, invite_code=code)
    assert lobby["data"]["participant"]["status"] == "waiting"
    assert lobby["data"]["meeting"]["invite_code"] is None, "not before a host admits them"

    for who in (host, moderator, member):
        assert (await api.call("GET", path, token=who.access, expect=200))["data"]["invite_code"] == code
        listing = await api.call("GET", MEETINGS, token=who.access, expect=200)
        assert [m["invite_code"] for m in listing["data"]["items"]] == [code]
    assert (await api.call("GET", path, token=admin.access, expect=200))["data"]["invite_code"] is None
    everything = await api.call("GET", MEETINGS, token=admin.access, expect=200)
    assert [m["invite_code"] for m in everything["data"]["items"]] == [None]
    refused(await api.call("GET", path, token=outsider.access), 403)
    assert (await join(api, meeting_id, member))["data"]["meeting"]["invite_code"] == code


async def test_the_host_rotates_the_invite_code(api: Api) -> None:
    host, moderator, member, early, late = [await api.account() for _ in range(5)]
    meeting = await create(api, host)
    meeting_id, old = meeting["meeting_id"], meeting["invite_code"]
    rotate = f"{MEETINGS}/{meeting_id}/invite-code"
    await add(api, meeting_id, host, moderator.id, role="moderator")
    assert (await join(api, meeting_id, member, invite_code=old))["status"] == 200
    assert (await join(api, meeting_id, early, invite_code=old))["status"] == 200
    await api.call("POST", f"{MEETINGS}/{meeting_id}/leave", token=early.access, expect=200)
    for who in (moderator, member, late):
        refused(await api.call("POST", rotate, token=who.access), 403)

    rotated = await api.call("POST", rotate, token=host.access, expect=200)
    new = rotated["data"]["invite_code"]
    assert new != old and rotated["data"]["meeting_id"] == meeting_id
    assert (await api.call("GET", f"{MEETINGS}/{meeting_id}", token=moderator.access))["data"]["invite_code"] == new
    refused(await join(api, meeting_id, late, invite_code=old), 403)
    refused(await join(api, meeting_id, early, invite_code=old), 403)
    assert (await join(api, meeting_id, late, invite_code=new))["status"] == 200
    assert (await join(api, meeting_id, early, invite_code=new))["status"] == 200

    refused(await api.call("POST", f"{MEETINGS}/999999/invite-code", token=host.access), 404, 2001)
    await api.call("POST", f"{MEETINGS}/{meeting_id}/end", token=host.access, expect=200)
    refused(await api.call("POST", rotate, token=host.access), 400, 2002)


# --- personal data and waiting users -------------------------------------------------------------------


async def test_client_addresses_are_for_the_host_and_admins(api: Api) -> None:
    host, guest, moderator = await api.account(), await api.account(), await api.account()
    admin = await api.admin()
    meeting = await create(api, host)
    meeting_id = meeting["meeting_id"]
    await add(api, meeting_id, host, moderator.id, role="moderator")
    for who in (host, moderator):
        await join(api, meeting_id, who)
    await join(api, meeting_id, guest, invite_code=meeting["invite_code"])
    sockets = {}
    sessions = {}
    for who in (host, guest, moderator):
        sockets[who.id], joined = await enter(api, meeting_id, who)
        sessions[who.id] = joined["data"]["session_id"]

    def addresses(body: dict[str, Any]) -> dict[int, str | None]:
        return {s["user_id"]: s["client_address"] for s in body["data"]}

    room = f"/api/v1/sessions/room/{meeting_id}"
    for viewer in (host, admin):
        seen = addresses(await api.call("GET", room, token=viewer.access, expect=200))
        assert seen == {host.id: "127.0.0.1", guest.id: "127.0.0.1", moderator.id: "127.0.0.1"}
        one = await api.call("GET", f"/api/v1/sessions/{sessions[guest.id]}", token=viewer.access, expect=200)
        assert one["data"]["client_address"] == "127.0.0.1"
    for viewer in (guest, moderator):
        seen = addresses(await api.call("GET", room, token=viewer.access, expect=200))
        others = {uid for uid in seen if uid != viewer.id}
        assert seen[viewer.id] == "127.0.0.1" and {seen[uid] for uid in others} == {None}, seen
        peer = await api.call("GET", f"/api/v1/sessions/{sessions[host.id]}", token=viewer.access, expect=200)
        assert peer["data"]["client_address"] is None and peer["data"]["user_id"] == host.id
    for socket in sockets.values():
        await socket.close()


async def test_a_waiting_user_does_not_see_the_meeting_in_lists_until_admitted(api: Api) -> None:
    host, guest = await api.account(), await api.account()
    meeting = await create(api, host, title="Lobby", settings={"enable_waiting_room": True})
    meeting_id = meeting["meeting_id"]
    await api.call("POST", f"{MEETINGS}/{meeting_id}/start", token=host.access, expect=200)
    await join(api, meeting_id, host)
    waiting = await join(api, meeting_id, guest, invite_code=meeting["invite_code"])
    assert waiting["data"]["participant"]["status"] == "waiting"

    lists = (MEETINGS, "/api/v1/my/meetings", "/api/v1/stats/rooms")

    async def visible() -> list[list[Any]]:
        seen = []
        for path in lists:
            body = (await api.call("GET", path, token=guest.access, expect=200))["data"]
            seen.append([m["title"] for m in (body["items"] if isinstance(body, dict) else body)])
        return seen

    assert await visible() == [[], [], []]
    await add(api, meeting_id, host, guest.id)
    assert await visible() == [["Lobby"], ["Lobby"], ["Lobby"]]


# --- removal closes the user's sockets -----------------------------------------------------------------


async def test_a_removed_user_is_cut_off_from_the_room_and_the_media_server(api: Api) -> None:
    host, guest = await api.account(), await api.account()
    meeting = await create(api, host)
    meeting_id = meeting["meeting_id"]
    await join(api, meeting_id, host)
    await join(api, meeting_id, guest, invite_code=meeting["invite_code"])
    host_socket, _ = await enter(api, meeting_id, host)
    guest_socket, guest_join = await enter(api, meeting_id, guest)
    guest_session = guest_join["data"]["session_id"]
    assert guest_session in api.app[SFU].sfu.peers, "entering the room makes the user a media peer"

    await api.call("DELETE", f"{MEETINGS}/{meeting_id}/participants/{guest.id}", token=host.access, expect=200)
    kicked = await receive_type(guest_socket, "error")
    assert "removed" in kicked["data"]["message"]
    assert await closed_with(guest_socket) == 4003
    with pytest.raises(ConnectionError):
        await guest_socket.send_json({"type": "chat", "data": {"text": "still here?"}})
    refused(await post_chat(api, meeting_id, guest, "still here?"), 403)
    # The host's own message is the first chat the room hears: nothing of the guest's got through.
    await host_socket.send_json({"type": "chat", "data": {"text": "carry on"}})
    assert (await receive_type(host_socket, "chat"))["data"]["text"] == "carry on"
    history = await api.call("GET", f"{MEETINGS}/{meeting_id}/messages", token=host.access, expect=200)
    assert [m["text"] for m in history["data"]] == ["carry on"]

    peers = api.app[SFU].sfu.peers
    await until(lambda: guest_session not in peers, "the removed user's media peer gone", SOCKET_TIMEOUT)
    late = await api.client.ws_connect(f"/ws/signaling?meeting_id={meeting_id}&user_id={guest.id}&token={guest.access}")
    assert (await receive(late))["data"]["code"] == 403
    assert await closed_with(late) == 4403
    await host_socket.close()
