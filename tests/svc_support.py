"""A receiver of a scalable (SVC) video track, driven packet by packet without a network: what
the VP9 and AV1 selection tests share."""

from __future__ import annotations

import time
from typing import Any

from sfu import rtp, svc
from sfu.forwarder import DownTrack
from sfu.sdp import Codec
from sfu.track import PublishedTrack

RUNG = {name: index for index, name in enumerate(svc.RUNG_NAMES)}


def svc_receiver(codec: Codec, ssrc: int, rung: str, **track: Any) -> tuple[DownTrack, list[bytes], list[int]]:
    """A receiver of a one-encoding ``codec`` track from ``ssrc``, aiming at ``rung``; what it is
    sent, and the key-frame requests. ``track`` goes to the PublishedTrack (its extension ids)."""
    requests: list[int] = []
    published = PublishedTrack(
        "p", 1, "video", codec, "1", "s", [""], lambda layer: requests.append(layer.index), **track
    )
    published.layers[0].bind(ssrc)
    sent: list[bytes] = []
    down = DownTrack(published, "sub", "0", sent.append)
    down.paused = False
    down.target_layer = RUNG[rung]
    assert down.svc is not None
    down.svc.aim(RUNG[rung])
    published.downtracks.append(down)
    return down, sent, requests


def forward(down: DownTrack, captured: list[rtp.Packet]) -> None:
    """The packets as they arrive from the publisher, forwarded to the track's receivers."""
    track = down.track
    layer = track.layers[0]
    for packet in captured:
        layer.note(packet, time.monotonic(), 90000)
        track.forward(layer, packet)
