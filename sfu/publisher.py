"""The publisher connection of a peer: the client offers its tracks, the server answers and routes
every decrypted packet to the track and layer it belongs to."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import TYPE_CHECKING

from aioice import Connection

from sfu import rtcp, rtp, sdp
from sfu.negotiation import PublishedSection, accept_publisher_offer, publisher_answer
from sfu.network import gather
from sfu.track import Layer, PublishedTrack
from sfu.transport import MediaTransport, add_candidate
from sfu.twcc import ArrivalLog

if TYPE_CHECKING:
    from sfu.peer import Peer

log = logging.getLogger("huiyi.sfu.publisher")

Route = tuple[PublishedTrack, Layer, bool]  # track, layer, is the SSRC an RTX stream


class PublisherSide:
    def __init__(self, peer: Peer) -> None:
        self.peer = peer
        self.transport: MediaTransport | None = None
        self.remote_ice: tuple[str, str] | None = None
        self.pending_ice: Connection | None = None  # gathered for an ICE restart still in progress
        self.tracks: dict[str, PublishedTrack] = {}  # by the publisher's mid
        self.sections: dict[str, PublishedSection] = {}
        self.routes: dict[int, Route] = {}
        self.extension_ids: dict[str, int] = {}
        self.transport_cc_id = 0  # the transport-wide sequence number's extension id, 0 if not agreed
        self.arrivals = ArrivalLog()
        self.rtcp_ssrc = random.getrandbits(32) or 1
        self.unrouted = 0
        self.bitrate_cap = peer.sfu.settings.publish_bitrate
        self.remb = self.bitrate_cap
        self.state = "new"
        self._establishing: asyncio.Task[None] | None = None

    # negotiation --------------------------------------------------------------------------------

    async def on_offer(self, text: str) -> str:
        offer = sdp.parse(text)
        accepted = accept_publisher_offer(offer)
        video = [section for section in offer.sections if section.kind == "video" and not section.rejected]
        if video:
            self.peer.video_codecs = frozenset(codec.name for section in video for codec in section.codecs.values())
        ufrag, password = offer.ice_credentials()
        fingerprints = offer.dtls_fingerprints()
        role = "client" if offer.dtls_setup() == "passive" else "server"
        candidates = offer.all_candidates()
        if self.transport is None or self.state in ("failed", "closed"):
            if self.transport is not None:
                await self.transport.close()
            connection = await gather(self.peer.sfu.network)
            self.transport = MediaTransport(connection, self.peer.sfu.certificate, self.on_rtp, self.on_rtcp)
            self.transport.on("statechange", self._on_transport_state)
            self.remote_ice = (ufrag, password)
            self.state = "connecting"
            self._establishing = self.peer.spawn(
                self._establish(self.transport, ufrag, password, candidates, fingerprints, role)
            )
            local = self.transport.local_description("passive" if role == "server" else "active")
        elif (ufrag, password) != self.remote_ice:
            fresh = await gather(self.peer.sfu.network)
            self.pending_ice = fresh
            self.remote_ice = (ufrag, password)
            self.peer.spawn(self._restart(self.transport, fresh, ufrag, password, candidates))
            local = self.transport.local_description("passive" if role == "server" else "active")
            local.ice_ufrag, local.ice_pwd = fresh.local_username, fresh.local_password
            local.candidates = [candidate.to_sdp() for candidate in fresh.local_candidates]
        else:
            local = self.transport.local_description("passive" if role == "server" else "active")
        self._apply(accepted)
        return publisher_answer(offer, accepted, local, self.peer.sdp_session_id)

    async def _establish(self, transport: MediaTransport, ufrag, password, candidates, fingerprints, role) -> None:
        try:
            await transport.establish(ufrag, password, candidates, fingerprints, role)
        except ConnectionError as exc:
            log.info("peer %s: publisher connection failed: %s", self.peer.id, exc)
            if transport is self.transport:
                self.state = "failed"
                self.peer.on_transport_lost("publisher")
            return
        log.info("peer %s: publisher connected from %s", self.peer.id, transport.client_address())
        if transport is self.transport:
            self.state = "connected"
            for track in self.tracks.values():
                for layer in track.layers:
                    track.request_keyframe(layer.index)

    async def _restart(self, transport: MediaTransport, fresh: Connection, ufrag, password, candidates) -> None:
        try:
            await transport.complete_restart(fresh, ufrag, password, candidates)
        except (TimeoutError, ConnectionError) as exc:
            log.info("peer %s: publisher ICE restart failed: %s", self.peer.id, exc)
            await fresh.close()
        finally:
            if self.pending_ice is fresh:
                self.pending_ice = None

    def _on_transport_state(self) -> None:
        if self.transport is not None and self.transport.state in ("closed", "failed") and self.state == "connected":
            log.info("peer %s: publisher connection %s", self.peer.id, self.transport.state)
            self.state = self.transport.state
            self.peer.on_transport_lost("publisher")

    def _apply(self, accepted: list[PublishedSection | None]) -> None:
        """Add, keep or remove tracks to match the offer; a kept track keeps its id and receivers."""
        room = self.peer.room
        wanted = {section.mid: section for section in accepted if section is not None}
        for mid in list(self.tracks):
            section = wanted.get(mid)
            track = self.tracks[mid]
            if (
                section is None
                or section.kind != track.kind
                or section.codec.name != track.codec.name
                or section.source != track.source
            ):
                self._drop_routes(track)
                del self.tracks[mid]
                room.remove_track(track)
        for mid, section in wanted.items():
            self.extension_ids.update(section.extension_ids)
            self.transport_cc_id = self.extension_ids.get(rtp.URI_TRANSPORT_CC, 0)
            self.sections[mid] = section
            track = self.tracks.get(mid)
            if track is None:
                track = PublishedTrack(
                    publisher_id=self.peer.id,
                    user_id=self.peer.user_id,
                    kind=section.kind,
                    codec=section.codec,
                    mid=mid,
                    # A shared screen is a stream of its own, so receivers show it apart from
                    # the camera; the ids are the server's, so no publisher can join another's stream.
                    stream_id=self.peer.id if section.source == "camera" else f"{self.peer.id}-{section.source}",
                    source=section.source,
                    layer_rids=section.rids or [""] * max(1, len(section.ssrc_layers)),
                    request_keyframe=self._send_keyframe_request,
                    level_extension_id=section.extension_ids.get(rtp.URI_AUDIO_LEVEL, 0),
                    dependency_extension_id=section.extension_ids.get(rtp.URI_DEPENDENCY_DESCRIPTOR, 0),
                )
                track.muted = self.peer.muted.get(section.kind, False)
                track.red_payload_type = section.red_payload_type  # before receivers are offered the track
                self.tracks[mid] = track
                room.add_track(track)
            else:
                track.red_payload_type = section.red_payload_type
            for index, ssrc in enumerate(section.ssrc_layers[: len(track.layers)]):
                self._bind(track, track.layers[index], ssrc)
            for rtx_ssrc, media_ssrc in section.rtx_of.items():
                route = self.routes.get(media_ssrc)
                if route is not None:
                    self.routes[rtx_ssrc] = (track, route[1], True)
        self.sections = {mid: section for mid, section in self.sections.items() if mid in self.tracks}

    def _drop_routes(self, track: PublishedTrack) -> None:
        for ssrc in [ssrc for ssrc, route in self.routes.items() if route[0] is track]:
            del self.routes[ssrc]

    def _bind(self, track: PublishedTrack, layer: Layer, ssrc: int) -> None:
        if layer.ssrc == ssrc:
            self.routes[ssrc] = (track, layer, False)
            return
        if layer.ssrc:
            self.routes.pop(layer.ssrc, None)
        layer.bind(ssrc)
        self.routes[ssrc] = (track, layer, False)
        for down in track.downtracks:
            down.resync(layer.index)

    def close_tracks(self) -> None:
        """Everything published is withdrawn: the peer left or its connection failed."""
        for track in list(self.tracks.values()):
            self.peer.room.remove_track(track, "left")
        self.tracks.clear()
        self.routes.clear()

    # media --------------------------------------------------------------------------------------

    def _learn(self, packet: rtp.Packet) -> Route | None:
        """Place an SSRC never seen before, from its MID and RID (or repaired-RID) header extensions."""
        mid_value = packet.extensions.get(self.extension_ids.get(rtp.URI_MID, -1))
        if mid_value is None:
            if len(self.tracks) != 1:
                return None
            track = next(iter(self.tracks.values()))
        else:
            track = self.tracks.get(mid_value.decode("ascii", "replace"))
            if track is None:
                return None
        section = self.sections[track.mid]
        rid = packet.extensions.get(self.extension_ids.get(rtp.URI_RID, -1))
        repaired = packet.extensions.get(self.extension_ids.get(rtp.URI_REPAIRED_RID, -1))
        is_rtx = repaired is not None or (
            section.rtx_payload_type is not None and packet.payload_type == section.rtx_payload_type
        )
        name = (repaired or rid or b"").decode("ascii", "replace")
        layer = next((layer for layer in track.layers if layer.rid == name), None)
        if layer is None:
            if len(track.layers) != 1:
                return None
            layer = track.layers[0]
        if is_rtx:
            if not layer.ssrc:
                return None
            layer.rtx_ssrc = packet.ssrc
            route = (track, layer, True)
            self.routes[packet.ssrc] = route
            return route
        self._bind(track, layer, packet.ssrc)
        return self.routes[packet.ssrc]

    def on_rtp(self, data: bytes) -> None:
        packet = rtp.Packet(data)
        if self.transport_cc_id:
            self._note_arrival(packet)
        route = self.routes.get(packet.ssrc) or self._learn(packet)
        if route is None:
            self.unrouted += 1
            return
        track, layer, is_rtx = route
        if not packet.has_payload:
            if track.taps and not is_rtx:
                track.feed_taps(layer, packet)
            return
        if is_rtx:
            if packet.payload_end - packet.payload_start < 2:
                return
            start = packet.payload_start
            packet.seq = (data[start] << 8) | data[start + 1]
            if not layer.wanted_repair(packet.seq):
                return
            packet.payload_start = start + 2
            packet.ssrc = layer.ssrc
        missing = layer.note(packet, time.monotonic(), track.codec.clock_rate)
        if missing and track.kind == "video" and self.transport is not None:
            layer.nacks_sent += 1
            self.transport.send_rtcp(rtcp.nack(self.rtcp_ssrc, layer.ssrc, missing))
        track.forward(layer, packet)

    def _note_arrival(self, packet: rtp.Packet) -> None:
        """Every packet counts for the publisher's estimator, padding and retransmissions too."""
        value = packet.extensions.get(self.transport_cc_id)
        if value is None or len(value) != 2:
            return
        now = time.monotonic()
        # When it reached the machine, not when it was handled: how long it then waited for the
        # event loop is no news of the publisher's path (``sfu/arrival.py``).
        self.arrivals.note(value[0] << 8 | value[1], self.transport.arrived if self.transport is not None else now)
        if self.arrivals.due(now) and self.transport is not None:
            feedback = self.arrivals.feedback(self.rtcp_ssrc, packet.ssrc, now)
            if feedback is not None:
                self.transport.send_rtcp(feedback)

    def on_rtcp(self, data: bytes) -> None:
        now = time.monotonic()
        for feedback in rtcp.parse(data):
            if isinstance(feedback, rtcp.SenderReport):
                route = self.routes.get(feedback.ssrc)
                if route is not None and not route[2]:
                    route[1].sender_report = feedback
                    route[1].sender_report_at = now

    def _send_keyframe_request(self, layer: Layer) -> None:
        if self.transport is not None:
            self.transport.send_rtcp(rtcp.pli(self.rtcp_ssrc, layer.ssrc))

    async def add_candidate(self, line: str | None) -> None:
        connection = self.pending_ice or (self.transport.link.connection if self.transport else None)
        if connection is not None:
            await add_candidate(connection, line)

    # periodic -----------------------------------------------------------------------------------

    def report(self, now: float) -> None:
        """Receiver reports and a bitrate invitation (REMB), once a second: loss lowers the invitation."""
        if self.transport is None or self.state != "connected":
            return
        layers = [layer for track in self.tracks.values() for layer in track.layers if layer.ssrc]
        if not layers:
            return
        blocks = [layer.report_block(now) for layer in layers]
        worst = max((block.fraction_lost for block in blocks), default=0) / 256
        if worst > 0.1:
            self.remb = max(150_000, int(self.remb * (1 - 0.5 * worst)))
        elif worst < 0.02:
            self.remb = min(self.bitrate_cap, int(self.remb * 1.08))
        for start in range(0, len(blocks), 31):
            self.transport.send_rtcp(rtcp.receiver_report(self.rtcp_ssrc, blocks[start : start + 31]))
        video = [
            layer.ssrc
            for track in self.tracks.values()
            if track.kind == "video"
            for layer in track.layers
            if layer.ssrc
        ]
        if video:
            self.transport.send_rtcp(rtcp.remb(self.rtcp_ssrc, self.remb, video))

    async def close(self) -> None:
        self.close_tracks()
        if self._establishing is not None:
            self._establishing.cancel()
        if self.pending_ice is not None:
            await self.pending_ice.close()
        if self.transport is not None:
            await self.transport.close()
        self.state = "closed"
