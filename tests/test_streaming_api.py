"""/api/v1/streaming (docs/streaming.md), on SQLite and PostgreSQL: starting, the status, stopping;
who may; what the meeting must be; what the room hears; the HLS a stream serves and to whom; the
meeting's end. The composites here are of rooms without media (a plain picture and silence) at a
small size: what they show is checked end to end in test_streaming_e2e.py."""

from __future__ import annotations

import json
import logging
from typing import Any

import av
import pytest
from aiohttp import ClientWebSocketResponse, WSMsgType

from tests.conftest import Account, Api, SettingsFactory
from tests.server_process import free_port
from tests.support import enter, until

MEETINGS = "/api/v1/meetings"
STREAMING = "/api/v1/streaming"
STREAM_FIELDS = {
    "stream_id", "meeting_id", "started_by", "state", "error", "layout", "width", "height", "fps",
    "video_bitrate", "audio_bitrate", "started_at", "stopped_at", "stop_reason", "uptime", "output_fps",
    "output_bitrate", "frames", "frames_dropped", "outputs", "playlist_url", "public_playlist_url",
}  # fmt: skip
SMALL = {"width": 320, "height": 180, "fps": 10, "video_bitrate": 200_000, "audio_bitrate": 48_000}
HLS = [{"type": "hls"}]
NOT_FOUND = (404, 5101)


@pytest.fixture
async def api(make_api: Any, settings_factory: SettingsFactory) -> Api:
    """The application, allowed to push to the loopback ingests these tests name."""
    return await make_api(settings_factory(streaming={"allow_networks": ["127.0.0.0/8"]}))


def refused(body: dict[str, Any], status: int, code: int | None = None) -> None:
    assert (body["status"], body["code"]) == (status, code or status), body


async def meeting(api: Api, host: Account, *, start: bool = True) -> int:
    created = await api.call("POST", MEETINGS, token=host.access, json={"title": "Streamed"}, expect=201)
    meeting_id = int(created["data"]["meeting_id"])
    if start:
        await api.call("POST", f"{MEETINGS}/{meeting_id}/start", token=host.access, expect=200)
    return meeting_id


async def seat(api: Api, meeting_id: int, host: Account, account: Account, role: str = "participant") -> None:
    body = {"user_id": account.id, "role": role}
    await api.call("POST", f"{MEETINGS}/{meeting_id}/participants", token=host.access, json=body, expect=201)
    await api.call("POST", f"{MEETINGS}/{meeting_id}/join", token=account.access, json={}, expect=200)


async def start(api: Api, account: Account, meeting_id: int, **fields: Any) -> dict[str, Any]:
    body = {"meeting_id": meeting_id, "outputs": HLS, **SMALL, **fields}
    return await api.call("POST", f"{STREAMING}/start", token=account.access, json=body)


async def stop(api: Api, account: Account, stream_id: int) -> dict[str, Any]:
    return await api.call("POST", f"{STREAMING}/stop", token=account.access, json={"stream_id": stream_id})


async def status(api: Api, account: Account, stream_id: int) -> dict[str, Any]:
    return await api.call("GET", f"{STREAMING}/{stream_id}/status", token=account.access)


async def fetch(api: Api, path: str, account: Account | None = None) -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {account.access}"} if account else {}
    async with api.client.get(path, headers=headers) as response:
        return response.status, await response.read()


async def next_of(socket: ClientWebSocketResponse, kind: str) -> dict[str, Any]:
    while True:
        frame = await socket.receive(timeout=20)
        assert frame.type == WSMsgType.TEXT, frame
        message = json.loads(frame.data)
        if message["type"] == kind:
            return message


async def test_an_hls_stream_starts_goes_live_serves_its_playlist_and_stops(api: Api, tmp_path: Any) -> None:
    host, guest = await api.account(), await api.account()
    meeting_id = await meeting(api, host)
    await seat(api, meeting_id, host, guest)
    await api.call("POST", f"{MEETINGS}/{meeting_id}/join", token=host.access, json={}, expect=200)
    host_socket, _ = await enter(api, meeting_id, host)
    started = await start(api, host, meeting_id, layout="speaker")
    assert started["status"] == 201, started
    stream = started["data"]
    assert set(stream) == STREAM_FIELDS
    stream_id = stream["stream_id"]
    assert (stream["meeting_id"], stream["started_by"], stream["layout"]) == (meeting_id, host.id, "speaker")
    assert (stream["width"], stream["height"], stream["fps"], stream["state"]) == (320, 180, 10, "starting")
    assert stream["playlist_url"] == f"{STREAMING}/{stream_id}/hls/index.m3u8"
    assert stream["public_playlist_url"] is None and stream["stopped_at"] is None
    assert stream["outputs"] == [
        {"type": "hls", "url": None, "public": False, "state": None, "error": None, "reconnects": 0, "bytes": 0}
    ]
    told = await next_of(host_socket, "media-state")
    assert told["from"] == 0 and told["data"] == {"streaming": True, "stream_id": stream_id}
    # Who joins later is told too.
    guest_socket, _ = await enter(api, meeting_id, guest)
    assert (await next_of(guest_socket, "media-state"))["data"] == {"streaming": True, "stream_id": stream_id}

    async def live() -> dict[str, Any] | None:
        body = await status(api, guest, stream_id)
        assert body["status"] == 200, body
        data = body["data"]
        return data if data["state"] == "live" and data["output_fps"] > 0 else None

    now = await until(live, "the stream to be live", 30, interval=0.5)
    assert now["outputs"][0]["state"] == "live" and now["outputs"][0]["bytes"] > 0 and now["uptime"] > 0
    assert now["output_bitrate"] > 0 and now["frames"] > 0 and now["error"] is None

    # The playlist names segments that decode, at the size asked for.
    async def listed() -> list[str] | None:
        code, body = await fetch(api, now["playlist_url"], guest)
        names = [line for line in body.decode().splitlines() if line.endswith(".ts")] if code == 200 else []
        return names or None

    names = await until(listed, "a segment in the playlist", 30, interval=0.5)
    code, segment = await fetch(api, f"{STREAMING}/{stream_id}/hls/{names[0]}", guest)
    assert code == 200
    (tmp_path / "segment.ts").write_bytes(segment)
    with av.open(str(tmp_path / "segment.ts")) as container:
        sizes = {(frame.width, frame.height) for frame in container.decode(video=0)}
    assert sizes == {(320, 180)}

    stopped = await stop(api, host, stream_id)
    assert stopped["status"] == 200, stopped
    done = stopped["data"]
    assert (done["state"], done["stop_reason"]) == ("stopped", "stopped") and done["stopped_at"]
    assert done["frames"] >= now["frames"]
    assert (await status(api, host, stream_id))["data"]["state"] == "stopped"
    assert (await next_of(host_socket, "media-state"))["data"] == {"streaming": False, "stream_id": stream_id}
    refused(await stop(api, host, stream_id), 400, 5103)
    # The playlist is finished: players know the stream ended.
    code, body = await fetch(api, now["playlist_url"], guest)
    assert code == 200 and body.decode().rstrip().endswith("#EXT-X-ENDLIST")
    await host_socket.close()
    await guest_socket.close()


async def test_refusals_name_the_rule(api: Api) -> None:
    host, guest, outsider = await api.account(), await api.account(), await api.account()
    meeting_id = await meeting(api, host)
    await seat(api, meeting_id, host, guest)

    refused(await start(api, guest, meeting_id), 403)
    refused(await start(api, outsider, meeting_id), 403)
    refused(await start(api, host, 987654321), 404, 2001)
    refused(await start(api, host, await meeting(api, host, start=False)), 400, 5007)
    ended = await meeting(api, host)
    await api.call("POST", f"{MEETINGS}/{ended}/end", token=host.access, expect=200)
    refused(await start(api, host, ended), 400, 2002)

    bad_outputs: list[Any] = [
        [],
        [{"type": "rtmp"}],
        [{"type": "rtmp", "url": "http://example.test/live/key"}],
        [{"type": "rtmp", "url": "rtmp://example.test"}],
        [{"type": "rtmp", "url": "rtmp://example.test:port/live/key"}],
        [{"type": "rtmp", "url": "rtmp://example.test/live/key", "public": True}],
        [{"type": "hls", "url": "rtmp://example.test/live/key"}],
        [{"type": "hls"}, {"type": "hls"}],
        [{"type": "rtmp", "url": "rtmp://example.test/live/k"}, {"type": "rtmp", "url": "rtmp://example.test/live/k"}],
        [{"type": "srt", "url": "srt://example.test"}],
    ]
    for outputs in bad_outputs:
        refused(await start(api, host, meeting_id, outputs=outputs), 400)
    for fields in ({"width": 100}, {"fps": 0}, {"video_bitrate": 10}, {"layout": "mosaic"}, {"colour": "red"}):
        refused(await start(api, host, meeting_id, **fields), 400)

    # No pushing into the server's own networks unless they are allowed.
    for private in ("rtmp://10.1.2.3/live/key", "rtmp://[::1]/live/key", "rtmps://192.168.1.1/live/key"):
        body = await start(api, host, meeting_id, outputs=[{"type": "rtmp", "url": private}])
        refused(body, 400)
        assert "does not push to" in body["message"], body

    # One stream per destination: the same URL again is refused while the first pushes to it.
    target = f"rtmp://127.0.0.1:{free_port()}/live/a-very-secret-key"
    first = await start(api, host, meeting_id, outputs=[{"type": "rtmp", "url": target}])
    assert first["status"] == 201, first
    assert first["data"]["outputs"][0]["url"] == "rtmp://127.0.0.1:" + target.split(":")[2].split("/")[0] + (
        "/live/****ey"
    )
    other = await meeting(api, host)
    refused(await start(api, host, other, outputs=[{"type": "rtmp", "url": target}]), 400, 5102)

    stream_id = first["data"]["stream_id"]
    refused(await status(api, outsider, stream_id), *NOT_FOUND)
    refused(await stop(api, outsider, stream_id), *NOT_FOUND)
    refused(await stop(api, guest, stream_id), 403)
    refused(await status(api, host, 987654321), *NOT_FOUND)
    refused(await stop(api, host, 987654321), *NOT_FOUND)
    assert (await stop(api, host, stream_id))["status"] == 200
    # Stopped, the destination is free again.
    again = await start(api, host, other, outputs=[{"type": "rtmp", "url": target}])
    assert again["status"] == 201, again
    assert (await stop(api, host, again["data"]["stream_id"]))["status"] == 200


async def test_hls_is_for_the_meetings_participants_or_anyone_with_a_public_address(api: Api) -> None:
    host, guest, outsider = await api.account(), await api.account(), await api.account()
    meeting_id = await meeting(api, host)
    await seat(api, meeting_id, host, guest)
    private = (await start(api, host, meeting_id))["data"]
    public = (await start(api, host, meeting_id, outputs=[{"type": "hls", "public": True}]))["data"]
    assert public["public_playlist_url"].startswith(f"{STREAMING}/public/")

    async def served(path: str, account: Account | None) -> bool:
        return (await fetch(api, path, account))[0] == 200

    await until(lambda: served(private["playlist_url"], guest), "the private playlist", 30, interval=0.5)
    await until(lambda: served(public["public_playlist_url"], None), "the public playlist", 30, interval=0.5)
    assert await served(private["playlist_url"], host)
    assert await served(public["playlist_url"], guest), "a public stream is served to participants too"
    # Nobody else sees a private stream, nor the public one through the participants' path.
    for path in (private["playlist_url"], public["playlist_url"]):
        assert (await fetch(api, path, outsider))[0] == 404
        assert (await fetch(api, path, None))[0] == 401
    token = public["public_playlist_url"].split("/")[-2]
    wrong = public["public_playlist_url"].replace(token, token[::-1])
    assert (await fetch(api, wrong, None))[0] == 404
    assert (await fetch(api, f"{STREAMING}/{private['stream_id']}/hls/../../huiyi.db", guest))[0] == 404
    for stream in (private, public):
        assert (await stop(api, host, stream["stream_id"]))["status"] == 200


async def test_ending_the_meeting_ends_its_streams(api: Api) -> None:
    host = await api.account()
    meeting_id = await meeting(api, host)
    stream_id = (await start(api, host, meeting_id))["data"]["stream_id"]
    await api.call("POST", f"{MEETINGS}/{meeting_id}/end", token=host.access, expect=200)
    done = (await status(api, host, stream_id))["data"]
    assert (done["state"], done["stop_reason"]) == ("stopped", "meeting ended")


async def test_a_push_url_is_never_logged_whole(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    host = await api.account()
    meeting_id = await meeting(api, host)
    key = "sk_live_0123456789abcdef"
    caplog.set_level(logging.DEBUG)
    url = f"rtmps://127.0.0.1:{free_port()}/app/{key}?auth=topsecretvalue"
    stream = (await start(api, host, meeting_id, outputs=[{"type": "rtmp", "url": url}]))["data"]
    assert key not in stream["outputs"][0]["url"] and "topsecretvalue" not in stream["outputs"][0]["url"]

    async def retrying() -> bool:
        output = (await status(api, host, stream["stream_id"]))["data"]["outputs"][0]
        return output["state"] == "reconnecting" and bool(output["error"])

    await until(retrying, "the unreachable ingest to be retried", 30, interval=0.5)
    await stop(api, host, stream["stream_id"])
    assert key not in caplog.text and "topsecretvalue" not in caplog.text
    assert "/app/****ef" in caplog.text


async def test_a_node_at_its_stream_limit_refuses_more(settings_factory: SettingsFactory, make_api: Any) -> None:
    api = await make_api(settings_factory(streaming={"max_streams": 0}))
    host = await api.account()
    refused(await start(api, host, await meeting(api, host)), 503, 5104)
