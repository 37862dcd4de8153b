"""The framing between the server and its media workers (docs/sfu.md#workers): messages over a
unix stream socket, each a 4-byte big-endian length, then a 4-byte length of its JSON part, the
JSON (an object) and, after it, an optional binary part (a media frame for a live stream's
compositor or a caption worker, which JSON would inflate by a third).

A message is one of:

- a request ``{"id": n, "op": "...", "args": {...}}`` (server to worker), answered by
- a reply ``{"id": n, "result": ...}`` or ``{"id": n, "error": {"code": c, "message": "..."}}``
  (``code`` is the ``SignalError`` code to give the client, 500 for anything unforeseen);
- an event ``{"event": "...", ...}`` (worker to server, unanswered): a peer's signal to its client,
  a track published or withdrawn, a recording's file closed, a frame for a stream, the load.

A socket's messages arrive in the order they were written, so a peer's signals reach its client in
order and a request's effects are seen before its reply."""

from __future__ import annotations

import asyncio
import json
import struct
from typing import Any

MAX_MESSAGE = 64 * 1024 * 1024  # a room's stats are the largest JSON; frames are far smaller
_HEADER = struct.Struct(">II")


def encode(message: dict[str, Any], blob: bytes = b"") -> bytes:
    text = json.dumps(message, separators=(",", ":")).encode()
    return _HEADER.pack(4 + len(text) + len(blob), len(text)) + text + blob


async def read(reader: asyncio.StreamReader) -> tuple[dict[str, Any], bytes]:
    """The next message and its binary part; raises ``asyncio.IncompleteReadError`` at the end."""
    total, text_length = _HEADER.unpack(await reader.readexactly(_HEADER.size))
    if total > MAX_MESSAGE or text_length > total - 4:
        raise ValueError(f"malformed message of {total} bytes")
    body = await reader.readexactly(total - 4)
    message = json.loads(body[:text_length])
    if not isinstance(message, dict):
        raise ValueError("a message is a JSON object")
    return message, body[text_length:]
