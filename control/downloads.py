"""Serving a stored file with byte ranges as RFC 9110 (section 14) has them. aiohttp's own range
handling answers ``bytes=-0`` with the whole file as a 206, refuses ranges it should ignore, and
answers outside the API's envelope; here the range is decided first, and aiohttp is handed only
a range already checked (or none)."""

from __future__ import annotations

import asyncio
import math
import os
import re
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path

from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter
from multidict import CIMultiDict

from control.errors import ApiError

_SINGLE_RANGE = re.compile(r"bytes=(\d*)-(\d*)", re.ASCII | re.IGNORECASE)
# Positions past any file we store; longer digit strings are not converted (Python refuses
# integers of more than 4300 digits, and nothing that long can be a position).
_BEYOND_ANY_FILE = 10**18
_MAX_DIGITS = 18


@dataclass(frozen=True)
class ByteRange:
    first: int
    last: int  # inclusive, as in the header


class RangeNotSatisfiable(Exception):
    """A valid range that selects no byte of the file."""


def _position(digits: str) -> int:
    return int(digits) if len(digits) <= _MAX_DIGITS else _BEYOND_ANY_FILE


def _if_range_holds(if_range: str | None, stat: os.stat_result) -> bool:
    """A range applies only to the representation the client already holds part of: an
    If-Range validator must strongly match the ETag or equal the Last-Modified date exactly
    (both as aiohttp's FileResponse writes them from the file's status)."""
    if if_range is None:
        return True
    if if_range.startswith('"'):
        return if_range == f'"{stat.st_mtime_ns:x}-{stat.st_size:x}"'
    try:
        return int(parsedate_to_datetime(if_range).timestamp()) == math.ceil(stat.st_mtime)
    except (TypeError, ValueError, OverflowError):
        return False


def requested_range(range_header: str | None, if_range: str | None, stat: os.stat_result) -> ByteRange | None:
    """The one range to send, or None for the whole file. A Range header that is malformed, names
    another unit or several ranges is ignored (RFC 9110 14.2 allows that), as is one whose
    If-Range does not hold; a well-formed range past the end raises RangeNotSatisfiable."""
    size = stat.st_size
    if range_header is None or size == 0 or not _if_range_holds(if_range, stat):
        return None
    found = _SINGLE_RANGE.fullmatch(range_header.strip())
    if found is None or found.group(1) == found.group(2) == "":
        return None
    if found.group(1) == "":
        suffix = _position(found.group(2))
        if suffix == 0:
            raise RangeNotSatisfiable
        return ByteRange(max(0, size - suffix), size - 1)
    first = _position(found.group(1))
    last = _position(found.group(2)) if found.group(2) else _BEYOND_ANY_FILE
    if last < first:
        return None
    if first >= size:
        raise RangeNotSatisfiable
    return ByteRange(first, min(last, size - 1))


class _CheckedRangeResponse(web.FileResponse):
    """A FileResponse that sees only the range decided above, never the client's own headers."""

    def __init__(self, path: Path, byte_range: ByteRange | None, headers: dict[str, str]) -> None:
        super().__init__(path, headers=headers)
        self._byte_range = byte_range

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        headers = CIMultiDict(request.headers)
        headers.popall(hdrs.RANGE, None)
        headers.popall(hdrs.IF_RANGE, None)
        if self._byte_range is not None:
            headers[hdrs.RANGE] = f"bytes={self._byte_range.first}-{self._byte_range.last}"
        return await super().prepare(request.clone(headers=headers))


async def file_download(request: web.Request, path: Path, headers: dict[str, str]) -> web.StreamResponse:
    """The file at ``path`` (which the caller checked exists), whole or the range asked for."""
    stat = await asyncio.to_thread(path.stat)
    try:
        byte_range = requested_range(request.headers.get(hdrs.RANGE), request.headers.get(hdrs.IF_RANGE), stat)
    except RangeNotSatisfiable:
        raise ApiError(
            416,
            "Range not satisfiable",
            headers={hdrs.CONTENT_RANGE: f"bytes */{stat.st_size}", hdrs.ACCEPT_RANGES: "bytes"},
        ) from None
    return _CheckedRangeResponse(path, byte_range, headers)
