"""Session descriptions: read what a client offers or answers, write the server's side.

aiortc's own SDP layer knows nothing of ``a=rid``/``a=simulcast`` and is tied to its peer
connection, so the SFU reads and writes SDP itself, keeping only what forwarding needs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

PROTO_RTP = "UDP/TLS/RTP/SAVPF"
DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")


class SdpError(ValueError):
    """The description cannot be used; the message says why, for the client's ``error`` reply."""


@dataclass(slots=True)
class Codec:
    payload_type: int
    name: str  # lower-case encoding name
    clock_rate: int
    channels: int = 1
    fmtp: str = ""
    feedback: list[str] = field(default_factory=list)

    @property
    def apt(self) -> int | None:
        """For an RTX codec, the payload type it repairs."""
        match = re.search(r"apt=(\d+)", self.fmtp)
        return int(match.group(1)) if match else None


@dataclass(slots=True)
class MediaSection:
    kind: str
    port: int
    proto: str
    formats: list[str]
    mid: str = ""
    direction: str = "sendrecv"
    codecs: dict[int, Codec] = field(default_factory=dict)
    extmap: dict[str, int] = field(default_factory=dict)  # uri -> id
    ssrcs: dict[int, dict[str, str]] = field(default_factory=dict)
    ssrc_groups: list[tuple[str, list[int]]] = field(default_factory=list)
    rids: list[str] = field(default_factory=list)  # send rids, in the offer's order
    simulcast: list[str] = field(default_factory=list)  # rids named by a=simulcast, in order
    msid: str = ""
    content: str = ""  # RFC 4796 a=content, e.g. "slides" for a shared screen
    bundle_only: bool = False  # port 0 with a=bundle-only (RFC 8843) is bundled, not rejected
    ice_ufrag: str = ""
    ice_pwd: str = ""
    fingerprints: list[tuple[str, str]] = field(default_factory=list)
    setup: str = ""
    candidates: list[str] = field(default_factory=list)

    @property
    def rejected(self) -> bool:
        """Port 0 rejects a section, unless it is bundle-only (Firefox offers all but the first
        bundled section so under max-bundle)."""
        return self.port == 0 and not self.bundle_only

    def codec_named(self, name: str) -> list[Codec]:
        return [codec for codec in self.codecs.values() if codec.name == name]


@dataclass(slots=True)
class SessionDescription:
    sections: list[MediaSection]
    ice_ufrag: str = ""
    ice_pwd: str = ""
    fingerprints: list[tuple[str, str]] = field(default_factory=list)
    setup: str = ""
    ice_lite: bool = False
    # RFC 8285 a=extmap-allow-mixed: the client may send, and takes, two-byte extension headers.
    extmap_allow_mixed: bool = False

    def ice_credentials(self) -> tuple[str, str]:
        """The ICE username fragment and password, which bundling makes one pair for every section."""
        for section in self.sections:
            if not section.rejected and section.ice_ufrag and section.ice_pwd:
                return section.ice_ufrag, section.ice_pwd
        if self.ice_ufrag and self.ice_pwd:
            return self.ice_ufrag, self.ice_pwd
        raise SdpError("the description has no a=ice-ufrag/a=ice-pwd")

    def dtls_fingerprints(self) -> list[tuple[str, str]]:
        for section in self.sections:
            if not section.rejected and section.fingerprints:
                return section.fingerprints
        if self.fingerprints:
            return self.fingerprints
        raise SdpError("the description has no a=fingerprint")

    def dtls_setup(self) -> str:
        for section in self.sections:
            if not section.rejected and section.setup:
                return section.setup
        return self.setup or "actpass"

    def all_candidates(self) -> list[str]:
        return [candidate for section in self.sections if not section.rejected for candidate in section.candidates]


def parse(text: str) -> SessionDescription:
    if not isinstance(text, str) or not text.startswith("v=0"):
        raise SdpError("sdp must be a session description starting with v=0")
    session = SessionDescription(sections=[])
    section: MediaSection | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if len(line) < 2 or line[1] != "=":
            continue
        kind, value = line[0], line[2:]
        if kind == "m":
            section = _media_line(value)
            session.sections.append(section)
        elif kind == "a":
            name, _, rest = value.partition(":")
            if section is None:
                _session_attribute(session, name, rest)
            elif name == "extmap-allow-mixed":  # also allowed per media section
                session.extmap_allow_mixed = True
            else:
                _media_attribute(section, name, rest)
    if not session.sections:
        raise SdpError("the description has no media sections")
    return session


def _media_line(value: str) -> MediaSection:
    parts = value.split()
    if len(parts) < 3:
        raise SdpError(f"malformed m= line: {value[:60]}")
    try:
        port = int(parts[1].split("/")[0])
    except ValueError:
        raise SdpError(f"malformed port in m= line: {value[:60]}") from None
    return MediaSection(kind=parts[0], port=port, proto=parts[2], formats=parts[3:])


def _session_attribute(session: SessionDescription, name: str, value: str) -> None:
    if name == "ice-ufrag":
        session.ice_ufrag = value
    elif name == "ice-pwd":
        session.ice_pwd = value
    elif name == "fingerprint":
        session.fingerprints.append(_fingerprint(value))
    elif name == "setup":
        session.setup = value
    elif name == "ice-lite":
        session.ice_lite = True
    elif name == "extmap-allow-mixed":
        session.extmap_allow_mixed = True


def _fingerprint(value: str) -> tuple[str, str]:
    algorithm, _, digest = value.partition(" ")
    return algorithm.lower(), digest.strip()


def _media_attribute(section: MediaSection, name: str, value: str) -> None:
    try:
        _read_media_attribute(section, name, value)
    except (ValueError, IndexError):
        raise SdpError(f"malformed a={name} line: {value[:60]}") from None


def _read_media_attribute(section: MediaSection, name: str, value: str) -> None:
    if name == "mid":
        section.mid = value
    elif name in DIRECTIONS:
        section.direction = name
    elif name == "rtpmap":
        pt_text, _, encoding = value.partition(" ")
        parts = encoding.split("/")
        pt = int(pt_text)
        codec = section.codecs.setdefault(pt, Codec(pt, "", 0))
        codec.name = parts[0].lower()
        codec.clock_rate = int(parts[1])
        codec.channels = int(parts[2]) if len(parts) > 2 else 1
    elif name == "fmtp":
        pt_text, _, params = value.partition(" ")
        section.codecs.setdefault(int(pt_text), Codec(int(pt_text), "", 0)).fmtp = params
    elif name == "rtcp-fb":
        pt_text, _, feedback = value.partition(" ")
        if pt_text != "*":
            section.codecs.setdefault(int(pt_text), Codec(int(pt_text), "", 0)).feedback.append(feedback)
    elif name == "extmap":
        ident, _, uri = value.partition(" ")
        section.extmap[uri.split()[0]] = int(ident.split("/")[0])
    elif name == "ssrc":
        ssrc_text, _, attribute = value.partition(" ")
        attr_name, _, attr_value = attribute.partition(":")
        section.ssrcs.setdefault(int(ssrc_text), {})[attr_name] = attr_value
    elif name == "ssrc-group":
        semantics, *members = value.split()
        section.ssrc_groups.append((semantics, [int(member) for member in members]))
    elif name == "rid":
        rid, direction = value.split()[:2]
        if direction == "send":
            section.rids.append(rid)
    elif name == "simulcast":
        direction, _, streams = value.partition(" ")
        if direction == "send":
            section.simulcast = [alt.lstrip("~") for stream in streams.split(";") for alt in stream.split(",")[:1]]
    elif name == "msid":
        section.msid = value
    elif name == "bundle-only":
        section.bundle_only = True
    elif name == "content":
        section.content = value.strip()
    elif name == "ice-ufrag":
        section.ice_ufrag = value
    elif name == "ice-pwd":
        section.ice_pwd = value
    elif name == "fingerprint":
        section.fingerprints.append(_fingerprint(value))
    elif name == "setup":
        section.setup = value
    elif name == "candidate":
        section.candidates.append(value)


@dataclass(slots=True)
class LocalTransport:
    """What the server puts in every section it writes: its ICE and DTLS identity and candidates."""

    ice_ufrag: str
    ice_pwd: str
    fingerprints: list[tuple[str, str]]
    candidates: list[str]
    setup: str


def codec_lines(codec: Codec) -> list[str]:
    names = {"vp8": "VP8", "vp9": "VP9", "av1": "AV1", "h264": "H264", "opus": "opus", "rtx": "rtx"}
    name = names.get(codec.name, codec.name)
    rtpmap = f"a=rtpmap:{codec.payload_type} {name}/{codec.clock_rate}"
    if codec.channels > 1:
        rtpmap += f"/{codec.channels}"
    lines = [rtpmap]
    lines += [f"a=rtcp-fb:{codec.payload_type} {feedback}" for feedback in codec.feedback]
    if codec.fmtp:
        lines.append(f"a=fmtp:{codec.payload_type} {codec.fmtp}")
    return lines
