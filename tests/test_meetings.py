"""/api/v1/meetings and /api/v1/my: meetings, joining, participants and chat (docs/meetings.md)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.conftest import Account, Api
from tests.support import MEETINGS, add, at, create, join, people, post_chat, refused, set_role

DEFAULT_SETTINGS = {
    "enable_recording": False,
    "enable_chat": True,
    "enable_screen_share": True,
    "enable_waiting_room": False,
    "mute_on_join": False,
}
MEETING_FIELDS = {
    "meeting_id", "title", "description", "start_time", "end_time", "max_participants", "meeting_type",
    "status", "creator_id", "settings", "has_password", "invite_code", "created_at", "updated_at",
}  # fmt: skip
PARTICIPANT_FIELDS = {
    "participant_id", "meeting_id", "user_id", "username", "nickname", "role", "status", "joined_at", "media_state",
    "avatar_url",
}  # fmt: skip


def moment(text: str) -> datetime:
    return datetime.fromisoformat(text)


async def listed(api: Api, account: Account, path: str = MEETINGS, **params: Any) -> list[str]:
    body = await api.call("GET", path, token=account.access, params=params, expect=200)
    return [m["title"] for m in body["data"]["items"]]


# --- create -----------------------------------------------------------------------------------------


async def test_create_returns_every_field_and_makes_the_creator_host(api: Api) -> None:
    alice = await api.account()
    start, end = at(24), at(25)
    body = await api.call(
        "POST",
        MEETINGS,
        token=alice.access,
        json={
            "title": "Planning",
            "description": "Quarterly",
            "start_time": start,
            "end_time": end,
            "max_participants": 10,
            "meeting_type": "audio",
            "settings": {"enable_chat": False, "mute_on_join": True},
            "password": "open-sesame",
        },
    )
    assert body["status"] == 201 and body["code"] == 201
    meeting = body["data"]
    assert set(meeting) == MEETING_FIELDS, "the password is never returned"
    assert meeting["title"] == "Planning" and meeting["description"] == "Quarterly"
    assert moment(meeting["start_time"]) == moment(start) and moment(meeting["end_time"]) == moment(end)
    assert meeting["max_participants"] == 10 and meeting["meeting_type"] == "audio"
    assert meeting["status"] == "scheduled" and meeting["creator_id"] == alice.id
    assert meeting["settings"] == {**DEFAULT_SETTINGS, "enable_chat": False, "mute_on_join": True}
    assert meeting["has_password"] is True
    assert isinstance(meeting["meeting_id"], int)

    participants = await people(api, meeting["meeting_id"], alice)
    assert list(participants) == [alice.id]
    host = participants[alice.id]
    assert host["role"] == "host" and host["status"] == "offline" and host["joined_at"] is None


async def test_create_defaults(api: Api) -> None:
    alice = await api.account()
    before = datetime.now(UTC) - timedelta(minutes=1)
    meeting = await create(api, alice)
    assert meeting["description"] == "" and meeting["end_time"] is None
    assert meeting["max_participants"] == 100 and meeting["meeting_type"] == "video"
    assert meeting["settings"] == DEFAULT_SETTINGS and meeting["has_password"] is False
    assert before <= moment(meeting["start_time"]) <= datetime.now(UTC) + timedelta(minutes=1)
    got = await api.call("GET", f"{MEETINGS}/{meeting['meeting_id']}", token=alice.access, expect=200)
    assert got["data"] == meeting


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"title": ""},
        {"title": "x" * 201},
        {"title": "t", "description": "d" * 2001},
        {"title": "t", "start_time": "2030-01-01T10:00:00Z", "end_time": "2030-01-01T09:00:00Z"},
        {"title": "t", "start_time": "2030-01-01T10:00:00Z", "end_time": "2030-01-01T10:00:00Z"},
        {"title": "t", "max_participants": 1},
        {"title": "t", "max_participants": 1001},
        {"title": "t", "meeting_type": "chat"},
        {"title": "t", "settings": {"enable_magic": True}},
        {"title": "t", "password": "abc"},
        {"title": "t", "colour": "red"},
    ],
)
async def test_create_validation(api: Api, payload: dict[str, Any]) -> None:
    alice = await api.account()
    refused(await api.call("POST", MEETINGS, token=alice.access, json=payload), 400)
    assert await listed(api, alice) == [], "nothing was created"


# --- list, get ----------------------------------------------------------------------------------------


async def test_list_visibility_pagination_and_filters(api: Api) -> None:
    alice, bob, dave = await api.account(), await api.account(), await api.account()
    admin = await api.admin()
    a1 = await create(api, alice, title="A1", start_time=at(48))
    await create(api, alice, title="A2", start_time=at(24))
    b1 = await create(api, bob, title="B1", start_time=at(72))
    await create(api, bob, title="B2", start_time=at(96))
    await add(api, b1["meeting_id"], bob, alice.id)
    await join(api, a1["meeting_id"], dave, invite_code=a1["invite_code"])

    assert await listed(api, alice) == ["A2", "A1", "B1"], "own and invited, soonest first"
    assert await listed(api, bob) == ["B1", "B2"]
    assert await listed(api, dave) == ["A1"], "joining makes one a participant"
    everything = await api.call("GET", MEETINGS, token=admin.access, expect=200)
    assert everything["data"]["total"] == 4
    assert [m["title"] for m in everything["data"]["items"]] == ["A2", "A1", "B1", "B2"]

    page = await api.call("GET", MEETINGS, token=alice.access, params={"page": 2, "page_size": 2}, expect=200)
    assert page["data"]["total"] == 3 and page["data"]["page"] == 2 and page["data"]["page_size"] == 2
    assert [m["title"] for m in page["data"]["items"]] == ["B1"]
    assert set(page["data"]["items"][0]) == MEETING_FIELDS

    await api.call("POST", f"{MEETINGS}/{a1['meeting_id']}/start", token=alice.access, expect=200)
    assert await listed(api, alice, status="ongoing") == ["A1"]
    assert await listed(api, alice, status="scheduled") == ["A2", "B1"]
    assert await listed(api, alice, start_from=at(36), start_to=at(60)) == ["A1"]
    assert await listed(api, alice, start_from=at(36)) == ["A1", "B1"]
    assert await listed(api, alice, start_to=at(36)) == ["A2"]
    for bad in ({"status": "zombie"}, {"page": 0}, {"page_size": 101}, {"start_from": "soon"}):
        refused(await api.call("GET", MEETINGS, token=alice.access, params=bad), 400)


async def test_get_meeting_access(api: Api) -> None:
    alice, bob, outsider = await api.account(), await api.account(), await api.account()
    admin = await api.admin()
    meeting = await create(api, alice, title="Private")
    path = f"{MEETINGS}/{meeting['meeting_id']}"
    await add(api, meeting["meeting_id"], alice, bob.id)
    for viewer in (alice, bob, admin):
        got = await api.call("GET", path, token=viewer.access)
        assert got["status"] == 200 and got["data"]["title"] == "Private"
    refused(await api.call("GET", path, token=outsider.access), 403)
    refused(await api.call("GET", f"{MEETINGS}/999999", token=alice.access), 404, 2001)


# --- update, delete -----------------------------------------------------------------------------------


async def test_update_by_the_host(api: Api) -> None:
    alice, bob, carol, guest = [await api.account() for _ in range(4)]
    meeting = await create(api, alice, settings={"mute_on_join": True})
    meeting_id = meeting["meeting_id"]
    path = f"{MEETINGS}/{meeting_id}"

    patch = {"title": "Renamed", "settings": {"enable_chat": False}}
    updated = await api.call("PUT", path, token=alice.access, json=patch)
    assert updated["status"] == 200 and updated["data"]["title"] == "Renamed"
    assert updated["data"]["settings"] == {**DEFAULT_SETTINGS, "mute_on_join": True, "enable_chat": False}

    locked = await api.call("PUT", path, token=alice.access, json={"password": "s3cret-pw"})
    assert locked["status"] == 200 and locked["data"]["has_password"] is True
    refused(await join(api, meeting_id, guest), 400, 2004)
    unlocked = await api.call("PUT", path, token=alice.access, json={"password": None})
    assert unlocked["status"] == 200 and unlocked["data"]["has_password"] is False
    assert (await join(api, meeting_id, guest, invite_code=meeting["invite_code"]))["status"] == 200

    refused(await api.call("PUT", path, token=alice.access, json={"end_time": "2000-01-01T00:00:00Z"}), 400)
    await add(api, meeting_id, alice, bob.id)
    await add(api, meeting_id, alice, carol.id)
    refused(await api.call("PUT", path, token=carol.access, json={"title": "Hijacked"}), 403)
    await set_role(api, meeting_id, alice, bob.id, "host")
    by_host = await api.call("PUT", path, token=bob.access, json={"description": "by the host"})
    assert by_host["status"] == 200 and by_host["data"]["description"] == "by the host"
    assert by_host["data"]["title"] == "Renamed"
    refused(await api.call("PUT", path, token=alice.access, json={"title": "Mine again"}), 403)

    await api.call("POST", f"{path}/start", token=bob.access, expect=200)
    await api.call("POST", f"{path}/end", token=bob.access, expect=200)
    refused(await api.call("PUT", path, token=bob.access, json={"title": "Too late"}), 400, 2002)
    got = await api.call("GET", path, token=alice.access, expect=200)
    assert got["data"]["title"] == "Renamed" and got["data"]["status"] == "ended"


async def test_update_a_cancelled_meeting_is_2002(api: Api) -> None:
    alice = await api.account()
    meeting = await create(api, alice)
    path = f"{MEETINGS}/{meeting['meeting_id']}"
    await api.call("POST", f"{path}/end", token=alice.access, expect=200)
    refused(await api.call("PUT", path, token=alice.access, json={"title": "Again"}), 400, 2002)


@pytest.mark.parametrize("started", [False, True])
async def test_delete_is_for_the_host_only(api: Api, started: bool) -> None:
    alice, bob, carol, outsider = [await api.account() for _ in range(4)]
    meeting = await create(api, alice, title="Doomed")
    meeting_id = meeting["meeting_id"]
    path = f"{MEETINGS}/{meeting_id}"
    await add(api, meeting_id, alice, bob.id)
    await add(api, meeting_id, alice, carol.id, role="moderator")
    await set_role(api, meeting_id, alice, bob.id, "host")
    if started:
        await api.call("POST", f"{path}/start", token=bob.access, expect=200)
    refused(await api.call("DELETE", path, token=alice.access), 403)  # the creator handed the host role over
    refused(await api.call("DELETE", path, token=carol.access), 403)
    refused(await api.call("DELETE", path, token=outsider.access), 403)
    assert (await api.call("GET", path, token=alice.access))["status"] == 200

    await api.call("DELETE", path, token=bob.access, expect=200)
    refused(await api.call("GET", path, token=alice.access), 404, 2001)
    refused(await api.call("DELETE", path, token=bob.access), 404, 2001)
    refused(await join(api, meeting_id, bob), 404, 2001)
    assert await listed(api, alice) == [] and await listed(api, bob) == []


# --- start / end ---------------------------------------------------------------------------------------


async def test_start_and_end(api: Api) -> None:
    alice, bob, outsider = await api.account(), await api.account(), await api.account()
    meeting = await create(api, alice)
    meeting_id, code = meeting["meeting_id"], meeting["invite_code"]
    path = f"{MEETINGS}/{meeting_id}"
    await join(api, meeting_id, alice)
    await join(api, meeting_id, bob, invite_code=code)
    for who in (bob, outsider):
        refused(await api.call("POST", f"{path}/start", token=who.access), 403)
    started = await api.call("POST", f"{path}/start", token=alice.access, expect=200)
    assert started["data"]["status"] == "ongoing"
    refused(await api.call("POST", f"{path}/start", token=alice.access), 400)
    refused(await api.call("POST", f"{path}/end", token=bob.access), 403)
    assert {p["status"] for p in (await people(api, meeting_id, alice)).values()} == {"online"}

    ended = await api.call("POST", f"{path}/end", token=alice.access, expect=200)
    assert ended["data"]["status"] == "ended"
    # end_time is when it ended, after its start
    end_time = moment(ended["data"]["end_time"])
    assert moment(started["data"]["start_time"]) <= end_time <= datetime.now(UTC)
    assert abs((datetime.now(UTC) - end_time).total_seconds()) < 60
    assert {p["status"] for p in (await people(api, meeting_id, alice)).values()} == {"offline"}
    for action in ("start", "end"):
        refused(await api.call("POST", f"{path}/{action}", token=alice.access), 400)
    got = await api.call("GET", path, token=bob.access, expect=200)
    assert got["data"]["status"] == "ended"
    refused(await api.call("POST", f"{MEETINGS}/999999/start", token=alice.access), 404, 2001)


async def test_ending_a_scheduled_meeting_cancels_it(api: Api) -> None:
    alice, bob = await api.account(), await api.account()
    meeting = await create(api, alice)
    meeting_id, code = meeting["meeting_id"], meeting["invite_code"]
    path = f"{MEETINGS}/{meeting_id}"
    await join(api, meeting_id, alice)
    await join(api, meeting_id, bob, invite_code=code)
    cancelled = await api.call("POST", f"{path}/end", token=alice.access, expect=200)
    assert cancelled["data"]["status"] == "cancelled" and cancelled["data"]["end_time"] is None
    assert {p["status"] for p in (await people(api, meeting_id, alice)).values()} == {"offline"}
    for action in ("start", "end"):
        refused(await api.call("POST", f"{path}/{action}", token=alice.access), 400)


# --- join ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("started", [True, False])
async def test_joining_an_ended_or_cancelled_meeting_is_2002(api: Api, started: bool) -> None:
    alice, bob = await api.account(), await api.account()
    meeting_id = (await create(api, alice, password="open-sesame"))["meeting_id"]
    if started:
        await api.call("POST", f"{MEETINGS}/{meeting_id}/start", token=alice.access, expect=200)
    ended = await api.call("POST", f"{MEETINGS}/{meeting_id}/end", token=alice.access, expect=200)
    assert ended["data"]["status"] == ("ended" if started else "cancelled")
    refused(await join(api, meeting_id, alice), 400, 2002)
    refused(await join(api, meeting_id, bob, password="wrong"), 400, 2002)
    refused(await join(api, 999999, bob), 404, 2001)


async def test_join_password(api: Api) -> None:
    alice, bob, carol, dave = [await api.account() for _ in range(4)]
    meeting_id = (await create(api, alice, password="open-sesame"))["meeting_id"]
    refused(await join(api, meeting_id, bob), 400, 2004)
    refused(await join(api, meeting_id, bob, password="open-sesamE"), 400, 2004)
    assert bob.id not in await people(api, meeting_id, alice)
    joined = await join(api, meeting_id, bob, password="open-sesame")
    assert joined["status"] == 200 and joined["data"]["participant"]["status"] == "online"

    creator = await join(api, meeting_id, alice)
    assert creator["status"] == 200 and creator["data"]["participant"]["role"] == "host"
    await add(api, meeting_id, alice, carol.id)
    invited = await join(api, meeting_id, carol)
    assert invited["status"] == 200 and invited["data"]["participant"]["role"] == "participant"
    refused(await join(api, meeting_id, dave), 400, 2004)


async def test_join_full_meeting(api: Api) -> None:
    alice, bob, carol = await api.account(), await api.account(), await api.account()
    meeting = await create(api, alice, max_participants=2)
    meeting_id, code = meeting["meeting_id"], meeting["invite_code"]
    assert (await join(api, meeting_id, alice))["status"] == 200
    assert (await join(api, meeting_id, bob, invite_code=code))["status"] == 200
    refused(await join(api, meeting_id, carol, invite_code=code), 400, 2003)
    assert carol.id not in await people(api, meeting_id, alice)
    again = await join(api, meeting_id, bob, invite_code=code)
    assert again["status"] == 200 and again["data"]["participant"]["status"] == "online"
    assert (await join(api, meeting_id, alice))["status"] == 200

    await api.call("POST", f"{MEETINGS}/{meeting_id}/leave", token=bob.access, expect=200)
    assert (await join(api, meeting_id, carol, invite_code=code))["status"] == 200, "a seat was freed"
    refused(await join(api, meeting_id, bob, invite_code=code), 400, 2003)


async def test_join_roles_and_media_state(api: Api) -> None:
    alice, bob = await api.account(), await api.account()
    plain = await create(api, alice)
    plain_id = plain["meeting_id"]
    muted = await create(api, alice, meeting_type="audio", settings={"mute_on_join": True})

    host = await join(api, plain_id, alice)
    assert host["status"] == 200 and host["data"]["meeting"]["meeting_id"] == plain_id
    assert host["data"]["participant"]["role"] == "host" and host["data"]["participant"]["user_id"] == alice.id
    assert host["data"]["media_state"] == {"audio": True, "video": True, "screen_share": False}
    guest = (await join(api, plain_id, bob, invite_code=plain["invite_code"]))["data"]
    assert set(guest) == {"meeting", "participant", "media_state", "ice_servers"}
    assert guest["ice_servers"] == [], "the TURN server is off in these tests"
    assert set(guest["participant"]) == PARTICIPANT_FIELDS
    assert guest["participant"]["role"] == "participant" and guest["participant"]["status"] == "online"
    assert guest["participant"]["joined_at"] is not None

    for who in (alice, bob):
        answer = await join(api, muted["meeting_id"], who, invite_code=muted["invite_code"])
        assert answer["status"] == 200
        assert answer["data"]["media_state"] == {"audio": False, "video": False, "screen_share": False}
    stored = await people(api, muted["meeting_id"], bob)
    assert stored[bob.id]["media_state"] == {"audio": False, "video": False, "screen_share": False}
    assert stored[alice.id]["role"] == "host" and stored[bob.id]["role"] == "participant"


# --- waiting room, leave --------------------------------------------------------------------------------


@pytest.mark.parametrize("admit_by", ["add", "role"])
async def test_waiting_room(api: Api, admit_by: str) -> None:
    alice, bob, carol = await api.account(), await api.account(), await api.account()
    meeting = await create(api, alice, settings={"enable_waiting_room": True})
    meeting_id, code = meeting["meeting_id"], meeting["invite_code"]
    chat = f"{MEETINGS}/{meeting_id}/messages"
    host = await join(api, meeting_id, alice)
    assert host["data"]["participant"]["status"] == "online"
    waiting = await join(api, meeting_id, bob, invite_code=code)
    assert waiting["status"] == 200 and waiting["data"]["participant"]["status"] == "waiting"
    assert (await join(api, meeting_id, bob, invite_code=code))["data"]["participant"]["status"] == "waiting"
    refused(await api.call("GET", chat, token=bob.access), 403)
    refused(await post_chat(api, meeting_id, bob, "let me in"), 403)
    assert (await people(api, meeting_id, alice))[bob.id]["status"] == "waiting"

    if admit_by == "add":
        admitted = await add(api, meeting_id, alice, bob.id)
        assert admitted["status"] == 201
    else:
        admitted = await set_role(api, meeting_id, alice, bob.id, "participant")
        assert admitted["status"] == 200
    assert admitted["data"]["status"] == "online" and admitted["data"]["role"] == "participant"
    assert (await people(api, meeting_id, alice))[bob.id]["status"] == "online"
    assert (await api.call("GET", chat, token=bob.access))["status"] == 200
    assert (await post_chat(api, meeting_id, bob, "thanks"))["status"] == 201

    await add(api, meeting_id, alice, carol.id)
    invited = await join(api, meeting_id, carol)
    assert invited["data"]["participant"]["status"] == "online", "invited users skip the waiting room"


async def test_a_waiting_user_who_left_waits_again(api: Api) -> None:
    alice, bob = await api.account(), await api.account()
    meeting = await create(api, alice, settings={"enable_waiting_room": True})
    meeting_id, code = meeting["meeting_id"], meeting["invite_code"]
    assert (await join(api, meeting_id, bob, invite_code=code))["data"]["participant"]["status"] == "waiting"
    await api.call("POST", f"{MEETINGS}/{meeting_id}/leave", token=bob.access, expect=200)
    again = await join(api, meeting_id, bob, invite_code=code)
    assert again["status"] == 200 and again["data"]["participant"]["status"] == "waiting", "not admitted by anyone"


async def test_a_self_joined_user_needs_a_password_set_later(api: Api) -> None:
    alice, bob = await api.account(), await api.account()
    meeting = await create(api, alice)
    meeting_id, code = meeting["meeting_id"], meeting["invite_code"]
    await join(api, meeting_id, bob, invite_code=code)
    await api.call("POST", f"{MEETINGS}/{meeting_id}/leave", token=bob.access, expect=200)
    await api.call("PUT", f"{MEETINGS}/{meeting_id}", token=alice.access, json={"password": "open-sesame"}, expect=200)
    refused(await join(api, meeting_id, bob), 400, 2004)
    assert (await join(api, meeting_id, bob, password="open-sesame"))["status"] == 200


async def test_leave_marks_the_caller_offline(api: Api) -> None:
    alice, bob = await api.account(), await api.account()
    meeting = await create(api, alice)
    meeting_id, code = meeting["meeting_id"], meeting["invite_code"]
    await join(api, meeting_id, alice)
    await join(api, meeting_id, bob, invite_code=code)
    await api.call("POST", f"{MEETINGS}/{meeting_id}/leave", token=bob.access, expect=200)
    after = await people(api, meeting_id, alice)
    assert after[bob.id]["status"] == "offline" and after[bob.id]["role"] == "participant"
    assert after[alice.id]["status"] == "online"


# --- participants -----------------------------------------------------------------------------------------


async def test_participant_list(api: Api) -> None:
    alice, bob, outsider = await api.account(), await api.account(nickname="Bobby"), await api.account()
    admin = await api.admin()
    meeting = await create(api, alice)
    meeting_id, code = meeting["meeting_id"], meeting["invite_code"]
    await join(api, meeting_id, bob, invite_code=code)
    listing = await api.call("GET", f"{MEETINGS}/{meeting_id}/participants", token=bob.access, expect=200)
    assert [p["user_id"] for p in listing["data"]] == [alice.id, bob.id]
    entry = listing["data"][1]
    assert set(entry) == PARTICIPANT_FIELDS
    assert entry["meeting_id"] == meeting_id and entry["username"] == bob.username and entry["nickname"] == "Bobby"
    assert entry["role"] == "participant" and entry["status"] == "online" and moment(entry["joined_at"])
    assert entry["media_state"] == {"audio": True, "video": True, "screen_share": False}
    assert (await api.call("GET", f"{MEETINGS}/{meeting_id}/participants", token=admin.access))["status"] == 200
    refused(await api.call("GET", f"{MEETINGS}/{meeting_id}/participants", token=outsider.access), 403)
    refused(await api.call("GET", f"{MEETINGS}/999999/participants", token=alice.access), 404, 2001)


async def test_add_participants(api: Api) -> None:
    alice, bob, carol, dave, erin = [await api.account() for _ in range(5)]
    meeting_id = (await create(api, alice))["meeting_id"]
    added = await add(api, meeting_id, alice, bob.id)
    assert added["status"] == 201 and added["code"] == 201
    assert added["data"]["user_id"] == bob.id and added["data"]["role"] == "participant"
    assert added["data"]["status"] == "offline"
    moderator = await add(api, meeting_id, alice, carol.id, role="moderator")
    assert moderator["status"] == 201 and moderator["data"]["role"] == "moderator"

    by_moderator = await add(api, meeting_id, carol, dave.id)
    assert by_moderator["status"] == 201 and by_moderator["data"]["role"] == "participant"
    refused(await add(api, meeting_id, carol, erin.id, role="moderator"), 403)
    refused(await add(api, meeting_id, carol, erin.id, role="host"), 403)
    refused(await add(api, meeting_id, bob, erin.id), 403)
    refused(await add(api, meeting_id, alice, 999999), 404, 1003)
    refused(await add(api, meeting_id, alice, erin.id, role="owner"), 400)
    listing = await people(api, meeting_id, alice)
    assert erin.id not in listing
    assert {uid: p["role"] for uid, p in listing.items()} == {
        alice.id: "host", bob.id: "participant", carol.id: "moderator", dave.id: "participant"
    }  # fmt: skip


async def test_the_host_can_add_a_new_user_as_host(api: Api) -> None:
    alice, bob = await api.account(), await api.account()
    meeting_id = (await create(api, alice))["meeting_id"]
    added = await add(api, meeting_id, alice, bob.id, role="host")
    assert added["status"] == 201 and added["data"]["role"] == "host", added
    roles = {uid: p["role"] for uid, p in (await people(api, meeting_id, bob)).items()}
    assert roles == {alice.id: "moderator", bob.id: "host"}


async def test_remove_participants(api: Api) -> None:
    alice, bob, carol, dave = [await api.account() for _ in range(4)]
    meeting = await create(api, alice)
    meeting_id, code = meeting["meeting_id"], meeting["invite_code"]
    for who in (alice, bob, carol, dave):
        await join(api, meeting_id, who, invite_code=code)
    await set_role(api, meeting_id, alice, carol.id, "moderator")

    async def remove(by: Account, user_id: int) -> dict[str, Any]:
        return await api.call("DELETE", f"{MEETINGS}/{meeting_id}/participants/{user_id}", token=by.access)

    refused(await remove(dave, bob.id), 403)
    refused(await remove(carol, alice.id), 403)
    removed = await remove(carol, bob.id)
    assert removed["status"] == 200
    assert bob.id not in await people(api, meeting_id, alice)
    refused(await join(api, meeting_id, bob, invite_code=code), 403)
    refused(await api.call("GET", f"{MEETINGS}/{meeting_id}", token=bob.access), 403)
    refused(await post_chat(api, meeting_id, bob, "still here?"), 403)
    assert await listed(api, bob) == []

    assert (await remove(alice, carol.id))["status"] == 200, "the host may remove a moderator"
    refused(await join(api, meeting_id, carol, invite_code=code), 403)
    readded = await add(api, meeting_id, alice, bob.id)
    assert readded["status"] == 201 and readded["data"]["role"] == "participant"
    back = await join(api, meeting_id, bob)
    assert back["status"] == 200 and back["data"]["participant"]["status"] == "online"
    assert (await people(api, meeting_id, alice))[bob.id]["status"] == "online"


async def test_roles_and_host_hand_over(api: Api) -> None:
    alice, bob, carol = await api.account(), await api.account(), await api.account()
    meeting = await create(api, alice)
    meeting_id, code = meeting["meeting_id"], meeting["invite_code"]
    for who in (alice, bob, carol):
        await join(api, meeting_id, who, invite_code=code)
    await api.call("POST", f"{MEETINGS}/{meeting_id}/start", token=alice.access, expect=200)

    refused(await set_role(api, meeting_id, bob, carol.id, "moderator"), 403)
    promoted = await set_role(api, meeting_id, alice, bob.id, "moderator")
    assert promoted["status"] == 200 and promoted["data"]["role"] == "moderator"
    refused(await set_role(api, meeting_id, bob, carol.id, "moderator"), 403)
    refused(await set_role(api, meeting_id, alice, carol.id, "owner"), 400)
    assert (await people(api, meeting_id, carol))[bob.id]["role"] == "moderator"

    handed = await set_role(api, meeting_id, alice, carol.id, "host")
    assert handed["status"] == 200 and handed["data"]["role"] == "host"
    roles = {uid: p["role"] for uid, p in (await people(api, meeting_id, bob)).items()}
    assert roles == {alice.id: "moderator", bob.id: "moderator", carol.id: "host"}
    ended = await api.call("POST", f"{MEETINGS}/{meeting_id}/end", token=carol.access)
    assert ended["status"] == 200 and ended["data"]["status"] == "ended"


# --- chat ---------------------------------------------------------------------------------------------------


async def test_chat_is_stored_as_sent(api: Api) -> None:
    alice, bob = await api.account(), await api.account()
    meeting = await create(api, alice)
    meeting_id, code = meeting["meeting_id"], meeting["invite_code"]
    await join(api, meeting_id, alice)
    await join(api, meeting_id, bob, invite_code=code)
    sent = await post_chat(api, meeting_id, bob, "<b>hi</b> & 你好")
    assert sent["status"] == 201 and sent["code"] == 201
    message = sent["data"]
    assert set(message) == {"message_id", "meeting_id", "user_id", "username", "text", "created_at"}
    assert message["text"] == "<b>hi</b> & 你好" and message["user_id"] == bob.id
    assert message["username"] == bob.username and message["meeting_id"] == meeting_id
    assert abs(moment(message["created_at"]) - datetime.now(UTC)) < timedelta(minutes=1)
    history = await api.call("GET", f"{MEETINGS}/{meeting_id}/messages", token=alice.access, expect=200)
    assert history["data"] == [message]


async def test_chat_paging(api: Api) -> None:
    alice = await api.account()
    meeting_id = (await create(api, alice))["meeting_id"]
    await join(api, meeting_id, alice)
    ids = [(await post_chat(api, meeting_id, alice, f"m{n}"))["data"]["message_id"] for n in range(5)]

    async def page(**params: Any) -> list[str]:
        body = await api.call("GET", f"{MEETINGS}/{meeting_id}/messages", token=alice.access, params=params, expect=200)
        return [m["text"] for m in body["data"]]

    assert await page() == ["m4", "m3", "m2", "m1", "m0"]
    assert await page(limit=2) == ["m4", "m3"]
    assert await page(before=ids[3], limit=2) == ["m2", "m1"]
    assert await page(after=ids[1]) == ["m4", "m3", "m2"]
    assert await page(after=ids[1], before=ids[4]) == ["m3", "m2"]
    assert await page(before=ids[0]) == []
    for bad in ({"limit": 0}, {"limit": 101}, {"before": "x"}):
        refused(await api.call("GET", f"{MEETINGS}/{meeting_id}/messages", token=alice.access, params=bad), 400)


async def test_chat_refusals(api: Api) -> None:
    alice, outsider = await api.account(), await api.account()
    meeting_id = (await create(api, alice))["meeting_id"]
    await join(api, meeting_id, alice)
    chat = f"{MEETINGS}/{meeting_id}/messages"
    refused(await api.call("GET", chat, token=outsider.access), 403)
    refused(await post_chat(api, meeting_id, outsider, "hello"), 403)
    refused(await post_chat(api, meeting_id, alice, "x" * 2001), 400)
    refused(await post_chat(api, meeting_id, alice, ""), 400)
    longest = await post_chat(api, meeting_id, alice, "y" * 2000)
    assert longest["status"] == 201 and longest["data"]["text"] == "y" * 2000

    await api.call("PUT", f"{MEETINGS}/{meeting_id}", token=alice.access, json={"settings": {"enable_chat": False}})
    refused(await api.call("GET", chat, token=alice.access), 403)
    refused(await post_chat(api, meeting_id, alice, "muted"), 403)
    silent = (await create(api, alice, settings={"enable_chat": False}))["meeting_id"]
    await join(api, silent, alice)
    refused(await post_chat(api, silent, alice, "hello"), 403)


# --- /api/v1/my ------------------------------------------------------------------------------------------


async def test_my_meetings(api: Api) -> None:
    me, other = await api.account(), await api.account()
    await create(api, me, title="tomorrow", start_time=at(24))
    going = await create(api, me, title="going", start_time=at(-1))
    cancelled = await create(api, me, title="cancelled", start_time=at(-2))
    finished = await create(api, me, title="finished", start_time=at(-3))
    invited = await create(api, other, title="invited", start_time=at(48))
    await create(api, other, title="not mine", start_time=at(12))
    await add(api, invited["meeting_id"], other, me.id)
    for action, meeting in (("start", going), ("start", finished), ("end", finished), ("end", cancelled)):
        await api.call("POST", f"{MEETINGS}/{meeting['meeting_id']}/{action}", token=me.access, expect=200)

    mine = await api.call("GET", "/api/v1/my/meetings", token=me.access, params={"page_size": 2}, expect=200)
    assert mine["data"]["total"] == 5 and [m["title"] for m in mine["data"]["items"]] == ["finished", "cancelled"]
    assert await listed(api, me, "/api/v1/my/meetings", page=3, page_size=2) == ["invited"]
    assert await listed(api, me, "/api/v1/my/meetings/upcoming") == ["tomorrow", "invited"]
    assert await listed(api, me, "/api/v1/my/meetings/history") == ["finished"]
    assert await listed(api, other, "/api/v1/my/meetings/upcoming") == ["not mine", "invited"]
