"""What the REST views show of a room's peers (``/api/v1/webrtc``), as plain data: built where
the room runs, which may be a worker process (docs/sfu.md#workers) that sends them as JSON."""

from __future__ import annotations

from typing import Any

from sfu.forwarder import DownTrack
from sfu.peer import Peer
from sfu.svc import RUNG_NAMES, RUNGS
from sfu.track import PublishedTrack


def track_view(track: PublishedTrack) -> dict[str, Any]:
    return {
        "track_id": track.id,
        "peer_id": track.publisher_id,
        "user_id": track.user_id,
        "kind": track.kind,
        "source": track.source,
        "codec": track.codec.name,
        "muted": track.muted,
        "simulcast": track.simulcast,
        "red": track.red_payload_type is not None,
        "subscribers": len(track.downtracks),
        "layers": [
            {
                "name": layer.name,
                "rid": layer.rid,
                "ssrc": layer.ssrc,
                "active": layer.active,
                "paused": layer.held,
                "bitrate": layer.bitrate,
                "fps": layer.fps,
                "packets": layer.packets,
                "bytes": layer.bytes,
                "packets_lost": layer.lost,
                "jitter": int(layer.jitter),
                "nacks_sent": layer.nacks_sent,
                "keyframe_requests": layer.keyframe_requests,
                "probes_dropped": layer.probes,
            }
            for layer in track.layers
        ],
        "svc": _svc_rungs(track),
    }


def _svc_rungs(track: PublishedTrack) -> list[dict[str, Any]] | None:
    """A track sent with spatial/temporal layers on one stream (VP9 SVC): its rungs."""
    if track.svc is None:
        return None
    active = set(track.active_rungs())
    return [
        {
            "name": RUNG_NAMES[index],
            "spatial_layer": sid,
            "temporal_layer": tid,
            "bitrate": track.rung_rate(index),
            "active": index in active,
        }
        for index, (sid, tid) in enumerate(RUNGS)
    ]


def _subscription(down: DownTrack) -> dict[str, Any]:
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
        "red": down.takes_red,
    }


def peer_view(peer: Peer) -> dict[str, Any]:
    return {
        "peer_id": peer.id,
        "user_id": peer.user_id,
        "publisher_state": peer.publisher.state,
        "subscriber_state": peer.subscriber.state,
        "published": [track_view(track) for track in peer.publisher.tracks.values()],
        "subscriptions": [_subscription(down) for down in peer.subscriber.downtracks.values()],
    }


def _transports(peer: Peer) -> list[dict[str, Any]]:
    found = []
    for name, side in (("publisher", peer.publisher), ("subscriber", peer.subscriber)):
        if side.transport is None:
            continue
        stats = side.transport.stats
        found.append(
            {
                "peer_id": peer.id,
                "connection": name,
                "state": side.state,
                "packets_in": stats.packets_in,
                "bytes_in": stats.bytes_in,
                "packets_out": stats.packets_out,
                "bytes_out": stats.bytes_out,
                "srtp_failures": stats.srtp_failures,
                "malformed": stats.malformed,
                "unrouted": peer.publisher.unrouted if name == "publisher" else 0,
            }
        )
    return found


def room_stats(room_id: int, peers: list[Peer]) -> dict[str, Any]:
    subscriptions = [
        {
            **_subscription(down),
            "subscriber_peer_id": peer.id,
            "subscriber_user_id": peer.user_id,
            "bitrate": down.bitrate,
            "packets": down.packets,
            "bytes": down.bytes,
            "packets_lost": down.packets_lost,
            "fraction_lost": round(down.fraction_lost, 4),
            "jitter": down.jitter,
            "rtt_ms": round(down.rtt * 1000, 1) if down.rtt is not None else None,
            "nacks": down.nacks,
            "retransmits": down.retransmits,
            "plis": down.plis,
            "firs": down.firs,
            "layer_switches": down.switches,
            "bandwidth": down.bandwidth,
        }
        for peer in peers
        for down in peer.subscriber.downtracks.values()
    ]
    return {
        "room_id": room_id,
        "peers": len(peers),
        "tracks": [track_view(track) for peer in peers for track in peer.publisher.tracks.values()],
        "subscriptions": subscriptions,
        "transports": [stats for peer in peers for stats in _transports(peer)],
    }
