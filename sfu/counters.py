"""The media server's running totals, read by monitoring (Prometheus) when it asks, never counted per
packet: each down-track and each published layer already counts what passes it in plain integers,
and when one goes away its counts are folded into the totals here, so the sums only ever grow."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sfu.forwarder import DownTrack
    from sfu.track import PublishedTrack


@dataclass(slots=True)
class MediaTotals:
    # From publishers (every layer of every published track).
    received_packets: int = 0
    received_bytes: int = 0
    nacks_sent: int = 0  # NACKs the server sent publishers for packets that did not arrive
    keyframe_requests_sent: int = 0  # PLIs the server sent publishers
    # To subscribers (every down-track).
    forwarded_packets: int = 0
    forwarded_bytes: int = 0
    nacks_received: int = 0
    retransmitted_packets: int = 0
    plis_received: int = 0
    firs_received: int = 0
    layer_switches: int = 0
    receiver_lost_packets: int = 0  # as the subscribers' receiver reports count them

    def add_downtrack(self, down: DownTrack) -> None:
        self.forwarded_packets += down.packets
        self.forwarded_bytes += down.bytes
        self.nacks_received += down.nacks
        self.retransmitted_packets += down.retransmits
        self.plis_received += down.plis
        self.firs_received += down.firs
        self.layer_switches += down.switches
        # A report's cumulative count is signed (duplicates can outnumber losses): none is lost then.
        self.receiver_lost_packets += max(0, down.packets_lost)

    def add_track(self, track: PublishedTrack) -> None:
        for layer in track.layers:
            self.received_packets += layer.packets
            self.received_bytes += layer.bytes
            self.nacks_sent += layer.nacks_sent
            self.keyframe_requests_sent += layer.keyframe_requests

    def plus(self, other: MediaTotals) -> MediaTotals:
        return MediaTotals(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))
