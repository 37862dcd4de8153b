"""Live streaming end to end: participants publish over WebRTC (aiortc, and a real Chromium page) to
the real server, a host streams the meeting to a real RTMP ingest (nginx with its RTMP module) and
as HLS, and what comes out is read back with PyAV the way a viewer's player would: the picture at
the size and about the frame rate asked for, sound that is not silence, a picture that changes when
a participant leaves, and a stream that resumes after the ingest went away and came back."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import av
import numpy as np
import pytest

from tests.browser import needs_chromium, open_participant
from tests.rtc_clients import Participant
from tests.rtmp_server import RtmpServer
from tests.server_process import (
    ServerProcess,
    call,
    client_session,
    invite_code_of,
    join_meeting,
    make_user,
    request,
    start_server,
)
from tests.support import until

MEETINGS = "/api/v1/meetings"
STREAMING = "/api/v1/streaming"
SIZE = (320, 180)
FPS = 15
ENV = {
    "HUIYI_RATE_LIMITS": "off",
    "HUIYI_SFU_BIND_ADDRESSES": "127.0.0.1",
    "HUIYI_STREAMING_MAX_RETRY_SECONDS": "1",
    "HUIYI_STREAMING_GIVE_UP_SECONDS": "60",
    "HUIYI_STREAMING_HLS_SEGMENT_SECONDS": "1",
    "HUIYI_STREAMING_ALLOW_NETWORKS": "127.0.0.0/8",
}
BACKGROUND = 24  # the composite's empty background (media/layout.py)


@pytest.fixture(scope="module")
def ingest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RtmpServer]:
    server = RtmpServer(tmp_path_factory.mktemp("nginx"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("streaming-e2e")
    process = start_server("--data-dir", str(tmp / "data"), log=tmp / "server.log", env=ENV)
    yield process
    process.stop()


def started_meeting(base_url: str, host_token: str) -> int:
    status, body = request("POST", base_url + MEETINGS, {"title": "streamed"}, host_token)
    assert status == 201, body
    meeting_id = int(body["data"]["meeting_id"])
    assert request("POST", f"{base_url}{MEETINGS}/{meeting_id}/start", token=host_token)[0] == 200
    join_meeting(base_url, host_token, meeting_id)
    return meeting_id


async def participant(
    base_url: str, name: str, meeting_id: int, people: list[Participant], host_token: str | None = None
) -> Participant:
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


@dataclass
class Picture:
    time: float  # seconds, as the stream stamps it
    seen: float  # when it was decoded (time.time())
    size: tuple[int, int]
    top_band: float  # mean brightness of the picture's top rows in the middle columns


@dataclass
class Viewer:
    """Plays the stream from the ingest in a thread, as a viewer's player would, until it ends."""

    url: str
    pictures: list[Picture] = field(default_factory=list)
    sound: list[np.ndarray] = field(default_factory=list)
    error: str | None = None
    done: threading.Event = field(default_factory=threading.Event)
    stopping: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Viewer:
        threading.Thread(target=self._play, daemon=True).start()
        return self

    def _play(self) -> None:
        try:
            with av.open(self.url, options={"rtmp_live": "live"}, timeout=(15, 10)) as container:
                for packet in container.demux():
                    if self.stopping.is_set():
                        break
                    for frame in packet.decode():
                        if isinstance(frame, av.VideoFrame):
                            image = frame.to_ndarray(format="rgb24")
                            width = image.shape[1]
                            band = float(image[:20, width // 4 : 3 * width // 4].mean())
                            picture = Picture(float(frame.time or 0), time.time(), (frame.width, frame.height), band)
                            self.pictures.append(picture)
                        elif isinstance(frame, av.AudioFrame):
                            self.sound.append(frame.to_ndarray().astype(np.float32).reshape(-1))
        except (av.FFmpegError, OSError) as exc:
            self.error = str(exc)
        finally:
            self.done.set()

    def since(self, moment: float) -> list[Picture]:
        return [picture for picture in self.pictures if picture.seen >= moment]

    def stop(self) -> None:
        self.stopping.set()
        self.done.wait(15)


async def stream_status(http: aiohttp.ClientSession, base_url: str, token: str, stream_id: int) -> dict[str, Any]:
    status, body = await call(http, "GET", f"{base_url}{STREAMING}/{stream_id}/status", token)
    assert status == 200, body
    return body["data"]


async def in_state(http: aiohttp.ClientSession, base_url: str, token: str, stream_id: int, state: str) -> None:
    seen: list[str] = []

    async def reached() -> bool:
        data = await stream_status(http, base_url, token, stream_id)
        seen.append(data["state"])
        return data["state"] == state

    try:
        await until(reached, f"stream {stream_id} to be {state}", 40, interval=0.25)
    except AssertionError as failure:
        raise AssertionError(f"{failure}; seen: {seen[-8:]}") from None


def loud(sound: list[np.ndarray]) -> float:
    samples = np.concatenate(sound) if sound else np.zeros(1, dtype=np.float32)
    return float(np.sqrt(np.mean(np.square(samples))))


async def start_stream(
    http: aiohttp.ClientSession, base_url: str, token: str, meeting_id: int, outputs: list[dict[str, Any]]
) -> dict[str, Any]:
    body = {
        "meeting_id": meeting_id,
        "outputs": outputs,
        "width": SIZE[0],
        "height": SIZE[1],
        "fps": FPS,
        "video_bitrate": 300_000,
        "audio_bitrate": 64_000,
    }
    status, answer = await call(http, "POST", f"{base_url}{STREAMING}/start", token, json=body)
    assert status == 201, answer
    return answer["data"]


async def test_two_publishers_streamed_to_rtmp_and_hls_through_an_ingest_that_drops(
    server: ServerProcess, ingest: RtmpServer, tmp_path: Path
) -> None:
    url = server.url
    people: list[Participant] = []
    try:
        host_token, host_id = await asyncio.to_thread(make_user, url, "ann")
        meeting_id = await asyncio.to_thread(started_meeting, url, host_token)
        ann = Participant(url, host_token, host_id, meeting_id)
        people.append(ann)
        await ann.connect()
        bob = await participant(url, "bob", meeting_id, people, host_token)
        # One tone only: two of the same pitch could cancel each other out in the mix.
        await ann.publish()
        await bob.publish(audio=False)
        await until(lambda: (t := ann.video_from(bob.user_id)) is not None and t.frames > 5, "media flowing", 30)

        async with client_session() as http:
            stream = await start_stream(
                http, url, host_token, meeting_id, [{"type": "rtmp", "url": ingest.url("meeting")}, {"type": "hls"}]
            )
            stream_id = stream["stream_id"]
            assert stream["outputs"][0]["url"].endswith("/live/****")  # a short key is hidden whole
            await in_state(http, url, host_token, stream_id, "live")
            viewer = Viewer(ingest.url("meeting")).start()
            await until(lambda: len(viewer.pictures) >= 3 * FPS, "3 s of the stream played", 30, interval=0.2)

            # The picture: the size asked for, about the frame rate, and two tiles side by side, so
            # the top of the picture is background.
            pictures = viewer.pictures[-3 * FPS :]
            assert {picture.size for picture in pictures} == {SIZE}
            span = pictures[-1].time - pictures[0].time
            assert abs((len(pictures) - 1) / span - FPS) < 2, f"{len(pictures) - 1} pictures in {span:.2f} s"
            assert all(abs(picture.top_band - BACKGROUND) < 8 for picture in pictures[-5:]), pictures[-5:]
            assert loud(viewer.sound) > 0.05, "the participants' tones are heard"
            figures = await stream_status(http, url, host_token, stream_id)
            assert abs(figures["output_fps"] - FPS) < 3 and figures["output_bitrate"] > 0

            # Bob leaves: ann's picture alone fills the height, its top no longer background.
            await bob.close()
            people.remove(bob)
            left = time.time()
            await until(
                lambda: any(abs(p.top_band - BACKGROUND) > 20 for p in viewer.since(left)),
                "the picture to change after bob left",
                20,
                interval=0.2,
            )

            # HLS: its playlist is served to the meeting's participants, its segments decode.
            headers = {"Authorization": f"Bearer {host_token}"}
            playlist_url = url + figures["playlist_url"]

            async def segment_names() -> list[str] | None:
                async with http.get(playlist_url, headers=headers) as response:
                    text = await response.text() if response.status == 200 else ""
                return [line for line in text.splitlines() if line.endswith(".ts")] or None

            names = await until(segment_names, "HLS segments", 20, interval=0.3)
            async with http.get(playlist_url.replace("index.m3u8", names[-1]), headers=headers) as response:
                assert response.status == 200
                (tmp_path / "segment.ts").write_bytes(await response.read())
            with av.open(str(tmp_path / "segment.ts")) as container:
                sizes = {(frame.width, frame.height) for frame in container.decode(video=0)}
            with av.open(str(tmp_path / "segment.ts")) as container:
                audio = [frame.to_ndarray().reshape(-1) for frame in container.decode(audio=0)]
            assert sizes == {SIZE} and loud(audio) > 0.05
            outsider_token, _ = await asyncio.to_thread(make_user, url, "eve")
            async with http.get(playlist_url, headers={"Authorization": f"Bearer {outsider_token}"}) as response:
                assert response.status == 404

            # The ingest dies and comes back: the stream reconnects and carries on.
            ingest.kill()
            await in_state(http, url, host_token, stream_id, "reconnecting")
            viewer.stop()
            ingest.start()
            await in_state(http, url, host_token, stream_id, "live")
            again = Viewer(ingest.url("meeting")).start()
            await until(lambda: len(again.pictures) >= FPS, "the stream to play again", 30, interval=0.2)
            assert {picture.size for picture in again.pictures} == {SIZE}
            figures = await stream_status(http, url, host_token, stream_id)
            assert figures["outputs"][0]["reconnects"] >= 1 and figures["outputs"][1]["state"] == "live"

            status, body = await call(http, "POST", f"{url}{STREAMING}/stop", host_token, json={"stream_id": stream_id})
            assert status == 200 and body["data"]["state"] == "stopped", body
            assert again.done.wait(15), "the ingest ended the stream for its viewer once it was stopped"
    finally:
        for person in people:
            await person.close()


@needs_chromium
async def test_a_browser_participant_is_streamed_and_its_page_shows_live(
    server: ServerProcess, ingest: RtmpServer, browser: Any
) -> None:
    url = server.url
    people: list[Participant] = []
    host_token, host_id = await asyncio.to_thread(make_user, url, "cat")
    meeting_id = await asyncio.to_thread(started_meeting, url, host_token)
    page = await open_participant(browser, server, meeting_id, host_token, host_id)
    try:
        dan = await participant(url, "dan", meeting_id, people, host_token)
        await dan.publish(audio=False)
        await until(lambda: (t := dan.video_from(host_id)) is not None and t.frames > 5, "cat's camera", 30)
        assert await page.locator("#live").is_hidden()
        async with client_session() as http:
            stream = await start_stream(
                http, url, host_token, meeting_id, [{"type": "rtmp", "url": ingest.url("browser")}]
            )
            await page.locator("#live").wait_for(state="visible", timeout=10_000)
            await in_state(http, url, host_token, stream["stream_id"], "live")
            viewer = Viewer(ingest.url("browser")).start()
            await until(lambda: len(viewer.pictures) >= 2 * FPS, "2 s of the stream played", 30, interval=0.2)
            assert {picture.size for picture in viewer.pictures} == {SIZE}
            assert loud(viewer.sound) > 0.01, "the browser's fake microphone is heard"
            await call(http, "POST", f"{url}{STREAMING}/stop", host_token, json={"stream_id": stream["stream_id"]})
            await page.locator("#live").wait_for(state="hidden", timeout=10_000)
            viewer.stop()
    finally:
        for person in people:
            await person.close()
        await page.close()


async def test_stopping_the_server_ends_its_streams_cleanly(ingest: RtmpServer, tmp_path: Path) -> None:
    """SIGTERM: the ingest sees the stream end, the HLS playlist is ended, and the server started
    again reports the stream stopped by the shutdown."""
    data = tmp_path / "data"
    server = start_server("--data-dir", str(data), log=tmp_path / "server.log", env=ENV)
    try:
        url = server.url
        host_token, _ = await asyncio.to_thread(make_user, url, "fay")
        meeting_id = await asyncio.to_thread(started_meeting, url, host_token)
        async with client_session() as http:
            outputs = [{"type": "rtmp", "url": ingest.url("shutdown")}, {"type": "hls"}]
            stream = await start_stream(http, url, host_token, meeting_id, outputs)
            await in_state(http, url, host_token, stream["stream_id"], "live")
            viewer = Viewer(ingest.url("shutdown")).start()
            await until(lambda: len(viewer.pictures) >= FPS, "the stream to play", 30, interval=0.2)
            playlist = data / "streams" / str(stream["stream_id"]) / "hls" / "index.m3u8"
            assert await asyncio.to_thread(server.stop) == 0
            assert await asyncio.to_thread(viewer.done.wait, 15), "the ingest ended the stream for its viewer"
            assert playlist.read_text().rstrip().endswith("#EXT-X-ENDLIST")
        server = start_server("--data-dir", str(data), log=tmp_path / "server.log", env=ENV)
        async with client_session() as http:
            done = await stream_status(http, server.url, host_token, stream["stream_id"])
        assert (done["state"], done["stop_reason"]) == ("stopped", "server shutdown"), done
        assert done["frames"] > 0
    finally:
        server.stop()
