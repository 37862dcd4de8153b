"""/api/v1/recording and a meeting's recordings (docs/recording.md), on SQLite and PostgreSQL:
starting, stopping, listing and deleting; who may; the disk floor; the end of the meeting; what the
room hears; what a crashed node left behind; the composite of the files a recording kept."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import av
from aiohttp import ClientWebSocketResponse, WSMsgType

from config import Settings
from control.context import RECORDINGS, STORE
from control.store import Store
from tests.conftest import Account, Api, SettingsFactory
from tests.support import audio_track_file, until, video_track_file

MEETINGS = "/api/v1/meetings"
RECORDING = "/api/v1/recording"
RECORDING_FIELDS = {
    "recording_id", "meeting_id", "started_by", "status", "error", "layout", "composite", "started_at",
    "stopped_at", "stop_reason", "duration", "size", "tracks", "composite_file_id", "progress",
}  # fmt: skip
NOT_FOUND = (404, 5001)


def refused(body: dict[str, Any], status: int, code: int | None = None) -> None:
    assert (body["status"], body["code"]) == (status, code or status), body


async def meeting(api: Api, host: Account, *, start: bool = True, enable: bool = True, **fields: Any) -> int:
    created = await api.call(
        "POST",
        MEETINGS,
        token=host.access,
        json={"title": "Recorded", "settings": {"enable_recording": enable}, **fields},
        expect=201,
    )
    meeting_id = int(created["data"]["meeting_id"])
    if start:
        await api.call("POST", f"{MEETINGS}/{meeting_id}/start", token=host.access, expect=200)
    return meeting_id


async def seat(api: Api, meeting_id: int, host: Account, account: Account, role: str = "participant") -> None:
    """``account`` added by the host and joined."""
    body = {"user_id": account.id, "role": role}
    await api.call("POST", f"{MEETINGS}/{meeting_id}/participants", token=host.access, json=body, expect=201)
    await api.call("POST", f"{MEETINGS}/{meeting_id}/join", token=account.access, json={}, expect=200)


async def start(api: Api, meeting_id: int, account: Account, **options: Any) -> dict[str, Any]:
    return await api.call(
        "POST", f"{MEETINGS}/{meeting_id}/recording/start", token=account.access, json=options or None
    )


async def get(api: Api, recording_id: int, account: Account) -> dict[str, Any]:
    return await api.call("GET", f"{RECORDING}/{recording_id}", token=account.access)


async def listed(api: Api, account: Account, path: str = f"{RECORDING}/list", **params: Any) -> list[int]:
    body = await api.call("GET", path, token=account.access, params=params, expect=200)
    return [item["recording_id"] for item in body["data"]["items"]]


async def test_a_recording_of_a_room_without_media_starts_stops_and_is_deleted(api: Api) -> None:
    host = await api.account()
    meeting_id = await meeting(api, host)
    started = await start(api, meeting_id, host, layout="speaker")
    assert started["status"] == 201, started
    recording = started["data"]
    assert set(recording) == RECORDING_FIELDS
    assert recording["meeting_id"] == meeting_id and recording["started_by"] == host.id
    assert (recording["status"], recording["layout"], recording["composite"]) == ("recording", "speaker", True)
    assert recording["tracks"] == [] and recording["stopped_at"] is None and recording["size"] == 0
    recording_id = recording["recording_id"]

    assert (await get(api, recording_id, host))["data"] == recording
    assert await listed(api, host) == [recording_id]
    assert await listed(api, host, f"{MEETINGS}/{meeting_id}/recordings", status="recording") == [recording_id]
    assert await listed(api, host, status="ready") == []

    stopped = await api.call(
        "POST", f"{RECORDING}/stop", token=host.access, json={"recording_id": recording_id}, expect=200
    )
    # Nothing was published: no files, so no composite to make either.
    done = stopped["data"]
    assert (done["status"], done["stop_reason"], done["tracks"]) == ("ready", "stopped", [])
    assert done["composite_file_id"] is None and done["error"] is None
    assert datetime.fromisoformat(done["stopped_at"]) >= datetime.fromisoformat(done["started_at"])
    assert done["duration"] >= 0
    assert (await get(api, recording_id, host))["data"] == done

    # Another recording of the same meeting may start now, through the other path.
    again = await api.call(
        "POST", f"{RECORDING}/start", token=host.access, json={"meeting_id": meeting_id, "composite": False}
    )
    assert again["status"] == 201 and again["data"]["layout"] == "grid" and not again["data"]["composite"]
    assert await listed(api, host, f"{MEETINGS}/{meeting_id}/recordings") == [
        again["data"]["recording_id"],
        recording_id,
    ]
    await api.call("POST", f"{MEETINGS}/{meeting_id}/recording/stop", token=host.access, expect=200)

    await api.call("DELETE", f"{RECORDING}/{recording_id}", token=host.access, expect=200)
    refused(await get(api, recording_id, host), *NOT_FOUND)
    refused(await api.call("DELETE", f"{RECORDING}/{recording_id}", token=host.access), *NOT_FOUND)


async def test_refusals_name_the_rule(api: Api) -> None:
    host = await api.account()
    meeting_id = await meeting(api, host)
    recording_id = (await start(api, meeting_id, host))["data"]["recording_id"]
    refused(await start(api, meeting_id, host), 400, 5002)
    refused(await api.call("DELETE", f"{RECORDING}/{recording_id}", token=host.access), 400, 5006)
    await api.call("POST", f"{MEETINGS}/{meeting_id}/recording/stop", token=host.access, expect=200)
    refused(await api.call("POST", f"{MEETINGS}/{meeting_id}/recording/stop", token=host.access), 400, 5003)
    stop_again = {"recording_id": recording_id}
    refused(await api.call("POST", f"{RECORDING}/stop", token=host.access, json=stop_again), 400, 5003)

    refused(await start(api, await meeting(api, host, enable=False), host), 400, 5004)
    refused(await start(api, await meeting(api, host, start=False), host), 400, 5007)
    ended = await meeting(api, host)
    await api.call("POST", f"{MEETINGS}/{ended}/end", token=host.access, expect=200)
    body = {"meeting_id": ended}
    refused(await api.call("POST", f"{RECORDING}/start", token=host.access, json=body), 400, 2002)
    refused(await api.call("POST", f"{RECORDING}/start", token=host.access, json={"meeting_id": 10**9}), 404, 2001)
    refused(await start(api, 10**9, host), 404, 2001)

    for recording_path in (f"{RECORDING}/{10**9}", f"{RECORDING}/{2**64}"):
        refused(await api.call("GET", recording_path, token=host.access), *NOT_FOUND)
    refused(await api.call("POST", f"{RECORDING}/stop", token=host.access, json={"recording_id": 10**9}), *NOT_FOUND)
    for bad in ({"meeting_id": meeting_id, "layout": "mosaic"}, {"meeting_id": 0}, {"meeting_id": meeting_id, "x": 1}):
        refused(await api.call("POST", f"{RECORDING}/start", token=host.access, json=bad), 400)
    refused(await api.call("GET", f"{RECORDING}/list", token=host.access, params={"status": "done"}), 400)


async def test_hosts_and_moderators_control_participants_see_and_others_find_nothing(api: Api) -> None:
    host, moderator, participant, outsider, waiting = [await api.account() for _ in range(5)]
    admin = await api.admin()
    meeting_id = await meeting(api, host, settings={"enable_recording": True, "enable_waiting_room": True})
    await seat(api, meeting_id, host, moderator, "moderator")
    await seat(api, meeting_id, host, participant)
    invite = (await api.call("GET", f"{MEETINGS}/{meeting_id}", token=host.access))["data"]["invite_code"]
    await api.call("POST", f"{MEETINGS}/{meeting_id}/join", token=waiting.access, json={"invite_code": invite})

    for caller in (participant, outsider, waiting, admin):
        refused(await start(api, meeting_id, caller), 403)
    recording_id = (await start(api, meeting_id, moderator))["data"]["recording_id"]
    for caller in (host, moderator, participant, admin):
        assert (await get(api, recording_id, caller))["status"] == 200
        assert recording_id in await listed(api, caller)
        assert recording_id in await listed(api, caller, meeting_id=meeting_id)
    assert recording_id in await listed(api, participant, f"{MEETINGS}/{meeting_id}/recordings")
    # To anyone outside the meeting (or not yet let in) the recording does not exist.
    for caller in (outsider, waiting):
        refused(await get(api, recording_id, caller), *NOT_FOUND)
        refused(
            await api.call("POST", f"{RECORDING}/stop", token=caller.access, json={"recording_id": recording_id}),
            *NOT_FOUND,
        )
        refused(await api.call("DELETE", f"{RECORDING}/{recording_id}", token=caller.access), *NOT_FOUND)
        assert await listed(api, caller) == [] and await listed(api, caller, meeting_id=meeting_id) == []
        refused(await api.call("GET", f"{MEETINGS}/{meeting_id}/recordings", token=caller.access), 403)
    for caller in (participant, admin):
        refused(
            await api.call("POST", f"{RECORDING}/stop", token=caller.access, json={"recording_id": recording_id}), 403
        )
        refused(await api.call("POST", f"{MEETINGS}/{meeting_id}/recording/stop", token=caller.access), 403)
    await api.call("POST", f"{RECORDING}/stop", token=host.access, json={"recording_id": recording_id}, expect=200)
    for caller in (participant, admin):
        refused(await api.call("DELETE", f"{RECORDING}/{recording_id}", token=caller.access), 403)
    # Removed from the meeting, a participant no longer sees its recordings.
    await api.call(
        "DELETE", f"{MEETINGS}/{meeting_id}/participants/{participant.id}", token=moderator.access, expect=200
    )
    refused(await get(api, recording_id, participant), *NOT_FOUND)
    await api.call("DELETE", f"{RECORDING}/{recording_id}", token=moderator.access, expect=200)


async def test_no_recording_starts_below_the_disk_floor(
    make_api: Callable[[Settings], Any], settings_factory: SettingsFactory
) -> None:
    api: Api = await make_api(settings_factory(recording={"min_free_disk_mb": 2**40}))
    host = await api.account()
    meeting_id = await meeting(api, host)
    body = await start(api, meeting_id, host)
    refused(body, 503, 5005)
    assert "MiB free" in body["message"]
    assert await listed(api, host) == []


async def test_running_short_of_disk_stops_the_recording(
    make_api: Callable[[Settings], Any], settings_factory: SettingsFactory
) -> None:
    api: Api = await make_api(settings_factory(recording={"disk_check_seconds": 0.05}))
    host = await api.account()
    meeting_id = await meeting(api, host)
    recording_id = (await start(api, meeting_id, host))["data"]["recording_id"]
    api.app[RECORDINGS].min_free_bytes = api.app[RECORDINGS].free_bytes() * 2  # the disk has filled up

    async def stopped() -> dict[str, Any] | None:
        recording = (await get(api, recording_id, host))["data"]
        return recording if recording["status"] == "ready" else None

    assert (await until(stopped, "the recording stopped for lack of disk"))["stop_reason"] == "disk"


async def test_ending_or_deleting_the_meeting_stops_its_recording(api: Api) -> None:
    host = await api.account()
    meeting_id = await meeting(api, host)
    recording_id = (await start(api, meeting_id, host))["data"]["recording_id"]
    await api.call("POST", f"{MEETINGS}/{meeting_id}/end", token=host.access, expect=200)
    recording = (await get(api, recording_id, host))["data"]
    assert (recording["status"], recording["stop_reason"]) == ("ready", "meeting ended")

    deleted = await meeting(api, host)
    recording_id = (await start(api, deleted, host))["data"]["recording_id"]
    await api.call("DELETE", f"{MEETINGS}/{deleted}", token=host.access, expect=200)
    refused(await get(api, recording_id, host), *NOT_FOUND)  # went with its meeting


async def next_of(socket: ClientWebSocketResponse, kind: str) -> dict[str, Any]:
    async with asyncio.timeout(5):
        while True:
            frame = await socket.receive()
            assert frame.type is WSMsgType.TEXT, frame
            incoming = json.loads(frame.data)
            if incoming["type"] == kind:
                return incoming


async def test_the_room_hears_when_recording_starts_and_stops(api: Api) -> None:
    host, guest = await api.account(), await api.account()
    meeting_id = await meeting(api, host)
    await api.call("POST", f"{MEETINGS}/{meeting_id}/join", token=host.access, json={}, expect=200)
    url = f"/ws/signaling?meeting_id={meeting_id}&user_id={host.id}"
    async with api.client.ws_connect(url, headers=host.auth) as host_socket:
        await host_socket.send_json({"type": "join", "data": {}})
        await next_of(host_socket, "join")  # in the room: what it hears from here on reaches it
        recording_id = (await start(api, meeting_id, host))["data"]["recording_id"]
        heard = await next_of(host_socket, "media-state")
        assert (heard["from"], heard["meeting_id"]) == (0, meeting_id)
        assert heard["data"] == {"recording": True, "recording_id": recording_id}

        # Someone entering while it runs is told at once.
        await seat(api, meeting_id, host, guest)
        url = f"/ws/signaling?meeting_id={meeting_id}&user_id={guest.id}"
        async with api.client.ws_connect(url, headers=guest.auth) as guest_socket:
            await guest_socket.send_json({"type": "join", "data": {}})
            await next_of(guest_socket, "join")
            told = await next_of(guest_socket, "media-state")
            assert told["data"] == {"recording": True, "recording_id": recording_id}

            await api.call("POST", f"{MEETINGS}/{meeting_id}/recording/stop", token=host.access, expect=200)
            for socket in (host_socket, guest_socket):
                stopped = await next_of(socket, "media-state")
                assert stopped["data"] == {"recording": False, "recording_id": recording_id}


async def test_a_crashed_node_leaves_an_interrupted_recording_whose_files_are_kept(
    make_api: Callable[[Settings], Any], settings_factory: SettingsFactory
) -> None:
    settings = settings_factory()
    api: Api = await make_api(settings)
    host, participant = await api.account(), await api.account()
    meeting_id = await meeting(api, host)
    await seat(api, meeting_id, host, participant)
    await api.client.close()

    # What a server killed while recording leaves: its row still recording, its files on disk, cut
    # short (the media server writes them as it goes), and a folder of a recording since deleted.
    store = await Store.open(settings.database_url, settings.database.schema_name)
    try:
        recording = await store.recordings.create(
            meeting_id=meeting_id,
            started_by=host.id,
            layout="grid",
            composite=True,
            node_id=settings.node_id,
            root=str(settings.server.data_dir / "recordings"),
        )
    finally:
        await store.close()
    directory = Path(recording.directory)
    directory.mkdir(parents=True)
    video_track_file(directory / f"{participant.id}-video-camera.webm", (200, 30, 30), 1000, 2.0)
    audio_track_file(directory / f"{participant.id}-audio-mic.webm", 440, 0.3, 1000, 2.0)
    (directory / f"{host.id}-audio-empty.webm").write_bytes(b"")
    stray = settings.server.data_dir / "recordings" / str(recording.id + 1000)
    stray.mkdir()
    (stray / "1-audio-x.webm").write_bytes(b"left over")

    api = await make_api(settings)  # the node starts again
    interrupted = (await get(api, recording.id, participant))["data"]
    assert (interrupted["status"], interrupted["stop_reason"]) == ("interrupted", "server stopped unexpectedly")
    assert interrupted["stopped_at"] is not None and interrupted["duration"] >= 0
    tracks = sorted(interrupted["tracks"], key=lambda track: track["kind"])
    assert [(t["user_id"], t["kind"], t["codec"], t["reason"]) for t in tracks] == [
        (participant.id, "audio", "opus", "interrupted"),
        (participant.id, "video", "vp8", "interrupted"),
    ]
    video = tracks[1]
    assert (video["width"], video["height"]) == (160, 120) and abs(video["duration"] - 2.0) < 0.1
    # Its first frame came a second into the recording.
    offset = datetime.fromisoformat(video["started_at"]) - datetime.fromisoformat(interrupted["started_at"])
    assert abs(offset.total_seconds() - 1.0) <= 1.0
    assert interrupted["size"] == sum(track["size"] for track in tracks) > 0
    assert not directory.exists() and not stray.exists()

    # Each file is the recording starter's media file in the meeting, readable by its members.
    info = await api.call("GET", f"/api/v1/media/info/{video['file_id']}", token=participant.access, expect=200)
    assert (info["data"]["user_id"], info["data"]["meeting_id"]) == (host.id, meeting_id)
    assert info["data"]["mime_type"] == "video/webm" and info["data"]["file_type"] == "video"
    part = await api.client.get(video["file_url"], headers={**participant.auth, "Range": "bytes=0-99"})
    assert part.status == 206 and len(await part.read()) == 100
    assert part.headers["Content-Range"] == f"bytes 0-99/{video['size']}"
    whole = await api.client.get(video["file_url"], headers=participant.auth)
    assert whole.status == 200 and len(await whole.read()) == video["size"]

    await api.call("DELETE", f"{RECORDING}/{recording.id}", token=host.access, expect=200)
    refused(await api.call("GET", f"/api/v1/media/info/{video['file_id']}", token=host.access), 404, 3002)


async def test_files_left_in_a_recording_are_kept_and_composited_when_it_stops(
    make_api: Callable[[Settings], Any], settings_factory: SettingsFactory
) -> None:
    """A node that recorded part of a meeting and crashed leaves its files in the recording's
    folder; when the recording stops, they are kept with the rest and go into the composite."""
    api: Api = await make_api(settings_factory(media={"job_workers": 1}))
    host = await api.account()
    meeting_id = await meeting(api, host)
    recording = (await start(api, meeting_id, host))["data"]
    directory = Path((await api.app[STORE].recordings.get(recording["recording_id"])).directory)
    directory.mkdir(parents=True, exist_ok=True)
    video_track_file(directory / f"{host.id}-video-camera.webm", (30, 30, 200), 0, 2.0)
    audio_track_file(directory / f"{host.id}-audio-mic.webm", 440, 0.3, 0, 2.0)

    stopped = await api.call("POST", f"{MEETINGS}/{meeting_id}/recording/stop", token=host.access, expect=200)
    assert stopped["data"]["status"] == "processing" and len(stopped["data"]["tracks"]) == 2
    path = f"{RECORDING}/{recording['recording_id']}"

    async def finished() -> dict[str, Any] | None:
        current = (await api.call("GET", path, token=host.access, expect=200))["data"]
        return current if current["status"] != "processing" else None

    ready = await until(finished, "the composite job finished", timeout=120)
    assert ready["status"] == "ready" and ready["error"] is None, ready
    composite = await api.call("GET", f"/api/v1/media/info/{ready['composite_file_id']}", token=host.access)
    assert composite["data"]["mime_type"] == "video/mp4"
    assert composite["data"]["file_name"] == f"recording-{recording['recording_id']}.mp4"
    assert ready["size"] == composite["data"]["size"] + sum(track["size"] for track in ready["tracks"])
    download = await api.client.get(f"/api/v1/media/download/{ready['composite_file_id']}", headers=host.auth)
    data = await download.read()
    local = directory.parent / "composite.mp4"
    local.write_bytes(data)
    with av.open(str(local)) as container:
        assert container.streams.video[0].codec_context.name == "h264"
        assert container.streams.audio[0].codec_context.name == "aac"
        assert abs(container.duration / av.time_base - 2.0) < 0.2
