"""RTP payloads back into the frames the publisher's encoder made, for recording.

A depacketizer is fed one stream's packets in sequence order with no holes (the jitter buffer sees
to that, and calls ``reset`` when it gives up on a hole). A frame is the packets sharing an RTP
timestamp, ending at the one with the marker bit; a frame whose start was never seen is discarded.
Frames go to ``emit`` as ``EncodedFrame``s: VP8 as the encoder wrote it, VP9 its base spatial
layer's frames, H.264 as an Annex-B byte stream, Opus one packet per frame.
"""

from __future__ import annotations

from collections.abc import Callable

from media.mux import EncodedFrame
from sfu import rtp, vp9

Emit = Callable[[EncodedFrame], None]

ANNEX_B_START = b"\x00\x00\x00\x01"
NAL_IDR, NAL_SPS, NAL_PPS, NAL_STAP_A, NAL_FU_A = 5, 7, 8, 24, 28
# Profiles whose SPS carries chroma format, bit depths and scaling matrices (H.264 7.3.2.1.1).
HIGH_PROFILES = {100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135}


class _PictureFrames:
    """What the VP8 and VP9 depacketizers share: the parts of the frame being put together, with
    the timestamp and arrival of its first packet."""

    __slots__ = ("_arrival", "_parts", "_timestamp", "emit")

    def __init__(self, emit: Emit) -> None:
        self.emit = emit
        self._parts: list[memoryview] = []
        self._timestamp = 0
        self._arrival = 0.0

    def reset(self) -> None:
        self._parts = []


class Vp8Depacketizer(_PictureFrames):
    """RFC 7741: a frame starts at the packet marked as the start of partition 0."""

    __slots__ = ()

    def push(self, packet: rtp.Packet, arrival: float) -> None:
        payload = memoryview(packet.data)[packet.payload_start : packet.payload_end]
        if not payload:
            return  # padding
        offset = rtp.vp8_descriptor_size(payload)
        if not offset:
            self._parts = []
            return
        if payload[0] & 0x10 and not payload[0] & 0x07:
            if self._parts:  # the previous frame ended without a marker: it is whole all the same
                self._finish()
            self._parts = [payload[offset:]]
            self._timestamp, self._arrival = packet.timestamp, arrival
        elif self._parts and packet.timestamp == self._timestamp:
            self._parts.append(payload[offset:])
        else:
            self._parts = []
            return
        if packet.marker:
            self._finish()

    def _finish(self) -> None:
        data = b"".join(self._parts)
        self._parts = []
        if not data:
            return
        width = height = 0
        if not data[0] & 0x01 and len(data) >= 10 and data[3:6] == b"\x9d\x01\x2a":
            width = int.from_bytes(data[6:8], "little") & 0x3FFF
            height = int.from_bytes(data[8:10], "little") & 0x3FFF
        # A key frame whose header does not give its size is damaged: it can start nothing.
        keyframe = width > 0 and height > 0
        self.emit(EncodedFrame(data, self._timestamp, keyframe, self._arrival, width, height))


class Vp9Depacketizer(_PictureFrames):
    """RFC 9628, keeping the base spatial layer (SID 0) at every temporal layer.

    A VP9 stream with spatial layers (SVC, sfu/svc.py) sends each picture as up to three frames of
    different sizes, each shown; a file holds one size, and the base layer is the one that decodes
    on its own (upper layers lean on lower ones in key pictures). So a VP9 SVC track is recorded at
    its smallest size; a VP9 stream without spatial layers is recorded whole. A frame runs from the
    packet that begins a base-layer frame (B) to the one that ends it (E).
    """

    __slots__ = ()

    def push(self, packet: rtp.Packet, arrival: float) -> None:
        if packet.payload_end <= packet.payload_start:
            return  # padding
        try:
            descriptor = vp9.parse(packet.data, packet.payload_start, packet.payload_end)
        except vp9.Vp9Error:
            self._parts = []
            return
        if descriptor.sid != 0:
            return
        payload = memoryview(packet.data)[packet.payload_start + descriptor.size : packet.payload_end]
        if descriptor.begin:
            self._parts = [payload]
            self._timestamp, self._arrival = packet.timestamp, arrival
        elif self._parts and packet.timestamp == self._timestamp:
            self._parts.append(payload)
        else:
            self._parts = []
            return
        if descriptor.end:
            data = b"".join(self._parts)
            self._parts = []
            size = vp9_keyframe_size(data)
            width, height = size or (0, 0)
            self.emit(EncodedFrame(data, self._timestamp, size is not None, self._arrival, width, height))


def vp9_keyframe_size(frame: bytes) -> tuple[int, int] | None:
    """A VP9 key frame's size from its uncompressed header; ``None`` for any other frame (or a key
    frame too damaged to start anything)."""
    if len(frame) < 10:
        return None
    bits = _Bits(frame[:10])
    try:
        if bits.u(2) != 2:  # frame marker
            return None
        profile = bits.u(1) | bits.u(1) << 1
        if profile == 3:
            bits.u(1)
        if bits.u(1) or bits.u(1):  # show an existing frame; not a key frame
            return None
        bits.u(2)  # show_frame, error_resilient_mode
        if bits.u(24) != 0x498342:
            return None
        if profile >= 2:
            bits.u(1)  # ten or twelve bits
        if bits.u(3) != 7:  # colour space other than sRGB: colour range, then subsampling (profiles 1, 3)
            bits.u(1)
            if profile in (1, 3):
                bits.u(3)
        elif profile in (1, 3):
            bits.u(1)
        return bits.u(16) + 1, bits.u(16) + 1
    except ValueError:
        return None


class H264Depacketizer:
    """RFC 6184 packetization mode 1: single NAL units, STAP-A and FU-A.

    A key frame is one with an IDR slice. The latest SPS and PPS are kept and put in front of an IDR
    frame that came without them, so every key frame in a file can start decoding on its own; an IDR
    frame before any parameter set was seen (or with an SPS that cannot be read) cannot, and is passed
    on as a delta frame.
    """

    __slots__ = ("_arrival", "_broken", "_fragment", "_nals", "_timestamp", "emit", "pps", "sps")

    def __init__(self, emit: Emit) -> None:
        self.emit = emit
        self.sps: bytes | None = None
        self.pps: bytes | None = None
        self._nals: list[bytes | memoryview] = []
        self._fragment: list[bytes | memoryview] | None = None
        self._broken = False
        self._timestamp = 0
        self._arrival = 0.0

    def reset(self) -> None:
        self._nals, self._fragment, self._broken = [], None, False

    def push(self, packet: rtp.Packet, arrival: float) -> None:
        payload = memoryview(packet.data)[packet.payload_start : packet.payload_end]
        if not payload:
            return  # padding
        pending = self._nals or self._fragment is not None or self._broken
        if pending and packet.timestamp != self._timestamp:
            self._finish()  # the previous frame ended without a marker
            pending = False
        if not pending:
            self._timestamp, self._arrival = packet.timestamp, arrival
        self._unpack(payload)
        if packet.marker:
            self._finish()

    def _unpack(self, payload: memoryview) -> None:
        nal_type = payload[0] & 0x1F
        if 0 < nal_type < 24:
            self._nals.append(payload)
        elif nal_type == NAL_STAP_A:
            offset = 1
            while offset + 2 < len(payload):
                size = (payload[offset] << 8) | payload[offset + 1]
                end = offset + 2 + size
                if not size or end > len(payload):
                    self._broken = True
                    return
                self._nals.append(payload[offset + 2 : end])
                offset = end
        elif nal_type == NAL_FU_A and len(payload) > 2:
            header = payload[1]
            if header & 0x80:
                self._fragment = [bytes(((payload[0] & 0xE0) | (header & 0x1F),)), payload[2:]]
            elif self._fragment is not None:
                self._fragment.append(payload[2:])
            else:
                self._broken = True  # the fragment's start was never seen
                return
            if header & 0x40:
                self._nals.append(b"".join(self._fragment))
                self._fragment = None
        else:
            self._broken = True  # STAP-B, MTAP and FU-B belong to modes WebRTC does not use

    def _finish(self) -> None:
        nals, broken = self._nals, self._broken or self._fragment is not None
        self.reset()
        if broken or not nals:
            return
        types = [nal[0] & 0x1F for nal in nals]
        for nal_type, nal in zip(types, nals, strict=True):
            if nal_type == NAL_SPS:
                self.sps = bytes(nal)
            elif nal_type == NAL_PPS:
                self.pps = bytes(nal)
        width = height = 0
        if NAL_IDR in types and self.sps is not None and self.pps is not None:
            width, height = sps_dimensions(self.sps) or (0, 0)
            if width:
                if NAL_PPS not in types:
                    nals.insert(0, self.pps)
                if NAL_SPS not in types:
                    nals.insert(0, self.sps)
        keyframe = width > 0
        data = ANNEX_B_START + ANNEX_B_START.join(nals)
        self.emit(EncodedFrame(data, self._timestamp, keyframe, self._arrival, width, height))


class OpusDepacketizer:
    """RFC 7587: every packet is one frame."""

    __slots__ = ("emit",)

    def __init__(self, emit: Emit) -> None:
        self.emit = emit

    def reset(self) -> None:
        pass

    def push(self, packet: rtp.Packet, arrival: float) -> None:
        if packet.payload_end > packet.payload_start:
            self.emit(EncodedFrame(packet.payload, packet.timestamp, True, arrival))


Depacketizer = Vp8Depacketizer | Vp9Depacketizer | H264Depacketizer | OpusDepacketizer
DEPACKETIZERS: dict[str, type[Depacketizer]] = {
    "vp8": Vp8Depacketizer,
    "vp9": Vp9Depacketizer,
    "h264": H264Depacketizer,
    "opus": OpusDepacketizer,
}


class _Bits:
    """An H.264 RBSP (or a VP9 frame header) read bit by bit, with Exp-Golomb codes."""

    def __init__(self, data: bytes) -> None:
        self.value = int.from_bytes(data, "big")
        self.left = 8 * len(data)

    def u(self, count: int) -> int:
        self.left -= count
        if self.left < 0:
            raise ValueError("the header ends early")
        return (self.value >> self.left) & ((1 << count) - 1)

    def ue(self) -> int:
        zeros = 0
        while not self.u(1):
            zeros += 1
            if zeros > 31:
                raise ValueError("Exp-Golomb code too long")
        return (1 << zeros) - 1 + self.u(zeros)

    def se(self) -> int:
        code = self.ue()
        return (code + 1) // 2 if code & 1 else -(code // 2)


def sps_dimensions(sps: bytes) -> tuple[int, int] | None:
    """Picture width and height (after cropping) from an SPS NAL unit; None if it cannot be read."""
    try:
        bits = _Bits(sps[1:].replace(b"\x00\x00\x03", b"\x00\x00"))
        profile = bits.u(8)
        bits.u(16)  # constraint flags, level
        bits.ue()  # seq_parameter_set_id
        chroma_format = 1
        if profile in HIGH_PROFILES:
            chroma_format = bits.ue()
            if chroma_format == 3:
                bits.u(1)  # separate_colour_plane_flag
            bits.ue()  # bit_depth_luma_minus8
            bits.ue()  # bit_depth_chroma_minus8
            bits.u(1)  # qpprime_y_zero_transform_bypass_flag
            if bits.u(1):  # seq_scaling_matrix_present_flag
                for index in range(12 if chroma_format == 3 else 8):
                    if bits.u(1):
                        _skip_scaling_list(bits, 16 if index < 6 else 64)
        bits.ue()  # log2_max_frame_num_minus4
        order_type = bits.ue()
        if order_type == 0:
            bits.ue()  # log2_max_pic_order_cnt_lsb_minus4
        elif order_type == 1:
            bits.u(1)
            bits.se()
            bits.se()
            for _ in range(bits.ue()):
                bits.se()
        bits.ue()  # max_num_ref_frames
        bits.u(1)  # gaps_in_frame_num_value_allowed_flag
        width_mbs = bits.ue() + 1
        height_units = bits.ue() + 1
        frame_mbs_only = bits.u(1)
        if not frame_mbs_only:
            bits.u(1)  # mb_adaptive_frame_field_flag
        bits.u(1)  # direct_8x8_inference_flag
        left = right = top = bottom = 0
        if bits.u(1):  # frame_cropping_flag
            left, right, top, bottom = bits.ue(), bits.ue(), bits.ue(), bits.ue()
    except (ValueError, IndexError):
        return None
    if chroma_format == 0:
        unit_x, unit_y = 1, 2 - frame_mbs_only
    else:
        unit_x = 2 if chroma_format in (1, 2) else 1
        unit_y = (2 if chroma_format == 1 else 1) * (2 - frame_mbs_only)
    width = width_mbs * 16 - unit_x * (left + right)
    height = (2 - frame_mbs_only) * height_units * 16 - unit_y * (top + bottom)
    return (width, height) if width > 0 and height > 0 else None


def _skip_scaling_list(bits: _Bits, size: int) -> None:
    last = following = 8
    for _ in range(size):
        if following:
            following = (last + bits.se() + 256) % 256
        last = following or last
