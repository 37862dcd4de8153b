"""Scalable video (VP9 and AV1 SVC): one stream carrying every layer, thinned per receiver.

A publisher sending VP9 or AV1 with a scalability mode such as ``L3T3_KEY`` puts three spatial and
three temporal layers on one SSRC. ``SvcLayers`` (one per published track) reads each packet's
layer, from VP9's payload descriptor (sfu/vp9.py) or AV1's dependency descriptor header extension
(sfu/av1dd.py), and measures every layer's rate; ``SvcSelector`` (one per down-track) drops
the packets above the receiver's spatial and temporal target, marks the end of each picture it
forwards and numbers what it forwards without holes.

The layers are offered to the same layer choice as simulcast (``DownTrack.choose_layer`` and
sfu/allocator.py) as a ladder of rungs, each a (spatial, temporal) target with the measured rate of
everything it forwards: ``low-t0`` and ``low-t1`` (the smallest picture at a quarter and half the
frame rate), then ``low``, ``medium``, ``high`` (each spatial layer at the full frame rate). So a
subscriber whose share of the estimate cannot carry the smallest picture at full rate gets fewer
frames before it gets audio only, and the names a subscriber asks for (low, medium, high) mean what
they mean for simulcast.

When a layer may change:
- down (spatial or temporal): at the start of any picture; lower layers never depend on higher ones.
- spatial up: only at a key picture. With ``L3T3_KEY`` an upper spatial layer is predicted from the
  one below only in key pictures and otherwise from its own earlier frames, which a receiver that
  was not getting it never had; the selector asks for a key picture when it wants to go up.
- temporal up: at a picture of the base temporal layer, or one marked as a switching-up point (VP9's
  U, AV1's "switch" decode target indication) whose layer is already forwarded.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import TypeAlias

from sfu import av1dd, rtp, vp9

# What the selector reads of a packet (the same names in both): sid, tid, begin, end, switch_up, keyframe.
Descriptor: TypeAlias = vp9.Descriptor | av1dd.Descriptor

SPATIAL_LAYERS = 3  # the most WebRTC's VP9 scalability modes send (L3Tx)
TEMPORAL_LAYERS = 3
TOP_TID = TEMPORAL_LAYERS - 1
# (spatial, temporal) targets, lowest first; see the module docstring.
RUNGS: tuple[tuple[int, int], ...] = (
    *((0, tid) for tid in range(TOP_TID)),
    *((sid, TOP_TID) for sid in range(SPATIAL_LAYERS)),
)
RUNG_NAMES = ("low-t0", "low-t1", "low", "medium", "high")
SPATIAL_NAMES = RUNG_NAMES[TOP_TID:]  # the spatial layers at full frame rate, which receivers ask for
# The rung forwarding (sid, tid) amounts to: the spatial layer's, or below the smallest full-rate one.
RUNG_OF = [[RUNGS.index((sid, TOP_TID)) if sid or tid == TOP_TID else tid for tid in range(TEMPORAL_LAYERS)]
           for sid in range(SPATIAL_LAYERS)]  # fmt: skip
LAYER_IDLE_SECONDS = 1.0  # a spatial or temporal layer not seen for this long is paused
MARKER = 0x80
DROP = -1  # ``SvcSelector.admit``: the packet is not forwarded
FILL = -2  # ... nor is this late packet, but the number left for it is filled with padding
REMEMBERED = 1024  # recent drops and upstream gaps remembered, to place late packets (repairs)


def read_vp9(packet: rtp.Packet) -> vp9.Descriptor:
    return vp9.parse(packet.data, packet.payload_start, packet.payload_end)


class SvcLayers:
    """What one SVC track sends: each packet's descriptor, each layer's rate and whether it is live.

    ``read`` gives a packet's descriptor (``read_vp9``, or an AV1 track's
    ``av1dd.DependencyReader.read``) and raises ValueError for one it cannot read."""

    __slots__ = ("_window_bytes", "_window_start", "descriptor", "malformed", "rates", "read", "seen", "structure")

    def __init__(self, read: Callable[[rtp.Packet], Descriptor] = read_vp9) -> None:
        self.read = read
        self.descriptor: Descriptor | None = None  # the packet being handed down
        # From the latest key picture: VP9's scalability structure or AV1's template structure.
        self.structure: vp9.ScalabilityStructure | av1dd.Structure | None = None
        self.malformed = 0
        self.rates = [[0] * TEMPORAL_LAYERS for _ in range(SPATIAL_LAYERS)]  # bit/s
        self.seen = [0.0] * (SPATIAL_LAYERS + TEMPORAL_LAYERS)  # last arrival of each spatial, then temporal layer
        self._window_bytes = [[0] * TEMPORAL_LAYERS for _ in range(SPATIAL_LAYERS)]
        self._window_start = time.monotonic()

    def note(self, packet: rtp.Packet, now: float) -> Descriptor | None:
        """Read the packet's descriptor and count it; ``None`` for a payload too short to read."""
        try:
            descriptor = self.read(packet)
        except ValueError:  # Vp9Error, DependencyError
            self.malformed += 1
            self.descriptor = None
            return None
        sid, tid = descriptor.sid, descriptor.tid
        if descriptor.structure is not None:
            self.structure = descriptor.structure
        if sid < SPATIAL_LAYERS and tid < TEMPORAL_LAYERS:
            self._window_bytes[sid][tid] += packet.payload_end - packet.payload_start
            self.seen[sid] = self.seen[SPATIAL_LAYERS + tid] = now
        self.descriptor = descriptor
        return descriptor

    def roll_window(self, now: float) -> None:
        elapsed = now - self._window_start
        if elapsed <= 0:
            return
        for sid in range(SPATIAL_LAYERS):
            for tid in range(TEMPORAL_LAYERS):
                self.rates[sid][tid] = int(self._window_bytes[sid][tid] * 8 / elapsed)
                self._window_bytes[sid][tid] = 0
        self._window_start = now

    def rung_rate(self, index: int) -> int:
        """What forwarding rung ``index`` costs: every layer at or below its spatial and temporal target."""
        top_sid, top_tid = RUNGS[index]
        return sum(self.rates[sid][tid] for sid in range(top_sid + 1) for tid in range(top_tid + 1))

    def active_rungs(self, now: float | None = None) -> list[int]:
        """Rungs whose spatial layer is being sent (a temporal sub-rung also needs its temporal layer)."""
        now = time.monotonic() if now is None else now
        live = [now - seen < LAYER_IDLE_SECONDS for seen in self.seen]
        return [
            index
            for index, (sid, tid) in enumerate(RUNGS)
            if live[sid] and (tid == TOP_TID or live[SPATIAL_LAYERS + tid])
        ]

    def layer_rates(self) -> list[list[int]]:
        return [list(row) for row in self.rates]


class SvcSelector:
    """One receiver's cut of an SVC stream: which packets it gets, and their new sequence numbers.

    Dropped packets leave no gap: each forwarded packet's number moves down by the packets dropped
    before it (``shift``). Upstream losses do leave their gap, so a repair arriving late is placed in
    it: the numbers missing upstream and the last ``REMEMBERED`` dropped ones are kept, so a late
    packet lands where its neighbours put it. Forwarding in order touches neither. A repair of a
    layer this receiver does not get becomes padding in its gap, so the receiver stops asking for
    it (a receiver fills sequence gaps with padding packets).
    """

    __slots__ = (
        "_drops",
        "_highest",
        "_missing",
        "current_sid",
        "current_tid",
        "dropped",
        "moved",
        "picture",
        "rung",
        "shift",
        "target_sid",
        "target_tid",
    )

    def __init__(self) -> None:
        self.target_sid, self.target_tid = RUNGS[-1]
        self.current_sid = self.current_tid = -1
        self.rung = -1  # the rung being forwarded now
        self.picture = -1  # RTP timestamp of the picture being forwarded
        self.shift = 0  # packets dropped so far: the next packet's number moves down by this much
        self.moved = 0  # how far the packet just admitted moves down (less than ``shift`` if it is late)
        self.dropped = 0
        self._highest = -1
        self._missing: set[int] = set()  # numbers not (yet) received: a repair may still come
        self._drops: deque[int] = deque(maxlen=REMEMBERED)  # numbers dropped, oldest first

    def aim(self, rung: int) -> None:
        self.target_sid, self.target_tid = RUNGS[rung]

    @property
    def needs_keyframe(self) -> bool:
        """Going up a spatial layer waits for a key picture."""
        return self.target_sid > self.current_sid

    def start(self, packet: rtp.Packet) -> None:
        """Forwarding starts (again) at this packet, the first of a key picture: numbering starts over."""
        self.current_sid = self.current_tid = self.rung = -1
        self.picture = -1
        self.shift = self.moved = 0
        self._highest = (packet.seq - 1) & 0xFFFF
        self._missing.clear()
        self._drops.clear()

    def admit(self, packet: rtp.Packet, descriptor: Descriptor, second: int) -> int:
        """The packet's second header byte (marker, payload type) if it is forwarded, else DROP or
        FILL; its number moves down by ``moved``. Runs per packet and receiver: kept flat."""
        seq = packet.seq
        highest = self._highest
        gap = (seq - highest) & 0xFFFF
        if not 0 < gap < 0x8000:
            # Late (an upstream repair): only into a gap left for it, and only if its layer is forwarded.
            if seq not in self._missing:
                return DROP
            self._missing.discard(seq)
            later = 0  # drops after it: its number moves down by the drops before it only
            for dropped in reversed(self._drops):
                if not 0 < (dropped - seq) & 0xFFFF < 0x8000:
                    break
                later += 1
            self.moved = self.shift - later
            if descriptor.sid > self.current_sid or descriptor.tid > self.current_tid:
                return FILL
        else:
            if gap > 1:  # lost upstream so far: their numbers are kept for their repairs
                if len(self._missing) > REMEMBERED:
                    self._missing.clear()
                self._missing.update((highest + step) & 0xFFFF for step in range(1, min(gap, REMEMBERED)))
            self._highest = seq
            if packet.timestamp != self.picture:
                self._new_picture(packet.timestamp, descriptor)
            if descriptor.sid > self.current_sid or descriptor.tid > self.current_tid:
                self._drops.append(seq)
                self.shift += 1
                self.dropped += 1
                return DROP
            self.moved = self.shift
        # The end of the highest forwarded spatial layer's frame ends the picture for this receiver.
        if descriptor.end and descriptor.sid == self.current_sid:
            return second | MARKER
        return second

    def _new_picture(self, timestamp: int, descriptor: Descriptor) -> None:
        self.picture = timestamp
        if descriptor.keyframe:
            self.current_sid, self.current_tid = self.target_sid, self.target_tid
        else:
            self.current_sid = min(self.current_sid, self.target_sid)
            # Down at once; up where the pictures that follow need nothing that was not forwarded.
            up_point = descriptor.tid == 0 or (descriptor.switch_up and descriptor.tid <= self.current_tid)
            if self.target_tid < self.current_tid or up_point:
                self.current_tid = self.target_tid
        self.rung = RUNG_OF[self.current_sid][self.current_tid]
