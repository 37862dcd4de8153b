"""Putting one RTP stream back in sequence order for a recording, waiting a little for what is late.

Packets in order pass straight through. Behind a hole, later packets are held for at most
``max_wait`` seconds, counted from the first of them to arrive (so a run of holes never adds up):
the publisher side has already NACKed the hole upstream (``Layer.note``), and a retransmission
usually fills it well within that. When it does not, the hole is reported as lost and the held
packets flow on.
"""

from __future__ import annotations

from collections.abc import Callable

from sfu import rtp

MAX_AHEAD = 1024  # a packet further than this from the next one expected is a jump, not a hole or a late one

Release = Callable[[rtp.Packet, float], None]
Lost = Callable[[int], None]


class JitterBuffer:
    __slots__ = ("_gap_since", "held", "late", "lost", "max_wait", "next_seq", "release")

    def __init__(self, max_wait: float, release: Release, lost: Lost) -> None:
        self.max_wait = max_wait
        self.release = release  # called with each packet, in order, and its arrival time
        self.lost = lost  # called with the number of packets given up on at a hole (0: a jump)
        self.next_seq: int | None = None
        self.held: dict[int, tuple[rtp.Packet, float]] = {}
        self.late = 0  # packets that came after they were released or given up on
        self._gap_since: float | None = None  # since when the hole at next_seq has been known

    def reset(self) -> None:
        """Forget the stream: the next packet pushed starts it afresh."""
        self.next_seq = None
        self.held.clear()
        self._gap_since = None

    def push(self, packet: rtp.Packet, arrival: float) -> None:
        seq = packet.seq
        if self.next_seq is None:
            self.next_seq = seq
        ahead = (seq - self.next_seq) & 0xFFFF
        if not ahead and not self.held:  # in order with nothing waiting: the usual case
            self.next_seq = (seq + 1) & 0xFFFF
            self.release(packet, arrival)
            return
        if ahead >= 0x10000 - MAX_AHEAD:
            self.late += 1
            return
        if ahead > MAX_AHEAD:  # far ahead or far behind: the stream went on without us (a pause)
            self.lost(0)
            self.held.clear()
            self._gap_since = None
            self.next_seq = seq
        self.held.setdefault(seq, (packet, arrival))
        self.drain(arrival)

    def drain(self, now: float) -> None:
        """Release what is in order; give up on a hole once its wait is over."""
        held = self.held
        while held:
            assert self.next_seq is not None
            entry = held.pop(self.next_seq, None)
            if entry is not None:
                self.next_seq = (self.next_seq + 1) & 0xFFFF
                self._gap_since = None
                self.release(*entry)
                continue
            if self._gap_since is None:  # the hole showed when the earliest held packet came
                self._gap_since = min(arrival for _, arrival in held.values())
            if now - self._gap_since < self.max_wait:
                return
            start = self.next_seq
            first = min(held, key=lambda seq: (seq - start) & 0xFFFF)
            self.lost((first - start) & 0xFFFF)
            self.next_seq = first
            self._gap_since = None

    def flush(self) -> None:
        """Release what is in order and drop the rest: the stream ends here."""
        if self.next_seq is None:
            return
        while (entry := self.held.pop(self.next_seq, None)) is not None:
            self.next_seq = (self.next_seq + 1) & 0xFFFF
            self.release(*entry)
        self.reset()
