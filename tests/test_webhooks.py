"""Webhooks: a receiver hears a meeting's whole life in order, signed; one that is down gets its
events once it is back; a slow one holds up neither the others nor the requests; URLs the server
must not reach are refused."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import Account, Api, SettingsFactory
from tests.rtc_clients import Participant
from tests.server_process import (
    ServerProcess,
    invite_code_of,
    join_meeting,
    make_meeting,
    make_user,
    request,
    start_server,
)
from tests.support import MEETINGS, until
from tests.webhook_receiver import Receiver

HOOKS = "/api/v1/admin/webhooks"
SECRET = "whsec_test_secret_0123456789"
LOOPBACK = ["127.0.0.0/8"]
FAST_RETRIES = {"retry_base_seconds": 0.2, "retry_max_seconds": 0.5, "url_allow_networks": LOOPBACK}


async def _meeting_started_and_ended(api: Api, host: Account) -> int:
    created = await api.call("POST", MEETINGS, token=host.access, json={"title": "hooked"}, expect=201)
    meeting_id = created["data"]["meeting_id"]
    await api.call("POST", f"{MEETINGS}/{meeting_id}/start", token=host.access, expect=200)
    await api.call("POST", f"{MEETINGS}/{meeting_id}/end", token=host.access, expect=200)
    return meeting_id


async def _register(api: Api, admin: Account, url: str, **fields: Any) -> dict[str, Any]:
    body = await api.call("POST", HOOKS, token=admin.access, json={"url": url, **fields}, expect=201)
    return body["data"]


async def test_a_meetings_life_reaches_the_receiver_in_order_and_signed(tmp_path: Path, people: list) -> None:
    receiver = Receiver(SECRET)
    await receiver.start()
    env = {
        "HUIYI_RATE_LIMITS": "off",
        "HUIYI_SFU_BIND_ADDRESSES": "127.0.0.1",
        "HUIYI_WEBHOOKS_URLS": receiver.url,
        "HUIYI_WEBHOOKS_SECRET": SECRET,
        "HUIYI_WEBHOOKS_URL_ALLOW_NETWORKS": "127.0.0.0/8",
    }
    server: ServerProcess = await asyncio.to_thread(
        start_server, "--data-dir", str(tmp_path / "data"), log=tmp_path / "server.log", env=env
    )
    try:
        host_token, host_id = make_user(server.url, "hooked_host")
        meeting_id = make_meeting(server.url, host_token)
        assert request("POST", f"{server.url}{MEETINGS}/{meeting_id}/start", {}, host_token)[0] == 200
        join_meeting(server.url, host_token, meeting_id)
        host = Participant(server.url, host_token, host_id, meeting_id)
        people.append(host)
        await host.connect()
        await host.publish(video=(160, 120), audio=True)
        guest_token, guest_id = make_user(server.url, "hooked_guest")
        join_meeting(server.url, guest_token, meeting_id, invite_code_of(server.url, host_token, meeting_id))
        guest = Participant(server.url, guest_token, guest_id, meeting_id)
        people.append(guest)
        await guest.connect()
        await until(lambda: (t := guest.video_from(host_id)) is not None and t.frames >= 3, "the guest sees video", 20)
        assert request("POST", f"{server.url}{MEETINGS}/{meeting_id}/leave", {}, guest_token)[0] == 200
        assert request("POST", f"{server.url}{MEETINGS}/{meeting_id}/end", {}, host_token)[0] == 200

        expected = [
            ("meeting.started", None),
            ("participant.joined", host_id),
            ("track.published", host_id),
            ("track.published", host_id),
            ("participant.joined", guest_id),
            ("participant.left", guest_id),
            # Ending the meeting takes whoever is still in it offline, then closes their media.
            ("participant.left", host_id),
            ("meeting.ended", None),
            ("track.unpublished", host_id),
            ("track.unpublished", host_id),
        ]
        await until(lambda: len(receiver.received) >= len(expected), "every event of the meeting delivered", 20)
        events = receiver.events()  # every signature checked
        assert [(e["type"], e["data"].get("user_id")) for e in events] == expected
        assert all(e["data"]["meeting_id"] == meeting_id for e in events)
        assert len({e["id"] for e in events}) == len(events)
        published = [e["data"] for e in events if e["type"] == "track.published"]
        assert sorted(d["kind"] for d in published) == ["audio", "video"]
        assert {d["peer_id"] for d in published} == {host.peer_id}
        unpublished = [e["data"] for e in events if e["type"] == "track.unpublished"]
        assert {d["track_id"] for d in unpublished} == {d["track_id"] for d in published}
        assert events[5]["data"]["reason"] == "left the meeting"
        assert events[6]["data"]["reason"] == "meeting ended" and events[7]["data"]["reason"] == "ended"
        # Nothing more arrives (no duplicates) once the meeting is over.
        await asyncio.sleep(0.5)
        assert len(receiver.received) == len(expected)
    finally:
        await asyncio.to_thread(server.stop)
        await receiver.stop()


async def test_a_receiver_that_was_down_gets_its_events_once_back(
    settings_factory: SettingsFactory, make_api: Callable[..., Any]
) -> None:
    api: Api = await make_api(settings_factory(webhooks=FAST_RETRIES))
    admin = await api.admin()
    host = await api.account()
    receiver = Receiver()  # not listening yet
    hook = await _register(api, admin, receiver.url, events=["meeting.started", "meeting.ended"])
    receiver.secret = hook["secret"]
    assert hook["secret"] and hook["source"] == "api" and hook["events"] == ["meeting.ended", "meeting.started"]

    meeting_id = await _meeting_started_and_ended(api, host)

    async def failed_twice() -> bool:
        detail = (await api.call("GET", f"{HOOKS}/{hook['webhook_id']}", token=admin.access, expect=200))["data"]
        head = detail["deliveries"][-1]
        return detail["pending"] == 2 and head["attempts"] >= 2 and bool(head["last_error"])

    await until(failed_twice, "deliveries tried and failed while the receiver is down", 10)
    await receiver.start()
    try:
        await until(lambda: len(receiver.received) >= 2, "the events delivered after the receiver came back", 10)
        assert [(e["type"], e["data"]["meeting_id"]) for e in receiver.events()] == [
            ("meeting.started", meeting_id),
            ("meeting.ended", meeting_id),
        ]
        detail = (await api.call("GET", f"{HOOKS}/{hook['webhook_id']}", token=admin.access, expect=200))["data"]
        assert detail["pending"] == 0 and {d["status"] for d in detail["deliveries"]} == {"delivered"}
        assert "secret" not in detail or detail["secret"] is None
    finally:
        await receiver.stop()


async def test_a_slow_receiver_delays_neither_the_others_nor_the_requests(
    settings_factory: SettingsFactory, make_api: Callable[..., Any]
) -> None:
    api: Api = await make_api(settings_factory(webhooks={"url_allow_networks": LOOPBACK, "timeout_seconds": 10}))
    admin = await api.admin()
    host = await api.account()
    slow, fast = Receiver(delay=3.0), Receiver()
    for receiver in (slow, fast):
        await receiver.start()
        receiver.secret = (await _register(api, admin, receiver.url))["secret"]
    try:
        created = await api.call("POST", MEETINGS, token=host.access, json={"title": "slow"}, expect=201)
        started = time.monotonic()
        await api.call("POST", f"{MEETINGS}/{created['data']['meeting_id']}/start", token=host.access, expect=200)
        answered = time.monotonic() - started
        await api.call("POST", f"{MEETINGS}/{created['data']['meeting_id']}/end", token=host.access, expect=200)
        await until(lambda: len(fast.received) >= 2, "the fast receiver's two events", 5)
        assert fast.types() == ["meeting.started", "meeting.ended"]
        # The slow receiver is still holding its first delivery when the fast one has both.
        assert slow.answered == [] or fast.received[1].at < slow.answered[0]
        assert answered < 1.0, f"starting the meeting took {answered:.2f} s"
        await until(lambda: len(slow.received) >= 2, "the slow receiver's two events, in order", 15)
        assert slow.types() == ["meeting.started", "meeting.ended"]
    finally:
        await slow.stop()
        await fast.stop()


async def test_urls_the_server_must_not_reach_are_refused(api: Api) -> None:
    admin = await api.admin()
    for url in (
        "http://127.0.0.1:8080/hook",
        "http://10.1.2.3/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/hook",
        "ftp://example.com/hook",
        "http://user:pw@example.com/hook",
    ):
        refused = await api.call("POST", HOOKS, token=admin.access, json={"url": url}, expect=400)
        assert refused["data"]["errors"][0]["field"] == "url", refused
    assert (await api.call("GET", HOOKS, token=admin.access, expect=200))["data"] == []
    user = await api.account()
    await api.call("GET", HOOKS, token=user.access, expect=403)


async def test_receivers_from_settings_are_listed_and_changed_only_there(
    settings_factory: SettingsFactory, make_api: Callable[..., Any]
) -> None:
    url = "http://127.0.0.1:9/configured"
    api: Api = await make_api(settings_factory(webhooks={"urls": [url], "secret": SECRET, **FAST_RETRIES}))
    admin = await api.admin()
    [listed] = (await api.call("GET", HOOKS, token=admin.access, expect=200))["data"]
    assert listed["url"] == url and listed["source"] == "settings" and listed["secret"] is None
    path = f"{HOOKS}/{listed['webhook_id']}"
    await api.call("PUT", path, token=admin.access, json={"enabled": False}, expect=400)
    await api.call("DELETE", path, token=admin.access, expect=400)
    rotated = await _register(api, admin, "http://127.0.0.1:9/other")
    renewed = await api.call(
        "PUT", f"{HOOKS}/{rotated['webhook_id']}", token=admin.access, json={"rotate_secret": True}, expect=200
    )
    assert renewed["data"]["secret"] not in (None, rotated["secret"])
    await api.call("DELETE", f"{HOOKS}/{rotated['webhook_id']}", token=admin.access, expect=200)
    await api.call("GET", f"{HOOKS}/{rotated['webhook_id']}", token=admin.access, expect=404)


async def test_a_recording_becoming_ready_is_told(
    settings_factory: SettingsFactory, make_api: Callable[..., Any]
) -> None:
    api: Api = await make_api(settings_factory(webhooks={"url_allow_networks": LOOPBACK}))
    admin = await api.admin()
    host = await api.account()
    receiver = Receiver()
    await receiver.start()
    try:
        receiver.secret = (await _register(api, admin, receiver.url, events=["recording.ready"]))["secret"]
        settings = {"enable_recording": True}
        created = await api.call("POST", MEETINGS, token=host.access, json={"title": "rec", "settings": settings})
        path = f"{MEETINGS}/{created['data']['meeting_id']}"
        await api.call("POST", path + "/start", token=host.access, expect=200)
        started = await api.call("POST", path + "/recording/start", token=host.access, json={"composite": False})
        assert started["status"] in (200, 201), started
        await api.call("POST", path + "/recording/stop", token=host.access, expect=200)
        await until(lambda: receiver.received, "recording.ready delivered")
        [event] = receiver.events()
        assert event["type"] == "recording.ready"
        assert event["data"]["recording_id"] == started["data"]["recording_id"]
        assert event["data"]["meeting_id"] == created["data"]["meeting_id"]
    finally:
        await receiver.stop()
