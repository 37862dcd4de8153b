"""The VP9 RTP payload descriptor (RFC 9628): which spatial and temporal layer a packet belongs to.

A VP9 stream sent with scalability (SVC, e.g. Chromium's ``L3T3_KEY``) carries all its layers on one
SSRC; each packet's descriptor says which layer frame it is part of, so a server can drop layers
per receiver without decoding anything. Only the leading bytes are read, once per packet.

    +-+-+-+-+-+-+-+-+
    |I|P|L|F|B|E|V|Z|  I: picture id present, P: inter-picture predicted, L: layer indices present,
    +-+-+-+-+-+-+-+-+  F: flexible mode, B: start of a layer frame, E: end of a layer frame,
    |M| PICTURE ID  |  V: scalability structure present, Z: not used for inter-layer prediction
    +-+-+-+-+-+-+-+-+
    |TID|U| SID |D|  (L) U: switching-up point, D: inter-layer predicted
    +-+-+-+-+-+-+-+-+
    |   TL0PICIDX   |  (L, not F)
    +-+-+-+-+-+-+-+-+
    |  P_DIFF   |N|  (F and P) up to three
    +-+-+-+-+-+-+-+-+
    |  SS ...       |  (V)
"""

from __future__ import annotations

from dataclasses import dataclass, field

FLAG_I, FLAG_P, FLAG_L, FLAG_F, FLAG_B, FLAG_E, FLAG_V, FLAG_Z = 0x80, 0x40, 0x20, 0x10, 0x08, 0x04, 0x02, 0x01
NO_TL0PICIDX = -1


class Vp9Error(ValueError):
    """The descriptor is cut short or contradicts itself."""


@dataclass(slots=True)
class ScalabilityStructure:
    """What a key picture's SS says: the spatial layers' sizes and the temporal pattern (GOF)."""

    spatial_layers: int
    sizes: list[tuple[int, int]] = field(default_factory=list)  # (width, height) per spatial layer
    # Per picture of the group of frames: (TID, switching-up point, reference P_DIFFs).
    pictures: list[tuple[int, bool, tuple[int, ...]]] = field(default_factory=list)

    @property
    def temporal_layers(self) -> int:
        return max((tid for tid, _, _ in self.pictures), default=0) + 1


@dataclass(slots=True)
class Descriptor:
    """One packet's VP9 payload descriptor; ``size`` is where the VP9 bitstream starts."""

    size: int
    inter_picture: bool  # P: the layer frame references an earlier picture
    flexible: bool
    begin: bool  # B: first packet of a layer frame
    end: bool  # E: last packet of a layer frame
    not_reference: bool  # Z: higher spatial layers of this picture do not use it
    picture_id: int = -1
    tid: int = 0
    switch_up: bool = False  # U
    sid: int = 0
    inter_layer: bool = False  # D: predicted from the spatial layer below, in the same picture
    tl0picidx: int = NO_TL0PICIDX
    references: tuple[int, ...] = ()  # P_DIFFs (flexible mode)
    structure: ScalabilityStructure | None = None

    @property
    def keyframe(self) -> bool:
        """The first packet of a key picture: the base layer frame, predicted from nothing."""
        return self.begin and not self.inter_picture and self.sid == 0


def parse(data: bytes, start: int = 0, end: int | None = None) -> Descriptor:
    """The descriptor at ``data[start:end]``; raises Vp9Error when the payload is too short for it."""
    stop = len(data) if end is None else end
    if start >= stop:
        raise Vp9Error("empty payload")
    flags = data[start]
    offset = start + 1
    descriptor = Descriptor(
        0,
        bool(flags & FLAG_P),
        bool(flags & FLAG_F),
        bool(flags & FLAG_B),
        bool(flags & FLAG_E),
        bool(flags & FLAG_Z),
    )
    try:
        if flags & FLAG_I:
            if data[offset] & 0x80:
                descriptor.picture_id = (data[offset] & 0x7F) << 8 | data[offset + 1]
                offset += 2
            else:
                descriptor.picture_id = data[offset]
                offset += 1
        if flags & FLAG_L:
            layers = data[offset]
            descriptor.tid = layers >> 5
            descriptor.switch_up = bool(layers & 0x10)
            descriptor.sid = (layers >> 1) & 0x07
            descriptor.inter_layer = bool(layers & 0x01)
            offset += 1
            if not flags & FLAG_F:
                descriptor.tl0picidx = data[offset]
                offset += 1
        if flags & FLAG_F and flags & FLAG_P:
            references = []
            while True:
                diff = data[offset]
                offset += 1
                references.append(diff >> 1)
                if not diff & 0x01:
                    break
                if len(references) == 3:
                    raise Vp9Error("more than three reference indices")
            descriptor.references = tuple(references)
        if flags & FLAG_V:
            descriptor.structure, offset = _structure(data, offset)
    except IndexError:
        raise Vp9Error("descriptor runs past the payload") from None
    if offset > stop:
        raise Vp9Error("descriptor runs past the payload")
    descriptor.size = offset - start
    return descriptor


def _structure(data: bytes, offset: int) -> tuple[ScalabilityStructure, int]:
    head = data[offset]
    offset += 1
    structure = ScalabilityStructure(spatial_layers=(head >> 5) + 1)
    if head & 0x10:  # Y: resolutions present
        for _ in range(structure.spatial_layers):
            width = data[offset] << 8 | data[offset + 1]
            height = data[offset + 2] << 8 | data[offset + 3]
            structure.sizes.append((width, height))
            offset += 4
    if head & 0x08:  # G: group of frames present
        count = data[offset]
        offset += 1
        for _ in range(count):
            entry = data[offset]
            offset += 1
            references = entry >> 2 & 0x03
            structure.pictures.append((entry >> 5, bool(entry & 0x10), tuple(data[offset : offset + references])))
            if len(structure.pictures[-1][2]) != references:
                raise IndexError
            offset += references
    return structure, offset


def is_vp9_keyframe(data: bytes, start: int = 0, end: int | None = None) -> bool:
    """Whether this packet starts a VP9 key picture (its base layer frame, not inter-picture predicted)."""
    stop = len(data) if end is None else end
    if start >= stop:
        return False
    flags = data[start]
    if flags & (FLAG_P | FLAG_B) != FLAG_B:
        return False
    if not flags & FLAG_L:
        return True
    try:
        return parse(data, start, end).sid == 0
    except Vp9Error:
        return False
