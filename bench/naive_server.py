"""The naive baseline: what an aiortc server does without an SFU. One RTCPeerConnection per client
connection, every received track decoded and shared through ``MediaRelay``, and every subscriber's
sender encoding its own copy. It speaks the same signaling as huiyi (docs/sfu.md), without accounts,
so the same synthetic clients can load it.

``python -m bench.naive_server --host 127.0.0.1 --port 8100``"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaRelay

from bench.loopback import loopback_only

RELAY = MediaRelay()


@dataclass
class Published:
    track: MediaStreamTrack
    peer_id: str
    user_id: int
    track_id: str = field(default_factory=lambda: secrets.token_hex(8))


@dataclass
class Peer:
    id: str
    user_id: int
    meeting_id: int
    socket: web.WebSocketResponse
    publisher: RTCPeerConnection | None = None
    subscriber: RTCPeerConnection | None = None
    sending: dict[str, Any] = field(default_factory=dict)  # track id -> transceiver
    answer: asyncio.Future[str] | None = None
    dirty: asyncio.Event = field(default_factory=asyncio.Event)
    negotiator: asyncio.Task[None] | None = None


class Rooms:
    def __init__(self) -> None:
        self.peers: dict[int, dict[str, Peer]] = {}
        self.tracks: dict[int, dict[str, Published]] = {}

    def others(self, peer: Peer) -> list[Peer]:
        return [other for other in self.peers.get(peer.meeting_id, {}).values() if other is not peer]

    def wanted(self, peer: Peer) -> dict[str, Published]:
        room = self.tracks.get(peer.meeting_id, {})
        return {track_id: item for track_id, item in room.items() if item.peer_id != peer.id}

    def changed(self, meeting_id: int) -> None:
        for peer in self.peers.get(meeting_id, {}).values():
            peer.dirty.set()


async def send(peer: Peer, kind: str, data: dict[str, Any]) -> None:
    if not peer.socket.closed:
        await peer.socket.send_str(json.dumps({"type": kind, "from": 0, "meeting_id": peer.meeting_id, "data": data}))


async def publish(rooms: Rooms, peer: Peer, sdp: str) -> None:
    """Answer a publisher offer; each track it brings is decoded once and relayed to the others."""
    pc = peer.publisher = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    room = rooms.tracks.setdefault(peer.meeting_id, {})

    @pc.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        item = Published(track, peer.id, peer.user_id)
        room[item.track_id] = item
        rooms.changed(peer.meeting_id)

    await pc.setRemoteDescription(RTCSessionDescription(sdp, "offer"))
    await pc.setLocalDescription(await pc.createAnswer())
    await send(peer, "answer", {"target": "publisher", "sdp": pc.localDescription.sdp})


async def negotiate(rooms: Rooms, peer: Peer) -> None:
    """Keep the subscriber connection's tracks equal to the room's, one offer at a time."""
    while True:
        await peer.dirty.wait()
        peer.dirty.clear()
        wanted = rooms.wanted(peer)
        if not wanted and not peer.sending:
            continue
        if peer.subscriber is None:
            peer.subscriber = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc = peer.subscriber
        for track_id in [t for t in peer.sending if t not in wanted]:
            await peer.sending.pop(track_id).stop()
        for track_id, item in wanted.items():
            if track_id not in peer.sending:
                peer.sending[track_id] = pc.addTransceiver(RELAY.subscribe(item.track), direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        tracks = [
            {
                "mid": transceiver.mid,
                "track_id": track_id,
                "kind": wanted[track_id].track.kind,
                "peer_id": wanted[track_id].peer_id,
                "user_id": wanted[track_id].user_id,
                "stream_id": wanted[track_id].peer_id,
                "layers": ["high"],
            }
            for track_id, transceiver in peer.sending.items()
        ]
        peer.answer = asyncio.get_running_loop().create_future()
        await send(peer, "offer", {"target": "subscriber", "sdp": pc.localDescription.sdp, "tracks": tracks})
        await pc.setRemoteDescription(RTCSessionDescription(await peer.answer, "answer"))


async def leave(rooms: Rooms, peer: Peer) -> None:
    rooms.peers.get(peer.meeting_id, {}).pop(peer.id, None)
    room = rooms.tracks.get(peer.meeting_id, {})
    for track_id in [t for t, item in room.items() if item.peer_id == peer.id]:
        del room[track_id]
    rooms.changed(peer.meeting_id)
    if peer.negotiator is not None:
        peer.negotiator.cancel()
    for pc in (peer.publisher, peer.subscriber):
        if pc is not None:
            await pc.close()


async def signaling(request: web.Request) -> web.WebSocketResponse:
    rooms: Rooms = request.app["rooms"]
    socket = web.WebSocketResponse(heartbeat=10)
    await socket.prepare(request)
    try:
        meeting_id, user_id = int(request.query["meeting_id"]), int(request.query["user_id"])
    except (KeyError, ValueError):
        await socket.close(code=4400, message=b"meeting_id and user_id are required")
        return socket
    peer = Peer(secrets.token_hex(16), user_id, meeting_id, socket)
    try:
        async for frame in socket:
            if frame.type != WSMsgType.TEXT:
                break
            message = json.loads(frame.data)
            kind, data = message.get("type"), message.get("data") or {}
            if kind == "join":
                rooms.peers.setdefault(meeting_id, {})[peer.id] = peer
                await send(peer, "join", {"session_id": peer.id, "self": {"user_id": user_id}, "participants": []})
                peer.negotiator = asyncio.get_running_loop().create_task(negotiate(rooms, peer))
                peer.dirty.set()
            elif kind == "offer" and data.get("target", "publisher") == "publisher":
                await publish(rooms, peer, data["sdp"])
            elif kind == "answer" and peer.answer is not None and not peer.answer.done():
                peer.answer.set_result(data["sdp"])
            elif kind == "leave":
                break
            elif kind != "ice-candidate":
                await send(peer, "error", {"code": 400, "message": f"unsupported message: {kind}"})
    finally:
        await leave(rooms, peer)
    return socket


async def health(request: web.Request) -> web.Response:
    return web.json_response({"code": 200, "message": "Success", "data": {"status": "ok"}})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    arguments = parser.parse_args()
    loopback_only()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    app = web.Application()
    app["rooms"] = Rooms()
    app.router.add_get("/api/v1/health", health)
    app.router.add_get("/ws/signaling", signaling)
    web.run_app(app, host=arguments.host, port=arguments.port, print=None)


if __name__ == "__main__":
    main()
