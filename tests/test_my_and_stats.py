"""/api/v1/my/meetings*, sessions, message history and statistics."""

from __future__ import annotations

from tests.conftest import Api
from tests.support import at, enter, meeting_with, receive_type


async def test_my_meetings_upcoming_and_history(api: Api) -> None:
    me, other = await api.account(), await api.account()
    later = await api.call("POST", "/api/v1/meetings", token=me.access, json={"title": "later", "start_time": at(72)})
    soon = await api.call("POST", "/api/v1/meetings", token=me.access, json={"title": "soon", "start_time": at(24)})
    past = await api.call("POST", "/api/v1/meetings", token=me.access, json={"title": "past", "start_time": at(-24)})
    done = await api.call("POST", "/api/v1/meetings", token=me.access, json={"title": "done", "start_time": at(-48)})
    await api.call("POST", "/api/v1/meetings", token=other.access, json={"title": "not mine", "start_time": at(24)})
    invited = await api.call(
        "POST", "/api/v1/meetings", token=other.access, json={"title": "invited", "start_time": at(48)}
    )
    invited_id = invited["data"]["meeting_id"]
    await api.call(
        "POST", f"/api/v1/meetings/{invited_id}/participants", token=other.access, json={"user_id": me.id}, expect=201
    )
    for meeting in (past, done):
        meeting_id = meeting["data"]["meeting_id"]
        await api.call("POST", f"/api/v1/meetings/{meeting_id}/start", token=me.access, expect=200)
        await api.call("POST", f"/api/v1/meetings/{meeting_id}/end", token=me.access, expect=200)

    mine = await api.call("GET", "/api/v1/my/meetings", token=me.access, expect=200)
    assert mine["data"]["total"] == 5
    assert [m["title"] for m in mine["data"]["items"]] == ["done", "past", "soon", "invited", "later"]
    upcoming = await api.call("GET", "/api/v1/my/meetings/upcoming", token=me.access, expect=200)
    assert [m["title"] for m in upcoming["data"]["items"]] == ["soon", "invited", "later"]
    history = await api.call("GET", "/api/v1/my/meetings/history", token=me.access, expect=200)
    assert [m["title"] for m in history["data"]["items"]] == ["done", "past"], "most recently ended first"
    paged = await api.call("GET", "/api/v1/my/meetings?page=2&page_size=2", token=me.access)
    assert [m["title"] for m in paged["data"]["items"]] == ["soon", "invited"]
    assert soon["data"]["status"] == later["data"]["status"] == "scheduled"


async def test_sessions_history_and_stats(api: Api) -> None:
    host, guest, outsider = await api.account(), await api.account(), await api.account()
    meeting_id = await meeting_with(api, host, guest)
    await api.call("POST", f"/api/v1/meetings/{meeting_id}/start", token=host.access, expect=200)
    host_socket, host_join = await enter(api, meeting_id, host)
    guest_socket, _ = await enter(api, meeting_id, guest)
    await guest_socket.send_json({"type": "chat", "data": {"text": "over the socket"}})
    await receive_type(host_socket, "chat")

    session_id = host_join["data"]["session_id"]
    own = await api.call("GET", f"/api/v1/sessions/{session_id}", token=host.access, expect=200)
    assert own["data"]["user_id"] == host.id and own["data"]["disconnected_at"] is None
    assert own["data"]["client_address"] == "127.0.0.1"
    assert (await api.call("GET", f"/api/v1/sessions/{session_id}", token=outsider.access))["status"] == 403
    assert (await api.call("GET", "/api/v1/sessions/" + "0" * 32, token=host.access))["status"] == 404

    room = await api.call("GET", f"/api/v1/sessions/room/{meeting_id}", token=guest.access, expect=200)
    assert {s["user_id"] for s in room["data"]} == {host.id, guest.id}
    assert (await api.call("GET", f"/api/v1/sessions/room/{meeting_id}", token=outsider.access))["status"] == 403
    missing = await api.call("GET", "/api/v1/sessions/room/999999", token=host.access)
    assert missing["status"] == 404 and missing["code"] == 2001

    history = await api.call("GET", f"/api/v1/messages/history/{meeting_id}", token=host.access, expect=200)
    assert [m["text"] for m in history["data"]] == ["over the socket"]
    assert (await api.call("GET", f"/api/v1/messages/history/{meeting_id}", token=outsider.access))["status"] == 403

    overview = await api.call("GET", "/api/v1/stats/overview", token=outsider.access, expect=200)
    figures = overview["data"]
    assert figures["rooms"] == 1 and figures["sessions"] == 2 and figures["online_users"] == 2
    assert figures["messages_per_minute"] == 1 and figures["uptime_seconds"] >= 0
    rooms = await api.call("GET", "/api/v1/stats/rooms", token=host.access, expect=200)
    assert rooms["data"] == [
        {
            "meeting_id": meeting_id,
            "title": "Standup",
            "status": "ongoing",
            "participants_online": 2,
            "sessions_open": 2,
            "messages": 1,
        }
    ]
    assert (await api.call("GET", "/api/v1/stats/rooms", token=outsider.access))["data"] == []
    admin = await api.admin()
    assert len((await api.call("GET", "/api/v1/stats/rooms", token=admin.access))["data"]) == 1
    for socket in (host_socket, guest_socket):
        await socket.close()
