"""Synthetic participants that cost the harness little CPU: they speak the server's signaling like
the browser SDK, but a publisher replays pre-encoded packets and a subscriber only counts what it
receives (sequence gaps, frames, bytes) and notes when each payload arrived, without decoding.

They run on the same ICE/DTLS/SRTP pieces as the server (``sfu.transport``), as the controlling,
DTLS-client side of each connection, with their sockets on 127.0.0.1 only. With ``ice_transport``
"relay" they reach the server only through the TURN server named by the ICE servers of their
``join`` reply, as a browser told ``iceTransportPolicy: 'relay'`` does."""

from __future__ import annotations

import asyncio
import json
import random
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aioice import TransportPolicy
from aiortc import RTCIceServer
from aiortc.rtcdtlstransport import RTCCertificate
from aiortc.rtcicetransport import connection_kwargs

from bench.clip import FPS, Clip
from bench.feedback import TransportFeedback, transport_cc_id
from bench.received import VideoTrace
from sfu import rtcp, rtp, sdp
from sfu.negotiation import transport_lines
from sfu.network import LOOPBACK, MediaConnection, Network, gather
from sfu.transport import MediaTransport

MID_ID, RID_ID = 1, 2
VIDEO_PT, RTX_PT, AUDIO_PT = 96, 97, 111
VIDEO_TICKS = 90000 // FPS
KEYFRAME_REQUEST_GAP_NS = 300_000_000
JOIN_TIMEOUT = 20.0


@dataclass
class StreamCount:
    """What one subscriber received on one SSRC."""

    mid: str
    packets: int = 0
    bytes: int = 0
    first_seq: int = -1
    highest: int = -1  # extended
    frames: int = 0
    last_ts: int = -1
    first_ns: int = 0
    last_ns: int = 0


@dataclass
class ClientResult:
    user_id: int
    role: str
    opened_ns: int = 0
    first_media_ns: int = 0
    sent: list[tuple[int, int, str]] = field(default_factory=list)  # (payload crc, send ns, stream)
    received: list[tuple[int, int, int]] = field(default_factory=list)  # (payload crc, receive ns, bytes)
    streams: dict[int, StreamCount] = field(default_factory=dict)
    candidate_types: list[str] = field(default_factory=list)  # of the pair each connection settled on
    errors: list[str] = field(default_factory=list)
    reconnects: int = 0  # times the server moved the media (``reconnect``) and both connections were rebuilt
    video: VideoTrace | None = None  # a subscriber's video over time, when it traces it (shaped-link runs)
    feedback: str = "none"  # what a subscriber tells the server of its downlink: "transport-cc", or nothing


class _Layer:
    """One outgoing video encoding being replayed."""

    def __init__(self, rid: str, frames: list[Any], mid: str) -> None:
        self.rid = rid
        self.frames = frames
        self.cursor = 0
        self.ssrc = random.getrandbits(32) or 1
        self.seq = random.getrandbits(16)
        self.timestamp = random.getrandbits(32)
        elements = [(MID_ID, mid.encode())] + ([(RID_ID, rid.encode())] if rid else [])
        self.extension = rtp.extension_block(elements)
        self.keys = [[zlib.crc32(payload) for payload in frame.payloads] for frame in frames]
        self.last_keyframe_request = 0
        self.paused = False  # by the server's dynacast (docs/sfu.md): its frames are not sent

    def jump_to_keyframe(self) -> None:
        """Answer a key-frame request by skipping ahead to the clip's next key frame."""
        for step in range(1, len(self.frames) + 1):
            index = (self.cursor + step) % len(self.frames)
            if self.frames[index].keyframe:
                self.cursor = index
                return


class SyntheticClient:
    def __init__(
        self,
        base_url: str,
        token: str,
        user_id: int,
        meeting_id: int,
        clip: Clip | None,
        certificate: RTCCertificate,
        simulcast: bool = True,
        record: bool = True,
        ice_transport: str = "host",
        network: Network = LOOPBACK,
        feedback: bool = False,
    ) -> None:
        self.base_url, self.token, self.user_id, self.meeting_id = base_url, token, user_id, meeting_id
        self.clip = clip
        self.certificate = certificate
        self.simulcast = simulcast
        self.record = record
        self.ice_transport = ice_transport
        self.network = network  # where a subscriber's media sockets are (a shaped link's far end, or loopback)
        # A subscriber that answers as a browser does: transport-wide feedback where the server asks for
        # it (bench/feedback.py), and its video traced over time (bench/received.py).
        self.feedback = feedback
        self.transport_feedback: TransportFeedback | None = None
        self.vp8_types: set[int] = set()  # payload types of VP8 in the subscriber offers
        self.ice_servers: list[dict[str, Any]] = []  # from the join reply
        self.result = ClientResult(user_id, "publisher" if clip is not None else "subscriber")
        if feedback and clip is None:
            self.result.video = VideoTrace()
        self.http: aiohttp.ClientSession | None = None
        self.socket: aiohttp.ClientWebSocketResponse | None = None
        self.publisher: MediaTransport | None = None
        self.subscriber: MediaTransport | None = None
        self.answers: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.tasks: list[asyncio.Task[None]] = []
        self.media_tasks: list[asyncio.Task[None]] = []  # of the current connections: replay, reports
        self.ssrc_mids: dict[int, str] = {}
        self.layers: list[_Layer] = []
        self.send_media: Any = None  # bytes -> None: the publisher's way out (SRTP, or plain UDP)
        self.rtcp_ssrc = random.getrandbits(32) or 1

    # signaling ----------------------------------------------------------------------------------

    async def connect(self) -> None:
        self.http = aiohttp.ClientSession()
        url = self.base_url.replace("http", "ws", 1) + "/ws/signaling"
        params = {"meeting_id": str(self.meeting_id), "user_id": str(self.user_id), "token": self.token}
        self.result.opened_ns = time.monotonic_ns()
        self.socket = await self.http.ws_connect(url, params=params, heartbeat=10)
        await self._send("join", {})
        await asyncio.wait_for(self._joined(), JOIN_TIMEOUT)
        self.tasks.append(asyncio.get_running_loop().create_task(self._read()))

    async def _joined(self) -> None:
        assert self.socket is not None
        while True:
            message = await self.socket.receive_json()
            if message["type"] == "join":
                self.ice_servers = (message.get("data") or {}).get("ice_servers") or []
                return
            if message["type"] == "error":
                raise ConnectionError(f"join refused: {(message.get('data') or {}).get('message')}")

    async def _send(self, kind: str, data: dict[str, Any]) -> None:
        assert self.socket is not None
        await self.socket.send_str(json.dumps({"type": kind, "meeting_id": self.meeting_id, "data": data}))

    async def _read(self) -> None:
        assert self.socket is not None
        async for frame in self.socket:
            if frame.type != aiohttp.WSMsgType.TEXT:
                break
            message = json.loads(frame.data)
            data = message.get("data") or {}
            if message.get("from") != 0:
                continue
            if message["type"] == "answer":
                await self.answers.put(data)
            elif message["type"] == "offer" and data.get("target") == "subscriber":
                try:
                    await self._answer_subscriber(data["sdp"])
                except Exception as exc:  # a benchmark reports a broken client, it does not stop
                    self.result.errors.append(f"subscriber negotiation: {exc!r}")
            elif message["type"] == "error":
                self.result.errors.append(str(data.get("message")))
            elif message["type"] == "reconnect":
                self._rebuild()
            elif message["type"] == "media-state" and isinstance(data.get("publish_layers"), dict):
                self._set_layers(data["publish_layers"].get("rids") or {})

    def _set_layers(self, rids: dict[str, bool]) -> None:
        """Dynacast, as the browser SDK does it: stop the encodings nobody receives (never the lowest),
        and start a resumed one at a key frame."""
        for index, layer in enumerate(self.layers):
            paused = index > 0 and rids.get(layer.rid) is False
            if layer.paused and not paused:
                layer.jump_to_keyframe()
            layer.paused = paused

    def _rebuild(self) -> None:
        """The server moved this client's media to another node (docs/sfu.md, ``reconnect``): both
        connections anew, the subscriber one on the server's next offer; what was counted so far stays."""
        self.result.reconnects += 1
        for task in self.media_tasks:
            task.cancel()
        old = [transport for transport in (self.publisher, self.subscriber) if transport is not None]
        self.publisher = self.subscriber = None
        while not self.answers.empty():
            self.answers.get_nowait()
        loop = asyncio.get_running_loop()
        self.media_tasks = [loop.create_task(transport.close()) for transport in old]
        if self.clip is not None:
            self.media_tasks.append(loop.create_task(self._publish_again()))

    async def _publish_again(self) -> None:
        try:
            await self.publish()
        except Exception as exc:  # reported with the run, as any broken client is
            self.result.errors.append(f"publishing again: {exc!r}")

    # connections --------------------------------------------------------------------------------

    async def _gather(self, controlling: bool) -> MediaConnection:
        if self.ice_transport == "relay":
            return await relayed_connection(self.ice_servers, controlling)
        return await gather(self.network if self.clip is None else LOOPBACK, controlling=controlling)

    def _settled(self, transport: MediaTransport) -> None:
        pair = transport.link.connection._nominated.get(1)
        self.result.candidate_types.append(pair.local_candidate.type if pair is not None else "none")

    # publishing ---------------------------------------------------------------------------------

    async def publish(self) -> None:
        assert self.clip is not None
        connection = await self._gather(controlling=True)
        self.publisher = MediaTransport(connection, self.certificate, self._ignore, self._on_publisher_rtcp)
        local = self.publisher.local_description("actpass")
        self.layers = self._video_layers()
        offer = _publisher_offer(local, self.layers, self.simulcast, audio_ssrc := random.getrandbits(32) or 3)
        await self._send("offer", {"target": "publisher", "sdp": offer})
        answer = sdp.parse((await asyncio.wait_for(self.answers.get(), 20))["sdp"])
        ufrag, password = answer.ice_credentials()
        role = "client" if answer.dtls_setup() in ("passive", "actpass") else "server"
        await self.publisher.establish(ufrag, password, answer.all_candidates(), answer.dtls_fingerprints(), role)
        self._settled(self.publisher)
        self.send_media = self.publisher.send_rtp
        self.media_tasks.append(asyncio.get_running_loop().create_task(self._replay(audio_ssrc)))

    def _video_layers(self) -> list[_Layer]:
        """The clip's encodings this publisher sends: three simulcast layers, or the top one alone."""
        assert self.clip is not None
        rids = ["l", "m", "h"] if self.simulcast else ["h"]
        return [_Layer(rid if self.simulcast else "", self.clip.layers[rid], "1") for rid in rids]

    async def _replay(self, audio_ssrc: int) -> None:
        """Send 20 ms of audio and every video frame that is due, on a steady clock."""
        assert self.clip is not None
        send, audio, record = self.send_media, self.clip.audio, self.record
        audio_keys = [zlib.crc32(packet) for packet in audio]
        audio_extension = rtp.extension_block([(MID_ID, b"0")])
        audio_seq, audio_ts, audio_index = random.getrandbits(16), random.getrandbits(32), 0
        start = time.monotonic()
        tick = 0
        frame_period = 1 / FPS
        next_frame = start
        while True:
            tick += 1
            now_ns = time.monotonic_ns()
            packet = audio[audio_index % len(audio)]
            header = rtp.FIXED_HEADER.pack(0x90, AUDIO_PT, audio_seq, audio_ts, audio_ssrc)
            send(header + audio_extension + packet)
            if record:
                self.result.sent.append((audio_keys[audio_index % len(audio)], now_ns, "audio"))
            audio_index += 1
            audio_seq = (audio_seq + 1) & 0xFFFF
            audio_ts = (audio_ts + 960) & 0xFFFFFFFF
            while time.monotonic() >= next_frame:
                next_frame += frame_period
                for layer in self.layers:
                    if layer.paused:  # its clock runs on, as a paused encoder's capture clock does
                        layer.timestamp = (layer.timestamp + VIDEO_TICKS) & 0xFFFFFFFF
                    else:
                        self._send_frame(layer, now_ns)
            await asyncio.sleep(max(0.0, start + tick * 0.02 - time.monotonic()))

    def _send_frame(self, layer: _Layer, now_ns: int) -> None:
        frame = layer.frames[layer.cursor]
        keys = layer.keys[layer.cursor]
        last = len(frame.payloads) - 1
        for index, payload in enumerate(frame.payloads):
            second = VIDEO_PT | (0x80 if index == last else 0)
            header = rtp.FIXED_HEADER.pack(0x90, second, layer.seq, layer.timestamp, layer.ssrc)
            self.send_media(header + layer.extension + payload)
            if self.record:
                self.result.sent.append((keys[index], now_ns, layer.rid or "h"))
            layer.seq = (layer.seq + 1) & 0xFFFF
        layer.timestamp = (layer.timestamp + VIDEO_TICKS) & 0xFFFFFFFF
        layer.cursor = (layer.cursor + 1) % len(layer.frames)

    def _on_publisher_rtcp(self, data: bytes) -> None:
        now = time.monotonic_ns()
        for feedback in rtcp.parse(data):
            if isinstance(feedback, rtcp.KeyFrameRequest):
                for layer in self.layers:
                    if (
                        layer.ssrc == feedback.media_ssrc
                        and now - layer.last_keyframe_request > KEYFRAME_REQUEST_GAP_NS
                    ):
                        layer.last_keyframe_request = now
                        layer.jump_to_keyframe()

    @staticmethod
    def _ignore(data: bytes) -> None:
        del data

    # subscribing --------------------------------------------------------------------------------

    async def _answer_subscriber(self, text: str) -> None:
        offer = sdp.parse(text)
        for section in offer.sections:
            for ssrc in section.ssrcs:
                self.ssrc_mids[ssrc] = section.mid
        first = self.subscriber is None
        if first:
            connection = await self._gather(controlling=not offer.ice_lite)
            self.subscriber = MediaTransport(connection, self.certificate, self._on_media, self._ignore)
        assert self.subscriber is not None
        local = self.subscriber.local_description("active")
        await self._send("answer", {"target": "subscriber", "sdp": self._answer(offer, local)})
        if first:
            ufrag, password = offer.ice_credentials()
            await self.subscriber.establish(
                ufrag, password, offer.all_candidates(), offer.dtls_fingerprints(), "client"
            )
            self._settled(self.subscriber)
            self.media_tasks.append(asyncio.get_running_loop().create_task(self._report()))

    def _answer(self, offer: sdp.SessionDescription, local: sdp.LocalTransport) -> str:
        """The answer to a subscriber offer; with ``feedback``, it takes transport-cc when offered."""
        self.vp8_types |= {
            codec.payload_type for section in offer.sections for codec in section.codecs.values() if codec.name == "vp8"
        }
        ident = transport_cc_id(offer) if self.feedback else None
        if ident is not None and self.subscriber is not None and self.transport_feedback is None:
            self.transport_feedback = TransportFeedback(ident, self.subscriber.send_rtcp)
            self.result.feedback = "transport-cc"
        return _subscriber_answer(offer, local, ident)

    def _on_media(self, data: bytes) -> None:
        packet = rtp.Packet(data)
        now = time.monotonic_ns()
        if self.transport_feedback is not None:
            self.transport_feedback.on_packet(packet, now / 1e9)
        trace = self.result.video
        if trace is not None:
            trace.on_bytes(len(data), now)
            if packet.payload_type in self.vp8_types:
                trace.on_video(packet, now)
        stream = self.result.streams.get(packet.ssrc)
        if stream is None:
            stream = self.result.streams[packet.ssrc] = StreamCount(self.ssrc_mids.get(packet.ssrc, "?"))
            stream.first_seq = stream.highest = packet.seq
            stream.first_ns = now
            if not self.result.first_media_ns:
                self.result.first_media_ns = now
        stream.packets += 1
        stream.bytes += len(data)
        stream.last_ns = now
        extended = (stream.highest & ~0xFFFF) | packet.seq
        if extended < stream.highest - 0x8000:
            extended += 0x10000
        elif extended > stream.highest + 0x8000:
            extended -= 0x10000
        stream.highest = max(stream.highest, extended)
        if packet.timestamp != stream.last_ts:
            stream.last_ts = packet.timestamp
            stream.frames += 1
        if self.record:
            self.result.received.append((zlib.crc32(data[packet.payload_start : packet.payload_end]), now, len(data)))

    async def _report(self) -> None:
        """Receiver reports once a second: the server closes connections it hears nothing on."""
        while True:
            await asyncio.sleep(1)
            if self.subscriber is not None:
                self.subscriber.send_rtcp(rtcp.receiver_report(self.rtcp_ssrc, []))

    async def close(self) -> None:
        for task in [*self.tasks, *self.media_tasks]:
            task.cancel()
        await asyncio.gather(*self.tasks, *self.media_tasks, return_exceptions=True)
        for transport in (self.publisher, self.subscriber):
            if transport is not None:
                await transport.close()
        if self.socket is not None:
            await self.socket.close()
        if self.http is not None:
            await self.http.close()


async def relayed_connection(ice_servers: list[dict[str, Any]], controlling: bool) -> MediaConnection:
    """A connection whose only candidate is relayed by the TURN server of ``ice_servers`` (RTCIceServer
    dictionaries, as the server hands them out): aioice's relay transport policy, which gathers no
    host candidate, with the servers read as aiortc reads an RTCConfiguration's."""
    options = connection_kwargs([RTCIceServer(**server) for server in ice_servers])
    if "turn_server" not in options:
        raise ConnectionError("the server handed out no TURN server (is its TURN server on?)")
    connection = MediaConnection(
        ice_controlling=controlling, components=1, transport_policy=TransportPolicy.RELAY, **options
    )
    await connection.gather_candidates()
    if not connection.local_candidates:
        await connection.close()
        raise ConnectionError(f"no relayed candidate: allocating on {options['turn_server']} failed")
    return connection


def _publisher_offer(local: sdp.LocalTransport, layers: list[_Layer], simulcast: bool, audio_ssrc: int) -> str:
    lines = ["v=0", f"o=- {random.getrandbits(40)} 1 IN IP4 0.0.0.0", "s=bench", "t=0 0", "a=group:BUNDLE 0 1"]
    lines += ["m=audio 9 UDP/TLS/RTP/SAVPF 111", *transport_lines(local), "a=mid:0", "a=sendonly"]
    lines += [f"a=extmap:{MID_ID} {rtp.URI_MID}", "a=rtpmap:111 opus/48000/2", "a=fmtp:111 minptime=10;useinbandfec=1"]
    lines += [f"a=ssrc:{audio_ssrc} cname:bench", f"a=msid:bench-{audio_ssrc} audio"]
    lines += ["m=video 9 UDP/TLS/RTP/SAVPF 96 97", *transport_lines(local), "a=mid:1", "a=sendonly"]
    lines += [f"a=extmap:{MID_ID} {rtp.URI_MID}", f"a=extmap:{RID_ID} {rtp.URI_RID}"]
    lines += ["a=rtpmap:96 VP8/90000", "a=rtcp-fb:96 nack", "a=rtcp-fb:96 nack pli", "a=rtcp-fb:96 goog-remb"]
    lines += ["a=rtpmap:97 rtx/90000", "a=fmtp:97 apt=96", f"a=msid:bench-{audio_ssrc} video"]
    if simulcast:
        lines += [f"a=rid:{layer.rid} send" for layer in layers]
        lines.append("a=simulcast:send " + ";".join(layer.rid for layer in layers))
    else:
        lines.append(f"a=ssrc:{layers[0].ssrc} cname:bench")
    return "\r\n".join(lines) + "\r\n"


def _subscriber_answer(
    offer: sdp.SessionDescription, local: sdp.LocalTransport, transport_cc: int | None = None
) -> str:
    """What the synthetic subscriber answers: every offered codec, received; with ``transport_cc``
    (the offer's extension id), transport-wide sequence numbers and their feedback as well."""
    mids = [section.mid for section in offer.sections if not section.rejected]
    lines = ["v=0", f"o=- {random.getrandbits(40)} 1 IN IP4 0.0.0.0", "s=bench", "t=0 0"]
    lines.append("a=group:BUNDLE " + " ".join(mids))
    for section in offer.sections:
        lines.append(f"m={section.kind} 9 {section.proto} {' '.join(section.formats)}")
        lines += [*transport_lines(local), f"a=mid:{section.mid}"]
        lines.append("a=recvonly" if section.direction in ("sendonly", "sendrecv") else "a=inactive")
        if transport_cc is not None and rtp.URI_TRANSPORT_CC in section.extmap:
            lines.append(f"a=extmap:{transport_cc} {rtp.URI_TRANSPORT_CC}")
        for codec in section.codecs.values():
            lines += sdp.codec_lines(codec)
    return "\r\n".join(lines) + "\r\n"
