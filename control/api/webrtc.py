"""/api/v1/webrtc: what the media server is doing in a room, live, and per-peer media controls."""

from __future__ import annotations

import asyncio
from typing import Literal

from aiohttp import web
from pydantic import BaseModel, Field, model_validator

from control.context import HUB, SETTINGS, SFU, STORE, current_user
from control.endpoints import Access, EndpointGroup, path_int
from control.errors import bad_request, not_found
from control.forwarding import on_meeting_node
from control.ice import IceServersOut, ice_servers_for
from control.noise_suppression import announce, participant_state, room_state
from control.rooms import load_meeting, media_state, meeting_not_found, require_member, require_moderator
from control.signaling.hub import message
from sfu.denoise import live_models
from sfu.forwarder import DownTrack
from sfu.peer import Peer
from sfu.track import PublishedTrack

group = EndpointGroup("/api/v1/webrtc", "webrtc")
ROOM_ID = "room/{room_id:[0-9]+}"


class LayerOut(BaseModel):
    name: str = Field(description="low, medium or high (a single-layer track has only high)")
    rid: str
    ssrc: int
    active: bool = Field(description="packets arrived in the last second")
    bitrate: int = Field(description="bit/s over the last second")
    fps: float
    packets: int
    bytes: int
    packets_lost: int
    jitter: int = Field(description="interarrival jitter, in RTP clock units")
    nacks_sent: int = Field(description="NACKs the server sent the publisher for this layer")
    keyframe_requests: int = Field(description="PLIs the server sent the publisher for this layer")
    probes_dropped: int = Field(description="retransmissions nobody asked for (bandwidth probes), not forwarded")


class TrackOut(BaseModel):
    track_id: str
    peer_id: str
    user_id: int
    kind: Literal["audio", "video"]
    source: Literal["camera", "screen"] = Field(description="screen: a shared screen (a=content:slides)")
    codec: str
    muted: bool
    simulcast: bool
    layers: list[LayerOut]
    subscribers: int


class SubscriptionOut(BaseModel):
    track_id: str
    kind: Literal["audio", "video"]
    publisher_peer_id: str
    publisher_user_id: int
    current_layer: str | None = Field(description="the layer being forwarded now")
    target_layer: str | None = Field(description="the layer the server is switching to")
    temporal_layer: int | None = Field(
        description="the highest temporal layer of the current layer forwarded (0 = base layer only); "
        "null when the codec shows none"
    )
    preferred_layer: str | None = Field(description="the best layer the subscriber asked for")
    paused: bool


class PeerOut(BaseModel):
    peer_id: str
    user_id: int
    publisher_state: str
    subscriber_state: str
    published: list[TrackOut]
    subscriptions: list[SubscriptionOut]


class SubscriptionStats(SubscriptionOut):
    subscriber_peer_id: str
    subscriber_user_id: int
    bitrate: int
    packets: int
    bytes: int
    packets_lost: int = Field(description="as the subscriber reports it")
    fraction_lost: float
    jitter: int
    rtt_ms: float | None
    nacks: int
    retransmits: int
    plis: int
    firs: int
    layer_switches: int
    bandwidth: int | None = Field(description="the subscriber's estimated share for this track, bit/s")


class TransportStats(BaseModel):
    peer_id: str
    connection: Literal["publisher", "subscriber"]
    state: str
    packets_in: int
    bytes_in: int
    packets_out: int
    bytes_out: int
    srtp_failures: int
    malformed: int = Field(
        description="datagrams dropped unread: unparsable, of no known kind, or not from the client's address"
    )
    unrouted: int = Field(description="publisher packets that matched no published track")


class RoomStatsOut(BaseModel):
    room_id: int
    peers: int
    tracks: list[TrackOut]
    subscriptions: list[SubscriptionStats]
    transports: list[TransportStats]


class PeerMediaIn(BaseModel):
    audio: bool | None = Field(None, description="false mutes the peer's audio for everyone, server-side")
    noise_suppression: bool | None = Field(
        None, description="true forwards the peer's microphone with its noise taken out (docs/enhancement.md)"
    )
    video: bool | None = Field(None, description="false stops forwarding the peer's video")
    layer: Literal["low", "medium", "high"] | None = Field(None, description="best layer the peer receives")
    max_bitrate: int | None = Field(None, ge=0, le=100_000_000, description="cap on what the peer receives; 0 lifts it")

    @model_validator(mode="after")
    def something_to_change(self) -> PeerMediaIn:
        fields = (self.audio, self.video, self.layer, self.max_bitrate, self.noise_suppression)
        if all(value is None for value in fields):
            raise ValueError("set at least one of audio, video, layer, max_bitrate, noise_suppression")
        return self


def _track_out(track: PublishedTrack) -> TrackOut:
    return TrackOut(
        track_id=track.id,
        peer_id=track.publisher_id,
        user_id=track.user_id,
        kind=track.kind,  # type: ignore[arg-type]
        source=track.source,  # type: ignore[arg-type]
        codec=track.codec.name,
        muted=track.muted,
        simulcast=track.simulcast,
        subscribers=len(track.downtracks),
        layers=[
            LayerOut(
                name=layer.name,
                rid=layer.rid,
                ssrc=layer.ssrc,
                active=layer.active,
                bitrate=layer.bitrate,
                fps=layer.fps,
                packets=layer.packets,
                bytes=layer.bytes,
                packets_lost=layer.lost,
                jitter=int(layer.jitter),
                nacks_sent=layer.nacks_sent,
                keyframe_requests=layer.keyframe_requests,
                probes_dropped=layer.probes,
            )
            for layer in track.layers
        ],
    )


def _subscription_fields(down: DownTrack) -> dict[str, object]:
    return {
        "track_id": down.track.id,
        "kind": down.track.kind,
        "publisher_peer_id": down.track.publisher_id,
        "publisher_user_id": down.track.user_id,
        "current_layer": down.layer_name(down.current_layer),
        "target_layer": down.layer_name(down.target_layer),
        "temporal_layer": down.temporal_layer,
        "preferred_layer": down.layer_name(down.preferred_layer),
        "paused": down.paused,
    }


def _peer_out(peer: Peer) -> PeerOut:
    return PeerOut(
        peer_id=peer.id,
        user_id=peer.user_id,
        publisher_state=peer.publisher.state,
        subscriber_state=peer.subscriber.state,
        published=[_track_out(track) for track in peer.publisher.tracks.values()],
        subscriptions=[SubscriptionOut(**_subscription_fields(down)) for down in peer.subscriber.downtracks.values()],
    )


def _transport_stats(peer: Peer) -> list[TransportStats]:
    found = []
    for name, side in (("publisher", peer.publisher), ("subscriber", peer.subscriber)):
        if side.transport is None:
            continue
        stats = side.transport.stats
        found.append(
            TransportStats(
                peer_id=peer.id,
                connection=name,  # type: ignore[arg-type]
                state=side.state,
                packets_in=stats.packets_in,
                bytes_in=stats.bytes_in,
                packets_out=stats.packets_out,
                bytes_out=stats.bytes_out,
                srtp_failures=stats.srtp_failures,
                malformed=stats.malformed,
                unrouted=peer.publisher.unrouted if name == "publisher" else 0,
            )
        )
    return found


async def _room_peers(request: web.Request) -> list[Peer]:
    meeting = await load_meeting(request.app, path_int(request, "room_id", meeting_not_found()))
    await require_member(request.app, meeting, current_user(request))
    room = request.app[SFU].rooms.get(meeting.id)
    return list(room.peers.values()) if room is not None else []


@group.route(
    "GET",
    "/ice-servers",
    name="ice_servers",
    summary="STUN and TURN servers for RTCPeerConnection, with TURN credentials of the caller's own",
    access=Access.USER,
    limit="30/minute",
    response=IceServersOut,
)
async def ice_servers(request: web.Request) -> IceServersOut:
    return ice_servers_for(request, current_user(request).id)


@group.route(
    "GET",
    "/" + ROOM_ID + "/peers",
    name="room_peers",
    summary="Peers of a room on the media server: connection states, published tracks, subscriptions",
    access=Access.USER,
    limit="100/minute",
    response=list[PeerOut],
)
async def room_peers(request: web.Request) -> list[PeerOut] | web.StreamResponse:
    forwarded = await on_meeting_node(request, path_int(request, "room_id", meeting_not_found()))
    if forwarded is not None:
        return forwarded
    return [_peer_out(peer) for peer in await _room_peers(request)]


@group.route(
    "GET",
    "/" + ROOM_ID + "/stats",
    name="room_stats",
    summary="Live media statistics of a room: per track and layer, per subscriber, per connection",
    access=Access.USER,
    limit="50/minute",
    response=RoomStatsOut,
)
async def room_stats(request: web.Request) -> RoomStatsOut | web.StreamResponse:
    forwarded = await on_meeting_node(request, path_int(request, "room_id", meeting_not_found()))
    if forwarded is not None:
        return forwarded
    peers = await _room_peers(request)
    subscriptions = []
    for peer in peers:
        for down in peer.subscriber.downtracks.values():
            subscriptions.append(
                SubscriptionStats(
                    **_subscription_fields(down),
                    subscriber_peer_id=peer.id,
                    subscriber_user_id=peer.user_id,
                    bitrate=down.bitrate,
                    packets=down.packets,
                    bytes=down.bytes,
                    packets_lost=down.packets_lost,
                    fraction_lost=round(down.fraction_lost, 4),
                    jitter=down.jitter,
                    rtt_ms=round(down.rtt * 1000, 1) if down.rtt is not None else None,
                    nacks=down.nacks,
                    retransmits=down.retransmits,
                    plis=down.plis,
                    firs=down.firs,
                    layer_switches=down.switches,
                    bandwidth=down.bandwidth,
                )
            )
    return RoomStatsOut(
        room_id=int(request.match_info["room_id"]),
        peers=len(peers),
        tracks=[_track_out(track) for peer in peers for track in peer.publisher.tracks.values()],
        subscriptions=subscriptions,
        transports=[stats for peer in peers for stats in _transport_stats(peer)],
    )


@group.route(
    "POST",
    "/peer/{peer_id:[0-9a-f]+}/media",
    name="peer_media",
    summary="Mute or unmute a peer server-side, or choose the best layer and bitrate it receives",
    access=Access.USER,
    limit="50/minute",
    body=PeerMediaIn,
    response=PeerOut,
)
async def peer_media(request: web.Request, body: PeerMediaIn) -> PeerOut | web.StreamResponse:
    peer = request.app[SFU].peers.get(request.match_info["peer_id"])
    if peer is None:
        # A peer of a meeting whose media runs on another node is that node's to change.
        session = await request.app[STORE].sessions.get(request.match_info["peer_id"])
        forwarded = await on_meeting_node(request, session.meeting_id) if session is not None else None
        if forwarded is not None:
            return forwarded
        raise not_found("Peer not found")
    user = current_user(request)
    if peer.user_id != user.id:
        meeting = await load_meeting(request.app, peer.room.id)
        await require_moderator(request.app, meeting, user)
    if body.layer is not None:
        peer.set_layer(body.layer, None)
    if body.max_bitrate is not None:
        peer.set_max_bitrate(body.max_bitrate or None)
    if body.noise_suppression is not None:
        request.app[SFU].noise.set_peer(peer.id, body.noise_suppression)
        await announce(request.app, peer.room.id, participant_state(peer.user_id, body.noise_suppression, user.id))
    changes = {kind: value for kind, value in (("audio", body.audio), ("video", body.video)) if value is not None}
    for kind, enabled in changes.items():
        peer.set_muted(kind, not enabled)
    if changes:
        updated = await request.app[STORE].participants.update(peer.room.id, peer.user_id, **changes)
        if updated is not None:
            await request.app[HUB].broadcast(
                message(
                    "media-state",
                    peer.room.id,
                    peer.user_id,
                    {"user_id": peer.user_id, "media_state": media_state(updated), "by": user.id},
                )
            )
    return _peer_out(peer)


class NoiseSuppressionIn(BaseModel):
    enabled: bool = Field(description="clean every participant's microphone, and those published later")
    model: str | None = Field(
        None, pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$", description="rnnoise or deepfilternet3; default: [sfu] setting"
    )


class SuppressedTrackOut(BaseModel):
    track_id: str
    peer_id: str
    user_id: int
    state: Literal["starting", "on", "draining", "off", "failed"] = Field(
        description="starting: originals forwarded until the worker keeps up; on: cleaned audio forwarded"
    )
    model: str
    error: str | None
    algorithmic_delay_ms: float = Field(
        description="how far the cleaned sound lags its input: the model's look-ahead and the Opus encoder's"
    )
    latency_ms_p50: float | None = Field(description="a packet's arrival to its cleaned copy's, median")
    latency_ms_p95: float | None
    added_latency_ms: float | None = Field(description="median latency plus the algorithmic delay")
    cpu_percent: float = Field(description="of one core, in the worker process, for this track")
    packets_cleaned: int
    fallbacks: int = Field(description="times the worker fell behind and originals were forwarded")


class NoiseSuppressionOut(BaseModel):
    room_id: int
    enabled: bool = Field(description="on for the whole room (participants may also have it on for themselves)")
    model: str | None
    tracks: list[SuppressedTrackOut] = Field(description="the tracks being cleaned now")


def _noise_out(request: web.Request, room_id: int) -> NoiseSuppressionOut:
    return NoiseSuppressionOut.model_validate(request.app[SFU].noise.describe_room(room_id))


@group.route(
    "GET",
    "/" + ROOM_ID + "/noise-suppression",
    name="room_noise_suppression",
    summary="Whose microphones are cleaned live in a room, and what it costs",
    access=Access.USER,
    limit="50/minute",
    response=NoiseSuppressionOut,
)
async def room_noise_suppression(request: web.Request) -> NoiseSuppressionOut | web.StreamResponse:
    forwarded = await on_meeting_node(request, path_int(request, "room_id", meeting_not_found()))
    if forwarded is not None:
        return forwarded
    meeting = await load_meeting(request.app, path_int(request, "room_id", meeting_not_found()))
    await require_member(request.app, meeting, current_user(request))
    return _noise_out(request, meeting.id)


@group.route(
    "POST",
    "/" + ROOM_ID + "/noise-suppression",
    name="set_room_noise_suppression",
    summary="Switch live noise suppression on or off for everyone in a room (hosts and moderators)",
    access=Access.USER,
    limit="20/minute",
    body=NoiseSuppressionIn,
    response=NoiseSuppressionOut,
)
async def set_room_noise_suppression(
    request: web.Request, body: NoiseSuppressionIn
) -> NoiseSuppressionOut | web.StreamResponse:
    forwarded = await on_meeting_node(request, path_int(request, "room_id", meeting_not_found()))
    if forwarded is not None:
        return forwarded
    meeting = await load_meeting(request.app, path_int(request, "room_id", meeting_not_found()))
    await require_moderator(request.app, meeting, current_user(request))
    sfu = request.app[SFU]
    if body.model is not None and body.model not in await asyncio.to_thread(
        live_models, request.app[SETTINGS].ai.model_dir
    ):
        raise bad_request(f"{body.model} is not a model that cleans live audio (rnnoise or deepfilternet3)")
    sfu.noise.set_room(meeting.id, body.enabled, body.model)
    answer = _noise_out(request, meeting.id)
    await announce(request.app, meeting.id, room_state(answer.enabled, answer.model, current_user(request).id))
    return answer
