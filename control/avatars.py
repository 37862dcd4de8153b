"""Avatar images: decoded and re-encoded to a square PNG thumbnail, so the bytes served back
are always ours, never what a client uploaded."""

from __future__ import annotations

import asyncio
import io
import os
import secrets
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from control.private_files import write_private

ACCEPTED_FORMATS = {"JPEG", "PNG", "GIF", "WEBP"}
MAX_SOURCE_PIXELS = 40_000_000
AVATAR_NAME_PATTERN = r"[0-9a-f]+\.png"
AVATAR_URL_PREFIX = "/api/v1/users/avatars/"


def avatar_url(avatar_file: str | None) -> str | None:
    """Where an avatar is served (public and unguessable, for <img> tags), or None without one."""
    return AVATAR_URL_PREFIX + avatar_file if avatar_file else None


class NotAnImage(Exception):
    """The upload is not a decodable image of an accepted format."""


def _thumbnail(data: bytes, size: int) -> bytes:
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format not in ACCEPTED_FORMATS:
                raise NotAnImage(f"image format {image.format} is not accepted (use JPEG, PNG, GIF or WebP)")
            if image.width * image.height > MAX_SOURCE_PIXELS:
                raise NotAnImage("image dimensions are too large")
            image.load()
            upright = ImageOps.exif_transpose(image)
            rgba = upright.convert("RGBA")
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, SyntaxError, ValueError):
        raise NotAnImage("file is not a readable image") from None
    square = ImageOps.fit(rgba, (size, size), method=Image.Resampling.LANCZOS)
    out = io.BytesIO()
    square.save(out, format="PNG", optimize=True)
    return out.getvalue()


class AvatarStore:
    def __init__(self, directory: Path, size: int) -> None:
        self.directory = directory
        self.size = size

    async def save(self, data: bytes) -> str:
        """Store a thumbnail of the upload under a random name; returns that name."""
        png = await asyncio.to_thread(_thumbnail, data, self.size)
        name = f"{secrets.token_hex(16)}.png"
        temporary = self.directory / f".{name}.tmp"
        write_private(temporary, png)
        os.replace(temporary, self.directory / name)
        return name

    def path_of(self, name: str) -> Path:
        return self.directory / name

    def remove(self, name: str | None) -> None:
        if name:
            (self.directory / name).unlink(missing_ok=True)
