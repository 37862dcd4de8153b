"""A participant made of real aiortc peer connections, speaking the SFU's signaling protocol the way
the browser SDK does (docs/sfu.md): a publisher connection it offers on, a subscriber connection the
server offers on."""

from __future__ import annotations

import asyncio
import fractions
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import av
import numpy as np
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcconfiguration import RTCIceTransportPolicy

from bench.loopback import loopback_only
from tests.server_process import client_session, invite_code_of, join_meeting, make_meeting, make_user

VIDEO_CLOCK = 90000


class PatternVideoTrack(MediaStreamTrack):
    """A moving colour pattern of a fixed size, so receivers can check what they decode."""

    kind = "video"

    def __init__(self, width: int, height: int, fps: int = 15) -> None:
        super().__init__()
        self.width, self.height, self.fps = width, height, fps
        self._count = 0
        self._start: float | None = None

    async def recv(self) -> av.VideoFrame:
        if self._start is None:
            self._start = time.monotonic()
        target = self._start + self._count / self.fps
        await asyncio.sleep(max(0.0, target - time.monotonic()))
        image = np.zeros((self.height, self.width, 3), dtype=np.uint8)
        image[:, :, 0] = (self._count * 8) % 256
        image[: self.height // 2, : self.width // 2, 1] = 200
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts = self._count * VIDEO_CLOCK // self.fps
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        self._count += 1
        return frame


class ToneAudioTrack(MediaStreamTrack):
    """A loud 440 Hz tone, 20 ms at a time, so the server sees a speaking participant."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._samples = 0
        self._start: float | None = None

    async def recv(self) -> av.AudioFrame:
        if self._start is None:
            self._start = time.monotonic()
        await asyncio.sleep(max(0.0, self._start + self._samples / 48000 - time.monotonic()))
        t = (np.arange(960) + self._samples) / 48000
        wave = (np.sin(2 * math.pi * 440 * t) * 12000).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(wave.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = 48000
        frame.pts = self._samples
        frame.time_base = fractions.Fraction(1, 48000)
        self._samples += 960
        return frame


class SpeechAudioTrack(MediaStreamTrack):
    """A microphone whose words are known: silence, and each clip given to ``say`` in its turn, 20 ms
    at a time at real speed (48 kHz mono samples, int16)."""

    kind = "audio"
    BLOCK = 960

    def __init__(self) -> None:
        super().__init__()
        self._clips: list[tuple[np.ndarray, asyncio.Future[tuple[float, float]]]] = []
        self._offset = 0  # into the first clip
        self._began = 0.0
        self._samples = 0
        self._start: float | None = None

    def say(self, clip: np.ndarray) -> asyncio.Future[tuple[float, float]]:
        """Queue ``clip``; the future gives the wall clock (UNIX seconds) at which its first and its
        last sample were sent."""
        done: asyncio.Future[tuple[float, float]] = asyncio.get_running_loop().create_future()
        self._clips.append((clip, done))
        return done

    async def recv(self) -> av.AudioFrame:
        if self._start is None:
            self._start = time.monotonic()
        await asyncio.sleep(max(0.0, self._start + self._samples / 48000 - time.monotonic()))
        block = np.zeros(self.BLOCK, np.int16)
        filled = 0
        while filled < self.BLOCK and self._clips:
            clip, done = self._clips[0]
            if self._offset == 0:
                self._began = time.time() + filled / 48000
            piece = clip[self._offset : self._offset + self.BLOCK - filled]
            block[filled : filled + piece.size] = piece
            filled += piece.size
            self._offset += piece.size
            if self._offset >= clip.size:
                self._clips.pop(0)
                self._offset = 0
                if not done.done():
                    done.set_result((self._began, time.time() + filled / 48000))
        frame = av.AudioFrame.from_ndarray(block.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = 48000, self._samples, fractions.Fraction(1, 48000)
        self._samples += self.BLOCK
        return frame


class Cues:
    """One participant's cue schedule, shared by its camera and microphone: every ``period``
    seconds from ``epoch`` (monotonic) the picture turns white and a loud beep sounds, both for
    ``length`` seconds, captured at the same moment. Where a recording puts the flashes against the
    beeps is how far its sound and picture drifted apart (lip sync). Frames and sample blocks fall
    on the schedule itself, so a cue starts exactly on a frame and on a block. Participants given
    one ``epoch`` flash and beep together."""

    def __init__(self, period: float = 2.0, length: float = 0.2, epoch: float | None = None) -> None:
        self.epoch = time.monotonic() if epoch is None else epoch
        self.period, self.length = period, length
        self.first_frame: dict[str, float] = {}  # wall clock of the first frame sent, by kind

    def on(self, moment: float) -> bool:
        """Whether a cue is on ``moment`` seconds after the epoch."""
        return moment % self.period < self.length - 1e-9

    def next_index(self, rate: float) -> int:
        """The first frame (at ``rate`` a second) still ahead on the schedule."""
        return math.ceil((time.monotonic() - self.epoch) * rate)

    async def wait_for(self, kind: str, moment: float) -> None:
        """Sleep until ``moment`` after the epoch; the first time, note it as ``kind``'s start."""
        delay = self.epoch + moment - time.monotonic()
        if kind not in self.first_frame:
            self.first_frame[kind] = time.time() + max(0.0, delay)
        await asyncio.sleep(max(0.0, delay))


class CueVideoTrack(MediaStreamTrack):
    """A moving pattern of a fixed size that flashes white on its ``Cues``."""

    kind = "video"

    def __init__(self, width: int, height: int, cues: Cues, fps: int = 15) -> None:
        super().__init__()
        self.width, self.height, self.cues, self.fps = width, height, cues, fps
        self._index: int | None = None

    async def recv(self) -> av.VideoFrame:
        if self._index is None:
            self._index = self.cues.next_index(self.fps)
        index, self._index = self._index, self._index + 1
        await self.cues.wait_for("video", index / self.fps)
        image = np.zeros((self.height, self.width, 3), dtype=np.uint8)
        if self.cues.on(index / self.fps):
            image[:] = 255
        else:
            image[:, :, 0] = (index * 8) % 256
            image[: self.height // 2, : self.width // 2, 1] = 200
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts, frame.time_base = index * VIDEO_CLOCK // self.fps, fractions.Fraction(1, VIDEO_CLOCK)
        return frame


class CueAudioTrack(MediaStreamTrack):
    """A quiet 440 Hz tone with a loud 1 kHz beep on each of its ``Cues``, 20 ms at a time."""

    kind = "audio"
    BLOCK = 960  # samples: 20 ms at 48 kHz

    def __init__(self, cues: Cues, quiet: float = 0.05, loud: float = 0.6) -> None:
        super().__init__()
        self.cues, self.quiet, self.loud = cues, quiet, loud
        self._sample: int | None = None

    async def recv(self) -> av.AudioFrame:
        if self._sample is None:
            self._sample = self.cues.next_index(48000 / self.BLOCK) * self.BLOCK
        start, self._sample = self._sample, self._sample + self.BLOCK
        await self.cues.wait_for("audio", start / 48000)
        t = (np.arange(self.BLOCK) + start) / 48000
        beeping = (t % self.cues.period) < self.cues.length
        wave = np.where(beeping, self.loud * np.sin(2 * math.pi * 1000 * t), self.quiet * np.sin(2 * math.pi * 440 * t))
        frame = av.AudioFrame.from_ndarray((wave * 32767).astype(np.int16).reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = 48000, start, fractions.Fraction(1, 48000)
        return frame


@dataclass
class RemoteTrack:
    info: dict[str, Any]
    track: MediaStreamTrack
    receiver: RTCRtpReceiver
    frames: int = 0
    sizes: set[tuple[int, int]] = field(default_factory=set)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    # (arrival, frame) of every frame decoded, once a test sets it to a list
    captured: list[tuple[float, av.AudioFrame | av.VideoFrame]] | None = None


class Participant:
    """One user in a meeting over the real server: REST login and join, socket, two connections.
    The connections use the ICE servers the server hands out on join, or ``ice_servers`` (RTCIceServer
    dictionaries) when given; ``relay_only`` lets them use relayed (TURN) candidates only."""

    def __init__(
        self,
        base_url: str,
        token: str,
        user_id: int,
        meeting_id: int,
        *,
        ice_servers: list[dict[str, Any]] | None = None,
        relay_only: bool = False,
    ) -> None:
        self.base_url, self.token, self.user_id, self.meeting_id = base_url, token, user_id, meeting_id
        loopback_only()
        self.http: aiohttp.ClientSession | None = None
        self.socket: aiohttp.ClientWebSocketResponse | None = None
        self.peer_id = ""
        self.ice_servers = ice_servers
        self.relay_only = relay_only
        self.publisher: RTCPeerConnection = None  # type: ignore[assignment]  # made on joining
        self.subscriber: RTCPeerConnection | None = None
        self.remote: dict[str, RemoteTrack] = {}  # by mid
        self.track_info: dict[str, dict[str, Any]] = {}
        self.messages: list[dict[str, Any]] = []
        self.answers: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.errors: list[dict[str, Any]] = []
        self._reader: asyncio.Task[None] | None = None
        self._consumers: list[asyncio.Task[None]] = []
        self._offers: asyncio.Lock = asyncio.Lock()
        # Where the socket comes back through when its node goes away (none: it stays closed).
        self.fallback_urls: list[str] = []
        self.published: list[tuple[MediaStreamTrack, str | None]] = []  # (track, only video codec)
        self.rebuilds = 0  # times both connections were built anew (told ``reconnect``, or a new socket)
        self._rebuilding: asyncio.Task[None] | None = None
        self._closed = False

    async def connect(self) -> None:
        self.http = client_session()
        await self._open_socket()
        self.publisher = RTCPeerConnection(self.configuration())
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _open_socket(self) -> None:
        assert self.http is not None
        url = self.base_url.replace("http", "ws", 1) + "/ws/signaling"
        params = {"meeting_id": str(self.meeting_id), "user_id": str(self.user_id), "token": self.token}
        self.socket = await self.http.ws_connect(url, params=params)
        await self.send("join", {})
        while True:
            message = await self.socket.receive_json(timeout=10)
            if message["type"] == "join":
                self.peer_id = message["data"]["session_id"]
                if self.ice_servers is None:
                    self.ice_servers = message["data"]["ice_servers"]
                break

    def configuration(self) -> RTCConfiguration:
        servers = [
            RTCIceServer(urls=server["urls"], username=server.get("username"), credential=server.get("credential"))
            for server in self.ice_servers or []
        ]
        policy = RTCIceTransportPolicy.RELAY if self.relay_only else RTCIceTransportPolicy.ALL
        return RTCConfiguration(iceServers=servers, iceTransportPolicy=policy)

    async def send(self, kind: str, data: dict[str, Any]) -> None:
        assert self.socket is not None
        await self.socket.send_str(json.dumps({"type": kind, "meeting_id": self.meeting_id, "data": data}))

    async def _read(self) -> None:
        assert self.socket is not None
        async for frame in self.socket:
            if frame.type != aiohttp.WSMsgType.TEXT:
                break
            message = json.loads(frame.data)
            self.messages.append(message)
            data = message.get("data") or {}
            if message["type"] == "error":
                self.errors.append(data)
            elif message["type"] == "answer" and message["from"] == 0:
                await self.answers.put(data)
            elif message["type"] == "offer" and message["from"] == 0 and data.get("target") == "subscriber":
                await self._on_subscriber_offer(data)
            elif message["type"] == "reconnect" and message["from"] == 0:
                self._rebuild()
        if not self._closed and self.fallback_urls:
            self._rebuilding = asyncio.get_running_loop().create_task(self._come_back())

    def _rebuild(self) -> None:
        """Both connections anew, as docs/sfu.md asks on ``reconnect``: the subscriber connection
        is made on the server's next offer, the publisher one here, offering what was published."""
        self.rebuilds += 1
        if self._rebuilding is not None:
            self._rebuilding.cancel()  # an earlier rebuild's offer would take this one's answer
        loop = asyncio.get_running_loop()
        for pc in (self.publisher, self.subscriber):
            if pc is not None:
                self._consumers.append(loop.create_task(pc.close()))
        for remote in self.remote.values():
            remote.track.stop()
        self.remote, self.subscriber = {}, None
        while not self.answers.empty():
            self.answers.get_nowait()  # for the old publisher connection
        self.publisher = RTCPeerConnection(self.configuration())
        self._rebuilding = loop.create_task(self._republish())

    async def _republish(self) -> None:
        if self.published:
            for track, codec in self.published:
                self._add_track(track, codec)
            await self._offer()

    async def _come_back(self) -> None:
        """The socket's node went away: a new socket through the next node, then new connections."""
        self.fallback_urls.append(self.base_url)
        self.base_url = self.fallback_urls.pop(0)
        deadline = time.monotonic() + 20
        while True:
            try:
                await self._open_socket()
                break
            except (TimeoutError, aiohttp.ClientError, OSError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
        self._reader = asyncio.get_running_loop().create_task(self._read())
        self._rebuild()

    async def publish(
        self,
        video: tuple[int, int] | None = (320, 240),
        audio: bool | MediaStreamTrack = True,
        video_codec: str | None = None,
        cues: Cues | None = None,
    ) -> None:
        """Send a tone (or the ``audio`` track given) and a pattern (flashing and beeping on ``cues``
        when given); ``video_codec``
        (a MIME type, e.g. "video/H264") is the only video codec offered (with RTX), otherwise
        aiortc's preference (VP8 first) stands."""
        added: list[tuple[MediaStreamTrack, str | None]] = []
        if isinstance(audio, MediaStreamTrack):
            added.append((audio, None))
        elif audio:
            added.append((ToneAudioTrack() if cues is None else CueAudioTrack(cues), None))
        if video:
            camera = PatternVideoTrack(*video) if cues is None else CueVideoTrack(*video, cues)
            added.append((camera, video_codec))
        for track, codec in added:
            self._add_track(track, codec)
        self.published += added
        await self._offer()

    def _add_track(self, track: MediaStreamTrack, codec: str | None) -> None:
        transceiver = self.publisher.addTransceiver(track, direction="sendonly")
        if codec is not None:
            capabilities = RTCRtpSender.getCapabilities("video")
            transceiver.setCodecPreferences([c for c in capabilities.codecs if c.mimeType in (codec, "video/rtx")])

    async def _offer(self) -> None:
        await self.publisher.setLocalDescription(await self.publisher.createOffer())
        await self.send("offer", {"target": "publisher", "sdp": self.publisher.localDescription.sdp})
        answer = await asyncio.wait_for(self.answers.get(), 10)
        await self.publisher.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))

    async def _on_subscriber_offer(self, data: dict[str, Any]) -> None:
        async with self._offers:
            if self.subscriber is None:
                self.subscriber = RTCPeerConnection(self.configuration())
                self.subscriber.on("track", self._on_track)
            for info in data.get("tracks", []):
                self.track_info[info["mid"]] = info
            await self.subscriber.setRemoteDescription(RTCSessionDescription(data["sdp"], "offer"))
            await self.subscriber.setLocalDescription(await self.subscriber.createAnswer())
            await self.send("answer", {"target": "subscriber", "sdp": self.subscriber.localDescription.sdp})

    def _on_track(self, track: MediaStreamTrack) -> None:
        assert self.subscriber is not None
        transceiver = next(t for t in self.subscriber.getTransceivers() if t.receiver.track is track)
        mid = transceiver.mid
        remote = RemoteTrack(self.track_info.get(mid, {}), track, transceiver.receiver)
        self.remote[mid] = remote
        self._consumers.append(asyncio.get_running_loop().create_task(self._consume(remote)))

    async def _consume(self, remote: RemoteTrack) -> None:
        try:
            while True:
                frame = await remote.track.recv()
                remote.frames += 1
                if remote.captured is not None:
                    remote.captured.append((time.monotonic(), frame))
                if isinstance(frame, av.VideoFrame):
                    remote.sizes.add((frame.width, frame.height))
        except MediaStreamError:
            remote.ended.set()

    def media_ssrc(self, remote: RemoteTrack) -> int:
        """The SSRC the server's offer signals for a received track's media (not its RTX)."""
        assert self.subscriber is not None and self.subscriber.remoteDescription is not None
        for section in self.subscriber.remoteDescription.sdp.split("\r\nm=")[1:]:
            lines = section.split("\r\n")
            if f"a=mid:{remote.info['mid']}" in lines:
                groups = [line.split()[1] for line in lines if line.startswith("a=ssrc-group:FID ")]
                ssrcs = [line[7:].split()[0] for line in lines if line.startswith("a=ssrc:")]
                return int((groups or ssrcs)[0])
        raise AssertionError(f"no m-section for mid {remote.info['mid']}")

    def receives_video(self, user_id: int, frames: int) -> bool:
        """Whether at least ``frames`` of ``user_id``'s video were decoded on the current connection."""
        remote = self.video_from(user_id)
        return remote is not None and remote.frames >= frames

    def video_from(self, user_id: int) -> RemoteTrack | None:
        for remote in self.remote.values():
            if remote.info.get("user_id") == user_id and remote.track.kind == "video":
                return remote
        return None

    async def close(self) -> None:
        self._closed = True
        if self._rebuilding is not None:
            self._rebuilding.cancel()
            await asyncio.gather(self._rebuilding, return_exceptions=True)
        for task in self._consumers:
            task.cancel()
        await asyncio.gather(*self._consumers, return_exceptions=True)
        if self.publisher is not None:
            await self.publisher.close()
        if self.subscriber is not None:
            await self.subscriber.close()
        if self.socket is not None:
            await self.socket.close()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)
        if self.http is not None:
            await self.http.close()


async def connect_user(
    base_url: str, name: str, host: Participant | None = None, people: list[Participant] | None = None
) -> Participant:
    """A new user ``name`` connected to a meeting: one of its own, which it hosts (``host`` None), or
    ``host``'s, joined with its invite code. Listed in ``people`` (for the test to close) when given."""
    token, user_id = make_user(base_url, name)
    if host is None:
        meeting_id = make_meeting(base_url, token)
        join_meeting(base_url, token, meeting_id)
    else:
        meeting_id = host.meeting_id
        join_meeting(base_url, token, meeting_id, invite_code_of(base_url, host.token, meeting_id))
    person = Participant(base_url, token, user_id, meeting_id)
    if people is not None:
        people.append(person)
    await person.connect()
    return person
