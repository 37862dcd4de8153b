"""Reading one file out of a multipart request without ever holding more than the cap."""

from __future__ import annotations

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from control.errors import bad_request, too_large


async def read_file_field(request: web.Request, field_names: tuple[str, ...], max_bytes: int) -> bytes:
    """The first part named one of ``field_names``; 413 as soon as it grows past ``max_bytes``."""
    if not request.content_type.startswith("multipart/"):
        raise bad_request("Expected a multipart/form-data body")
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader) or part.name not in field_names:
                continue
            data = bytearray()
            while chunk := await part.read_chunk(64 * 1024):
                data.extend(chunk)
                if len(data) > max_bytes:
                    raise too_large(f"File is larger than {max_bytes} bytes")
            if not data:
                raise bad_request("The uploaded file is empty")
            return bytes(data)
    except (ValueError, HttpProcessingError):
        raise bad_request("Malformed multipart body") from None
    raise bad_request(f"Missing file field ({' or '.join(field_names)})")
