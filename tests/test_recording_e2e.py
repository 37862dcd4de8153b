"""Recording a meeting end to end through the real server and its API: participants publish over
WebRTC (aiortc), a host records, people come and go, and what the API hands back — every track's
file and the composite MP4, downloaded through the media endpoints — plays at the size sent, for
the time each participant was there, with sound and picture together (each participant's camera
flashes white exactly when its microphone beeps: see ``tests.rtc_clients.Cues``)."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import av
import numpy as np
import pytest

from tests.browser import needs_chromium, open_participant, page_stats
from tests.recording_media import beeps, decode_file, drift, flashes
from tests.rtc_clients import Cues, Participant
from tests.server_process import (
    ServerProcess,
    call,
    client_session,
    invite_code_of,
    join_meeting,
    make_user,
    request,
    room_stats,
    start_server,
)
from tests.support import until

MEETINGS = "/api/v1/meetings"
RECORDING = "/api/v1/recording"
LOOPBACK = {"HUIYI_RATE_LIMITS": "off", "HUIYI_SFU_BIND_ADDRESSES": "127.0.0.1"}
COMPOSITE_DEADLINE = 240.0  # a 1280x720 composite of a few seconds, on a shared, loaded machine
SYNC = 0.1  # seconds sound and picture may be apart
# A publisher sending when the recording starts is asked for a key frame, which its video file
# starts with: at most half a second later if one was just asked for (requests are spaced so),
# and a frame and a round trip.
KEY_FRAME_WAIT = 0.7


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("recording-e2e")
    process = start_server("--data-dir", str(tmp / "data"), log=tmp / "server.log", env=LOOPBACK)
    yield process
    process.stop()


def recorded_meeting(base_url: str, host_token: str) -> int:
    """A started meeting that may be recorded, its host joined."""
    status, body = request(
        "POST", base_url + MEETINGS, {"title": "recorded", "settings": {"enable_recording": True}}, host_token
    )
    assert status == 201, body
    meeting_id = int(body["data"]["meeting_id"])
    assert request("POST", f"{base_url}{MEETINGS}/{meeting_id}/start", token=host_token)[0] == 200
    join_meeting(base_url, host_token, meeting_id)
    return meeting_id


async def participant(
    base_url: str, name: str, meeting_id: int, people: list[Participant], host_token: str | None = None
) -> Participant:
    """``name`` joined to the meeting (with its invite code, read by the host, unless it is the
    host) with a signaling socket open; closed at the end of the test. The blocking REST calls run
    in a thread, so the others' media keep flowing meanwhile."""

    def joined() -> tuple[str, int]:
        token, user_id = make_user(base_url, name)
        if host_token is not None:
            join_meeting(base_url, token, meeting_id, invite_code_of(base_url, host_token, meeting_id))
        return token, user_id

    token, user_id = await asyncio.to_thread(joined)
    person = Participant(base_url, token, user_id, meeting_id)
    people.append(person)
    await person.connect()
    return person


async def receiving(viewer: Participant, *publishers: Participant, frames: int = 10) -> None:
    """``viewer`` has decoded ``frames`` video frames of each publisher: their media flows."""
    for publisher in publishers:
        await until(
            lambda p=publisher: (t := viewer.video_from(p.user_id)) is not None and t.frames >= frames,
            f"user {viewer.user_id} to decode user {publisher.user_id}'s video",
            30,
        )


async def finished(http: aiohttp.ClientSession, base_url: str, token: str, recording_id: int) -> dict[str, Any]:
    """The recording once its composite is made (``ready``), or the test fails saying where it stuck."""
    seen: list[str] = []

    async def ready() -> dict[str, Any] | None:
        status, body = await call(http, "GET", f"{base_url}{RECORDING}/{recording_id}", token)
        assert status == 200, body
        seen.append(f"{body['data']['status']} {body['data']['progress']}")
        assert body["data"]["status"] in ("stopping", "processing", "ready"), body["data"]
        return body["data"] if body["data"]["status"] == "ready" else None

    try:
        return await until(ready, f"recording {recording_id} to be ready", COMPOSITE_DEADLINE, interval=1.0)
    except AssertionError as failure:
        raise AssertionError(f"{failure}; seen: {seen[-5:]}") from None


async def download(http: aiohttp.ClientSession, base_url: str, token: str, file_id: str, to: Path) -> Path:
    """A media file fetched through ``/api/v1/media/download``, checked against its ``info``."""
    status, info = await call(http, "GET", f"{base_url}/api/v1/media/info/{file_id}", token)
    assert status == 200, info
    headers = {"Authorization": f"Bearer {token}"}
    async with http.get(f"{base_url}/api/v1/media/download/{file_id}", headers=headers) as response:
        assert response.status == 200, await response.text()
        data = await response.read()
    assert len(data) == info["data"]["size"] > 0
    to.write_bytes(data)
    return to


async def ranged(http: aiohttp.ClientSession, base_url: str, token: str, file_id: str, whole: bytes) -> None:
    """Part of a file asked for with an HTTP Range header comes back as exactly those bytes."""
    headers = {"Authorization": f"Bearer {token}", "Range": "bytes=100-1099"}
    async with http.get(f"{base_url}/api/v1/media/download/{file_id}", headers=headers) as response:
        assert response.status == 206, await response.text()
        assert response.headers["Content-Range"] == f"bytes 100-1099/{len(whole)}"
        assert await response.read() == whole[100:1100]


def span(path: Path) -> tuple[float, float]:
    """Where a file's frames start and end, in seconds of its timestamps (since the recording's
    start); a video's end is its last frame's, an audio file's where its last frame's sound ends."""
    with av.open(str(path)) as container:
        stream = container.streams[0]
        times, end = [], 0.0
        for frame in container.decode(stream):
            times.append(float(frame.time))
            length = frame.samples / frame.sample_rate if isinstance(frame, av.AudioFrame) else 0.0
            end = max(end, float(frame.time) + length)
    return times[0], end


def lip_sync(video: Path, audio: Path, who: str, at_least: int) -> list[float]:
    """Each flash in ``video`` lines up with a beep in ``audio`` (both on the recording's clock). A
    flash the sound file does not reach past (a cue as its speaker leaves) has no beep to line up with."""
    first, last = span(audio)
    pictures = [flash for flash in flashes(video) if first + SYNC <= flash <= last - Cues().length]
    sounds = beeps(audio)
    offsets = drift(pictures, sounds)
    assert len(pictures) >= at_least and len(sounds) >= at_least, f"{who}: flashes {pictures}, beeps {sounds}"
    assert all(abs(offset) < SYNC for offset in offsets), (
        f"{who}: picture after sound by {offsets} s ({pictures}, {sounds})"
    )
    return offsets


async def test_a_meeting_recorded_through_the_api_plays_back_per_track_and_composited(
    server: ServerProcess, people: list[Participant], tmp_path: Path
) -> None:
    url = server.url
    host_token, host_id = make_user(url, "ann")
    meeting_id = recorded_meeting(url, host_token)
    ann = Participant(url, host_token, host_id, meeting_id)
    people.append(ann)
    await ann.connect()
    ben = await participant(url, "ben", meeting_id, people, host_token)
    sizes = {ann.user_id: (320, 240), ben.user_id: (240, 176)}
    epoch = time.monotonic()  # everyone flashes and beeps at the same moments
    cues = {ann.user_id: Cues(epoch=epoch), ben.user_id: Cues(epoch=epoch)}
    for person in (ann, ben):
        await person.publish(video=sizes[person.user_id], cues=cues[person.user_id])
    await receiving(ann, ben)
    await receiving(ben, ann)

    async with client_session() as http:
        path = f"{url}{MEETINGS}/{meeting_id}/recording/start"
        before = time.time()
        status, body = await call(http, "POST", path, host_token, json={"layout": "grid", "composite": True})
        started = time.time()
        assert status == 201, body
        recording_id = body["data"]["recording_id"]
        # Millisecond 0 of the files is when the server took the call: known to half the call's time.
        origin, unsure = (before + started) / 2, (started - before) / 2
        assert unsure < 0.5, "the start answered at once"

        await until(lambda: time.time() > started + 3, "3 s of recording", 5, interval=0.1)
        cat = await participant(url, "cat", meeting_id, people, host_token)
        sizes[cat.user_id], cues[cat.user_id] = (160, 120), Cues(epoch=epoch)
        await cat.publish(video=sizes[cat.user_id], cues=cues[cat.user_id])
        assert {"recording": True, "recording_id": recording_id} in [
            m["data"] for m in cat.messages if m["type"] == "media-state"
        ], "the late joiner hears the meeting is being recorded"
        await receiving(ann, cat)

        await until(lambda: time.time() > started + 7, "7 s of recording", 30, interval=0.1)
        left = time.time()
        await ben.close()
        people.remove(ben)

        await until(lambda: time.time() > started + 10, "10 s of recording", 30, interval=0.1)
        stopping = time.time()
        status, body = await call(http, "POST", f"{url}{MEETINGS}/{meeting_id}/recording/stop", host_token)
        assert status == 200, body
        assert body["data"]["status"] in ("processing", "ready"), body["data"]
        recording = await finished(http, url, host_token, recording_id)

        assert (recording["stop_reason"], recording["composite"]) == ("stopped", True)
        assert abs(recording["duration"] - (stopping - origin)) < 1.5
        tracks = {(t["user_id"], t["kind"]): t for t in recording["tracks"]}
        users = {ann.user_id: "ann", ben.user_id: "ben", cat.user_id: "cat"}
        assert set(tracks) == {(user, kind) for user in users for kind in ("audio", "video")}, recording["tracks"]
        reasons = {key: track["reason"] for key, track in tracks.items()}
        assert reasons == {(user, kind): "left" if user == ben.user_id else "stopped" for user, kind in tracks}
        for (user, kind), track in tracks.items():
            assert track["codec"] == ("vp8" if kind == "video" else "opus") and track["frames"] > 0, track
            assert track["file_id"] and track["file_url"] == f"/api/v1/media/download/{track['file_id']}", track
            if kind == "video":
                assert (track["width"], track["height"]) == sizes[user], track
        assert recording["composite_file_id"] and recording["size"] > 0

        # Every file through the media endpoints, read by a member who did not start the recording.
        files: dict[tuple[int, str], Path] = {}
        for (user, kind), track in tracks.items():
            name = f"{users[user]}-{kind}.webm"
            files[user, kind] = await download(http, url, cat.token, track["file_id"], tmp_path / name)
        composite = await download(http, url, cat.token, recording["composite_file_id"], tmp_path / "room.mp4")
        await ranged(
            http, url, cat.token, tracks[ann.user_id, "video"]["file_id"], files[ann.user_id, "video"].read_bytes()
        )
        await ranged(http, url, host_token, recording["composite_file_id"], composite.read_bytes())
        assert recording["size"] == sum(path.stat().st_size for path in (*files.values(), composite))

    # When each one was there, on the recording's clock (seconds since it started).
    there = {
        ann.user_id: (0.0, stopping - origin),
        ben.user_id: (0.0, left - origin),
        cat.user_id: (min(cues[cat.user_id].first_frame.values()) - origin, stopping - origin),
    }
    spans = {key: span(path) for key, path in files.items()}
    report = [
        f"{users[user]} {kind}: {spans[user, kind][0]:.2f}-{spans[user, kind][1]:.2f} s"
        f" of {there[user][0]:.2f}-{there[user][1]:.2f} s"
        for user, kind in sorted(files)
    ]
    for (user, kind), path in sorted(files.items()):
        first, last = spans[user, kind]
        begin, end = there[user]
        late = KEY_FRAME_WAIT if kind == "video" and user != cat.user_id else 0.5
        assert -0.5 < first - begin < late + unsure and abs(last - end) < 0.5 + unsure, report
        assert abs((last - first) - tracks[user, kind]["duration"]) < 0.1, (report, tracks[user, kind])
        decoded = decode_file(path)
        if kind == "video":
            assert set(decoded.sizes) == {sizes[user]}, f"{users[user]}: {set(decoded.sizes)}"
            assert len(decoded.sizes) >= 12 * (last - first), f"{users[user]}: {len(decoded.sizes)} frames"
        else:
            assert decoded.rms > 0.05, f"{users[user]}'s voice is there (RMS {decoded.rms:.3f})"
    for user, name in users.items():
        video, audio = files[user, "video"], files[user, "audio"]
        # Who joins during the recording starts both files together; who was there before has its
        # video start at the key frame asked for when the recording started, a moment after its sound.
        apart = spans[user, "video"][0] - spans[user, "audio"][0]
        assert abs(apart) < (SYNC if user == cat.user_id else KEY_FRAME_WAIT), f"{name}: {apart:.3f} s: {report}"
        report.append(f"{name} drift {np.round(lip_sync(video, audio, name, at_least=2), 3).tolist()}")

    # The composite: one 1280x720 H.264 + AAC MP4 of the whole time, every voice and picture in it.
    with av.open(str(composite)) as container:
        video_stream, audio_stream = container.streams.video[0], container.streams.audio[0]
        assert (video_stream.codec_context.name, audio_stream.codec_context.name) == ("h264", "aac")
        assert (video_stream.codec_context.width, video_stream.codec_context.height) == (1280, 720)
        length = container.duration / av.time_base
    assert abs(length - (stopping - origin)) < 1.0, f"composite of {length:.2f} s for {stopping - origin:.2f} s"
    pictures = decode_file(composite)
    assert len(pictures.sizes) >= 24 * (length - 1) and set(pictures.sizes) == {(1280, 720)}
    offsets = drift(flashes(composite, share=0.1), beeps(composite))
    assert len(offsets) >= 4 and all(abs(o) < SYNC for o in offsets), f"composite picture after sound by {offsets}"
    print("\n".join(report), f"composite drift {np.round(offsets, 3).tolist()}", sep="\n")


async def test_a_server_killed_while_recording_comes_back_with_the_recording_interrupted_and_playable(
    tmp_path: Path, people: list[Participant]
) -> None:
    data_dir = str(tmp_path / "data")
    env = {**LOOPBACK, "HUIYI_SERVER_NODE_ID": "only-node"}  # the same node after its restart, on another port
    server = await asyncio.to_thread(start_server, "--data-dir", data_dir, log=tmp_path / "server.log", env=env)
    try:
        host_token, host_id = make_user(server.url, "dora")
        meeting_id = recorded_meeting(server.url, host_token)
        dora = Participant(server.url, host_token, host_id, meeting_id)
        people.append(dora)
        await dora.connect()
        eli = await participant(server.url, "eli", meeting_id, people, host_token)
        sizes = {dora.user_id: (320, 240), eli.user_id: (240, 176)}
        for person in (dora, eli):
            await person.publish(video=sizes[person.user_id])
        await receiving(dora, eli)
        await receiving(eli, dora)
        async with client_session() as http:
            before = time.time()
            status, body = await call(http, "POST", f"{server.url}{MEETINGS}/{meeting_id}/recording/start", host_token)
            origin = (before + time.time()) / 2
            assert status == 201, body
            recording_id = body["data"]["recording_id"]
            await until(lambda: time.time() > origin + 5, "5 s of recording", 10, interval=0.1)
            server.process.kill()  # SIGKILL: nothing is closed, nothing finished
            killed = time.time()
            server.process.wait()
    finally:
        server.stop()
    for person in list(people):
        await person.close()
        people.remove(person)

    server = await asyncio.to_thread(start_server, "--data-dir", data_dir, log=tmp_path / "server-again.log", env=env)
    try:
        async with client_session() as http:
            status, body = await call(http, "GET", f"{server.url}{RECORDING}/{recording_id}", host_token)
            assert status == 200, body
            recording = body["data"]
            assert (recording["status"], recording["stop_reason"]) == ("interrupted", "server stopped unexpectedly")
            assert recording["composite_file_id"] is None and recording["progress"] is None
            assert abs(recording["duration"] - (killed - origin)) < 2.0, recording
            tracks = {(t["user_id"], t["kind"]): t for t in recording["tracks"]}
            assert set(tracks) == {(user, kind) for user in sizes for kind in ("audio", "video")}, recording["tracks"]
            files = {}
            for (user, kind), track in tracks.items():
                assert track["reason"] == "interrupted" and track["file_id"], track
                files[user, kind] = await download(
                    http, server.url, host_token, track["file_id"], tmp_path / f"{user}-{kind}"
                )
    finally:
        server.stop()

    written = killed - origin
    for (user, kind), path in files.items():
        first, last = span(path)
        assert first < KEY_FRAME_WAIT and written - 2.0 < last <= written + 0.1, (
            f"user {user} {kind}: {first:.2f}-{last:.2f} s of {written:.2f} s"
        )
        assert abs((last - first) - tracks[user, kind]["duration"]) < 0.2, (first, last, tracks[user, kind])
        decoded = decode_file(path)
        if kind == "video":
            assert set(decoded.sizes) == {sizes[user]} and len(decoded.sizes) >= 12 * (last - first)
        else:
            assert decoded.rms > 0.1


def sending(base_url: str, meeting_id: int, token: str, user_id: int) -> bool:
    """The node at ``base_url`` receives ``user_id``'s audio and video."""
    tracks = [t for t in room_stats(base_url, meeting_id, token)["tracks"] if t["user_id"] == user_id]
    return len(tracks) == 2 and all(t["layers"][0]["packets"] > 0 for t in tracks)


@pytest.mark.parametrize("nodes", [LOOPBACK], indirect=True)
async def test_a_recording_started_on_one_node_records_the_participants_of_both(
    nodes: tuple[ServerProcess, ServerProcess], people: list[Participant], tmp_path: Path
) -> None:
    a, b = nodes
    host_token, host_id = await asyncio.to_thread(make_user, a.url, "fay")
    meeting_id = await asyncio.to_thread(recorded_meeting, a.url, host_token)
    fay = Participant(a.url, host_token, host_id, meeting_id)  # her socket is on node a
    people.append(fay)
    await fay.connect()
    gus = await participant(b.url, "gus", meeting_id, people, host_token)  # his on node b
    sizes = {fay.user_id: (320, 240), gus.user_id: (240, 176)}
    for person, node in ((fay, a), (gus, b)):
        await person.publish(video=sizes[person.user_id])
        await until(
            lambda n=node, p=person: asyncio.to_thread(sending, n.url, meeting_id, host_token, p.user_id),
            f"node {node.url} to receive user {person.user_id}'s media",
            30,
            interval=0.5,
        )

    async with client_session() as http:
        body = {"meeting_id": meeting_id, "composite": False}
        status, started = await call(http, "POST", f"{a.url}{RECORDING}/start", host_token, json=body)
        assert status == 201, started
        recording_id = started["data"]["recording_id"]
        since = time.time()
        await until(lambda: time.time() > since + 4, "4 s of recording", 10, interval=0.1)
        # Stopped through the other node: it answers once both have kept their files.
        recorded = time.time() - since
        status, stopped = await call(
            http, "POST", f"{b.url}{RECORDING}/stop", host_token, json={"recording_id": recording_id}
        )
        assert status == 200, stopped
        recording = stopped["data"]
        assert recording["status"] == "ready" and recording["stop_reason"] == "stopped", recording
        tracks = {(t["user_id"], t["kind"]): t for t in recording["tracks"]}
        assert set(tracks) == {(user, kind) for user in sizes for kind in ("audio", "video")}, recording["tracks"]
        # The meeting's media run on one node (placed when fay, first, joined through hers), which
        # records everyone; without shared storage its files are served by it alone.
        writers = set()
        for person in (fay, gus):
            for kind in ("audio", "video"):
                track = tracks[person.user_id, kind]
                assert track["reason"] == "stopped" and track["file_id"], track
                path = tmp_path / f"{person.user_id}-{kind}"
                for node in (a, b):
                    headers = {"Authorization": f"Bearer {host_token}"}
                    async with http.get(f"{node.url}/api/v1/media/download/{track['file_id']}", headers=headers) as r:
                        if r.status == 200:
                            writers.add(node.url)
                            await download(http, node.url, host_token, track["file_id"], path)
                            break
                else:
                    raise AssertionError(f"no node serves {person.user_id}'s {kind} file")
                first, last = span(path)
                assert first < KEY_FRAME_WAIT and abs(last - recorded) < 0.5, (person.user_id, kind, first, recorded)
                decoded = decode_file(path)
                if kind == "video":
                    assert set(decoded.sizes) == {sizes[person.user_id]}
                else:
                    assert decoded.rms > 0.1
        assert len(writers) == 1, f"one node records the whole meeting, not {writers}"


HIGH_LAYER = """async (active) => {
    const sender = window.huiyi.publisher.getSenders().find((s) => s.track && s.track.kind === 'video');
    const parameters = sender.getParameters();
    parameters.encodings.find((e) => e.rid === 'h').active = active;
    await sender.setParameters(parameters);
}"""


def layer_active(base_url: str, meeting_id: int, token: str, user_id: int, name: str) -> bool:
    """Whether the server receives layer ``name`` of ``user_id``'s video."""
    for track in room_stats(base_url, meeting_id, token)["tracks"]:
        if track["user_id"] == user_id and track["kind"] == "video":
            return any(layer["name"] == name and layer["active"] for layer in track["layers"])
    return False


@needs_chromium
async def test_browsers_recorded_through_a_simulcast_layer_switch(
    server: ServerProcess, browser: Any, tmp_path: Path
) -> None:
    url = server.url
    host_token, host_id = await asyncio.to_thread(make_user, url, "hal")
    meeting_id = await asyncio.to_thread(recorded_meeting, url, host_token)
    hal = await open_participant(browser, server, meeting_id, host_token, host_id)
    await until(
        lambda: asyncio.to_thread(layer_active, url, meeting_id, host_token, host_id, "high"), "hal's camera", 30
    )

    async def high(active: bool) -> None:
        """Hal's browser stops or restarts its top simulcast layer; the server sees it go or come."""
        await hal.evaluate(HIGH_LAYER, active)

        async def seen() -> bool:
            return await asyncio.to_thread(layer_active, url, meeting_id, host_token, host_id, "high") == active

        await until(seen, f"hal's high layer {'back' if active else 'gone'}", 20, interval=0.2)

    async with client_session() as http:
        before = time.time()
        status, body = await call(http, "POST", f"{url}{MEETINGS}/{meeting_id}/recording/start", host_token)
        origin = (before + time.time()) / 2
        assert status == 201, body
        recording_id = body["data"]["recording_id"]

        # Ivy joins, hal's top layer stops (the recording goes on from a lower one) and comes back,
        # and ivy leaves before the end.
        token, user_id = await asyncio.to_thread(make_user, url, "ivy")
        code = await asyncio.to_thread(invite_code_of, url, host_token, meeting_id)
        await asyncio.to_thread(join_meeting, url, token, meeting_id, code)
        ivy = await open_participant(browser, server, meeting_id, token, user_id)
        joined = time.time()

        async def sending() -> bool:
            sent = {entry["kind"] for entry in (await page_stats(ivy))["outbound"] if entry.get("packetsSent")}
            return sent == {"audio", "video"}

        # Her media follow once her connection is up, which takes a while longer on a busy machine.
        await until(sending, "ivy's browser sending audio and video", 30, interval=0.05)
        flowing = time.time()

        # Ivy watches hal's medium layer, so that dynacast keeps all three wanted (low always, medium
        # for her, high for the recording) and pauses none: a pause or resume tells hal's browser which
        # encodings to send, and would turn the high one back on while the test has it off.
        await ivy.evaluate("window.huiyi.setLayer('medium')")

        def ivy_on_medium() -> bool:
            stats = room_stats(url, meeting_id, host_token)
            return any(
                sub["subscriber_user_id"] == user_id
                and sub["publisher_user_id"] == host_id
                and sub["kind"] == "video"
                and sub["current_layer"] == sub["target_layer"] == "medium"
                for sub in stats["subscriptions"]
            )

        await until(lambda: asyncio.to_thread(ivy_on_medium), "ivy to receive hal's medium layer", 30, interval=0.2)

        async def recording_for(seconds: float) -> None:
            since = time.time()
            await until(lambda: time.time() > since + seconds, f"{seconds} s more of recording", 30, interval=0.1)

        await recording_for(1)
        await high(False)
        await recording_for(2)
        await high(True)
        await recording_for(2)
        leaving = time.time()
        await ivy.context.close()  # her page goes; closing it takes a while on a busy machine
        left = time.time()
        await recording_for(2)
        stopping = time.time()
        status, body = await call(http, "POST", f"{url}{MEETINGS}/{meeting_id}/recording/stop", host_token)
        assert status == 200, body
        recording = await finished(http, url, host_token, recording_id)
        tracks = {(t["user_id"], t["kind"]): t for t in recording["tracks"]}
        assert set(tracks) == {(user, kind) for user in (host_id, user_id) for kind in ("audio", "video")}, tracks
        files = {}
        for (user, kind), track in tracks.items():
            assert track["codec"] == ("vp8" if kind == "video" else "opus") and track["file_id"], track
            assert track["reason"] == ("left" if user == user_id else "stopped"), track
            files[user, kind] = await download(http, url, host_token, track["file_id"], tmp_path / f"{user}-{kind}")
        composite = await download(http, url, host_token, recording["composite_file_id"], tmp_path / "room.mp4")

    there = {host_id: (0.0, stopping - origin), user_id: (joined - origin, leaving - origin)}
    spans = {key: span(path) for key, path in files.items()}
    report = [
        f"{user} {kind}: {a:.2f}-{b:.2f} s of {there[user][0]:.2f}-{there[user][1]:.2f}"
        for (user, kind), (a, b) in spans.items()
    ]
    for (user, kind), (first, last) in spans.items():
        begin, end = there[user]
        # Ivy's page is ready once her publish is answered; her media start once her browser sends them.
        late = flowing - joined + 1.0 if user == user_id else KEY_FRAME_WAIT if kind == "video" else 0.5
        closing = left - leaving if user == user_id else 0.0
        assert begin - 0.5 < first < begin + late and end - 0.5 < last < end + closing + 0.5, report
    for user in (host_id, user_id):
        apart = spans[user, "video"][0] - spans[user, "audio"][0]
        assert abs(apart) < KEY_FRAME_WAIT, f"user {user}: video and audio start {apart:.3f} s apart: {report}"
        assert decode_file(files[user, "audio"]).rms > 0.01, f"user {user}'s microphone is heard"

    # Hal's video plays through both switches: large frames, then smaller ones, then large again.
    pictures = decode_file(files[host_id, "video"])
    runs = [size for size, _ in itertools.groupby(pictures.sizes)]
    widths = [width for width, _ in runs]
    assert len(runs) >= 3 and widths[0] > min(widths) < widths[-1], f"sizes in turn: {runs}"
    gaps = [b - a for a, b in itertools.pairwise(pictures.pts)]
    # A layer counts as stopped after a second without packets; then a key frame of the next one is needed.
    assert max(gaps) < 2500, f"the video stops for {max(gaps)} ms at a switch"
    with av.open(str(composite)) as container:
        length = container.duration / av.time_base
    assert abs(length - (stopping - origin)) < 1.0 and len(decode_file(composite).sizes) >= 24 * (length - 1)
    print("\n".join(report), f"hal's sizes {runs}, longest gap {max(gaps)} ms", sep="\n")
