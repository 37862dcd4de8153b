"""Retransmissions a receiver never got, found from its reports on the RTX stream.

A receiver that asks for a lost packet only once (aiortc asks again only when another packet goes
missing) waits for good when the retransmission is lost too: its jitter buffer hands nothing on while
one packet is missing, so its picture stops. Such a receiver reports on the RTX stream (Chromium does
not, and asks again by itself), and each report says how many RTX packets went missing up to the
highest one it received. The ledger keeps what each RTX sequence number carried: when a report's
count of lost packets grew, any retransmission in the range it newly covers may be the lost one; and
one sent well before the report but beyond the highest it covers was lost at the tail, where no later
RTX packet showed the gap. Those are sent again. A duplicate costs one packet; a stall costs the
picture until the jitter buffer overflows, many seconds later. Packets it asked for that the
repair budget had no room for (sfu/forwarder.py) are owed to it the same way.
"""

from __future__ import annotations

from sfu import rtp

TAIL_SECONDS = 0.5  # a retransmission this old that a report does not cover was lost, queues included
KEPT = 256  # retransmissions remembered (a receiver that never reports on RTX never settles any)


class RepairLedger:
    __slots__ = ("highest", "lost", "owed", "sent")

    def __init__(self) -> None:
        self.sent: dict[int, tuple[int, float]] = {}  # RTX sequence number -> (media one, sent at)
        self.owed: dict[int, None] = {}  # media sequence numbers asked for but not sent (no budget)
        self.highest: int | None = None  # the highest RTX sequence number the last report covered
        self.lost = 0  # RTX packets lost, as the last report counted them

    def note(self, rtx_seq: int, seq: int, now: float) -> None:
        """``rtx_seq`` carried media packet ``seq`` again."""
        self.sent[rtx_seq] = (seq, now)
        if len(self.sent) > KEPT:
            del self.sent[next(iter(self.sent))]

    def owe(self, seq: int) -> None:
        """Packet ``seq`` was asked for but not sent (the link had no room for it): a receiver that
        asks only once is owed it, and gets it after its next report if there is room then."""
        self.owed[seq] = None
        if len(self.owed) > KEPT:
            del self.owed[next(iter(self.owed))]

    def on_report(self, highest: int, lost: int, now: float) -> list[int]:
        """The media sequence numbers to send again after a report on the RTX stream (``highest``,
        its extended highest sequence number; ``lost``, its cumulative count of packets lost)."""
        highest &= 0xFFFF
        previous, self.highest = self.highest, highest
        grew = previous is not None and lost > self.lost
        self.lost = lost
        again = list(self.owed)
        self.owed.clear()
        for rtx_seq, (seq, sent_at) in list(self.sent.items()):
            if not rtp.seq_newer(rtx_seq, highest):  # covered by this report: settled either way
                if grew and previous is not None and rtp.seq_newer(rtx_seq, previous):
                    again.append(seq)
                del self.sent[rtx_seq]
            elif now - sent_at > TAIL_SECONDS:
                again.append(seq)
                del self.sent[rtx_seq]
        return again
