"""A down-track: one published track as one subscriber receives it.

The subscriber sees a single stream with its own SSRC whose sequence numbers and timestamps run on
without a jump when the server switches simulcast layers or the publisher restarts its sender, so
its decoder and jitter buffer never notice. The 12-byte fixed header is written per receiver, and for
codecs whose payload carries per-encoder counters (VP8's picture IDs) a codec rewriter keeps those
continuous too and drops the temporal layers the receiver does not get; the sequence numbers then
close up over what was dropped, so the receiver sees nothing missing.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Protocol

from sfu import rtcp, rtp
from sfu.gcc import SendSideEstimator
from sfu.repair import RepairLedger
from sfu.svc import FILL, SvcSelector
from sfu.track import Layer, PublishedTrack
from sfu.vp8 import ALL_TEMPORAL, Vp8Rewriter

HISTORY_SIZE = 512  # packets kept per video down-track to answer NACKs (~2 s of 1.5 Mbit/s video)
SWITCH_GUARD_PACKETS = 256  # after a switch, packets older than the switch point are stale
NO_LAYER = -1
HEAVY_LOSS = 0.1  # a sustained fraction lost, per receiver reports, that makes the layer step down
LOSS_SMOOTHING = 0.25  # one report's weight: a single lossy report does not move the layer
# A packet is sent again at most once per this long (or per round trip, if longer): a receiver repeats
# its NACKs while the retransmission is still on its way, and on a congested link every duplicate
# adds to the queue that lost the packet.
RETRANSMIT_MIN_GAP = 0.1
RETRANSMIT_MAX_GAP = 0.5  # a round trip measured through a full queue must not silence repairs for long
PADDING_EXTENSION_WITH_NUMBER = 12  # block header, transport number (3) and abs-send-time (4), padded
SKIPS_KEPT = 64  # runs of dropped packets remembered, to number packets that arrive late
# Of a VP8 layer's bitrate, the share its lowest temporal layers take (libwebrtc's allocation for
# two and three temporal layers: the base layer 60 %, the first two 80 %).
TEMPORAL_SHARES = {2: (0.6, 1.0), 3: (0.6, 0.8, 1.0)}
# Sent again unasked (sfu/repair.py) only while this close behind the newest packet sent: further
# back, a duplicate would look like a restart of the stream to aiortc (100 packets).
RESEND_REACH = 90
REPAIR_BURST_SECONDS = 0.25  # the repair budget saves up at most this long of its rate ...
REPAIR_PACKET = 1300  # ... or one full packet, whichever is more
FILLER = b"\x01"  # a payload of one byte of padding (RFC 3550: the last byte counts the padding)


class PayloadRewriter(Protocol):
    """Per-receiver payload state of a codec whose payload carries counters of its encoder."""

    temporal_layers: int  # how many temporal layers the publisher's stream has shown
    temporal_layer: int  # the highest one being forwarded
    target_temporal: int  # the highest one to forward
    starts_frame: bool  # the packet last rewritten opens a frame
    frames_missed: bool  # ... and follows a whole frame (or more) missing from the publisher's stream

    def rewrite(self, tail: bytes, start: int) -> bytes | bytearray | None:
        """``tail`` (extensions and payload; the payload at ``start``) for this receiver, or ``None``
        to drop the packet."""

    def switch(self) -> None:
        """The next packet starts a key frame of another layer."""

    def set_temporal(self, highest: int) -> None:
        """Forward temporal layers up to ``highest`` from where that is safe."""


REWRITERS: dict[str, Callable[[], PayloadRewriter]] = {"vp8": Vp8Rewriter}


class DownTrack:
    __slots__ = (
        "_bitrate_bytes",
        "_bitrate_start",
        "bandwidth",
        "bitrate",
        "bytes",
        "ceiling",
        "climbed",
        "congested",
        "current_layer",
        "dropped_by_simulation",
        "dropped_seq",
        "estimator",
        "firs",
        "first_sent_at",
        "fraction_lost",
        "guard",
        "history",
        "jitter",
        "last_sent_at",
        "last_seq",
        "last_ts",
        "loss_rate",
        "max_bitrate",
        "mid",
        "nacks",
        "packets",
        "packets_lost",
        "paused",
        "payload_type",
        "plis",
        "preferred_layer",
        "red",
        "repair_at",
        "repair_budget",
        "repairs",
        "reports_rtx",
        "resent_at",
        "retransmits",
        "rewriter",
        "rtt",
        "rtx_payload_type",
        "rtx_seq",
        "rtx_ssrc",
        "send_rtp",
        "sent_any",
        "seq_offset",
        "skips",
        "smoothed_loss",
        "ssrc",
        "starved",
        "subscriber_id",
        "svc",
        "switch_seq",
        "switched_at",
        "switches",
        "target_layer",
        "track",
        "ts_offset",
    )

    def __init__(
        self,
        track: PublishedTrack,
        subscriber_id: str,
        mid: str,
        send_rtp: Callable[[bytes], None],
        loss_rate: float = 0.0,
    ) -> None:
        self.track = track
        self.subscriber_id = subscriber_id
        self.mid = mid
        self.ssrc = random.getrandbits(32) or 1
        self.rtx_ssrc = random.getrandbits(32) or 2
        self.payload_type = track.out_payload_type
        self.rtx_payload_type: int | None = None  # set once the subscriber's answer accepts RTX
        self.red = False  # the subscriber's answer accepts RED audio (sfu/red.py): RED packets go as they are
        self.reports_rtx = False  # the receiver sends reports on the RTX stream (aiortc does)
        self.repairs = RepairLedger()  # what the RTX stream carried, checked against those reports
        self.repair_budget = 0.0  # bytes retransmissions may still take now (see _afford)
        self.repair_at = 0.0
        # The subscriber's send-side estimator, when it agreed to transport-wide feedback: every packet
        # sent to it then carries that connection's transport sequence number (sfu/gcc.py).
        self.estimator: SendSideEstimator | None = None
        self.send_rtp = send_rtp
        # For an SVC track the layers below are rungs of its ladder (sfu/svc.py), all on one stream.
        self.svc = SvcSelector() if track.svc is not None else None
        self.current_layer = self.target_layer = NO_LAYER
        self.preferred_layer = track.rung_count - 1
        self.max_bitrate: int | None = None
        self.bandwidth: int | None = None  # this track's share of the subscriber's estimate, bit/s
        self.climbed = NO_LAYER  # the highest layer let through above the estimate (see sfu/allocator.py)
        self.ceiling = NO_LAYER  # the best layer the preference, the publisher and hard caps allow
        # The congested estimate is far below the lowest layer: no video at all. For audio: the link was
        # congested lately, so no RED (sfu/allocator.py).
        self.starved = False
        self.congested = False  # the estimate shows congestion: a hard limit (see sfu/allocator.py)
        self.paused = True  # until the subscriber's answer accepts the section
        self.seq_offset = self.ts_offset = 0
        self.last_seq = random.getrandbits(16)
        self.last_ts = random.getrandbits(32)
        self.last_sent_at = 0.0
        self.sent_any = False
        self.first_sent_at = 0.0  # monotonic time of the first packet forwarded
        self.switch_seq = 0
        self.switched_at = -1  # the first sequence number sent of the current layer (-1: no layer yet)
        self.guard = 0
        factory = REWRITERS.get(track.codec.name) if track.kind == "video" else None
        self.rewriter: PayloadRewriter | None = factory() if factory is not None else None
        # Where packets were dropped since the last switch: (source sequence number opening a run of
        # dropped packets, the offset that applied before it), oldest first.
        self.skips: list[tuple[int, int]] = []
        self.dropped_seq = -1  # the source sequence number of the newest packet, when it was dropped
        self.history: list[tuple[bytes, int] | None] | None = [None] * HISTORY_SIZE if track.kind == "video" else None
        self.resent_at: list[float] | None = [0.0] * HISTORY_SIZE if track.kind == "video" else None
        self.rtx_seq = random.getrandbits(16)
        self.packets = self.bytes = self.dropped_by_simulation = 0
        self.nacks = self.retransmits = self.plis = self.firs = 0
        self.fraction_lost = 0.0
        self.smoothed_loss = 0.0
        self.packets_lost = 0
        self.jitter = 0
        self.rtt: float | None = None
        self.switches = 0
        self.loss_rate = loss_rate if track.kind == "video" else 0.0
        self._bitrate_bytes = 0
        self._bitrate_start = time.monotonic()
        self.bitrate = 0

    # forwarding ---------------------------------------------------------------------------------

    def send(
        self, layer: Layer, packet: rtp.Packet, first: int, second: int, tail: bytes, extension_length: int
    ) -> None:
        svc = self.svc
        if svc is not None:
            if self.current_layer == NO_LAYER:
                self._switch_to(layer, packet)
                svc.start(packet)
            second = svc.admit(packet, self.track.svc.descriptor, second)
            if second < 0:
                if second != FILL:
                    return
                # A late repair of a layer this receiver does not get: padding in the gap left for it.
                first, second = first | 0x20, self.payload_type
                tail = tail[: len(tail) - (packet.payload_end - packet.payload_start)] + b"\x01"
            self.current_layer = svc.rung
            seq = (packet.seq + self.seq_offset - svc.moved) & 0xFFFF
        else:
            if layer.index != self.current_layer:
                self._switch_to(layer, packet)
            elif self.guard:
                self.guard -= 1
                if rtp.seq_newer(self.switch_seq, packet.seq):
                    return
            if self.rewriter is not None:
                rewritten = self.rewriter.rewrite(tail, len(tail) - packet.payload_end + packet.payload_start)
                if rewritten is None or self.dropped_seq >= 0:
                    self._close_up(packet.seq, rewritten is None)
                    if rewritten is None:
                        return
                tail = rewritten
            seq = (packet.seq + self.seq_offset) & 0xFFFF
            if self.skips and not rtp.seq_newer(seq, self.last_seq):
                seq = (packet.seq + self._offset_at(packet.seq)) & 0xFFFF
        timestamp = (packet.timestamp + self.ts_offset) & 0xFFFFFFFF
        header = rtp.FIXED_HEADER.pack(first, second, seq, timestamp, self.ssrc)
        now = time.monotonic()
        if self.estimator is None:
            data = header + tail
        else:  # ``tail`` is the block after the transport sequence number, which is this receiver's own
            wide = self.track.wide_extensions
            number = self.estimator.stamp(12 + (rtp.WIDE_STAMP_END if wide else rtp.STAMP_END) + len(tail), now)
            data = header + rtp.stamp_prefix((extension_length - 4) // 4, number, wide) + tail
        if self.history is not None:
            self.history[seq % HISTORY_SIZE] = (data, 12 + extension_length)
        if rtp.seq_newer(seq, self.last_seq):
            self.last_seq = seq
            self.last_ts = timestamp
            self.last_sent_at = now
        self.packets += 1
        self.bytes += len(data)
        self._bitrate_bytes += len(data)
        if self.loss_rate and random.random() < self.loss_rate:
            self.dropped_by_simulation += 1
            return
        self.send_rtp(data)

    def _close_up(self, source_seq: int, dropped: bool) -> None:
        """Number what follows a dropped packet as if it had never been sent, so the receiver sees no
        gap (one would stall aiortc's jitter buffer and count as loss). Packets the publisher's own
        stream is missing there (lost on the way in) are closed up over too when they can only belong
        to a dropped frame: between two packets of dropped frames, between a dropped frame and the
        start of the next one, or between the end of a frame and the rest of a dropped one, with no
        whole frame missing in between (a repair of that will come and fill its place). A packet
        that arrives late (after packets sent beyond it) never had a number of its own."""
        assert self.rewriter is not None
        if self.dropped_seq >= 0:
            previous, previous_dropped = self.dropped_seq, True
        else:
            previous, previous_dropped = (self.last_seq - self.seq_offset) & 0xFFFF, False
        if not rtp.seq_newer(source_seq, previous):
            return
        missing = (source_seq - previous - 1) & 0xFFFF
        starts = self.rewriter.starts_frame
        if (
            missing
            and not self.rewriter.frames_missed
            and (
                (previous_dropped and (dropped or starts))
                or (dropped and not starts and not previous_dropped and self._ended_frame())
            )
        ):
            self._shift((previous + 1) & 0xFFFF, missing)
        if dropped:
            self._shift(source_seq, 1)
            self.dropped_seq = source_seq
        else:
            self.dropped_seq = -1

    def _ended_frame(self) -> bool:
        """Whether the newest packet sent ended its frame (carried the marker bit)."""
        entry = self.history[self.last_seq % HISTORY_SIZE] if self.history is not None else None
        return entry is not None and bool(entry[0][1] & 0x80)

    def _shift(self, source_seq: int, count: int) -> None:
        """From ``source_seq`` on, ``count`` fewer numbers are used."""
        skips = self.skips
        if not skips or (skips[-1][0] + skips[-1][1] - self.seq_offset) & 0xFFFF != source_seq:
            skips.append((source_seq, self.seq_offset))
            if len(skips) > SKIPS_KEPT:
                del skips[0]
        self.seq_offset = (self.seq_offset - count) & 0xFFFF

    def _offset_at(self, source_seq: int) -> int:
        """The offset that applied to a packet arriving late: the one before every run of dropped
        packets that came after it."""
        offset = self.seq_offset
        for start, before in reversed(self.skips):
            if not rtp.seq_newer(start, source_seq):
                break
            offset = before
        return offset

    def _switch_to(self, layer: Layer, packet: rtp.Packet) -> None:
        """Start forwarding ``layer`` at this packet (a key frame's first, for video) without a jump."""
        self.skips.clear()
        self.dropped_seq = -1
        if self.rewriter is not None:
            self.rewriter.switch()
        if self.sent_any:
            self.seq_offset = (self.last_seq + 1 - packet.seq) & 0xFFFF
            elapsed = max(time.monotonic() - self.last_sent_at, 0.0)
            step = max(1, int(elapsed * self.track.codec.clock_rate))
            self.ts_offset = (self.last_ts + step - packet.timestamp) & 0xFFFFFFFF
        else:
            self.seq_offset = (self.last_seq + 1 - packet.seq) & 0xFFFF
            self.ts_offset = (self.last_ts - packet.timestamp) & 0xFFFFFFFF
            self.sent_any = True
            self.first_sent_at = time.monotonic()
        if self.current_layer != NO_LAYER:
            self.switches += 1
        self.current_layer = layer.index
        self.switch_seq = packet.seq
        self.switched_at = (packet.seq + self.seq_offset) & 0xFFFF
        self.guard = SWITCH_GUARD_PACKETS

    def resync(self, index: int) -> None:
        """The layer's source changed (new SSRC): wait for its next key frame and continue from there."""
        if self.current_layer == index or (self.svc is not None and self.current_layer != NO_LAYER):
            self.current_layer = NO_LAYER
            self.track.request_keyframe(self.target_layer)

    # layer choice -------------------------------------------------------------------------------

    def choose_layer(self) -> None:
        """Forward the best layer the subscriber asked for that its caps allow and its share of the
        estimate carries (or that the allocator let it climb to)."""
        if self.paused or self.track.muted:
            self.target_layer = self.current_layer = self.ceiling = NO_LAYER
            return
        if self.track.rung_count == 1:
            self.target_layer = self.ceiling = 0
            # A receiver starts at a key frame: one that came before it was added is no use, and a
            # still source (a shared screen) may not send another for a long time unless asked.
            if self.current_layer != 0:
                self.track.request_keyframe(0)
            return
        active = self.track.active_rungs()
        cap = self.max_bitrate
        if self.smoothed_loss > HEAVY_LOSS and self.current_layer > 0:
            # The receiver's reports say the path keeps dropping what it gets now: step below it.
            lossy = int(self.track.rung_rate(self.current_layer) * (1 - self.smoothed_loss))
            cap = lossy if cap is None else min(cap, lossy)
        ceiling = choice = active[0] if active else 0
        for index in active:
            if index > self.preferred_layer:
                break
            rate = self.track.rung_rate(index)
            if cap is not None and rate > cap:
                continue
            ceiling = index
            if self.bandwidth is None or rate <= self.bandwidth or index <= self.climbed:
                choice = index
        self.ceiling = ceiling
        if self.starved and choice == (active[0] if active else 0) and self.climbed < choice:
            # Not even the lowest layer fits: audio only, until a probe shows the lowest layer fits.
            self.target_layer = self.current_layer = NO_LAYER
            return
        self.target_layer = choice
        if self.svc is not None:
            self.svc.aim(choice)
            if self.current_layer == NO_LAYER or self.svc.needs_keyframe:  # (re)starting, or going up
                self.track.request_keyframe(0)
        elif self.target_layer != self.current_layer:
            self.track.request_keyframe(self.target_layer)
        self._choose_temporal(choice)

    def _choose_temporal(self, index: int) -> None:
        """Within the layer chosen, forward only the temporal layers its share of a congested estimate
        carries when the whole layer does not fit (the lowest layer, before video is paused): a step
        finer than a simulcast layer, taken at once, without waiting for a key frame. As with layers,
        the way back up is a climb (the estimate follows what is received, so it never says more fits)."""
        rewriter = self.rewriter
        if rewriter is None:
            return
        highest = ALL_TEMPORAL
        shares = TEMPORAL_SHARES.get(rewriter.temporal_layers)
        rate = self.track.layers[index].bitrate
        bandwidth = self.bandwidth
        constrained = self.congested and bandwidth is not None and rate > bandwidth > 0
        if shares is not None and constrained and index > self.climbed:
            highest = 0
            while highest + 1 < len(shares) and rate * shares[highest + 1] <= bandwidth:
                highest += 1
        rewriter.set_temporal(highest)

    @property
    def held_back(self) -> bool:
        """Only the estimate keeps this down-track below the layer it would otherwise get."""
        return self.target_layer < self.ceiling or self.temporal_held

    @property
    def temporal_held(self) -> bool:
        """Temporal layers of the target layer are being left out."""
        rewriter = self.rewriter
        return rewriter is not None and rewriter.temporal_layers > 1 and rewriter.target_temporal < ALL_TEMPORAL

    def next_layer_up(self) -> int | None:
        """The layer a climb would try: the target itself, whole, when some of its temporal layers are
        left out; otherwise the next active one above it, within the ceiling."""
        if self.temporal_held and self.target_layer >= 0:
            return self.target_layer
        above = [index for index in self.track.active_rungs() if self.target_layer < index <= self.ceiling]
        return above[0] if above else None

    def climb(self, probed: int | None = None) -> None:
        """Try the next layer up despite the estimate (the allocator decides when); after a probe, no
        higher than the ``probed`` layer: what is next up may have changed while the probe ran (a
        dip in the layer's own rate lets its temporal layers through, so the next layer up is then
        the one above, which nothing has shown the link carries)."""
        above = self.next_layer_up()
        if above is not None and probed is not None:
            above = min(above, probed)
        if above is not None:
            self.climbed = above
            self.choose_layer()

    @property
    def takes_red(self) -> bool:
        """RED audio goes to this receiver: it accepted RED, and its link has not been congested lately."""
        return self.red and not self.starved

    def set_paused(self, paused: bool) -> None:
        self.paused = paused
        self.choose_layer()

    # feedback from the subscriber ---------------------------------------------------------------

    def on_nack(self, lost: list[int], send_rtp: Callable[[bytes], None]) -> None:
        self.nacks += 1
        now = time.monotonic()
        for seq in lost:
            self._retransmit(seq, now, send_rtp)

    def on_rtx_report(self, block: rtcp.ReportBlock, send_rtp: Callable[[bytes], None], now: float) -> None:
        """The receiver reports on the RTX stream: send again what it says was lost (sfu/repair.py),
        unless that is so far behind what it has since received that, were it a duplicate after all,
        the receiver would take it for a restart of the stream (aiortc: 100 packets)."""
        self.reports_rtx = True
        for seq in self.repairs.on_report(block.highest_seq, block.packets_lost, now):
            if (self.last_seq - seq) & 0xFFFF < RESEND_REACH:
                self._retransmit(seq, now, send_rtp)

    def _retransmit(self, seq: int, now: float, send_rtp: Callable[[bytes], None]) -> None:
        """Send packet ``seq`` again, on the RTX stream if the receiver accepted one."""
        if self.history is None or self.resent_at is None:
            return
        entry = self.history[seq % HISTORY_SIZE]
        if entry is None or (entry[0][2] << 8 | entry[0][3]) != seq:
            return
        gap = min(max(RETRANSMIT_MIN_GAP, self.rtt or 0.0), RETRANSMIT_MAX_GAP)
        if now - self.resent_at[seq % HISTORY_SIZE] < gap:
            return
        data, payload_offset = entry
        extension = data[12:payload_offset]
        obsolete = self._obsolete(seq, data)
        payload = FILLER if obsolete else data[payload_offset:]
        if not obsolete and not self._afford(len(data), now):
            self.repairs.owe(seq)
            return
        self.resent_at[seq % HISTORY_SIZE] = now
        padding = 0x20 if obsolete else 0
        span = rtp.stamp_span(extension) if self.estimator is not None else None
        if span is not None:
            # A retransmission is a new packet on the transport: it gets a number of its own.
            size = 12 + len(extension) + len(payload) + (2 if self.rtx_payload_type is not None else 0)
            number = self.estimator.stamp(size, now)
            extension = extension[: span[0]] + number.to_bytes(2, "big") + extension[span[1] :]
        if self.rtx_payload_type is not None:
            self.rtx_seq = (self.rtx_seq + 1) & 0xFFFF
            self.repairs.note(self.rtx_seq, seq, now)
            header = bytes(((data[0] & 0xDF) | padding, (data[1] & 0x80) | self.rtx_payload_type))
            data = (
                header
                + self.rtx_seq.to_bytes(2, "big")
                + data[4:8]
                + self.rtx_ssrc.to_bytes(4, "big")
                + extension
                + data[2:4]
                + payload
            )
        else:
            data = bytes(((data[0] & 0xDF) | padding,)) + data[1:12] + extension + payload
        self.retransmits += 1
        send_rtp(data)

    def _afford(self, size: int, now: float) -> bool:
        """Whether a retransmission of ``size`` bytes fits the repair budget: at most this track's
        share of the subscriber's estimate, over and above its media (as libwebrtc limits its own).
        Without it, on a link already too narrow, every lost packet sent again, and asked for again
        once a round trip when the repair is lost too, kept the link overfilled: the audio that was
        all a starved viewer still got was lost with it."""
        if self.bandwidth is None:
            return True
        rate = self.bandwidth / 8
        self.repair_budget = min(
            self.repair_budget + rate * (now - self.repair_at), max(rate * REPAIR_BURST_SECONDS, REPAIR_PACKET)
        )
        self.repair_at = now
        if self.repair_budget < size:
            return False
        self.repair_budget -= size
        return True

    def _obsolete(self, seq: int, data: bytes) -> bool:
        """Whether a lost packet is answered with a filler (its number, padding, no payload) rather
        than sent again: it belongs to a frame from before the key frame the receiver now decodes
        from, so its payload is no use to the decoder, while a receiver that delivers strictly in
        order (aiortc) waits for every number. A filler costs a fortieth of the bytes on a link that
        just proved too narrow for the layer the packet belonged to. The packet that opens a frame
        is always sent whole: a frame made only of fillers would reach the decoder empty, which
        FFmpeg takes for the end of the stream (and then decodes nothing more)."""
        if self.svc is not None:
            return False
        paused = self.current_layer == NO_LAYER  # video resumes with a key frame: all before it is past
        if not paused and (self.switched_at < 0 or not rtp.seq_newer(self.switched_at, seq)):
            return False
        assert self.history is not None
        before = self.history[(seq - 1) % HISTORY_SIZE]
        return (
            before is not None
            and (before[0][2] << 8 | before[0][3]) == (seq - 1) & 0xFFFF
            and before[0][4:8] == data[4:8]
        )

    def padding_packet(self, size: int) -> bytes | None:
        """A padding-only packet on the RTX stream (``size`` bytes of padding, at most 255), stamped
        with the send time; ``None`` when the subscriber did not accept RTX."""
        if self.rtx_payload_type is None:
            return None
        self.rtx_seq = (self.rtx_seq + 1) & 0xFFFF
        header = rtp.FIXED_HEADER.pack(0xB0, self.rtx_payload_type, self.rtx_seq, self.last_ts, self.rtx_ssrc)
        elements = [(rtp.OUT_ID_ABS_SEND_TIME, rtp.abs_send_time())]
        if self.estimator is not None:
            number = self.estimator.stamp(12 + PADDING_EXTENSION_WITH_NUMBER + size, time.monotonic())
            elements.insert(0, (rtp.OUT_ID_TRANSPORT_CC, number.to_bytes(2, "big")))
        return header + rtp.extension_block(elements) + bytes(size - 1) + bytes((size,))

    def on_keyframe_request(self, full: bool) -> None:
        if full:
            self.firs += 1
        else:
            self.plis += 1
        self.track.request_keyframe(self.current_layer if self.current_layer != NO_LAYER else self.target_layer)

    def on_report(self, block: rtcp.ReportBlock, now_ntp_middle: int) -> None:
        self.fraction_lost = block.fraction_lost / 256
        self.smoothed_loss += (self.fraction_lost - self.smoothed_loss) * LOSS_SMOOTHING
        self.packets_lost = block.packets_lost
        self.jitter = block.jitter
        if block.lsr:
            self.rtt = max(0.0, ((now_ntp_middle - block.lsr - block.dlsr) & 0xFFFFFFFF) / 65536)

    # reports to the subscriber ------------------------------------------------------------------

    def sender_report(self) -> bytes | None:
        """An SR mapping this stream's timestamps to the publisher's clock, so lip-sync survives."""
        if self.current_layer == NO_LAYER or not self.sent_any:
            return None
        layer = self.track.layers[self.current_layer if self.svc is None else 0]
        report = layer.sender_report
        if report is None:
            return None
        elapsed = time.monotonic() - layer.sender_report_at
        ntp = report.ntp + int(elapsed * (1 << 32))
        rtp_ts = report.rtp_timestamp + int(elapsed * self.track.codec.clock_rate) + self.ts_offset
        return rtcp.sender_report(self.ssrc, ntp, rtp_ts, self.packets, self.bytes)

    def roll_window(self, now: float) -> None:
        elapsed = now - self._bitrate_start
        if elapsed > 0:
            self.bitrate = int(self._bitrate_bytes * 8 / elapsed)
        self._bitrate_bytes = 0
        self._bitrate_start = now

    @property
    def temporal_layer(self) -> int | None:
        """The highest temporal layer being forwarded; ``None`` when the codec shows none."""
        if self.rewriter is None or self.current_layer == NO_LAYER:
            return None
        return self.rewriter.temporal_layer

    def layer_name(self, index: int) -> str | None:
        return self.track.rung_name(index)
