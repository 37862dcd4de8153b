"""What a client puts on the wire before media, for tests that talk to the SFU's sockets directly."""

from __future__ import annotations

from aioice import Connection, stun

HELLO = bytes([22, 0xFE, 0xFD]) + bytes(40)  # what a DTLS record looks like to the demultiplexer


def check(ufrag: str, password: str) -> bytes:
    """A client's connectivity check for the server connection with ``ufrag``, signed with ``password``."""
    message = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
    message.attributes["USERNAME"] = f"{ufrag}:clnt"
    message.attributes["PRIORITY"] = 1853824767
    message.attributes["ICE-CONTROLLING"] = 1
    message.add_message_integrity(password.encode())
    message.add_fingerprint()
    return bytes(message)


def check_for(connection: Connection) -> bytes:
    """A check ``connection`` (a server-side aioice connection) accepts."""
    return check(connection.local_username, connection.local_password)
