"""Reading multipart uploads as streams, never holding more than a cap in memory or on disk."""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import unquote

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from control.bodies import reading_body
from control.errors import bad_request, too_large
from control.storage import Storage, TooLarge

CHUNK = 64 * 1024
TEXT_FIELD_MAX = 256
TEXT_FIELDS_MAX = 16


async def _parts(request: web.Request) -> AsyncIterator[BodyPartReader]:
    if not request.content_type.startswith("multipart/"):
        raise bad_request("Expected a multipart/form-data body")
    try:
        with reading_body():
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                if isinstance(part, BodyPartReader):
                    yield part
    except (ValueError, HttpProcessingError):
        raise bad_request("Malformed multipart body") from None


async def _chunks(part: BodyPartReader) -> AsyncIterator[bytes]:
    try:
        with reading_body():
            while chunk := await part.read_chunk(CHUNK):
                yield chunk
    except (ValueError, HttpProcessingError):
        raise bad_request("Malformed multipart body") from None


async def read_file_field(request: web.Request, field_names: tuple[str, ...], max_bytes: int) -> bytes:
    """The first part named one of ``field_names``, in memory; 413 once it grows past the cap."""
    async for part in _parts(request):
        if part.name not in field_names:
            continue
        data = bytearray()
        async for chunk in _chunks(part):
            data.extend(chunk)
            if len(data) > max_bytes:
                raise too_large(f"File is larger than {max_bytes} bytes")
        if not data:
            raise bad_request("The uploaded file is empty")
        return bytes(data)
    raise bad_request(f"Missing file field ({' or '.join(field_names)})")


def _shown(name: str) -> str:
    """A part name as it may appear in a message: aiohttp keeps undecodable header bytes as
    surrogates, which cannot be encoded into an answer."""
    return name[:40].encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace")


def safe_file_name(name: str | None) -> str:
    """The client's file name as display metadata only: no directories, no control characters.
    Some clients percent-encode the name, so it is decoded before directories are cut off."""
    base = re.split(r"[\\/]", unquote(name or ""))[-1]
    cleaned = "".join(char for char in base if unicodedata.category(char)[0] != "C").strip().lstrip(".")
    stem, suffix = os.path.splitext(cleaned)
    return (stem[: 200 - len(suffix[:20])] + suffix[:20]) or "file"


@dataclass
class StoredUpload:
    key: str | None = None
    size: int = 0
    file_name: str = "file"
    fields: dict[str, str] = field(default_factory=dict)


async def store_upload(request: web.Request, storage: Storage, file_field: str, max_bytes: int) -> StoredUpload:
    """Stream the ``file_field`` part into storage and collect the small text fields around it.
    The caller owns the stored key and must delete it if it rejects the upload."""
    upload = StoredUpload()
    try:
        async for part in _parts(request):
            if part.name == file_field and part.filename is not None and upload.key is None:
                upload.file_name = safe_file_name(part.filename)
                upload.key, upload.size = await storage.save(_chunks(part), max_bytes)
            elif part.name and part.filename is None:
                if len(upload.fields) >= TEXT_FIELDS_MAX:
                    raise bad_request(f"At most {TEXT_FIELDS_MAX} form fields are accepted")
                value = bytearray()
                async for chunk in _chunks(part):
                    value.extend(chunk)
                    if len(value) > TEXT_FIELD_MAX:
                        raise bad_request(f"Field {_shown(part.name)} is too long")
                upload.fields[part.name] = value.decode("utf-8", "replace").strip()
    except TooLarge:
        raise too_large(f"File is larger than {max_bytes} bytes") from None
    except BaseException:
        if upload.key is not None:
            await storage.delete(upload.key)
        raise
    return upload
