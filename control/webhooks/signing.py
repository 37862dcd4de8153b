"""How a receiver knows a webhook came from this deployment, and is not a replay.

Every delivery carries ``Huiyi-Signature: t=<unix seconds>,v1=<hex>``, where the hex is
HMAC-SHA256, keyed with the receiver's secret, of ``<t>.<body>`` (the body's exact bytes). A
receiver computes the same, compares in constant time, and refuses a ``t`` far from its clock
(five minutes, say), so a captured delivery cannot be sent again later. ``t`` is the time of the
attempt: a retry is signed anew."""

from __future__ import annotations

import hashlib
import hmac
import time

HEADER = "Huiyi-Signature"
TOLERANCE_SECONDS = 300


def signature(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return mac.hexdigest()


def signature_header(secret: str, body: bytes, timestamp: int | None = None) -> str:
    moment = int(time.time()) if timestamp is None else timestamp
    return f"t={moment},v1={signature(secret, moment, body)}"


def verify(secret: str, body: bytes, header: str, tolerance: float = TOLERANCE_SECONDS) -> bool:
    """What a receiver does (written here for receivers in Python, and the tests)."""
    parts = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(time.time() - timestamp) > tolerance:
        return False
    return hmac.compare_digest(parts.get("v1", ""), signature(secret, timestamp, body))
