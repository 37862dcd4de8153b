"""The AV1 dependency descriptor (DD) RTP header extension: which spatial and temporal layer a packet
of an AV1 stream belongs to.

AV1's RTP payload says nothing about layers; a publisher sending AV1 with scalability (Chromium's
``L3T3_KEY``) describes each frame in this extension instead (AV1 RTP specification, appendix A).
Every packet carries the mandatory three bytes: start and end of frame, a template id and a frame
number. A key frame's first packet also carries the template dependency structure: the templates,
each a (spatial, temporal) layer with its decode target indications, frame diffs and chain diffs,
and the spatial layers' sizes. A packet's layer is its template's, so ``DependencyReader`` keeps the
latest structure of its track and reads each packet's descriptor against it.

    start_of_frame f(1), end_of_frame f(1), frame_dependency_template_id f(6), frame_number f(16)
    [template_dependency_structure_present f(1), active_decode_targets_present f(1),
     custom_dtis f(1), custom_fdiffs f(1), custom_chains f(1),
     [template_dependency_structure] [active_decode_targets_bitmask f(DtCnt)]]
    [frame_dtis] [frame_fdiffs] [frame_chains]  (custom ones, when flagged)

Only what routing needs is read per packet: the three mandatory bytes on most packets; a structure
is parsed in full once per key frame. Anything cut short or contradicting itself raises
``DependencyError``, which the caller counts and drops.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sfu.rtp import Packet

MANDATORY_SIZE = 3
TEMPLATE_ID_RANGE = 64
# Decode target indications (table A.1): how a frame matters to a decode target.
DTI_NOT_PRESENT, DTI_DISCARDABLE, DTI_SWITCH, DTI_REQUIRED = 0, 1, 2, 3


class DependencyError(ValueError):
    """The descriptor is cut short, contradicts itself, or names a structure not received."""


@dataclass(slots=True)
class Template:
    spatial: int
    temporal: int
    dtis: tuple[int, ...] = ()  # one per decode target
    fdiffs: tuple[int, ...] = ()  # frame-number differences to the frames it references
    chain_fdiffs: tuple[int, ...] = ()  # per chain


@dataclass(slots=True)
class Structure:
    """A template dependency structure, as a key frame's descriptor carries it."""

    template_id_offset: int
    decode_targets: int
    templates: list[Template] = field(default_factory=list)
    chains: int = 0
    protected_by: tuple[int, ...] = ()  # the chain protecting each decode target
    sizes: list[tuple[int, int]] = field(default_factory=list)  # (width, height) per spatial layer

    @property
    def spatial_layers(self) -> int:
        return max((template.spatial for template in self.templates), default=0) + 1

    @property
    def temporal_layers(self) -> int:
        return max((template.temporal for template in self.templates), default=0) + 1

    def decode_target_layers(self) -> list[tuple[int, int]]:
        """Each decode target's (spatial, temporal) layer: the highest of the templates it needs."""
        layers = []
        for target in range(self.decode_targets):
            present = [t for t in self.templates if t.dtis[target] != DTI_NOT_PRESENT]
            layers.append((max((t.spatial for t in present), default=0), max((t.temporal for t in present), default=0)))
        return layers


@dataclass(slots=True)
class Descriptor:
    """One packet's dependency descriptor, with the layer its template says (names as in sfu/vp9.py,
    so sfu/svc.py reads either)."""

    begin: bool  # start of frame
    end: bool  # end of frame
    template_id: int
    frame_number: int
    sid: int = 0
    tid: int = 0
    switch_up: bool = False  # a decode target may be switched to at this frame (a "switch" DTI)
    structure: Structure | None = None  # present on a key frame's first packet
    active_decode_targets: int | None = None  # bitmask, when the descriptor says it

    @property
    def keyframe(self) -> bool:
        """The first packet of a key frame: it brings a new structure, on the base spatial layer."""
        return self.begin and self.structure is not None and self.sid == 0


class _Bits:
    __slots__ = ("data", "position", "size")

    def __init__(self, data: bytes, position: int) -> None:
        self.data = data
        self.position = position
        self.size = len(data) * 8

    def read(self, count: int) -> int:
        if self.position + count > self.size:
            raise DependencyError("descriptor runs past the extension")
        value = 0
        for _ in range(count):
            value = value << 1 | (self.data[self.position >> 3] >> (7 - (self.position & 7)) & 1)
            self.position += 1
        return value

    def non_symmetric(self, count: int) -> int:
        """``ns(n)``: a value below ``count`` in as few bits as its range allows."""
        width = count.bit_length()
        lowest = (1 << width) - count
        value = self.read(width - 1) if width > 1 else 0
        if value < lowest:
            return value
        return (value << 1) - lowest + self.read(1)


def _structure(bits: _Bits) -> Structure:
    structure = Structure(template_id_offset=bits.read(6), decode_targets=bits.read(5) + 1)
    layers = []
    spatial = temporal = 0
    while True:
        layers.append((spatial, temporal))
        if len(layers) > TEMPLATE_ID_RANGE:
            raise DependencyError("more templates than template ids")
        next_layer = bits.read(2)
        if next_layer == 1:
            temporal += 1
        elif next_layer == 2:
            spatial, temporal = spatial + 1, 0
        elif next_layer == 3:
            break
    targets = structure.decode_targets
    dtis = [tuple(bits.read(2) for _ in range(targets)) for _ in layers]
    fdiffs = []
    for _ in layers:
        diffs = []
        while bits.read(1):
            diffs.append(bits.read(4) + 1)
        fdiffs.append(tuple(diffs))
    structure.chains = bits.non_symmetric(targets + 1)
    chain_fdiffs: list[tuple[int, ...]] = [()] * len(layers)
    if structure.chains:
        structure.protected_by = tuple(bits.non_symmetric(structure.chains) for _ in range(targets))
        chain_fdiffs = [tuple(bits.read(4) for _ in range(structure.chains)) for _ in layers]
    structure.templates = [
        Template(spatial, temporal, dtis[index], fdiffs[index], chain_fdiffs[index])
        for index, (spatial, temporal) in enumerate(layers)
    ]
    if bits.read(1):  # resolutions present
        for _ in range(structure.spatial_layers):
            structure.sizes.append((bits.read(16) + 1, bits.read(16) + 1))
    return structure


def parse(data: bytes, structure: Structure | None) -> Descriptor:
    """The descriptor in ``data`` (the extension element's value), read against ``structure`` (the
    track's latest) unless it brings its own; raises DependencyError."""
    if len(data) < MANDATORY_SIZE:
        raise DependencyError("shorter than the mandatory fields")
    head = data[0]
    descriptor = Descriptor(bool(head & 0x80), bool(head & 0x40), head & 0x3F, data[1] << 8 | data[2])
    custom_dtis = False
    bits = None
    if len(data) > MANDATORY_SIZE:
        bits = _Bits(data, MANDATORY_SIZE * 8)
        has_structure, has_active, custom_dtis = bits.read(1), bits.read(1), bits.read(1)
        bits.read(2)  # custom frame diffs and chains: references, which routing does not need
        if has_structure:
            structure = descriptor.structure = _structure(bits)
        if structure is None:
            raise DependencyError("no template structure received yet")
        if has_active:
            descriptor.active_decode_targets = bits.read(structure.decode_targets)
    if structure is None:
        raise DependencyError("no template structure received yet")
    index = (descriptor.template_id + TEMPLATE_ID_RANGE - structure.template_id_offset) % TEMPLATE_ID_RANGE
    if index >= len(structure.templates):
        raise DependencyError("template id outside the structure")
    template = structure.templates[index]
    descriptor.sid, descriptor.tid = template.spatial, template.temporal
    dtis = tuple(bits.read(2) for _ in range(structure.decode_targets)) if custom_dtis and bits else template.dtis
    descriptor.switch_up = DTI_SWITCH in dtis
    return descriptor


class DependencyReader:
    """One AV1 track's descriptors: each packet's read from its extension against the latest structure."""

    __slots__ = ("extension_id", "structure")

    def __init__(self, extension_id: int) -> None:
        self.extension_id = extension_id
        self.structure: Structure | None = None

    def read(self, packet: Packet) -> Descriptor:
        data = packet.extensions.get(self.extension_id)
        if data is None:
            raise DependencyError("no dependency descriptor")
        descriptor = parse(data, self.structure)
        if descriptor.structure is not None:
            self.structure = descriptor.structure
        return descriptor
