"""Recording a real aiortc publisher through the SFU (in process, media over 127.0.0.1): every track
lands in its own file that plays, at the size and for the time sent, on one clock."""

from __future__ import annotations

import asyncio
import secrets
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import av
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription

from bench.loopback import loopback_only
from config.settings import SfuSettings
from sfu.recording import TrackFile
from sfu.server import Sfu
from tests.recording_media import decode_file
from tests.rtc_clients import PatternVideoTrack, ToneAudioTrack
from tests.support import until

RECORD_SECONDS = 5.0


class LocalPublisher:
    """A participant's publisher connection (aiortc) talking to the SFU in this process: its offer
    goes straight to ``Sfu.handle`` and the answer comes back through the peer's signal."""

    def __init__(self, sfu: Sfu, meeting_id: int, user_id: int) -> None:
        loopback_only()
        self.sfu = sfu
        self.answers: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.peer = sfu.peer(meeting_id, secrets.token_hex(16), user_id, self._signal)
        self.connection = RTCPeerConnection(RTCConfiguration(iceServers=[]))

    def _signal(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "answer":
            self.answers.put_nowait(data)

    async def publish(self, video_codec: str) -> None:
        self.connection.addTransceiver(ToneAudioTrack(), direction="sendonly")
        video = self.connection.addTransceiver(PatternVideoTrack(320, 240), direction="sendonly")
        capabilities = RTCRtpSender.getCapabilities("video").codecs
        video.setCodecPreferences([c for c in capabilities if c.mimeType in (video_codec, "video/rtx")])
        await self.connection.setLocalDescription(await self.connection.createOffer())
        offer = {"target": "publisher", "sdp": self.connection.localDescription.sdp}
        await self.sfu.handle(self.peer, "offer", offer)
        answer = await asyncio.wait_for(self.answers.get(), 10)
        await self.connection.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))

    async def close(self) -> None:
        await self.connection.close()
        await self.sfu.remove_peer(self.peer.id)


@pytest.fixture
async def sfu() -> AsyncIterator[Sfu]:
    server = Sfu(SfuSettings(ipv6=False, publish_bitrate=1_000_000, simulated_loss=0.0, bind_addresses=["127.0.0.1"]))
    await server.start()
    yield server
    await server.close()


@pytest.mark.parametrize(
    ("video_codec", "codec", "extension"), [("video/VP8", "vp8", "webm"), ("video/H264", "h264", "mkv")]
)
async def test_a_recorded_publisher_plays_back_in_sync(
    sfu: Sfu, tmp_path: Path, video_codec: str, codec: str, extension: str
) -> None:
    closed: list[TrackFile] = []
    directory = tmp_path / "recordings" / "rec-1"
    sfu.start_recording(3, "rec-1", directory, closed.append)  # before there is any media
    started = time.time()
    assert sfu.recordings() == ["rec-1"] and sfu.recording_files("rec-1") == []
    host = LocalPublisher(sfu, 3, 21)
    try:
        await host.publish(video_codec)  # its tracks are picked up as they are published
        await until(
            lambda: len(files := sfu.recording_files("rec-1")) == 2 and all(f.frames for f in files),
            "both tracks to be written",
        )
        await asyncio.sleep(max(0.0, started + RECORD_SECONDS - 1 - time.time()))
        live = {f.kind: f for f in sfu.recording_files("rec-1")}
        assert not live["video"].closed and live["video"].bytes > 0 and live["audio"].frames > 0
        shutil.copy(live["video"].path, tmp_path / f"copy.{extension}")  # what a kill now would leave
        copied_at = time.time()
        await asyncio.sleep(1.0)
        files = await sfu.stop_recording("rec-1")
        stopped = time.time()
    finally:
        await host.close()

    assert len(files) == 2 and set(closed) == set(files), "each file reported once closed"
    assert sfu.recordings() == [] and sfu.recording_files("rec-1") == []
    by_kind = {f.kind: f for f in files}
    video, audio = by_kind["video"], by_kind["audio"]
    assert video.path == directory / f"21-video-{video.track_id}.{extension}" and video.codec == codec
    assert audio.path == directory / f"21-audio-{audio.track_id}.webm" and audio.mime_type == "audio/webm"
    assert all(f.closed and f.reason == "stopped" and f.bytes == f.path.stat().st_size > 0 for f in files)

    recorded = stopped - started
    for f in files:
        with av.open(str(f.path)) as container:
            duration = container.duration / av.time_base
        assert abs(duration - recorded) < 0.5, f"{f.kind}: {duration:.2f} s of {recorded:.2f} s recorded"

    pictures = decode_file(video.path)
    assert set(pictures.sizes) == {(320, 240)} and (video.width, video.height) == (320, 240)
    assert len(pictures.sizes) == video.frames >= 12 * recorded, "about 15 frames a second, all decoded"
    sound = decode_file(audio.path)
    assert sound.rms > 0.1, f"the tone is there (RMS {sound.rms:.3f})"
    assert abs(audio.started_at - video.started_at) < 0.1, "the two files start together on one clock"
    assert 0 < video.started_at - started < 2, "media began once the publisher had connected"

    copy = decode_file(tmp_path / f"copy.{extension}")
    written_then = (copied_at - started) * 1000
    assert copy.pts[-1] >= written_then - 1500, f"the copy plays to {copy.pts[-1]} ms of {written_then:.0f} ms"
