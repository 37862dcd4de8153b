"""A published track: one publisher's audio or video, its simulcast layers and who receives it."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from sfu import av1dd, red, rtcp, rtp, svc
from sfu.negotiation import OUTGOING_PAYLOAD_TYPES, OUTGOING_RED_PAYLOAD_TYPE
from sfu.sdp import Codec

if TYPE_CHECKING:
    from sfu.denoise import SuppressedTrack
    from sfu.forwarder import DownTrack
    from sfu.taps import Tap

LAYER_NAMES = ("low", "medium", "high")
KEYFRAME_REQUEST_INTERVAL = 0.5  # seconds between key-frame requests for one layer: no PLI storms
LAYER_IDLE_SECONDS = 1.0  # a layer that sent nothing for this long is treated as paused
RESUME_GRACE = 3.0  # seconds a layer resumed by dynacast stays available before it must have arrived
UPSTREAM_NACK_MAX_GAP = 64  # larger gaps are a reset, not loss worth repairing


def layer_names(count: int) -> list[str]:
    """Names for ``count`` layers ordered low to high: one layer is "high", two are "low" and "high"."""
    if count == 1:
        return ["high"]
    if count == 2:
        return ["low", "high"]
    return list(LAYER_NAMES[:count]) if count <= 3 else [f"layer{index}" for index in range(count)]


class Layer:
    """One encoding of a track as it arrives: its SSRC, receive statistics and last sender report."""

    __slots__ = (
        "_window_bytes",
        "_window_frames",
        "_window_start",
        "base_seq",
        "bitrate",
        "bytes",
        "cycles",
        "expected_prior",
        "fps",
        "frames",
        "held",
        "highest_seq",
        "index",
        "jitter",
        "keyframe_requests",
        "last_arrival",
        "last_keyframe_request",
        "last_timestamp",
        "last_transit",
        "lost",
        "missing",
        "nacks_sent",
        "name",
        "packets",
        "probes",
        "received_prior",
        "resumed_at",
        "rid",
        "rtx_ssrc",
        "sender_report",
        "sender_report_at",
        "ssrc",
    )

    def __init__(self, index: int, name: str, rid: str = "") -> None:
        self.index = index
        self.name = name
        self.rid = rid
        self.ssrc = 0
        self.rtx_ssrc = 0
        self.packets = self.bytes = self.frames = self.lost = self.nacks_sent = 0
        self.keyframe_requests = 0
        self.missing: set[int] = set()  # sequence numbers NACKed upstream and not yet repaired
        self.probes = 0  # retransmissions nobody asked for (the publisher probing bandwidth): dropped
        self.highest_seq = -1
        self.cycles = 0
        self.base_seq = 0
        self.expected_prior = self.received_prior = 0
        self.jitter = 0.0
        self.last_transit: float | None = None
        self.last_arrival = 0.0
        self.last_timestamp = -1
        self.sender_report: rtcp.SenderReport | None = None
        self.sender_report_at = 0.0
        self.last_keyframe_request = 0.0
        self.bitrate = 0
        self.fps = 0.0
        self.held = False  # paused by dynacast (sfu/dynacast.py): not sent until a receiver needs it
        self.resumed_at = float("-inf")  # when dynacast last resumed it
        self._window_bytes = self._window_frames = 0
        self._window_start = time.monotonic()

    def bind(self, ssrc: int) -> None:
        """A new SSRC (first packet, or the publisher restarted its sender): statistics start over."""
        self.ssrc = ssrc
        self.highest_seq = -1
        self.cycles = 0
        self.last_transit = None
        self.last_timestamp = -1
        self.expected_prior = self.received_prior = 0
        self.sender_report = None

    @property
    def active(self) -> bool:
        return time.monotonic() - self.last_arrival < LAYER_IDLE_SECONDS

    @property
    def available(self) -> bool:
        """Arriving, or paused by dynacast and so to be had by choosing it (sfu/dynacast.py)."""
        return self.active or self.held or time.monotonic() - self.resumed_at < RESUME_GRACE

    def wanted_repair(self, seq: int) -> bool:
        """Whether a retransmitted packet fills a gap; a publisher's padding probes repeat old packets."""
        if seq in self.missing:
            self.missing.discard(seq)
            return True
        self.probes += 1
        return False

    def note(self, packet: rtp.Packet, now: float, clock_rate: int) -> list[int]:
        """Count the packet; return sequence numbers found missing just before it (to NACK upstream)."""
        self.packets += 1
        self._window_bytes += packet.payload_end
        self.bytes += packet.payload_end
        self.last_arrival = now
        if packet.timestamp != self.last_timestamp:
            self.last_timestamp = packet.timestamp
            self._window_frames += 1
            self.frames += 1
        transit = now * clock_rate - packet.timestamp
        if self.last_transit is not None:
            self.jitter += (abs(transit - self.last_transit) - self.jitter) / 16
        self.last_transit = transit
        missing: list[int] = []
        if self.highest_seq < 0:
            self.highest_seq = packet.seq
            self.base_seq = packet.seq
        elif rtp.seq_newer(packet.seq, self.highest_seq):
            gap = (packet.seq - self.highest_seq) & 0xFFFF
            if 1 < gap <= UPSTREAM_NACK_MAX_GAP:
                missing = [(self.highest_seq + step) & 0xFFFF for step in range(1, gap)]
                if len(self.missing) > 4 * UPSTREAM_NACK_MAX_GAP:
                    self.missing.clear()
                self.missing.update(missing)
            if packet.seq < self.highest_seq:
                self.cycles += 0x10000
            self.highest_seq = packet.seq
        return missing

    def extended_highest(self) -> int:
        return self.cycles + max(self.highest_seq, 0)

    def roll_window(self, now: float) -> None:
        elapsed = now - self._window_start
        if elapsed <= 0:
            return
        if self.held:  # keep the rate it had: what choosing it again would cost
            self._window_bytes = self._window_frames = 0
            self._window_start = now
            return
        self.bitrate = int(self._window_bytes * 8 / elapsed)
        self.fps = round(self._window_frames / elapsed, 1)
        self._window_bytes = self._window_frames = 0
        self._window_start = now

    def report_block(self, now: float) -> rtcp.ReportBlock:
        expected = self.extended_highest() - self.base_seq + 1
        lost_total = max(0, expected - self.packets)
        expected_interval = expected - self.expected_prior
        received_interval = self.packets - self.received_prior
        self.expected_prior, self.received_prior = expected, self.packets
        lost_interval = expected_interval - received_interval
        fraction = 0 if expected_interval <= 0 or lost_interval <= 0 else (lost_interval << 8) // expected_interval
        self.lost = lost_total
        lsr = dlsr = 0
        if self.sender_report is not None:
            lsr = rtcp.middle_ntp(self.sender_report.ntp)
            dlsr = int((now - self.sender_report_at) * 65536)
        return rtcp.ReportBlock(
            self.ssrc, min(fraction, 255), lost_total, self.extended_highest() & 0xFFFFFFFF, int(self.jitter), lsr, dlsr
        )


class PublishedTrack:
    """A publisher's track. Packets from any of its layers fan out to its down-tracks."""

    def __init__(
        self,
        publisher_id: str,
        user_id: int,
        kind: str,
        codec: Codec,
        mid: str,
        stream_id: str,
        layer_rids: list[str],
        request_keyframe: Callable[[Layer], None],
        level_extension_id: int = 0,
        source: str = "camera",
        dependency_extension_id: int = 0,
    ) -> None:
        self.id = secrets.token_hex(8)
        self.publisher_id = publisher_id
        self.user_id = user_id
        self.kind = kind
        self.codec = codec
        self.out_payload_type = OUTGOING_PAYLOAD_TYPES[codec.name][0]
        self.mid = mid
        self.stream_id = stream_id
        self.source = source  # "camera" (microphone for audio) or "screen": how receivers show it
        count = max(1, len(layer_rids))
        names = layer_names(count)
        self.layers = [Layer(index, names[index], layer_rids[index] if layer_rids else "") for index in range(count)]
        self.downtracks: list[DownTrack] = []
        self.taps: list[Tap] = []  # recordings of this track, fed in process
        self.cleaner: SuppressedTrack | None = None  # live noise suppression, forwarded in place of the original
        self.muted = False  # by a host or the publisher, server-side: nothing is forwarded
        self.audio_level = 127  # -dBov of the loudest recent packet; 127 is silence
        self._request_keyframe = request_keyframe
        self.level_extension_id = level_extension_id
        self.red_payload_type: int | None = None  # the publisher sends RED audio under this type (sfu/red.py)
        self._detect_keyframe = rtp.KEYFRAME_DETECTORS.get(codec.name)
        # A VP9 or AV1 track sent as one encoding may carry spatial and temporal layers (sfu/svc.py);
        # AV1's are told by the dependency descriptor, forwarded as it came (so in two-byte-header
        # extension blocks: a key frame's outgrows the one-byte form).
        self.dependencies: av1dd.DependencyReader | None = None
        self.wide_extensions = codec.name == "av1"
        if codec.name == "av1" and count == 1:
            self.dependencies = av1dd.DependencyReader(dependency_extension_id)
            self.svc: svc.SvcLayers | None = svc.SvcLayers(self.dependencies.read)
        else:
            self.svc = svc.SvcLayers() if codec.name == "vp9" and count == 1 else None

    @property
    def simulcast(self) -> bool:
        return len(self.layers) > 1

    def layer_named(self, name: str) -> int | None:
        for layer in self.layers:
            if layer.name == name:
                return layer.index
        return None

    def active_layers(self) -> list[int]:
        """The layers a receiver may choose: arriving, or paused by dynacast (``Layer.available``)."""
        return [layer.index for layer in self.layers if layer.available]

    # The ladder a receiver's layer is chosen on: the simulcast layers, or an SVC track's rungs.

    @property
    def rung_count(self) -> int:
        return len(svc.RUNGS) if self.svc is not None else len(self.layers)

    def rung_rate(self, index: int) -> int:
        return self.svc.rung_rate(index) if self.svc is not None else self.layers[index].bitrate

    def active_rungs(self) -> list[int]:
        return self.svc.active_rungs() if self.svc is not None else self.active_layers()

    def rung_name(self, index: int) -> str | None:
        names = svc.RUNG_NAMES if self.svc is not None else [layer.name for layer in self.layers]
        return names[index] if 0 <= index < len(names) else None

    def rung_named(self, name: str) -> int | None:
        if self.svc is not None:
            return svc.RUNG_NAMES.index(name) if name in svc.RUNG_NAMES else None
        return self.layer_named(name)

    def is_keyframe(self, packet: rtp.Packet) -> bool:
        if self._detect_keyframe is None:
            return True
        return self._detect_keyframe(packet.data, packet.payload_start, packet.payload_end)

    def request_keyframe(self, index: int) -> None:
        """Ask the publisher for a key frame on one layer, at most every KEYFRAME_REQUEST_INTERVAL
        (an SVC track's rungs are all one stream)."""
        if self.svc is not None and index >= 0:
            index = 0
        if self.kind != "video" or not 0 <= index < len(self.layers):
            return
        layer = self.layers[index]
        now = time.monotonic()
        if layer.ssrc and now - layer.last_keyframe_request >= KEYFRAME_REQUEST_INTERVAL:
            layer.last_keyframe_request = now
            layer.keyframe_requests += 1
            self._request_keyframe(layer)

    def feed_taps(self, layer: Layer, packet: rtp.Packet) -> None:
        """Hand a packet to each recording's tap: padding-only ones too (which nobody else gets), so
        that a tap's sequence has no holes where the publisher sent padding on the media stream."""
        if not self.muted:
            for tap in self.taps:
                tap.feed(layer, packet)

    def forward(self, layer: Layer, packet: rtp.Packet) -> None:
        """Hand the packet to each recording's tap, then to the receivers (or, while the track's
        noise is suppressed, its cleaned copy once it is back; see sfu/denoise.py)."""
        if self.muted:
            return
        redundant = None
        if packet.payload_type == self.red_payload_type:  # everyone but RED receivers takes the primary
            redundant, plain = packet, red.primary_packet(packet)
            if plain is None:
                return
            packet = plain
        if self.taps:
            self.feed_taps(layer, packet)
        if self.cleaner is not None and self.cleaner.take(layer, packet):
            return
        self.pass_down(layer, packet, redundant)

    def pass_down(self, layer: Layer, packet: rtp.Packet, redundant: rtp.Packet | None = None) -> None:
        """Forward ``packet``; receivers that accepted RED get ``redundant``, the RED packet it came in, if any."""
        level = packet.extensions.get(self.level_extension_id) if self.level_extension_id else None
        level = level[:1] if level else None
        if redundant is None or not any(down.takes_red for down in self.downtracks):
            self.send_down(layer, packet, level)
            return
        self.send_down(layer, packet, level, [down for down in self.downtracks if not down.takes_red])
        redundant = red.renumbered(redundant, self.out_payload_type)
        self.send_down(
            layer, redundant, level, [down for down in self.downtracks if down.takes_red], OUTGOING_RED_PAYLOAD_TYPE
        )

    def send_down(
        self,
        layer: Layer,
        packet: rtp.Packet,
        level: bytes | None,
        downtracks: list[DownTrack] | None = None,
        payload_type: int | None = None,
    ) -> None:
        """Build the receiver-independent part of the outgoing packet once, then hand it to each
        receiver (of ``downtracks``, by default all)."""
        descriptor = None
        if self.svc is not None:
            descriptor = self.svc.note(packet, layer.last_arrival)
            if descriptor is None:
                return
        downtracks = self.downtracks if downtracks is None else downtracks
        if not downtracks:
            return
        elements = [(rtp.OUT_ID_ABS_SEND_TIME, rtp.abs_send_time())]
        if level:
            elements.insert(0, (rtp.OUT_ID_AUDIO_LEVEL, level))
            self.audio_level = min(self.audio_level, level[0] & 0x7F)
        wide = self.wide_extensions
        if self.dependencies is not None:
            elements.append((rtp.OUT_ID_DEPENDENCY_DESCRIPTOR, packet.extensions[self.dependencies.extension_id]))
        extension = rtp.extension_block(elements, wide)
        payload = packet.data[packet.payload_start : packet.payload_end]
        tail = extension + payload
        stamped_tail = b""  # for receivers with transport-wide feedback: the block after their number
        stamped_length = 0
        first = 0x90
        second = (0x80 if packet.marker else 0) | (payload_type or self.out_payload_type)
        keyframe = None
        scalable = descriptor is not None  # every rung is on layer 0: only a receiver's start waits
        for down in downtracks:
            if down.current_layer != layer.index and (not scalable or down.current_layer < 0):
                if down.target_layer != layer.index and (not scalable or down.target_layer < 0):
                    continue
                if keyframe is None:
                    keyframe = descriptor.keyframe if descriptor is not None else self.is_keyframe(packet)
                if not keyframe:
                    continue
            if down.estimator is None:
                down.send(layer, packet, first, second, tail, len(extension))
                continue
            if not stamped_length:
                stamped = rtp.extension_block([(rtp.OUT_ID_TRANSPORT_CC, b"\0\0"), *elements], wide)
                stamped_tail = stamped[rtp.WIDE_STAMP_END if wide else rtp.STAMP_END :] + payload
                stamped_length = len(stamped)
            down.send(layer, packet, first, second, stamped_tail, stamped_length)
