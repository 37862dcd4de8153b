"""What the server accepts from a publisher's offer and what it offers to a subscriber.

Subscriber offers use one fixed payload type per codec and fixed header-extension ids, so every
receiver of a packet gets the same bytes after the 12-byte fixed header.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from sfu import rtp
from sfu.sdp import PROTO_RTP, Codec, LocalTransport, MediaSection, SdpError, SessionDescription, codec_lines

VIDEO_PREFERENCE = ("vp8", "h264")
# VP9 (profile 0, which every WebRTC browser decodes) or AV1 (main profile) is taken only when a
# publisher puts it first, i.e. it asked for it (sfu/svc.py): they carry spatial layers on one stream.
VP9_PROFILE_0 = re.compile(r"(^|;)\s*profile-id=0\s*(;|$)")
AV1_PROFILE_0 = re.compile(r"(^|;)\s*profile=0\s*(;|$)")
AV1_PROFILE = re.compile(r"(^|;)\s*profile=")
SCALABLE = ("vp9", "av1")
AUDIO_PREFERENCE = ("opus",)
VIDEO_FEEDBACK = ("nack", "nack pli", "ccm fir", "goog-remb")
# Transport-wide feedback (sfu/twcc.py): the server sends it to publishers, for their own send-side
# estimator, and asks it of subscribers, for its own (sfu/gcc.py); REMB stays for those without it.
TRANSPORT_CC = "transport-cc"
ACCEPTED_EXTENSIONS = (
    rtp.URI_MID,
    rtp.URI_RID,
    rtp.URI_REPAIRED_RID,
    rtp.URI_AUDIO_LEVEL,
    rtp.URI_ABS_SEND_TIME,
    rtp.URI_TRANSPORT_CC,
)
# AV1's layers are told by the dependency descriptor extension, not the payload (sfu/av1dd.py).
AV1_EXTENSIONS = (*ACCEPTED_EXTENSIONS, rtp.URI_DEPENDENCY_DESCRIPTOR)
# Payload types on subscriber connections: (media, rtx).
OUTGOING_PAYLOAD_TYPES = {
    "vp8": (96, 97),
    "vp9": (98, 99),
    "h264": (102, 103),
    "av1": (45, 46),
    "opus": (111, None),
}
OUTGOING_RED_PAYLOAD_TYPE = 63  # RED audio with Opus inside (sfu/red.py), as Chromium numbers it
# Opus parameters the server asks publishers for: in-band FEC, so a receiver rebuilds a lost frame
# from the next packet. DTX (``usedtx``) is kept when the publisher's own offer asks for it.
OPUS_REQUIRED_FMTP = {"useinbandfec": "1"}
# Publishers are asked to start high enough for every simulcast layer to come up at once.
VIDEO_START_BITRATE_KBPS = 1500


@dataclass(slots=True)
class PublishedSection:
    """One m-section the server agreed to receive: a track, its codec and how to route its packets."""

    mid: str
    kind: str
    codec: Codec
    rtx_payload_type: int | None
    extension_ids: dict[str, int]
    rids: list[str]
    ssrc_layers: list[int] = field(default_factory=list)  # SSRC-signalled simulcast, low to high
    rtx_of: dict[int, int] = field(default_factory=dict)  # rtx ssrc -> media ssrc
    stream_id: str = ""
    source: str = "camera"  # what the track shows: "camera" (or microphone), or "screen"
    red_payload_type: int | None = None  # RED with this Opus inside, offered by the publisher (sfu/red.py)


def opus_fmtp(offered: str) -> str:
    """The publisher's Opus parameters (its ``usedtx``, ``stereo``, ``minptime``...) with FEC asked for."""
    params = dict(item.split("=", 1) for item in offered.replace(" ", "").split(";") if "=" in item)
    params.update(OPUS_REQUIRED_FMTP)
    return ";".join(f"{key}={value}" for key, value in params.items())


def _red_for(section: MediaSection, codec: Codec) -> int | None:
    """The payload type of RED carrying only ``codec`` (fmtp ``111/111``), if the section offers it."""
    if codec.name != "opus":
        return None
    for red in section.codec_named("red"):
        blocks = red.fmtp.split("/")
        if blocks and all(block.strip() == str(codec.payload_type) for block in blocks):
            return red.payload_type
    return None


def _first_video_codec(section: MediaSection) -> Codec | None:
    """The codec the client prefers: the first format of its m-line that is not a repair format."""
    for text in section.formats:
        codec = section.codecs.get(int(text)) if text.isdigit() else None
        if codec is not None and codec.name not in ("rtx", "red", "ulpfec", "flexfec-03"):
            return codec
    return None


def _pick_codec(section: MediaSection, two_byte_extensions: bool) -> Codec | None:
    if section.kind == "video":
        first = _first_video_codec(section)
        if first is not None and first.name == "vp9" and (not first.fmtp or VP9_PROFILE_0.search(first.fmtp)):
            return first
        # AV1's dependency descriptor outgrows one-byte extension headers: it needs two-byte ones.
        if (
            first is not None
            and first.name == "av1"
            and two_byte_extensions
            and (not AV1_PROFILE.search(first.fmtp) or AV1_PROFILE_0.search(first.fmtp))
            and rtp.URI_DEPENDENCY_DESCRIPTOR in section.extmap
        ):
            return first
    preference = VIDEO_PREFERENCE if section.kind == "video" else AUDIO_PREFERENCE
    for name in preference:
        for codec in section.codec_named(name):
            if name == "h264" and "packetization-mode=1" not in codec.fmtp:
                continue
            return codec
    return None


def _rtx_for(section: MediaSection, payload_type: int) -> int | None:
    for codec in section.codec_named("rtx"):
        if codec.apt == payload_type:
            return codec.payload_type
    return None


def _ordered_rids(section: MediaSection) -> list[str]:
    return section.simulcast or section.rids


def accept_publisher_offer(offer: SessionDescription) -> list[PublishedSection | None]:
    """The sections to receive, aligned with the offer's; ``None`` marks a rejected section."""
    accepted: list[PublishedSection | None] = []
    for section in offer.sections:
        codec = None
        if section.kind in ("audio", "video") and not section.rejected and section.proto == PROTO_RTP:
            codec = _pick_codec(section, offer.extmap_allow_mixed)
        if codec is None or section.direction not in ("sendonly", "sendrecv"):
            accepted.append(None)
            continue
        if not section.mid:
            raise SdpError("every media section needs an a=mid")
        ssrc_layers: list[int] = []
        rtx_of: dict[int, int] = {}
        for semantics, members in section.ssrc_groups:
            if semantics == "SIM":
                ssrc_layers = members
            elif semantics == "FID" and len(members) == 2:
                rtx_of[members[1]] = members[0]
        if not ssrc_layers:
            ssrc_layers = [ssrc for ssrc in section.ssrcs if ssrc not in rtx_of][:1]
        stream_id = section.msid.split()[0] if section.msid else ""
        accepted_uris = AV1_EXTENSIONS if codec.name == "av1" else ACCEPTED_EXTENSIONS
        accepted.append(
            PublishedSection(
                mid=section.mid,
                kind=section.kind,
                codec=codec,
                rtx_payload_type=_rtx_for(section, codec.payload_type) if section.kind == "video" else None,
                extension_ids={uri: ident for uri, ident in section.extmap.items() if uri in accepted_uris},
                rids=_ordered_rids(section),
                ssrc_layers=ssrc_layers,
                rtx_of=rtx_of,
                stream_id=stream_id,
                source="screen" if "slides" in section.content.split(",") else "camera",
                red_payload_type=_red_for(section, codec),
            )
        )
    return accepted


def _header(session_id: int, version: int, mids: list[str]) -> list[str]:
    lines = ["v=0", f"o=- {session_id} {version} IN IP4 0.0.0.0", "s=huiyi", "t=0 0", "a=ice-lite"]
    if mids:
        lines.append("a=group:BUNDLE " + " ".join(mids))
    lines.append("a=msid-semantic: WMS *")
    return lines


def transport_lines(local: LocalTransport) -> list[str]:
    lines = [
        "c=IN IP4 0.0.0.0",
        "a=rtcp:9 IN IP4 0.0.0.0",
        f"a=ice-ufrag:{local.ice_ufrag}",
        f"a=ice-pwd:{local.ice_pwd}",
    ]
    lines += [f"a=fingerprint:{algorithm} {digest}" for algorithm, digest in local.fingerprints]
    lines.append(f"a=setup:{local.setup}")
    lines += [f"a=candidate:{candidate}" for candidate in local.candidates]
    return [*lines, "a=end-of-candidates", "a=rtcp-mux", "a=rtcp-rsize"]


def _render(lines: list[str]) -> str:
    return "\r\n".join(lines) + "\r\n"


def publisher_answer(
    offer: SessionDescription, accepted: list[PublishedSection | None], local: LocalTransport, session_id: int
) -> str:
    mids = [section.mid for section in accepted if section is not None]
    lines = _header(session_id, 1, mids)
    if offer.extmap_allow_mixed:
        lines.append("a=extmap-allow-mixed")
    for section, taken in zip(offer.sections, accepted, strict=True):
        if taken is None:
            # Every m-section needs a connection line, rejected ones too (Firefox refuses the
            # description otherwise).
            lines += [f"m={section.kind} 0 {section.proto} {' '.join(section.formats) or '0'}", "c=IN IP4 0.0.0.0"]
            if section.mid:
                lines.append(f"a=mid:{section.mid}")
            continue
        codec = Codec(taken.codec.payload_type, taken.codec.name, taken.codec.clock_rate, taken.codec.channels)
        codec.fmtp = taken.codec.fmtp
        formats = [str(codec.payload_type)]
        if taken.kind == "video":
            codec.feedback = [fb for fb in (*VIDEO_FEEDBACK, TRANSPORT_CC) if fb in taken.codec.feedback]
            codec.fmtp = ";".join(filter(None, [codec.fmtp, f"x-google-start-bitrate={VIDEO_START_BITRATE_KBPS}"]))
        elif TRANSPORT_CC in taken.codec.feedback:
            codec.feedback = [TRANSPORT_CC]
        if codec.name == "opus":
            codec.fmtp = opus_fmtp(codec.fmtp)
        if taken.rtx_payload_type is not None:
            formats.append(str(taken.rtx_payload_type))
        if taken.red_payload_type is not None:
            formats.insert(0, str(taken.red_payload_type))  # first: what the publisher sends
        lines.append(f"m={taken.kind} 9 {PROTO_RTP} {' '.join(formats)}")
        lines += transport_lines(local)
        lines += [f"a=mid:{taken.mid}", "a=recvonly"]
        lines += [f"a=extmap:{ident} {uri}" for uri, ident in taken.extension_ids.items()]
        if taken.red_payload_type is not None:
            lines += codec_lines(red_codec(taken.red_payload_type, codec.payload_type))
        lines += codec_lines(codec)
        if taken.rtx_payload_type is not None:
            rtx = Codec(taken.rtx_payload_type, "rtx", codec.clock_rate, fmtp=f"apt={codec.payload_type}")
            lines += codec_lines(rtx)
        if taken.rids:
            lines += [f"a=rid:{rid} recv" for rid in taken.rids]
            lines.append("a=simulcast:recv " + ";".join(taken.rids))
    return _render(lines)


@dataclass(slots=True)
class OfferSlot:
    """One m-section of a subscriber connection: a forwarded track, or an idle section kept in place."""

    mid: str
    kind: str
    codec: Codec | None = None  # None: the section is inactive
    ssrc: int = 0
    rtx_ssrc: int = 0
    stream_id: str = ""
    track_id: str = ""
    red: bool = False  # RED is offered too: the publisher sends it


def red_codec(payload_type: int, opus_payload_type: int) -> Codec:
    return Codec(payload_type, "red", 48000, 2, f"{opus_payload_type}/{opus_payload_type}")


def outgoing_codec(source: Codec) -> Codec:
    """The codec a subscriber is offered for a publisher's track: same format, the server's payload
    type; Opus with the parameters its publisher was answered (FEC, and DTX if it asked)."""
    payload_type, _ = OUTGOING_PAYLOAD_TYPES[source.name]
    feedback = [*VIDEO_FEEDBACK, TRANSPORT_CC] if source.name != "opus" else [TRANSPORT_CC]
    fmtp = re.sub(r";?x-google-[a-z-]+=\d+", "", source.fmtp).strip(";")
    if source.name == "opus":
        fmtp = opus_fmtp(fmtp)
    return Codec(payload_type, source.name, source.clock_rate, source.channels, fmtp, feedback)


def subscriber_offer(slots: list[OfferSlot], local: LocalTransport, session_id: int, version: int) -> str:
    lines = _header(session_id, version, [slot.mid for slot in slots])
    # Two-byte extension headers, which an AV1 key frame's dependency descriptor needs: said in every
    # offer, since a connection must not take back what it once allowed when its AV1 track goes.
    lines.append("a=extmap-allow-mixed")
    for slot in slots:
        if slot.codec is None:
            name = "opus" if slot.kind == "audio" else "vp8"
            codec = Codec(
                OUTGOING_PAYLOAD_TYPES[name][0], name, 48000 if name == "opus" else 90000, 2 if name == "opus" else 1
            )
            lines.append(f"m={slot.kind} 9 {PROTO_RTP} {codec.payload_type}")
            lines += transport_lines(local)
            lines += [f"a=mid:{slot.mid}", "a=inactive"]
            lines += codec_lines(codec)
            continue
        codec = slot.codec
        _, rtx_pt = OUTGOING_PAYLOAD_TYPES[codec.name]
        formats = [str(codec.payload_type)] + ([str(rtx_pt)] if rtx_pt else [])
        if slot.red:
            formats.append(str(OUTGOING_RED_PAYLOAD_TYPE))
        lines.append(f"m={slot.kind} 9 {PROTO_RTP} {' '.join(formats)}")
        lines += transport_lines(local)
        lines += [f"a=mid:{slot.mid}", "a=sendonly", f"a=msid:{slot.stream_id} {slot.track_id}"]
        if slot.kind == "audio":
            lines.append(f"a=extmap:{rtp.OUT_ID_AUDIO_LEVEL} {rtp.URI_AUDIO_LEVEL}")
        lines.append(f"a=extmap:{rtp.OUT_ID_ABS_SEND_TIME} {rtp.URI_ABS_SEND_TIME}")
        lines.append(f"a=extmap:{rtp.OUT_ID_TRANSPORT_CC} {rtp.URI_TRANSPORT_CC}")
        if codec.name == "av1":
            lines.append(f"a=extmap:{rtp.OUT_ID_DEPENDENCY_DESCRIPTOR} {rtp.URI_DEPENDENCY_DESCRIPTOR}")
        lines += codec_lines(codec)
        if slot.red:
            lines += codec_lines(red_codec(OUTGOING_RED_PAYLOAD_TYPE, codec.payload_type))
        cname = f"a=ssrc:{{}} cname:{slot.stream_id}"
        if rtx_pt:
            lines += codec_lines(Codec(rtx_pt, "rtx", codec.clock_rate, fmtp=f"apt={codec.payload_type}"))
            lines.append(f"a=ssrc-group:FID {slot.ssrc} {slot.rtx_ssrc}")
        for ssrc in [slot.ssrc] + ([slot.rtx_ssrc] if rtx_pt else []):
            lines += [cname.format(ssrc), f"a=ssrc:{ssrc} msid:{slot.stream_id} {slot.track_id}"]
    return _render(lines)


def accepted_in_answer(answer: SessionDescription) -> dict[str, MediaSection]:
    """The subscriber's answer, by mid, for the sections it accepted."""
    return {section.mid: section for section in answer.sections if not section.rejected and section.mid}
