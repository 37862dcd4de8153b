"""STUN and TURN on the wire (RFC 8489, RFC 8656).

aioice's ``stun`` module does the general work: the message header, the attributes ICE and a TURN
client use (XOR-PEER-ADDRESS, XOR-RELAYED-ADDRESS, CHANNEL-NUMBER, LIFETIME, REQUESTED-TRANSPORT,
DATA, NONCE, REALM...), MESSAGE-INTEGRITY and FINGERPRINT. A server needs a little more, added here:
the attributes only a server reads or writes (EVEN-PORT, RESERVATION-TOKEN, DONT-FRAGMENT,
REQUESTED-ADDRESS-FAMILY, UNKNOWN-ATTRIBUTES), every XOR-PEER-ADDRESS of a request (aioice keeps
one), the list of comprehension-required attributes nobody understands (answered 420), and framing
checks aioice leaves out. The relay path (ChannelData, Send and Data indications) is packed and
unpacked by hand, because it runs for every relayed packet.
"""

from __future__ import annotations

import ipaddress
import random
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aioice import stun

Address = tuple[str, int]

COOKIE = stun.COOKIE
HEADER_LENGTH = stun.HEADER_LENGTH
_COOKIE_BYTES = struct.pack("!I", COOKIE)
_PORT_XOR = COOKIE >> 16
_HEADER = struct.Struct("!HHI12s")
_ATTRIBUTE = struct.Struct("!HH")

# Message types (method | class) of the relay path.
SEND_INDICATION = stun.Method.SEND | stun.Class.INDICATION
DATA_INDICATION = stun.Method.DATA | stun.Class.INDICATION

# Attribute types this module reads by hand.
XOR_PEER_ADDRESS = 0x0012
DATA = 0x0013
MESSAGE_INTEGRITY = 0x0008

UDP = 17  # REQUESTED-TRANSPORT protocol number (RFC 8656 §18.7)
FAMILY_IPV4 = 0x01
FAMILY_IPV6 = 0x02

# ChannelData: the first two bits 01 tell it from STUN. RFC 8656 §12 hands out channel numbers
# 0x4000-0x4FFF; RFC 5766 allowed up to 0x7FFE, and clients of its time (coturn's among them) still
# pick from there, so the server takes the wider range.
CHANNEL_MIN = 0x4000
CHANNEL_MAX = 0x7FFE

REASONS = {
    400: "Bad Request",
    401: "Unauthenticated",
    403: "Forbidden",
    420: "Unknown Attribute",
    437: "Allocation Mismatch",
    438: "Stale Nonce",
    440: "Address Family not Supported",
    441: "Wrong Credentials",
    442: "Unsupported Transport Protocol",
    443: "Peer Address Family Mismatch",
    486: "Allocation Quota Reached",
    500: "Server Error",
    508: "Insufficient Capacity",
}


def _pack_even_port(reserve: bool) -> bytes:
    return b"\x80" if reserve else b"\x00"


def _unpack_even_port(value: bytes) -> bool:
    if len(value) != 1:
        raise ValueError("EVEN-PORT is one byte")
    return bool(value[0] & 0x80)


def _pack_family(family: int) -> bytes:
    return struct.pack("!B3x", family)


def _unpack_family(value: bytes) -> int:
    if len(value) != 4:
        raise ValueError("an address family attribute is four bytes")
    return value[0]


def _unpack_token(value: bytes) -> bytes:
    if len(value) != 8:
        raise ValueError("RESERVATION-TOKEN is eight bytes")
    return value


def _unpack_empty(value: bytes) -> bool:
    if value:
        raise ValueError("DONT-FRAGMENT has no value")
    return True


def _pack_types(types: list[int]) -> bytes:
    return b"".join(struct.pack("!H", kind) for kind in types)


# name -> (type, pack, unpack): the attributes a TURN server needs beyond aioice's table.
EXTRA_ATTRIBUTES: dict[str, tuple[int, Callable[[Any], bytes], Callable[[bytes], Any]]] = {
    "UNKNOWN-ATTRIBUTES": (0x000A, _pack_types, lambda value: value),
    "REQUESTED-ADDRESS-FAMILY": (0x0017, _pack_family, _unpack_family),
    "EVEN-PORT": (0x0018, _pack_even_port, _unpack_even_port),
    "DONT-FRAGMENT": (0x001A, lambda _: b"", _unpack_empty),
    "RESERVATION-TOKEN": (0x0022, lambda token: token, _unpack_token),
}
_EXTRA_BY_TYPE = {kind: (name, unpack) for name, (kind, _, unpack) in EXTRA_ATTRIBUTES.items()}


class TurnMessage(stun.Message):
    """An aioice message that can also carry the attributes of ``EXTRA_ATTRIBUTES``."""

    def __bytes__(self) -> bytes:
        extras = {name: value for name, value in self.attributes.items() if name in EXTRA_ATTRIBUTES}
        if not extras:
            return super().__bytes__()
        # The extras go first; MESSAGE-INTEGRITY and FINGERPRINT stay last, as aioice puts them.
        known = self.attributes
        self.attributes = {name: value for name, value in known.items() if name not in EXTRA_ATTRIBUTES}
        try:
            base = super().__bytes__()
        finally:
            self.attributes = known
        packed = b""
        for name, value in extras.items():
            kind, pack, _ = EXTRA_ATTRIBUTES[name]
            body = pack(value)
            packed += _ATTRIBUTE.pack(kind, len(body)) + body + bytes(stun.padding_length(len(body)))
        body = packed + base[HEADER_LENGTH:]
        return base[:2] + struct.pack("!H", len(body)) + base[4:HEADER_LENGTH] + body


@dataclass
class Request:
    """A parsed STUN message: aioice's view of it, plus what a server needs besides."""

    message: stun.Message
    peers: list[Address] = field(default_factory=list)  # every XOR-PEER-ADDRESS, in order
    unknown: list[int] = field(default_factory=list)  # comprehension-required types nobody knows

    @property
    def attributes(self) -> dict[str, Any]:
        return self.message.attributes


def looks_like_stun(data: bytes) -> bool:
    """The fixed parts of a STUN header: two zero bits, the magic cookie, a length in words."""
    return (
        len(data) >= HEADER_LENGTH
        and data[0] < 0x40
        and data[4:8] == _COOKIE_BYTES
        and data[3] & 0x03 == 0
        and len(data) == HEADER_LENGTH + ((data[2] << 8) | data[3])
    )


def parse(data: bytes) -> Request:
    """Parse one STUN message; anything malformed raises ``ValueError``."""
    if not looks_like_stun(data):
        raise ValueError("not a STUN message")
    transaction_id = data[8:HEADER_LENGTH]
    request = Request(_aioice_parse(data))
    extras: dict[str, Any] = {}
    position, end = HEADER_LENGTH, len(data)
    integrity_seen = False
    while position < end:
        if position + 4 > end:
            raise ValueError("truncated attribute header")
        kind, length = _ATTRIBUTE.unpack_from(data, position)
        value_end = position + 4 + length
        if value_end > end:
            raise ValueError("attribute runs past the message")
        if not integrity_seen:
            value = data[position + 4 : value_end]
            if kind == XOR_PEER_ADDRESS:
                request.peers.append(stun.unpack_xor_address(value, transaction_id))
            elif kind in _EXTRA_BY_TYPE:
                name, unpack = _EXTRA_BY_TYPE[kind]
                extras[name] = unpack(value)
            elif kind < 0x8000 and kind not in stun.ATTRIBUTES_BY_TYPE:
                request.unknown.append(kind)
            integrity_seen = kind == MESSAGE_INTEGRITY
        position = value_end + stun.padding_length(length)
    request.message.attributes.update(extras)
    return request


def _aioice_parse(data: bytes) -> stun.Message:
    try:
        return stun.parse_message(data)
    except (struct.error, IndexError) as exc:  # attribute values of the wrong size
        raise ValueError(f"malformed attribute: {exc}") from None


def response(request: stun.Message, attributes: dict[str, Any] | None = None, error: int | None = None) -> TurnMessage:
    """A success (or, with ``error``, an error) response to ``request``."""
    answer = TurnMessage(
        request.message_method,
        stun.Class.ERROR if error else stun.Class.RESPONSE,
        request.transaction_id,
        dict(attributes or {}),
    )
    if error:
        answer.attributes["ERROR-CODE"] = (error, REASONS[error])
    return answer


def encode(answer: TurnMessage, key: bytes | None, fingerprint: bool) -> bytes:
    """Sign with ``key`` (adding FINGERPRINT, as aioice does), or add FINGERPRINT alone."""
    if key is not None:
        answer.add_message_integrity(key)
    elif fingerprint:
        answer.add_fingerprint()
    return bytes(answer)


# The relay path ------------------------------------------------------------------------------


def channel_data(channel: int, payload: bytes, pad: bool) -> bytes:
    """A ChannelData message; over TCP padded to a multiple of four bytes (RFC 8656 §12.5)."""
    length = len(payload)
    header = _ATTRIBUTE.pack(channel, length)
    if pad and length & 3:
        return header + payload + bytes(4 - (length & 3))
    return header + payload


def xor_peer_address(peer: Address, transaction_id: bytes) -> bytes:
    """The XOR-PEER-ADDRESS attribute, header included."""
    host, port = peer[0], peer[1]
    if ":" in host:
        address = _xor16(socket.inet_pton(socket.AF_INET6, host), _COOKIE_BYTES + transaction_id)
        return _ATTRIBUTE.pack(XOR_PEER_ADDRESS, 20) + struct.pack("!BBH", 0, FAMILY_IPV6, port ^ _PORT_XOR) + address
    value = struct.unpack("!I", socket.inet_aton(host))[0] ^ COOKIE
    return _ATTRIBUTE.pack(XOR_PEER_ADDRESS, 8) + struct.pack("!BBHI", 0, FAMILY_IPV4, port ^ _PORT_XOR, value)


def _xor16(value: bytes, pad: bytes) -> bytes:
    return (int.from_bytes(value, "big") ^ int.from_bytes(pad, "big")).to_bytes(16, "big")


class DataIndications:
    """Packs Data indications (RFC 8656 §11.3) for one allocation: the peer's address attribute is
    the same for every packet from that peer (IPv4 does not mix in the transaction id), so it is
    packed once."""

    def __init__(self) -> None:
        self._peers: dict[Address, bytes] = {}
        self._random = random.Random()

    def pack(self, peer: Address, payload: bytes) -> bytes:
        transaction_id = self._random.randbytes(12)
        attribute = self._peers.get(peer)
        if attribute is None:
            attribute = xor_peer_address(peer, transaction_id)
            if ":" not in peer[0]:
                if len(self._peers) > 256:
                    self._peers.clear()
                self._peers[peer] = attribute
        length = len(payload)
        padding = -length & 3
        body_length = len(attribute) + 4 + length + padding
        return b"".join(
            (
                _HEADER.pack(DATA_INDICATION, body_length, COOKIE, transaction_id),
                attribute,
                _ATTRIBUTE.pack(DATA, length),
                payload,
                bytes(padding),
            )
        )


def parse_send_indication(data: bytes) -> tuple[Address, bytes] | None:
    """The peer and payload of a Send indication (RFC 8656 §11.1), or None when it is to be
    discarded: a missing attribute, or a comprehension-required one this server does not know."""
    peer: Address | None = None
    payload: bytes | None = None
    position, end = HEADER_LENGTH, len(data)
    while position + 4 <= end:
        kind, length = _ATTRIBUTE.unpack_from(data, position)
        start = position + 4
        if start + length > end:
            return None
        if kind == XOR_PEER_ADDRESS:
            peer = _unxor_address(data, start, length)
            if peer is None:
                return None
        elif kind == DATA:
            payload = data[start : start + length]
        elif kind < 0x8000 and kind != 0x001A and kind not in stun.ATTRIBUTES_BY_TYPE:
            return None
        position = start + length + (-length & 3)
    if peer is None or payload is None:
        return None
    return peer, payload


def _unxor_address(data: bytes, start: int, length: int) -> Address | None:
    family = data[start + 1]
    port = ((data[start + 2] << 8) | data[start + 3]) ^ _PORT_XOR
    if family == FAMILY_IPV4 and length == 8:
        value = struct.unpack_from("!I", data, start + 4)[0] ^ COOKIE
        return socket.inet_ntoa(struct.pack("!I", value)), port
    if family == FAMILY_IPV6 and length == 20:
        raw = _xor16(data[start + 4 : start + 20], _COOKIE_BYTES + data[8:HEADER_LENGTH])
        return str(ipaddress.IPv6Address(raw)), port
    return None
