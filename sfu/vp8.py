"""The VP8 payload descriptor (RFC 7741) as one receiver sees it: continuous across layer switches
and across the temporal layers it does not get.

Each simulcast layer is its own encoder with its own PictureID, TL0PICIDX and KEYIDX counters. A
receiver that is switched from one layer to another without rewriting them sees them jump, and
libwebrtc's VP8 reference finder (which tracks frames by picture ID and the base layer by unwrapped
TL0PICIDX) and frame buffer then stash or drop the frames after the jump until something lines up
again: the viewer freezes although every packet arrived. A receiver whose higher temporal layers are
dropped would see a gap in picture IDs at each dropped frame, which it reads as a frame still to come.
So each down-track keeps its own counters, as mediasoup's VP8 encoding context, LiveKit's VP8 munger
and Janus's simulcast descriptor update do: picture IDs go up by one per frame forwarded, TL0PICIDX by
one per base-layer frame, KEYIDX by one per key frame of a new layer.

The descriptor is rewritten in place (same fields, same sizes), so only its bytes change: a 7-bit
PictureID stays 7-bit and wraps at 128, a 15-bit one wraps at 32768; a descriptor without a field
keeps going without it.
"""

from __future__ import annotations

ALL_TEMPORAL = 3  # the highest temporal layer ID a VP8 descriptor can name: nothing dropped
PICTURE_CACHE = 128  # recent frames whose outgoing picture ID is remembered, for late packets
NO_PICTURE = -1
DROPPED = -1  # the outgoing picture ID of a frame that was dropped


class Vp8Rewriter:
    """One down-track's VP8 descriptor state. ``rewrite`` is called for every packet forwarded, in
    the hot path: it reads at most six bytes and copies the packet only when a field changes."""

    __slots__ = (
        "_picture_out",
        "_picture_source",
        "frames_missed",
        "keyidx_offset",
        "last_keyidx",
        "last_picture",
        "last_tl0",
        "newest_picture",
        "picture_offset",
        "previous_picture",
        "starts_frame",
        "switching",
        "target_temporal",
        "temporal",
        "temporal_layers",
        "tl0_offset",
    )

    def __init__(self) -> None:
        self.picture_offset = self.tl0_offset = self.keyidx_offset = 0
        self.last_picture = self.last_tl0 = self.last_keyidx = -1  # the newest values sent
        self.newest_picture = NO_PICTURE  # the newest source picture ID seen on the current layer
        # Source picture ID -> outgoing one (or DROPPED) of recent frames, indexed by the low bits:
        # a packet that arrives after later frames (a repair) gets the ID its frame was given.
        self._picture_source = [NO_PICTURE] * PICTURE_CACHE
        self._picture_out = [DROPPED] * PICTURE_CACHE
        self.switching = True  # the next packet opens a key frame of a new layer (or the first one)
        self.target_temporal = ALL_TEMPORAL  # the highest temporal layer this receiver should get
        self.temporal = ALL_TEMPORAL  # the highest one let through now (changes at frame starts)
        self.temporal_layers = 1  # how many temporal layers the publisher's stream has shown
        self.starts_frame = False  # the packet last rewritten opens a frame
        self.frames_missed = False  # ... and a whole frame or more is missing just before it
        self.previous_picture = NO_PICTURE  # the picture ID of the packet before it

    def switch(self) -> None:
        """The next packet starts a key frame of another simulcast layer (or another source)."""
        self.switching = True

    def set_temporal(self, highest: int) -> None:
        """Let through temporal layers up to ``highest`` from the next frame where that is safe."""
        self.target_temporal = highest

    @property
    def temporal_layer(self) -> int:
        """The highest temporal layer being forwarded, of those the stream has."""
        return min(self.temporal, self.temporal_layers - 1)

    def rewrite(self, tail: bytes, start: int) -> bytes | bytearray | None:
        """``tail`` with the descriptor at ``start`` rewritten for this receiver, or ``None`` when
        the packet belongs to a frame this receiver does not get."""
        end = len(tail)
        self.starts_frame = starts_frame = start < end and tail[start] & 0x17 == 0x10  # S bit, partition 0
        if start + 2 >= end or not tail[start] & 0x80:
            return tail  # no extension: nothing to keep continuous (and nothing to drop by)
        flags = tail[start + 1]
        position = start + 2
        picture = NO_PICTURE
        wide = False
        if flags & 0x80:
            wide = bool(tail[position] & 0x80)
            if wide:
                picture = (tail[position] & 0x7F) << 8 | tail[position + 1]
                position += 2
            else:
                picture = tail[position]
                position += 1
        tl0_at = -1
        if flags & 0x40:
            tl0_at = position
            position += 1
        tid = 0
        sync = True
        key_at = -1
        if flags & 0x30:
            if position >= end:
                return tail
            byte = tail[position]
            if flags & 0x20:
                tid, sync = byte >> 6, bool(byte & 0x20)
                if tid >= self.temporal_layers:
                    self.temporal_layers = tid + 1
            if flags & 0x10:
                key_at = position
        if position >= end:
            return tail
        mask = 0x7FFF if wide else 0x7F
        previous, self.previous_picture = self.previous_picture, picture
        self.frames_missed = picture != NO_PICTURE != previous and 1 < (picture - previous) & mask <= mask >> 1
        if self.switching:
            self._start_layer(tail, picture, mask, tl0_at, key_at)
            number = self.last_picture
        elif picture == NO_PICTURE:
            if starts_frame:
                self._follow_temporal(tid, sync)
            if tid > self.temporal:
                return None
            number = NO_PICTURE
        else:
            slot = picture % PICTURE_CACHE
            if self._picture_source[slot] == picture:  # a frame already seen: it keeps its fate
                number = self._picture_out[slot]
                if number == DROPPED:
                    return None
            elif (picture - self.newest_picture) & mask <= mask >> 1:
                # A new frame: its temporal layer decides, from here on, what goes with it.
                if starts_frame:
                    self._follow_temporal(tid, sync)
                self.newest_picture = picture
                self._picture_source[slot] = picture
                if tid > self.temporal:
                    self._picture_out[slot] = DROPPED
                    self.picture_offset -= 1
                    return None
                number = self._picture_out[slot] = self.last_picture = (picture + self.picture_offset) & mask
                if tl0_at >= 0:
                    self.last_tl0 = (tail[tl0_at] + self.tl0_offset) & 0xFF
                if key_at >= 0:
                    self.last_keyidx = (tail[key_at] + self.keyidx_offset) & 0x1F
            else:
                # A frame older than the newest, never seen before: its packets were lost on the way
                # in and this is a repair. Its sequence number was kept for it, so it is sent whatever
                # its temporal layer (a receiver may wait for that number), numbered as it would have
                # been: the frames dropped since came after it.
                later_drops = sum(
                    1
                    for source, out in zip(self._picture_source, self._picture_out, strict=True)
                    if out == DROPPED and source != NO_PICTURE and 0 < (source - picture) & mask <= mask >> 1
                )
                number = self._picture_out[slot] = (picture + self.picture_offset + later_drops) & mask
                self._picture_source[slot] = picture
        if number == picture and not (self.tl0_offset or self.keyidx_offset):
            return tail
        out = bytearray(tail)
        if picture != NO_PICTURE:
            if wide:
                out[start + 2] = 0x80 | number >> 8
                out[start + 3] = number & 0xFF
            else:
                out[start + 2] = number
        if tl0_at >= 0:
            out[tl0_at] = (tail[tl0_at] + self.tl0_offset) & 0xFF
        if key_at >= 0:
            out[key_at] = (tail[key_at] & 0xE0) | ((tail[key_at] + self.keyidx_offset) & 0x1F)
        return out

    def _follow_temporal(self, tid: int, sync: bool) -> None:
        """At a frame's start: step down to the target at once; step up only where the frames
        above can be decoded: at a base-layer frame, or a layer-sync one (Y bit) within the target."""
        target = self.target_temporal
        if target < self.temporal or (target > self.temporal and (tid == 0 or (sync and tid <= target))):
            self.temporal = target

    def _start_layer(self, tail: bytes, picture: int, mask: int, tl0_at: int, key_at: int) -> None:
        """Continue every counter from the last value sent, at this key frame of a new layer."""
        self.switching = False
        self.temporal = self.target_temporal
        self._picture_source = [NO_PICTURE] * PICTURE_CACHE
        if picture != NO_PICTURE:
            if self.last_picture >= 0:
                self.picture_offset = (self.last_picture + 1 - picture) & 0x7FFF
            self.newest_picture = picture
            self._picture_source[picture % PICTURE_CACHE] = picture
            self._picture_out[picture % PICTURE_CACHE] = self.last_picture = (picture + self.picture_offset) & mask
        if tl0_at >= 0:
            if self.last_tl0 >= 0:
                self.tl0_offset = (self.last_tl0 + 1 - tail[tl0_at]) & 0xFF
            self.last_tl0 = (tail[tl0_at] + self.tl0_offset) & 0xFF
        if key_at >= 0:
            if self.last_keyidx >= 0:
                self.keyidx_offset = (self.last_keyidx + 1 - tail[key_at]) & 0x1F
            self.last_keyidx = (tail[key_at] + self.keyidx_offset) & 0x1F
