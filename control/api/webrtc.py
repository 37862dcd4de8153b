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

group = EndpointGroup("/api/v1/webrtc", "webrtc")
ROOM_ID = "room/{room_id:[0-9]+}"


class LayerOut(BaseModel):
    name: str = Field(description="low, medium or high (a single-layer track has only high)")
    rid: str
    ssrc: int
    active: bool = Field(description="packets arrived in the last second")
    paused: bool = Field(description="paused by dynacast: no receiver needs it, so the publisher does not send it")
    bitrate: int = Field(description="bit/s over the last second; while paused, the rate it had when it was paused")
    fps: float
    packets: int
    bytes: int
    packets_lost: int
    jitter: int = Field(description="interarrival jitter, in RTP clock units")
    nacks_sent: int = Field(description="NACKs the server sent the publisher for this layer")
    keyframe_requests: int = Field(description="PLIs the server sent the publisher for this layer")
    probes_dropped: int = Field(description="retransmissions nobody asked for (bandwidth probes), not forwarded")


class SvcRungOut(BaseModel):
    name: str = Field(description="low-t0, low-t1 (fewer frames), low, medium, high (spatial layers)")
    spatial_layer: int = Field(description="the highest spatial layer (SID) forwarded at this rung")
    temporal_layer: int = Field(description="the highest temporal layer (TID) forwarded at this rung")
    bitrate: int = Field(description="bit/s of every layer this rung forwards, over the last second")
    active: bool = Field(description="its layers arrived in the last second")


class TrackOut(BaseModel):
    track_id: str
    peer_id: str
    user_id: int
    kind: Literal["audio", "video"]
    source: Literal["camera", "screen"] = Field(description="screen: a shared screen (a=content:slides)")
    codec: str
    muted: bool
    simulcast: bool
    red: bool = Field(description="the publisher sends its audio as RED (RFC 2198) with Opus inside")
    layers: list[LayerOut]
    svc: list[SvcRungOut] | None = Field(
        None, description="a VP9 track sent with spatial/temporal layers on one stream: its rungs (docs/sfu.md)"
    )
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
    red: bool = Field(
        description="audio goes as RED (RFC 2198): the subscriber accepted it, its link carries video; else Opus"
    )


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
    worker: int | None = Field(
        None, description="the media worker process running the room (docs/sfu.md#workers); null: in the server's own"
    )
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


async def _room_meeting(request: web.Request) -> int:
    meeting = await load_meeting(request.app, path_int(request, "room_id", meeting_not_found()))
    await require_member(request.app, meeting, current_user(request))
    return meeting.id


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
    return [PeerOut.model_validate(view) for view in await request.app[SFU].room_peers(await _room_meeting(request))]


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
    return RoomStatsOut.model_validate(await request.app[SFU].room_stats(await _room_meeting(request)))


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
    media = request.app[SFU]
    peer_id = request.match_info["peer_id"]
    peer = media.peer_info(peer_id)
    if peer is None:
        # A peer of a meeting whose media runs on another node is that node's to change.
        session = await request.app[STORE].sessions.get(peer_id)
        forwarded = await on_meeting_node(request, session.meeting_id) if session is not None else None
        if forwarded is not None:
            return forwarded
        raise not_found("Peer not found")
    user = current_user(request)
    if peer.user_id != user.id:
        meeting = await load_meeting(request.app, peer.meeting_id)
        await require_moderator(request.app, meeting, user)
    view = await media.control_peer(peer_id, body.model_dump(exclude_none=True))
    if view is None:
        raise not_found("Peer not found")
    if body.noise_suppression is not None:
        await announce(request.app, peer.meeting_id, participant_state(peer.user_id, body.noise_suppression, user.id))
    changes = {kind: value for kind, value in (("audio", body.audio), ("video", body.video)) if value is not None}
    if changes:
        updated = await request.app[STORE].participants.update(peer.meeting_id, peer.user_id, **changes)
        if updated is not None:
            await request.app[HUB].broadcast(
                message(
                    "media-state",
                    peer.meeting_id,
                    peer.user_id,
                    {"user_id": peer.user_id, "media_state": media_state(updated), "by": user.id},
                )
            )
    return PeerOut.model_validate(view)


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


async def _noise_out(request: web.Request, room_id: int) -> NoiseSuppressionOut:
    return NoiseSuppressionOut.model_validate(await request.app[SFU].describe_noise(room_id))


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
    return await _noise_out(request, meeting.id)


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
    await sfu.set_room_noise(meeting.id, body.enabled, body.model)
    answer = await _noise_out(request, meeting.id)
    await announce(request.app, meeting.id, room_state(answer.enabled, answer.model, current_user(request).id))
    return answer
