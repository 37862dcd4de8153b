"""The subscriber connection of a peer: the server offers every other participant's tracks and
renegotiates when they change. Only the server offers here, so offers never collide."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import TYPE_CHECKING, Any

from aioice import Connection

from sfu import rtcp, rtp, sdp
from sfu.allocator import BandwidthAllocator
from sfu.forwarder import NO_LAYER, DownTrack
from sfu.gcc import SendSideEstimator
from sfu.negotiation import (
    OUTGOING_RED_PAYLOAD_TYPE,
    OfferSlot,
    accepted_in_answer,
    outgoing_codec,
    subscriber_offer,
)
from sfu.network import NO_MEDIA_PORT, NoMediaPort, gather
from sfu.svc import SPATIAL_NAMES
from sfu.track import PublishedTrack
from sfu.transport import MediaTransport, add_candidate
from sfu.twcc import TransportFeedback

if TYPE_CHECKING:
    from sfu.peer import Peer

log = logging.getLogger("huiyi.sfu.subscriber")


class NegotiationError(Exception):
    """The client's message does not fit the negotiation's state; told to the client as an error."""


class SubscriberSide:
    def __init__(self, peer: Peer) -> None:
        self.peer = peer
        self.transport: MediaTransport | None = None
        self.state = "new"
        self.slots: list[OfferSlot] = []
        self.downtracks: dict[str, DownTrack] = {}  # by track id
        self.by_ssrc: dict[int, DownTrack] = {}
        self.reusable: set[str] = set()  # mids whose inactive state the client has answered
        self.version = 0
        self.awaiting_answer = False
        self.again = False  # tracks changed while an offer was out: offer again after the answer
        self.fresh_ice: Connection | None = None  # gathered for a requested ICE restart
        self.offered_ice: Connection | None = None
        self.allocator = BandwidthAllocator()
        self.estimator: SendSideEstimator | None = None  # with transport-wide feedback; else REMB
        self.video_paused = False  # all video held back: the estimate cannot carry the lowest layer
        self.rtcp_ssrc = random.getrandbits(32) or 1
        self._establishing: asyncio.Task[None] | None = None
        self._offering = False

    # track changes ------------------------------------------------------------------------------

    def add(self, track: PublishedTrack) -> None:
        if track.id in self.downtracks:
            return
        if not self.peer.decodes(track):
            log.info("peer %s takes no %s: track %s is not offered to it", self.peer.id, track.codec.name, track.id)
            return
        slot = self._free_slot(track.kind)
        down = DownTrack(track, self.peer.id, slot.mid, self._send_rtp, self.peer.sfu.settings.simulated_loss)
        down.preferred_layer = self.peer.preferred_layer(track)
        down.max_bitrate = self.peer.max_bitrate
        slot.codec = outgoing_codec(track.codec)
        slot.red = track.red_payload_type is not None
        slot.ssrc, slot.rtx_ssrc = down.ssrc, down.rtx_ssrc
        slot.stream_id, slot.track_id = track.stream_id, track.id
        self.downtracks[track.id] = down
        self.by_ssrc[down.ssrc] = self.by_ssrc[down.rtx_ssrc] = down
        self.schedule_offer()

    def remove(self, track: PublishedTrack) -> None:
        down = self.downtracks.pop(track.id, None)
        if down is None:
            return
        if down in track.downtracks:
            track.downtracks.remove(down)
        self.by_ssrc.pop(down.ssrc, None)
        self.by_ssrc.pop(down.rtx_ssrc, None)
        self.peer.sfu.retired.add_downtrack(down)
        if self.transport is not None and self.state == "connected":
            # RFC 3550's goodbye: receivers end the track now rather than after a renegotiation.
            self.transport.send_rtcp(rtcp.bye([down.ssrc, down.rtx_ssrc]))
        for slot in self.slots:
            if slot.track_id == track.id:
                slot.codec, slot.track_id, slot.stream_id = None, "", ""
                self.reusable.discard(slot.mid)
        self.schedule_offer()

    def _free_slot(self, kind: str) -> OfferSlot:
        for slot in self.slots:
            if slot.kind == kind and slot.codec is None and slot.mid in self.reusable:
                self.reusable.discard(slot.mid)
                return slot
        slot = OfferSlot(mid=str(len(self.slots)), kind=kind)
        self.slots.append(slot)
        return slot

    # negotiation --------------------------------------------------------------------------------

    def schedule_offer(self) -> None:
        if self.awaiting_answer or self._offering:
            self.again = True
            return
        self._offering = True
        self.peer.spawn(self._offer())

    async def _offer(self) -> None:
        try:
            if self.transport is None:
                try:
                    connection = await gather(self.peer.sfu.network)
                except NoMediaPort:
                    log.warning("no media port free for peer %s's subscriber connection", self.peer.id)
                    self.peer.signal("error", {"code": 503, "message": NO_MEDIA_PORT})
                    return
                self.transport = MediaTransport(connection, self.peer.sfu.certificate, self._on_rtp, self.on_rtcp)
                self.transport.on("statechange", self._on_transport_state)
            if not self.slots:
                return
            local = self.transport.local_description("actpass")
            self.offered_ice = self.fresh_ice
            if self.fresh_ice is not None:
                local.ice_ufrag, local.ice_pwd = self.fresh_ice.local_username, self.fresh_ice.local_password
                local.candidates = [candidate.to_sdp() for candidate in self.fresh_ice.local_candidates]
            self.version += 1
            self.awaiting_answer = True
            self.again = False
            text = subscriber_offer(self.slots, local, self.peer.sdp_session_id, self.version)
            self.peer.signal("offer", {"target": "subscriber", "sdp": text, "tracks": self.describe_tracks()})
        finally:
            self._offering = False
        if self.again and not self.awaiting_answer:
            self.schedule_offer()

    def describe_tracks(self) -> list[dict[str, Any]]:
        described = []
        for slot in self.slots:
            down = self.downtracks.get(slot.track_id) if slot.track_id else None
            if down is None:
                continue
            track = down.track
            described.append(
                {
                    "mid": slot.mid,
                    "track_id": track.id,
                    "kind": track.kind,
                    "peer_id": track.publisher_id,
                    "user_id": track.user_id,
                    "stream_id": track.stream_id,
                    "source": track.source,
                    "layers": [layer.name for layer in track.layers] if track.svc is None else list(SPATIAL_NAMES),
                }
            )
        return described

    async def on_answer(self, text: str) -> None:
        if not self.awaiting_answer or self.transport is None:
            raise NegotiationError("no subscriber offer is waiting for an answer")
        answer = sdp.parse(text)
        ufrag, password = answer.ice_credentials()
        fingerprints = answer.dtls_fingerprints()
        role = "client" if answer.dtls_setup() == "passive" else "server"
        accepted = accepted_in_answer(answer)
        self.awaiting_answer = False
        if self.estimator is None and any(rtp.URI_TRANSPORT_CC in section.extmap for section in accepted.values()):
            # The subscriber sends transport-wide feedback from now on (and no REMB): the server's
            # own estimate drives its layers. Set once, so a connection keeps one numbering.
            self.estimator = SendSideEstimator()
        if self.state == "new":
            self.state = "connecting"
            self._establishing = self.peer.spawn(
                self._establish(ufrag, password, answer.all_candidates(), fingerprints, role)
            )
        elif self.offered_ice is not None:
            fresh, self.fresh_ice, self.offered_ice = self.offered_ice, None, None
            self.peer.spawn(self._restart(fresh, ufrag, password, answer.all_candidates()))
        for slot in self.slots:
            if slot.codec is None:
                self.reusable.add(slot.mid)
                continue
            down = self.downtracks.get(slot.track_id)
            if down is None:
                continue
            section = accepted.get(slot.mid)
            if section is None:
                down.set_paused(True)
                continue
            rtx = next((c.payload_type for c in section.codecs.values() if c.name == "rtx"), None)
            down.rtx_payload_type = rtx
            down.red = slot.red and any(
                c.name == "red" and c.payload_type == OUTGOING_RED_PAYLOAD_TYPE for c in section.codecs.values()
            )
            down.estimator = self.estimator
            if down not in down.track.downtracks:
                down.track.downtracks.append(down)
            if down.paused:
                down.set_paused(False)
        self.allocator.allocate(self.downtracks.values(), time.monotonic())
        if self.again:
            self.schedule_offer()

    async def _establish(self, ufrag, password, candidates, fingerprints, role) -> None:
        assert self.transport is not None
        try:
            await self.transport.establish(ufrag, password, candidates, fingerprints, role)
        except ConnectionError as exc:
            log.info("peer %s: subscriber connection failed: %s", self.peer.id, exc)
            self.state = "failed"
            self.peer.on_transport_lost("subscriber")
            return
        log.info("peer %s: subscriber connected from %s", self.peer.id, self.transport.client_address())
        self.state = "connected"
        for down in self.downtracks.values():
            down.track.request_keyframe(down.target_layer)

    async def _restart(self, fresh: Connection, ufrag, password, candidates) -> None:
        assert self.transport is not None
        try:
            await self.transport.complete_restart(fresh, ufrag, password, candidates)
        except (TimeoutError, ConnectionError) as exc:
            log.info("peer %s: subscriber ICE restart failed: %s", self.peer.id, exc)
            await fresh.close()

    async def restart_ice(self) -> None:
        if self.transport is None:
            raise NegotiationError("there is no subscriber connection to restart")
        if self.fresh_ice is None:
            self.fresh_ice = await gather(self.peer.sfu.network)
        self.schedule_offer()

    def _on_transport_state(self) -> None:
        if self.transport is not None and self.transport.state in ("closed", "failed") and self.state == "connected":
            log.info("peer %s: subscriber connection %s", self.peer.id, self.transport.state)
            self.state = self.transport.state
            self.peer.on_transport_lost("subscriber")

    async def add_candidate(self, line: str | None) -> None:
        connection = self.offered_ice or (self.transport.link.connection if self.transport else None)
        if connection is not None:
            await add_candidate(connection, line)

    # media and feedback -------------------------------------------------------------------------

    def _send_rtp(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.send_rtp(data)
            if self.allocator.probe is not None:
                self.allocator.probe.pad(time.monotonic(), self.transport.send_rtp)

    def _on_rtp(self, data: bytes) -> None:
        """A subscriber connection carries nothing towards the server; stray RTP is counted."""
        if self.transport is not None:
            self.transport.stats.malformed += 1

    def on_rtcp(self, data: bytes) -> None:
        now_middle = rtcp.middle_ntp(rtcp.ntp_now(time.time()))
        for feedback in rtcp.parse(data):
            if isinstance(feedback, rtcp.ReceiverReport | rtcp.SenderReport):
                for block in feedback.reports:
                    down = self.by_ssrc.get(block.ssrc)
                    if down is None:
                        continue
                    if block.ssrc == down.ssrc:
                        down.on_report(block, now_middle)
                        if block.fraction_lost and self.estimator is None:  # the estimator sees loss itself
                            self.allocator.on_loss_report(time.monotonic())
                    else:  # the RTX stream, which carries padding probes
                        now = time.monotonic()
                        down.on_rtx_report(block, self._send_rtp, now)
                        self.allocator.on_rtx_report(down, block.fraction_lost, now)
            elif isinstance(feedback, rtcp.Nack):
                down = self.by_ssrc.get(feedback.media_ssrc)
                if down is not None:
                    down.on_nack(feedback.lost, self._send_rtp)
            elif isinstance(feedback, rtcp.KeyFrameRequest):
                down = self.by_ssrc.get(feedback.media_ssrc)
                if down is not None:
                    down.on_keyframe_request(feedback.full)
            elif isinstance(feedback, rtcp.Remb):
                if self.estimator is None:
                    self.allocator.on_estimate(feedback.bitrate, self.downtracks.values(), time.monotonic())
            elif isinstance(feedback, TransportFeedback) and self.estimator is not None:
                now = time.monotonic()
                self.allocator.on_estimate(self.estimator.on_feedback(feedback, now), self.downtracks.values(), now)

    # periodic -----------------------------------------------------------------------------------

    def report(self, now: float) -> None:
        """Sender reports once a second, each mapped onto its publisher's clock."""
        if self.transport is None or self.state != "connected":
            return
        for down in self.downtracks.values():
            down.roll_window(now)
            report = down.sender_report()
            if report is not None:
                self.transport.send_rtcp(report)

    def review_layers(self, now: float) -> None:
        """Layers come and go at the publisher and estimates age: choose again on every tick."""
        self.allocator.allocate(self.downtracks.values(), now)
        for down in self.downtracks.values():
            if down.track.kind != "video" and down.current_layer == NO_LAYER and not down.paused:
                down.choose_layer()
        starved = any(down.starved and down.target_layer == NO_LAYER for down in self.downtracks.values())
        if starved != self.video_paused:
            # Tell the client why its video stopped (and that it is back), so it can say so.
            self.video_paused = starved
            self.peer.signal("media-state", {"video_paused": starved, "reason": "bandwidth"})

    def detach(self) -> None:
        """Stop forwarding to this subscriber: its connection is gone."""
        for down in self.downtracks.values():
            if down in down.track.downtracks:
                down.track.downtracks.remove(down)
            down.set_paused(True)

    async def close(self) -> None:
        self.detach()
        for down in self.downtracks.values():
            self.peer.sfu.retired.add_downtrack(down)
        self.downtracks.clear()
        self.by_ssrc.clear()
        if self._establishing is not None:
            self._establishing.cancel()
        for connection in (self.fresh_ice, self.offered_ice):
            if connection is not None:
                await connection.close()
        if self.transport is not None:
            await self.transport.close()
        self.state = "closed"
