"""What a subscriber tells the server about its downlink, as a browser does: transport-wide congestion
control feedback (draft-holmer-rmcat-transport-wide-cc-extensions-01), when the server's offer asks
for it with the transport-cc header extension.

Chromium, once transport-cc is negotiated, sends this feedback and no REMB: the server estimates the
downlink itself from when each of its packets arrived (huiyi: sfu/gcc.py). Without it the server has
no estimate at all, and a subscriber behind a narrow link is never moved to a lower layer. The
feedback is built by the same ``ArrivalLog`` the server uses towards its publishers (sfu/twcc.py),
about ten times a second while packets arrive."""

from __future__ import annotations

import random
from collections.abc import Callable

from sfu import rtp, sdp
from sfu.twcc import ArrivalLog


def transport_cc_id(offer: sdp.SessionDescription) -> int | None:
    """The header extension id the offer gives transport-wide sequence numbers, if it offers them."""
    for section in offer.sections:
        ident = section.extmap.get(rtp.URI_TRANSPORT_CC)
        if ident is not None:
            return ident
    return None


class TransportFeedback:
    """Notes each arriving packet's transport-wide sequence number and sends feedback when due."""

    def __init__(self, extension_id: int, send_rtcp: Callable[[bytes], None]) -> None:
        self.extension_id = extension_id
        self.send_rtcp = send_rtcp
        self.log = ArrivalLog()
        self.sender_ssrc = random.getrandbits(32) or 1
        self.media_ssrc = 0  # the first SSRC seen: the feedback's media SSRC, which senders ignore

    def on_packet(self, packet: rtp.Packet, now: float) -> None:
        value = packet.extensions.get(self.extension_id)
        if value is None or len(value) < 2:
            return
        self.media_ssrc = self.media_ssrc or packet.ssrc
        self.log.note(int.from_bytes(value[:2], "big"), now)
        if self.log.due(now):
            report = self.log.feedback(self.sender_ssrc, self.media_ssrc, now)
            if report is not None:
                self.send_rtcp(report)
