"""A recording's tap on a published track: the server-side equivalent of a subscriber, in process.

A tap takes the track's decrypted packets of one layer (the best simulcast layer that is active,
or the best up to a ceiling, switched only at a key frame of the new layer, as a down-track
does), puts them back in order, reassembles the encoder's frames and hands them, stamped with their
capture time, to a sink (a recorded track's file writer, a live stream's compositor). Nothing is
decoded.

Capture time comes from the layer's RTCP sender reports (their NTP time against their RTP
timestamp, the same mapping receivers use for lip sync) or, before there is one, from the arrival of
the frame that came soonest after its capture, as the RTP clock tells (a first key frame, big and
slow to encode, comes later after its capture than the frames behind it), and the RTP clock from
there on. A report is written at or after the capture of the
RTP timestamp it names: some senders write it when they send the latest packet, so one that stalled
(its host busy) names a moment too late. Of the last few reports, the one that places a frame
earliest is the closest to its capture, and is used. Each layer has its own reports, so a layer
switch without a report yet on the new layer carries the old layer's time on from the switch.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from media.mux import EncodedFrame
from sfu import rtcp, rtp
from sfu.depacketize import DEPACKETIZERS
from sfu.jitter import JitterBuffer
from sfu.track import Layer, PublishedTrack

NO_LAYER = -1
VIDEO_WAIT = 0.15  # seconds a hole in video may take to be repaired (NACKed upstream) before it is skipped
AUDIO_WAIT = 0.06  # audio is not NACKed: wait only for packets that overtook each other
MAX_SENDER_DELAY = 1.0  # a sender clock further off than this from ours is treated as wrong, not late
REPORTS_KEPT = 8  # sender reports a tap weighs against each other (about 8 s of video, more of audio)


class SenderClock:
    """One publisher's wall clock as seen from the server, shared by the taps on its tracks.

    Sender reports carry the publisher's own clock. A publisher whose clock is off by more than any
    network delay would place its frames far from everyone else's, so its offset, measured once, is
    applied to all its tracks alike, which keeps them in sync with each other.
    """

    __slots__ = ("offset",)

    def __init__(self) -> None:
        self.offset: float | None = None

    def local(self, sent: float, arrival: float) -> float:
        if self.offset is None:
            skew = arrival - sent
            self.offset = skew if abs(skew) > MAX_SENDER_DELAY else 0.0
        return sent + self.offset


def _signed(delta: int) -> int:
    """A difference of 32-bit RTP timestamps, across wrap-around."""
    delta &= 0xFFFFFFFF
    return delta - 0x100000000 if delta & 0x80000000 else delta


class Tap:
    __slots__ = (
        "_anchor",
        "_last_arrival",
        "_last_report",
        "_last_wall",
        "_reports",
        "ceiling",
        "clock",
        "depacketizer",
        "dropped",
        "jitter",
        "layer",
        "rate",
        "sink",
        "ssrc",
        "switches",
        "target",
        "track",
        "video",
        "waiting_for_keyframe",
    )

    def __init__(
        self,
        track: PublishedTrack,
        sink: Callable[[EncodedFrame], None],
        clock: SenderClock,
        ceiling: int | None = None,
    ) -> None:
        self.track = track
        self.sink = sink
        self.clock = clock
        self.video = track.kind == "video"
        self.rate = track.codec.clock_rate
        self.depacketizer = DEPACKETIZERS[track.codec.name](self._on_frame)
        self.jitter = JitterBuffer(VIDEO_WAIT if self.video else AUDIO_WAIT, self.depacketizer.push, self._on_loss)
        self.layer = NO_LAYER  # the layer being recorded
        # The highest layer taken: a recording takes the best, a live composite a smaller one.
        self.ceiling = len(track.layers) - 1 if ceiling is None else max(0, min(ceiling, len(track.layers) - 1))
        self.target = self.ceiling  # the layer to switch to at its next key frame
        self.ssrc = 0
        self.waiting_for_keyframe = self.video
        self.dropped = 0  # frames lost to holes that were not repaired in time
        self.switches = 0
        self._anchor: tuple[int, float] | None = None  # (RTP timestamp, wall clock) without a report
        self._last_wall: float | None = None
        self._last_arrival = 0.0
        self._reports: list[tuple[int, float]] = []  # (RTP timestamp, wall clock) of the layer's recent reports
        self._last_report: rtcp.SenderReport | None = None

    # packets (PublishedTrack.forward) -----------------------------------------------------------

    def feed(self, layer: Layer, packet: rtp.Packet) -> None:
        if layer.index != self.layer or packet.ssrc != self.ssrc:
            if layer.index == self.layer:  # the publisher restarted this layer's sender
                self._leave_layer()
            if layer.index != self.target or not self.track.is_keyframe(packet):
                return
            self._switch(layer, packet)
        self.jitter.push(packet, time.time())

    def _leave_layer(self) -> None:
        """What the layer still had in order is recorded; the rest is dropped."""
        self.jitter.flush()
        self.depacketizer.reset()
        self.layer = NO_LAYER

    def _switch(self, layer: Layer, packet: rtp.Packet) -> None:
        """Continue from this packet (a key frame's first, for video) of ``layer``."""
        if self.layer != NO_LAYER:
            self.switches += 1
            self._leave_layer()
        self.layer, self.ssrc = layer.index, packet.ssrc
        self._anchor = None
        self._reports.clear()
        self._last_report = None
        self.waiting_for_keyframe = self.video

    def _on_loss(self, count: int) -> None:
        """``count`` packets given up on; 0 when the stream jumped ahead (it was muted, or paused)."""
        self.depacketizer.reset()
        if not self.video:
            self.dropped += count
            return
        # Frames after a hole refer to what was in it: nothing decodes again before a key frame.
        if count:
            self.dropped += 1
        self.waiting_for_keyframe = True
        self.request_keyframe()

    def _on_frame(self, frame: EncodedFrame) -> None:
        if self.waiting_for_keyframe:
            if not frame.keyframe:
                if self._last_wall is not None:  # (before the first key frame nothing is missing yet)
                    self.dropped += 1
                return
            self.waiting_for_keyframe = False
        frame.wallclock = self._wallclock(frame)
        self._last_wall, self._last_arrival = frame.wallclock, frame.arrival
        self.sink(frame)

    def _wallclock(self, frame: EncodedFrame) -> float:
        report = self.track.layers[self.layer].sender_report
        if report is not None and report is not self._last_report:
            self._last_report = report
            self._reports.append((report.rtp_timestamp, rtcp.ntp_to_unix(report.ntp)))
            del self._reports[:-REPORTS_KEPT]
        if self._reports:
            sent = min(wall + _signed(frame.timestamp - rtp_ts) / self.rate for rtp_ts, wall in self._reports)
            return self.clock.local(sent, frame.arrival)
        if self._anchor is None:
            if self._last_wall is None:
                start = frame.arrival
            else:  # continue the timeline the previous layer (or sender) set
                start = self._last_wall + max(frame.arrival - self._last_arrival, 0.0)
            self._anchor = (frame.timestamp, start)
        placed = self._anchor[1] + _signed(frame.timestamp - self._anchor[0]) / self.rate
        if placed > frame.arrival:  # it cannot have been captured after it came: the anchor's frame was held up
            self._anchor = (frame.timestamp, frame.arrival)
            return frame.arrival
        return placed

    # the media clock (Sfu ticker) ---------------------------------------------------------------

    def tick(self) -> None:
        """Give up on holes whose wait is over even if nothing arrives, and follow the best layer."""
        self.jitter.drain(time.time())
        if not self.video:
            return
        active = [index for index in self.track.active_layers() if index <= self.ceiling]
        if active:
            self.target = active[-1]
        elif self.track.active_layers():  # only layers above the ceiling send: take the lowest of them
            self.target = self.track.active_layers()[0]
        elif self.layer != NO_LAYER:
            self.target = self.layer
        if self.layer != self.target or self.waiting_for_keyframe:
            self.track.request_keyframe(self.target)

    def request_keyframe(self) -> None:
        self.track.request_keyframe(self.layer if self.layer != NO_LAYER else self.target)

    def close(self) -> None:
        """Stop taking packets; what is in order is still recorded."""
        if self in self.track.taps:
            self.track.taps.remove(self)
        if self.layer != NO_LAYER:
            self._leave_layer()
