"""Who may call what: every declared endpoint against every kind of caller, on SQLite and PostgreSQL.

Run it with ``python -m pytest -q tests/test_authorization_matrix.py`` (``-k sqlite`` or
``-k postgresql`` for one backend, ``-k "meetings.update"`` for one row).

``MATRIX`` below has one row per operation_id of ``control.app.all_endpoints()`` and one column
per role; the rows come from the contract (the API reference, docs/meetings.md, docs/media.md),
not from the code. A new endpoint without a row, or a row without an endpoint, fails
``test_every_endpoint_has_a_row``. Each (operation, role) case builds a valid request for that
operation (a meeting with every role in it, a file and a job of the host's, a signaling session,
a media peer) and checks the answer: ``OK`` is a 2xx (or, for the operations in
``BUSINESS_ERROR_OK``, the 400 a valid-but-refused request gets past every permission check);
a number is the deny status expected. Everything is set up once per backend; operations that
change what they touch get a fresh meeting (or a fresh account or user) of their own.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
from aiohttp import ClientWebSocketResponse, FormData
from aiohttp.test_utils import TestClient, TestServer

from config import load_settings
from control.app import all_endpoints, create_app
from control.context import SFU, STORE
from control.endpoints import Endpoint
from tests.ai_support import speak, train_classifier
from tests.conftest import PASSWORD, POSTGRES_URL, Account, Api, drop_schema, postgres_schema
from tests.support import at, enter, envelope_problem, file_form, image_bytes, until, video_bytes, wav_bytes

pytestmark = pytest.mark.asyncio(loop_scope="module")

ROLES = (
    "anonymous",
    "other",  # registered, not in the meeting
    "participant",
    "moderator",
    "host",  # the meeting's creator and host
    "removed",  # a participant a host removed
    "waiting",  # held in the waiting room
    "banned",  # a participant whose account an admin then banned
    "admin",  # not in the meeting
    "removed_creator",  # created the meeting, handed the host role over, then was removed
)
OK = "ok"
_ = None  # keeps the columns of the table aligned

# fmt: off
MATRIX: dict[str, tuple[str | int, ...]] = {
    #                                anon  other part  mod   host  remov wait  ban   admin rem.creator
    "meta.health":                  (OK,   OK,   OK,   OK,   OK,   OK,   OK,   OK,   OK,   OK),
    "meta.openapi":                 (OK,   OK,   OK,   OK,   OK,   OK,   OK,   OK,   OK,   OK),
    "meta.ready":                   (OK,   OK,   OK,   OK,   OK,   OK,   OK,   OK,   OK,   OK),
    "auth.register":                (OK,   OK,   OK,   OK,   OK,   OK,   OK,   OK,   OK,   OK),
    "auth.login":                   (OK,   OK,   OK,   OK,   OK,   OK,   OK,   403,  OK,   OK),
    "auth.refresh":                 (401,  OK,   OK,   OK,   OK,   OK,   OK,   403,  OK,   OK),
    "auth.forgot_password":         (OK,   OK,   OK,   OK,   OK,   OK,   OK,   OK,   OK,   OK),
    "auth.reset_password":          (OK,   OK,   OK,   OK,   OK,   OK,   OK,   OK,   OK,   OK),
    "users.get_profile":            (401,  OK,   OK,   OK,   OK,   OK,   OK,   403,  OK,   OK),
    "users.update_profile":         (401,  OK,   OK,   OK,   OK,   OK,   OK,   403,  OK,   OK),
    "users.change_password":        (401,  OK,   OK,   OK,   OK,   OK,   OK,   403,  OK,   OK),
    "users.upload_avatar":          (401,  OK,   OK,   OK,   OK,   OK,   OK,   403,  OK,   OK),
    "users.get_avatar":             (OK,   OK,   OK,   OK,   OK,   OK,   OK,   OK,   OK,   OK),
    "users.delete_account":         (401,  OK,   OK,   OK,   OK,   OK,   OK,   403,  OK,   OK),
    "admin.list":                   (401,  403,  403,  403,  403,  403,  403,  403,  OK,   403),
    "admin.get":                    (401,  403,  403,  403,  403,  403,  403,  403,  OK,   403),
    "admin.update":                 (401,  403,  403,  403,  403,  403,  403,  403,  OK,   403),
    "admin.delete":                 (401,  403,  403,  403,  403,  403,  403,  403,  OK,   403),
    "admin.ban":                    (401,  403,  403,  403,  403,  403,  403,  403,  OK,   403),
    "admin.unban":                  (401,  403,  403,  403,  403,  403,  403,  403,  OK,   403),
    "webhooks.list":                (401,  403,  403,  403,  403,  403,  403,  403,  OK,   403),
    "webhooks.create":              (401,  403,  403,  403,  403,  403,  403,  403,  OK,   403),
    "webhooks.get":                 (401,  403,  403,  403,  403,  403,  403,  403,  OK,   403),
    "webhooks.update":              (401,  403,  403,  403,  403,  403,  403,  403,  OK,   403),
    "webhooks.delete":              (401,  403,  403,  403,  403,  403,  403,  403,  OK,   403),
    "meetings.create":              (401,  OK,   OK,   OK,   OK,   OK,   OK,   403,  OK,   OK),
    "meetings.list":                (401,  OK,   OK,   OK,   OK,   OK,   OK,   403,  OK,   OK),
    "meetings.get":                 (401,  403,  OK,   OK,   OK,   403,  403,  403,  OK,   403),
    "meetings.update":              (401,  403,  403,  403,  OK,   403,  403,  403,  403,  403),
    "meetings.delete":              (401,  403,  403,  403,  OK,   403,  403,  403,  403,  403),
    "meetings.start":               (401,  403,  403,  403,  OK,   403,  403,  403,  403,  403),
    "meetings.end":                 (401,  403,  403,  403,  OK,   403,  403,  403,  403,  403),
    "meetings.join":                (401,  403,  OK,   OK,   OK,   403,  OK,   403,  403,  403),
    "meetings.leave":               (401,  403,  OK,   OK,   OK,   403,  OK,   403,  403,  403),
    "meetings.participants":        (401,  403,  OK,   OK,   OK,   403,  403,  403,  OK,   403),
    "meetings.add_participant":     (401,  403,  403,  OK,   OK,   403,  403,  403,  403,  403),
    "meetings.remove_participant":  (401,  403,  403,  OK,   OK,   403,  403,  403,  403,  403),
    "meetings.rotate_invite_code":  (401,  403,  403,  403,  OK,   403,  403,  403,  403,  403),
    "meetings.set_role":            (401,  403,  403,  403,  OK,   403,  403,  403,  403,  403),
    "meetings.messages":            (401,  403,  OK,   OK,   OK,   403,  403,  403,  403,  403),
    "meetings.send_message":        (401,  403,  OK,   OK,   OK,   403,  403,  403,  403,  403),
    "my.meetings":                  (401,  OK,   OK,   OK,   OK,   OK,   OK,   403,  OK,   OK),
    "my.upcoming":                  (401,  OK,   OK,   OK,   OK,   OK,   OK,   403,  OK,   OK),
    "my.history":                   (401,  OK,   OK,   OK,   OK,   OK,   OK,   403,  OK,   OK),
    "signaling.session":            (401,  403,  OK,   OK,   OK,   403,  403,  403,  OK,   403),
    "signaling.room_sessions":      (401,  403,  OK,   OK,   OK,   403,  403,  403,  OK,   403),
    "signaling.message_history":    (401,  403,  OK,   OK,   OK,   403,  403,  403,  OK,   403),
    "signaling.overview":           (401,  OK,   OK,   OK,   OK,   OK,   OK,   403,  OK,   OK),
    "signaling.rooms":              (401,  OK,   OK,   OK,   OK,   OK,   OK,   403,  OK,   OK),
    "media.upload":                 (401,  403,  OK,   OK,   OK,   403,  403,  403,  OK,   403),
    "media.download":               (401,  403,  OK,   OK,   OK,   403,  403,  403,  OK,   403),
    "media.list":                   (401,  403,  OK,   OK,   OK,   403,  403,  403,  OK,   403),
    "media.info":                   (401,  403,  OK,   OK,   OK,   403,  403,  403,  OK,   403),
    "media.delete":                 (401,  403,  403,  403,  OK,   403,  403,  403,  OK,   403),
    "media.process":                (401,  403,  OK,   OK,   OK,   403,  403,  403,  OK,   403),
    "ffmpeg.transcode":             (401,  403,  OK,   OK,   OK,   403,  403,  403,  OK,   403),
    "ffmpeg.extract_audio":         (401,  403,  OK,   OK,   OK,   403,  403,  403,  OK,   403),
    "ffmpeg.extract_video":         (401,  403,  OK,   OK,   OK,   403,  403,  403,  OK,   403),
    "ffmpeg.merge":                 (401,  403,  OK,   OK,   OK,   403,  403,  403,  OK,   403),
    "ffmpeg.thumbnail":             (401,  403,  OK,   OK,   OK,   403,  403,  403,  OK,   403),
    "ffmpeg.job_status":            (401,  404,  404,  404,  OK,   404,  404,  403,  OK,   404),
    "webrtc.room_peers":            (401,  403,  OK,   OK,   OK,   403,  403,  403,  OK,   403),
    "webrtc.room_stats":            (401,  403,  OK,   OK,   OK,   403,  403,  403,  OK,   403),
    "webrtc.peer_media":            (401,  403,  OK,   OK,   OK,   403,  403,  403,  403,  403),
    "meetings.start_recording":     (401,  403,  403,  OK,   OK,   403,  403,  403,  403,  403),
    "meetings.stop_recording":      (401,  403,  403,  OK,   OK,   403,  403,  403,  403,  403),
    "meetings.recordings":          (401,  403,  OK,   OK,   OK,   403,  403,  403,  OK,   403),
    "recording.start":              (401,  403,  403,  OK,   OK,   403,  403,  403,  403,  403),
    # Live captions: switched by the host or a moderator; the transcript is the participants' (like the chat).
    "meetings.captions":            (401,  403,  403,  OK,   OK,   403,  403,  403,  403,  403),
    "meetings.transcript":          (401,  403,  OK,   OK,   OK,   403,  403,  403,  403,  403),
    "meetings.transcript_vtt":      (401,  403,  OK,   OK,   OK,   403,  403,  403,  403,  403),
    # A recording is unknown (404) to anyone who may not see it; seen, it is stopped or deleted
    # only by the meeting's host or a moderator.
    "recording.stop":               (401,  404,  403,  OK,   OK,   404,  404,  403,  403,  404),
    "recording.get":                (401,  404,  OK,   OK,   OK,   404,  404,  403,  OK,   404),
    "recording.list":               (401,  OK,   OK,   OK,   OK,   OK,   OK,   403,  OK,   OK),
    "recording.delete":             (401,  404,  403,  OK,   OK,   404,  404,  403,  403,  404),
    "webrtc.ice_servers":           (401,  OK,   OK,   OK,   OK,   OK,   OK,   403,  OK,   OK),
    # A stream is unknown (404) to anyone who may not see it, like a recording; its public HLS
    # address is for anyone who has it.
    "streaming.start":              (401,  403,  403,  OK,   OK,   403,  403,  403,  403,  403),
    "streaming.stop":               (401,  404,  403,  OK,   OK,   404,  404,  403,  403,  404),
    "streaming.status":             (401,  404,  OK,   OK,   OK,   404,  404,  403,  OK,   404),
    "streaming.hls":                (401,  404,  OK,   OK,   OK,   404,  404,  403,  OK,   404),
    "streaming.public_hls":         (OK,   OK,   OK,   OK,   OK,   OK,   OK,   OK,   OK,   OK),
    # Speech work on a file needs the right to read the file; a speech job is its owner's.
    "speech.recognition":           (401,  403,  OK,   OK,   OK,   403,  403,  403,  OK,   403),
    "speech.emotion":               (401,  403,  OK,   OK,   OK,   403,  403,  403,  OK,   403),
    "speech.synthesis_detection":   (401,  403,  OK,   OK,   OK,   403,  403,  403,  OK,   403),
    "speech.job_status":            (401,  404,  404,  404,  OK,   404,  404,  403,  OK,   404),
    # Denoising and enhancement work on a file need the right to read it; a job is its owner's.
    "audio.denoising":              (401,  403,  OK,   OK,   OK,   403,  403,  403,  OK,   403),
    "audio.job_status":             (401,  404,  404,  404,  OK,   404,  404,  403,  OK,   404),
    "video.enhancement":            (401,  403,  OK,   OK,   OK,   403,  403,  403,  OK,   403),
    "video.job_status":             (401,  404,  404,  404,  OK,   404,  404,  403,  OK,   404),
    # Anyone in the room sees whose microphone is cleaned; hosts and moderators switch it for all.
    "webrtc.room_noise_suppression": (401, 403,  OK,   OK,   OK,   403,  403,  403,  OK,   403),
    "webrtc.set_room_noise_suppression": (401, 403, 403, OK,  OK,   403,  403,  403,  403,  403),
    "models.list":                  (401,  OK,   OK,   OK,   OK,   OK,   OK,   403,  OK,   OK),
    "models.load":                  (401,  OK,   OK,   OK,   OK,   OK,   OK,   403,  OK,   OK),
    "models.unload":                (401,  OK,   OK,   OK,   OK,   OK,   OK,   403,  OK,   OK),
    "models.status":                (401,  OK,   OK,   OK,   OK,   OK,   OK,   403,  OK,   OK),
    "nodes.list":                   (401,  OK,   OK,   OK,   OK,   OK,   OK,   403,  OK,   OK),
    "nodes.status":                 (401,  OK,   OK,   OK,   OK,   OK,   OK,   403,  OK,   OK),
    "nodes.health_check":           (401,  OK,   OK,   OK,   OK,   OK,   OK,   403,  OK,   OK),
}
# fmt: on

# A request that passes every permission check but breaks a business rule answers 400 here.
BUSINESS_ERROR_OK = {
    "auth.reset_password",  # no mailed token to hand: an unknown one is refused as a token, not a caller
}
# Operations that change the meeting they act on run against a meeting made for the case.
FRESH_MEETING = {
    "meetings.update",
    "meetings.delete",
    "meetings.start",
    "meetings.end",
    "meetings.join",
    "meetings.leave",
    "meetings.add_participant",
    "meetings.remove_participant",
    "meetings.set_role",
    "meetings.rotate_invite_code",
    "meetings.start_recording",
    "meetings.stop_recording",
    "meetings.captions",
    "recording.start",
    "recording.stop",
    "recording.delete",
    "streaming.start",
    "streaming.stop",
}
# Roles the guard turns away before any meeting is looked at.
SIGNED_OUT = {"anonymous", "banned"}
# Streams the cases start are small: a tile-sized composite at a low frame rate.
SMALL_STREAM = {"width": 160, "height": 90, "fps": 5, "video_bitrate": 100_000}
# Operations that end or revoke the caller's own account run as a new account of the same standing.
STAND_IN = {"users.change_password", "users.delete_account"}

_names = itertools.count(1)


@dataclass
class Call:
    """What a case sends, apart from its method and path, which come from the declaration."""

    path: dict[str, Any] = field(default_factory=dict)
    json: Any = None
    query: dict[str, Any] | None = None
    form: FormData | None = None
    token: str = "access"


@dataclass
class Scene:
    """A meeting with every role in it, and what the host and the participant made there."""

    world: World
    meeting_id: int
    invite_code: str | None = None
    extras: dict[str, str] = field(default_factory=dict)

    def entry(self) -> dict[str, str]:
        """What someone who was given the meeting's link sends to join it."""
        return {"invite_code": self.invite_code} if self.invite_code else {}

    async def file(self) -> str:
        if "file" not in self.extras:
            self.extras["file"] = await self.new_file()
        return self.extras["file"]

    async def new_file(self) -> str:
        return await self.world.upload(self.world.accounts["host"], self.meeting_id)

    async def job(self) -> str:
        if "job" not in self.extras:
            body = await self.world.ok("POST", "/api/v1/ffmpeg/thumbnail", "host", json={"file_id": await self.file()})
            self.extras["job"] = body["job_id"]
            self.world.jobs.append(body["job_id"])
        return self.extras["job"]

    async def speech(self) -> str:
        """Spoken words (espeak-ng) the host uploaded to the meeting, for the speech operations."""
        if "speech" not in self.extras:
            spoken = speak("can everyone see my screen", self.world.work / "speech.wav").read_bytes()
            form = file_form(spoken, "speech.wav", content_type="audio/wav", meeting_id=self.meeting_id)
            status, body, _ = await self.world.send(
                "POST", "/api/v1/media/upload", self.world.accounts["host"], Call(form=form)
            )
            assert status == 201, body
            self.extras["speech"] = body["data"]["file_id"]
        return self.extras["speech"]

    async def speech_job(self) -> str:
        if "speech_job" not in self.extras:
            body = await self.world.ok(
                "POST", "/api/v1/speech/recognition", "host", json={"file_id": await self.speech()}
            )
            self.extras["speech_job"] = body["job_id"]
        return self.extras["speech_job"]

    async def denoise_job(self) -> str:
        if "denoise_job" not in self.extras:
            body = await self.world.ok("POST", "/api/v1/audio/denoising", "host", json={"file_id": await self.speech()})
            self.extras["denoise_job"] = body["job_id"]
        return self.extras["denoise_job"]

    async def enhance_job(self) -> str:
        if "enhance_job" not in self.extras:
            operations = [{"op": "sharpen"}]
            body = await self.world.ok(
                "POST",
                "/api/v1/video/enhancement",
                "host",
                json={"file_id": await self.file(), "operations": operations},
            )
            self.extras["enhance_job"] = body["job_id"]
        return self.extras["enhance_job"]

    async def session(self) -> str:
        """The host's signaling session: joined, then closed so it is complete."""
        if "session" not in self.extras:
            socket, joined = await self.world.enter(self.meeting_id, "host")
            await socket.close()
            self.extras["session"] = joined["data"]["session_id"]
        return self.extras["session"]

    async def ongoing(self) -> None:
        """The meeting started by its host, with recording allowed (once, however often asked)."""
        if "ongoing" in self.extras:
            return
        path = f"/api/v1/meetings/{self.meeting_id}"
        await self.world.ok("PUT", path, "host", json={"settings": {"enable_recording": True}})
        await self.world.ok("POST", path + "/start", "host")
        self.extras["ongoing"] = "yes"

    async def recording(self, *, finished: bool) -> int:
        """A recording of the meeting the host started (and, if ``finished``, stopped)."""
        await self.ongoing()
        path = f"/api/v1/meetings/{self.meeting_id}/recording"
        recording = await self.world.ok("POST", path + "/start", "host", json={"composite": False})
        if finished:
            await self.world.ok("POST", path + "/stop", "host")
        return int(recording["recording_id"])

    async def stream(self, *, finished: bool) -> dict[str, Any]:
        """A small public HLS stream of the meeting the host started (and, if ``finished``, stopped
        once its playlist was written)."""
        await self.ongoing()
        body = {"meeting_id": self.meeting_id, "outputs": [{"type": "hls", "public": True}], **SMALL_STREAM}
        stream = await self.world.ok("POST", "/api/v1/streaming/start", "host", json=body)
        if finished:

            async def playlist() -> bool:
                status, _, _ = await self.world.send("GET", stream["playlist_url"], self.world.accounts["host"], Call())
                return status == 200

            await until(playlist, "the stream's first playlist", 30, interval=0.2)
            await self.world.ok("POST", "/api/v1/streaming/stop", "host", json={"stream_id": stream["stream_id"]})
        return dict(stream)

    async def peer(self) -> str:
        """The participant's peer on the media server; its socket stays open for the module."""
        if "peer" not in self.extras:
            socket, joined = await self.world.enter(self.meeting_id, "participant")
            await socket.send_json({"type": "media-state", "data": {"layer": "low"}})
            peer_id = joined["data"]["session_id"]
            await until(lambda: peer_id in self.world.api.app[SFU].sfu.peers, "the participant's media peer")
            self.world.hold(socket)
            self.extras["peer"] = peer_id
        return self.extras["peer"]


@dataclass
class Case:
    world: World
    operation_id: str
    role: str
    actor: Account | None
    scene: Scene


class World:
    """One running app per backend, its accounts and its two standing meetings."""

    def __init__(self, api: Api, work: Path) -> None:
        self.api = api
        self.work = work
        self.accounts: dict[str, Account] = {}
        self.scenes: dict[str, Scene] = {}
        self.sockets: dict[ClientWebSocketResponse, asyncio.Task[None]] = {}
        self.avatar = ""
        self.jobs: list[str] = []
        self.recording_id = 0  # a finished recording of the "recorded" scene
        self.stream: dict[str, Any] = {}  # a finished public stream of the "recorded" scene

    def hold(self, socket: ClientWebSocketResponse) -> None:
        """Keep a socket open for the module, reading it so the server's pings are answered."""

        async def drain() -> None:
            async for _ in socket:
                pass

        self.sockets[socket] = asyncio.create_task(drain())

    async def jobs_done(self, timeout: float = 60.0) -> None:
        """Wait for the jobs the cases started, so the server closes without cutting one short."""

        async def all_ended() -> bool:
            for job_id in self.jobs:
                job = await self.ok("GET", f"/api/v1/ffmpeg/job/{job_id}/status", "admin")
                if job["status"] in {"queued", "running"}:
                    return False
            return True

        await until(all_ended, "the jobs the cases started finished", timeout, interval=0.05)

    async def send(
        self, method: str, path: str, account: Account | None, call: Call
    ) -> tuple[int, Any, dict[str, str]]:
        headers = {}
        if account is not None:
            headers["Authorization"] = f"Bearer {account.refresh if call.token == 'refresh' else account.access}"
        response = await self.api.client.request(
            method, path, headers=headers, json=call.json, params=call.query, data=call.form
        )
        content_type = response.headers.get("Content-Type", "")
        body = await response.json() if content_type.startswith("application/json") else await response.read()
        return response.status, body, dict(response.headers)

    async def ok(self, method: str, path: str, role: str, **call: Any) -> Any:
        status, body, _ = await self.send(method, path, self.accounts[role], Call(**call))
        assert 200 <= status < 300, (method, path, role, body)
        return body["data"]

    async def upload(self, account: Account, meeting_id: int) -> str:
        form = file_form(video_bytes(), "clip.webm", content_type="video/webm", meeting_id=meeting_id)
        status, body, _ = await self.send("POST", "/api/v1/media/upload", account, Call(form=form))
        assert status == 201, body
        return str(body["data"]["file_id"])

    async def enter(self, meeting_id: int, role: str) -> tuple[ClientWebSocketResponse, dict[str, Any]]:
        await self.ok("POST", f"/api/v1/meetings/{meeting_id}/join", role, json={})
        return await enter(self.api, meeting_id, self.accounts[role], header=True)

    async def add(self, meeting_id: int, by: str, role: str, who: str) -> None:
        await self.ok(
            "POST",
            f"/api/v1/meetings/{meeting_id}/participants",
            by,
            json={"user_id": self.accounts[who].id, "role": role},
        )

    async def remove(self, meeting_id: int, by: str, who: str) -> None:
        await self.ok("DELETE", f"/api/v1/meetings/{meeting_id}/participants/{self.accounts[who].id}", by)

    async def standard_scene(self, *, with_banned: bool = False) -> Scene:
        """Created by the host (waiting room on, starting tomorrow), with a moderator, a
        participant, a removed participant and a user held in the waiting room."""
        start = at(24)
        meeting = await self.ok(
            "POST",
            "/api/v1/meetings",
            "host",
            json={"title": "matrix", "start_time": start, "settings": {"enable_waiting_room": True}},
        )
        meeting_id = meeting["meeting_id"]
        await self.add(meeting_id, "host", "moderator", "moderator")
        await self.add(meeting_id, "host", "participant", "participant")
        await self.add(meeting_id, "host", "participant", "removed")
        await self.remove(meeting_id, "host", "removed")
        if with_banned:
            await self.add(meeting_id, "host", "participant", "banned")
        scene = Scene(self, meeting_id, meeting.get("invite_code"))
        joined = await self.ok("POST", f"/api/v1/meetings/{meeting_id}/join", "waiting", json=scene.entry())
        assert joined["participant"]["status"] == "waiting"
        return scene

    async def handed_over_scene(self) -> Scene:
        """Created by removed_creator, who made the host its host and was then removed by them."""
        start = at(24)
        meeting = await self.ok(
            "POST", "/api/v1/meetings", "removed_creator", json={"title": "handed", "start_time": start}
        )
        meeting_id = meeting["meeting_id"]
        await self.add(meeting_id, "removed_creator", "host", "host")
        await self.add(meeting_id, "host", "moderator", "moderator")
        await self.add(meeting_id, "host", "participant", "participant")
        await self.remove(meeting_id, "host", "removed_creator")
        return Scene(self, meeting_id)

    async def scene_for(self, role: str, fresh: bool) -> Scene:
        kind = "handed" if role == "removed_creator" else "standard"
        if not fresh or role in SIGNED_OUT:
            # Without a usable token nothing is read or changed, so the standing meeting serves.
            return self.scenes[kind]
        return await (self.handed_over_scene() if kind == "handed" else self.standard_scene())

    async def stand_in(self, role: str) -> Account | None:
        """A new account with the role's standing toward the user endpoints (anonymous, banned,
        admin or an ordinary user)."""
        if role == "anonymous":
            return None
        account = await self.api.stored_account()
        if role == "admin":
            await self.api.app[STORE].users.update(account.id, role="admin")
        if role == "banned":
            await self.ok("POST", f"/api/v1/admin/users/{account.id}/ban", "admin")
        return account

    async def subject(self) -> int:
        """A user for the administration endpoints to act on."""
        return (await self.api.stored_account()).id


async def open_world(api: Api, work: Path) -> World:
    world = World(api, work)
    for role in ROLES:
        if role != "anonymous":
            world.accounts[role] = await world.api.stored_account()
    for extra in ("spare", "invitee"):
        world.accounts[extra] = await world.api.stored_account()
    await api.app[STORE].users.update(world.accounts["admin"].id, role="admin")
    world.scenes["standard"] = await world.standard_scene(with_banned=True)
    world.scenes["handed"] = await world.handed_over_scene()
    world.scenes["recorded"] = await world.standard_scene()
    world.recording_id = await world.scenes["recorded"].recording(finished=True)
    world.stream = await world.scenes["recorded"].stream(finished=True)
    await world.ok("POST", f"/api/v1/admin/users/{world.accounts['banned'].id}/ban", "admin")
    form = file_form(image_bytes(), "me.png", content_type="image/png")
    _, profile, _ = await world.send("POST", "/api/v1/users/upload-avatar", world.accounts["spare"], Call(form=form))
    world.avatar = profile["data"]["avatar_url"].rsplit("/", 1)[1]
    return world


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=["sqlite", "postgresql"])
async def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    database: dict[str, str] = {}
    if request.param == "postgresql":
        database = {"url": POSTGRES_URL, "schema": await postgres_schema()}
    work = tmp_path_factory.mktemp(f"matrix-{request.param}")
    data_dir = work / "data"
    # Tiny classifiers, so that the emotion and synthesis-detection operations have a model.
    noise = np.random.default_rng(0).normal(0, 0.1, 32000).astype(np.float32)
    for model_id, task, labels in (
        ("emotion-tiny", "emotion", ("calm", "excited")),
        ("synthetic-tiny", "synthesis-detection", ("genuine", "synthetic")),
    ):
        train_classifier(work / "models" / model_id, task, {labels[0]: [noise], labels[1]: [noise * 3]}, hidden=16)
    settings = load_settings(
        None,
        {
            "server": {"data_dir": str(data_dir)},
            "database": database,
            "rate_limits": {"enabled": False},
            "media": {"job_workers": 1},
            "sfu": {"workers": 0},
            "turn": {"enabled": False},
            "ai": {"model_dir": str(work / "models")},
            "metrics": {"port": 0},
            "webhooks": {"url_allow_networks": ["127.0.0.0/8"]},
        },
        environ={},
    )
    client = TestClient(TestServer(create_app(settings)))
    await client.start_server()
    try:
        opened = await open_world(Api(client), work)
        yield opened
        for socket, reader in opened.sockets.items():
            await socket.close()
            await reader
        await opened.jobs_done()
    finally:
        await client.close()
        if database:
            await drop_schema(database["schema"])


# --- requests ------------------------------------------------------------------------------------

Builder = Callable[[Case], Awaitable[Call]]


async def _nothing(case: Case) -> Call:
    return Call()


async def _register(case: Case) -> Call:
    n = next(_names)
    return Call(json={"username": f"matrix{n}", "email": f"matrix{n}@example.com", "password": PASSWORD})


async def _login(case: Case) -> Call:
    who = case.actor or case.world.accounts["spare"]
    return Call(json={"username": who.username, "password": who.password})


async def _forgot(case: Case) -> Call:
    return Call(json={"email": (case.actor or case.world.accounts["spare"]).email})


async def _reset(case: Case) -> Call:
    return Call(json={"token": "0" * 43, "new_password": "another-horse-43"})


async def _avatar_upload(case: Case) -> Call:
    return Call(form=file_form(image_bytes(), "me.png", content_type="image/png"))


async def _subject(case: Case) -> Call:
    return Call(path={"user_id": await case.world.subject()})


async def _meeting(case: Case) -> Call:
    return Call(path={"meeting_id": case.scene.meeting_id})


async def _page(case: Case) -> Call:
    return Call(query={"page_size": "100"})


async def _file(case: Case) -> Call:
    return Call(path={"file_id": await case.scene.file()})


def job_on_file(**fields: Any) -> Builder:
    async def build(case: Case) -> Call:
        return Call(json={"file_id": await case.scene.file(), **fields})

    return build


async def _merge(case: Case) -> Call:
    file_id = await case.scene.file()
    return Call(json={"file_ids": [file_id, file_id], "mode": "concat", "format": "webm"})


async def _participant_of_meeting(case: Case) -> Call:
    return Call(path={"meeting_id": case.scene.meeting_id, "user_id": case.world.accounts["participant"].id})


async def _upload(case: Case) -> Call:
    return Call(form=file_form(wav_bytes(), "tone.wav", content_type="audio/wav", meeting_id=case.scene.meeting_id))


async def _with_meeting(case: Case, **call: Any) -> Call:
    return Call(path={"meeting_id": case.scene.meeting_id}, **call)


BUILDERS: dict[str, Builder] = {
    "meta.health": _nothing,
    "meta.openapi": _nothing,
    "meta.ready": _nothing,
    "auth.register": _register,
    "auth.login": _login,
    "auth.refresh": lambda case: _token_call("refresh"),
    "auth.forgot_password": _forgot,
    "auth.reset_password": _reset,
    "users.get_profile": _nothing,
    "users.update_profile": lambda case: _done(Call(json={"nickname": "Renamed"})),
    "users.change_password": lambda case: _done(
        Call(json={"old_password": PASSWORD, "new_password": "another-horse-43"})
    ),
    "users.upload_avatar": _avatar_upload,
    "users.get_avatar": lambda case: _done(Call(path={"name": case.world.avatar})),
    "users.delete_account": lambda case: _done(Call(json={"current_password": PASSWORD})),
    "admin.list": _nothing,
    "admin.get": _subject,
    "admin.update": lambda case: _subject_with(case, json={"nickname": "Renamed"}),
    "admin.delete": _subject,
    "admin.ban": _subject,
    "admin.unban": _subject,
    "webhooks.list": _nothing,
    # Registered switched off: the receiver on the discard port never gets a delivery attempt.
    "webhooks.create": lambda case: _done(Call(json={"url": "http://127.0.0.1:9/hook", "enabled": False})),
    "webhooks.get": lambda case: _webhook(case),
    "webhooks.update": lambda case: _webhook(case, json={"description": "renamed"}),
    "webhooks.delete": lambda case: _webhook(case),
    "meetings.create": lambda case: _done(Call(json={"title": "mine"})),
    "meetings.list": _page,
    "meetings.get": _meeting,
    "meetings.update": lambda case: _with_meeting(case, json={"title": "renamed"}),
    "meetings.delete": _meeting,
    "meetings.start": _meeting,
    "meetings.end": _meeting,
    # Only the user in the waiting room came in by the meeting's link; the others have no code.
    "meetings.join": lambda case: _with_meeting(case, json=case.scene.entry() if case.role == "waiting" else {}),
    "meetings.leave": _meeting,
    "meetings.participants": _meeting,
    "meetings.add_participant": lambda case: _with_meeting(case, json={"user_id": case.world.accounts["invitee"].id}),
    "meetings.remove_participant": _participant_of_meeting,
    "meetings.set_role": lambda case: _role_change(case),
    "meetings.rotate_invite_code": _meeting,
    "meetings.messages": _meeting,
    "meetings.send_message": lambda case: _with_meeting(case, json={"text": "hello"}),
    "my.meetings": _page,
    "my.upcoming": _page,
    "my.history": _page,
    "signaling.session": lambda case: _session(case),
    "signaling.room_sessions": _meeting,
    "signaling.message_history": _meeting,
    "signaling.overview": _nothing,
    "signaling.rooms": _nothing,
    "media.upload": _upload,
    "media.download": _file,
    "media.list": lambda case: _done(Call(query={"meeting_id": str(case.scene.meeting_id)})),
    "media.info": _file,
    "media.delete": lambda case: _new_file(case),
    "media.process": lambda case: _process(case),
    "ffmpeg.transcode": job_on_file(format="webm"),
    "ffmpeg.extract_audio": job_on_file(format="wav"),  # the clip is silent: the job fails, not the call
    "ffmpeg.extract_video": job_on_file(),
    "ffmpeg.merge": _merge,
    "ffmpeg.thumbnail": job_on_file(),
    "ffmpeg.job_status": lambda case: _job(case),
    "webrtc.room_peers": lambda case: _done(Call(path={"room_id": case.scene.meeting_id})),
    "webrtc.room_stats": lambda case: _done(Call(path={"room_id": case.scene.meeting_id})),
    "webrtc.peer_media": lambda case: _peer(case),
    "meetings.start_recording": lambda case: _recordable(case, Call(path={"meeting_id": case.scene.meeting_id})),
    "meetings.stop_recording": lambda case: _recorded_meeting(case),
    "meetings.recordings": lambda case: _done(Call(path={"meeting_id": case.world.scenes["recorded"].meeting_id})),
    "meetings.captions": lambda case: _with_meeting(case, json={"enabled": True, "language": "en"}),
    "meetings.transcript": _meeting,
    "meetings.transcript_vtt": _meeting,
    "recording.start": lambda case: _recordable(case, Call(json={"meeting_id": case.scene.meeting_id})),
    "recording.stop": lambda case: _recording(case, finished=False, build=lambda rid: Call(json={"recording_id": rid})),
    "recording.get": lambda case: _done(Call(path={"recording_id": case.world.recording_id})),
    "recording.list": _page,
    "recording.delete": lambda case: _recording(
        case, finished=True, build=lambda rid: Call(path={"recording_id": rid})
    ),
    "webrtc.ice_servers": _nothing,
    "streaming.start": lambda case: _recordable(
        case, Call(json={"meeting_id": case.scene.meeting_id, "outputs": [{"type": "hls"}], **SMALL_STREAM})
    ),
    "streaming.stop": lambda case: _stream_to_stop(case),
    "streaming.status": lambda case: _done(Call(path={"stream_id": case.world.stream["stream_id"]})),
    "streaming.hls": lambda case: _done(Call(path={"stream_id": case.world.stream["stream_id"], "name": "index.m3u8"})),
    "streaming.public_hls": lambda case: _done(
        Call(path={"token": case.world.stream["public_playlist_url"].split("/")[-2], "name": "index.m3u8"})
    ),
    "speech.recognition": lambda case: _speech(case, language="en"),
    "speech.emotion": lambda case: _speech(case),
    "speech.synthesis_detection": lambda case: _speech(case, options={"threshold": 0.7}),
    "speech.job_status": lambda case: _speech_job(case),
    "audio.denoising": lambda case: _speech(case),
    "audio.job_status": lambda case: _scene_job(case, "denoise"),
    "video.enhancement": job_on_file(operations=[{"op": "sharpen"}]),
    "video.job_status": lambda case: _scene_job(case, "enhance"),
    "webrtc.room_noise_suppression": lambda case: _done(Call(path={"room_id": case.scene.meeting_id})),
    "webrtc.set_room_noise_suppression": lambda case: _done(
        Call(path={"room_id": case.scene.meeting_id}, json={"enabled": False})
    ),
    "models.list": _nothing,
    "models.load": lambda case: _done(Call(path={"model_id": "emotion-tiny"}, json={})),
    "models.unload": lambda case: _done(Call(path={"model_id": "emotion-tiny"})),
    "models.status": lambda case: _done(Call(path={"model_id": "moonshine-tiny-en"})),
    "nodes.list": _nothing,
    "nodes.status": lambda case: _node(case),
    "nodes.health_check": lambda case: _node(case),
}


async def _done(call: Call) -> Call:
    return call


async def _token_call(token: str) -> Call:
    return Call(token=token)


async def _webhook(case: Case, **call: Any) -> Call:
    """A receiver of its own for the case to read, change or remove (switched off: never called)."""
    record = await case.world.api.app[STORE].webhooks.create(
        url="http://127.0.0.1:9/hook", secret="s" * 32, events=[], description="matrix", enabled=False
    )
    return Call(path={"webhook_id": record.id}, **call)


async def _subject_with(case: Case, **call: Any) -> Call:
    return Call(path={"user_id": await case.world.subject()}, **call)


async def _role_change(case: Case) -> Call:
    built = await _participant_of_meeting(case)
    built.json = {"role": "moderator"}
    return built


async def _session(case: Case) -> Call:
    return Call(path={"session_id": await case.scene.session()})


async def _new_file(case: Case) -> Call:
    return Call(path={"file_id": await case.scene.new_file()})


async def _process(case: Case) -> Call:
    return Call(json={"operation": "thumbnail", "file_id": await case.scene.file(), "time": 0.1})


async def _job(case: Case) -> Call:
    return Call(path={"job_id": await case.scene.job()})


async def _recordable(case: Case, call: Call) -> Call:
    """The case's meeting made recordable, unless the caller is turned away before any meeting is
    looked at (then it is the standing one, left as it is)."""
    if case.role not in SIGNED_OUT:
        await case.scene.ongoing()
    return call


async def _recorded_meeting(case: Case) -> Call:
    if case.role not in SIGNED_OUT:
        await case.scene.recording(finished=False)
    return Call(path={"meeting_id": case.scene.meeting_id})


async def _recording(case: Case, *, finished: bool, build: Callable[[int], Call]) -> Call:
    if case.role in SIGNED_OUT:
        return build(case.world.recording_id)
    return build(await case.scene.recording(finished=finished))


async def _stream_to_stop(case: Case) -> Call:
    """Those who may stop a stream stop a running one of their meeting; everyone else is turned
    away before it would matter, so the standing (finished) one serves."""
    if case.role in {"moderator", "host"}:
        stream = await case.scene.stream(finished=False)
        return Call(json={"stream_id": stream["stream_id"]})
    return Call(json={"stream_id": case.world.stream["stream_id"]})


async def _speech(case: Case, **fields: Any) -> Call:
    return Call(json={"file_id": await case.scene.speech(), **fields})


async def _speech_job(case: Case) -> Call:
    return Call(path={"job_id": await case.scene.speech_job()})


async def _scene_job(case: Case, kind: str) -> Call:
    job_id = await (case.scene.denoise_job() if kind == "denoise" else case.scene.enhance_job())
    return Call(path={"job_id": job_id})


async def _node(case: Case) -> Call:
    nodes = await case.world.ok("GET", "/api/v1/nodes", "admin")
    return Call(path={"node_id": nodes[0]["node_id"]})


async def _peer(case: Case) -> Call:
    return Call(path={"peer_id": await case.scene.peer()}, json={"layer": "low"})


# --- what an allowed answer must show -------------------------------------------------------------

Check = Callable[[Case, Any], None]


def _listed(case: Case, data: Any) -> bool:
    return case.scene.meeting_id in {item["meeting_id"] for item in data["items"]}


def sees_meeting(*roles: str) -> Check:
    """The standing meeting is listed for these roles and for no other caller; where it is
    listed, only its members see its invite code."""

    def check(case: Case, data: Any) -> None:
        assert _listed(case, data) == (case.role in roles), (
            f"{case.role} listing: {[item['meeting_id'] for item in data['items']]}"
        )
        for item in data["items"]:
            if item["meeting_id"] == case.scene.meeting_id:
                sees_invite_code(case, item)

    return check


def sees_recording(case: Case, data: Any) -> None:
    """The recorded meeting's recording is listed for its members and admins, and nobody else."""
    listed = case.world.recording_id in {item["recording_id"] for item in data["items"]}
    assert listed == (case.role in {*MEMBERS, "admin"}), f"{case.role} listing recordings: {data['items']}"


def sees_invite_code(case: Case, meeting: Any) -> None:
    shown = meeting.get("invite_code") is not None
    assert shown == (case.role in MEMBERS), f"{case.role} sees invite_code: {meeting}"


def sees_client_address(case: Case, data: Any) -> None:
    sessions = data if isinstance(data, list) else [data]
    assert sessions, "the host's session is missing"
    for session in sessions:
        shown = bool(session.get("client_address"))
        assert shown == (case.role in {"host", "admin"}), f"{case.role} sees client_address: {session}"


MEMBERS = {"participant", "moderator", "host"}
CONTENT_CHECKS: dict[str, Check] = {
    "meetings.get": sees_invite_code,
    "meetings.list": sees_meeting("participant", "moderator", "host", "admin"),
    "my.meetings": sees_meeting("participant", "moderator", "host"),
    "my.upcoming": sees_meeting("participant", "moderator", "host"),
    "signaling.session": sees_client_address,
    "signaling.room_sessions": sees_client_address,
    "recording.list": sees_recording,
    "meetings.recordings": sees_recording,
}

# --- the tests ------------------------------------------------------------------------------------

ENDPOINTS: dict[str, Endpoint] = {endpoint.operation_id: endpoint for endpoint in all_endpoints()}


def _cases() -> list[Any]:
    return [
        pytest.param(operation_id, role, id=f"{operation_id}-{role}") for operation_id in ENDPOINTS for role in ROLES
    ]


@pytest.mark.asyncio(loop_scope="module")
async def test_every_endpoint_has_a_row() -> None:
    declared = set(ENDPOINTS)
    assert declared - set(MATRIX) == set(), "endpoints without a row in MATRIX"
    assert set(MATRIX) - declared == set(), "rows in MATRIX for endpoints that do not exist"
    assert declared - set(BUILDERS) == set(), "endpoints without a request builder"
    assert set(BUILDERS) - declared == set(), "request builders for endpoints that do not exist"
    for operation_id, row in MATRIX.items():
        assert len(row) == len(ROLES), f"{operation_id}: one column per role"
        assert all(cell == OK or cell in (401, 403, 404) for cell in row), f"{operation_id}: {row}"
    named = set(CONTENT_CHECKS) | BUSINESS_ERROR_OK | FRESH_MEETING | STAND_IN
    assert named <= declared, f"unknown operations named: {named - declared}"


@pytest.mark.parametrize(("operation_id", "role"), _cases())
async def test_access(world: World, operation_id: str, role: str) -> None:
    assert operation_id in MATRIX, f"{operation_id} has no row in MATRIX"
    endpoint = ENDPOINTS[operation_id]
    expected = MATRIX[operation_id][ROLES.index(role)]
    actor = await world.stand_in(role) if operation_id in STAND_IN else world.accounts.get(role)
    scene = await world.scene_for(role, fresh=operation_id in FRESH_MEETING)
    case = Case(world, operation_id, role, actor, scene)
    call = await BUILDERS[operation_id](case)
    path = endpoint.openapi_path.format(**call.path)
    status, body, headers = await world.send(endpoint.method, path, actor, call)

    assert status < 500, body
    if status == 201 and isinstance(body, dict) and isinstance(body["data"], dict) and "job_id" in body["data"]:
        world.jobs.append(body["data"]["job_id"])
    raw_success = endpoint.raw_response is not None and status == endpoint.status
    if not raw_success:
        problem = envelope_problem(body, headers)
        assert problem is None, problem
    if expected == OK:
        business = status == 400 and operation_id in BUSINESS_ERROR_OK
        assert 200 <= status < 300 or business, f"{role} should be allowed {operation_id}: {status} {body}"
        if operation_id in CONTENT_CHECKS and not business:
            CONTENT_CHECKS[operation_id](case, body["data"])
    else:
        assert status == expected, f"{role} on {operation_id}: expected {expected}, got {status} {body}"
