"""What an uploaded file is, judged from its bytes: never from the client's name or headers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import av
import filetype
from PIL import Image, UnidentifiedImageError

DOCUMENT_MIME_TYPES = {
    "application/pdf",
    "application/rtf",
    "application/epub+zip",
    "application/msword",
    "application/vnd.ms-excel",
    "application/vnd.ms-powerpoint",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    "application/vnd.oasis.opendocument.text",
    "application/vnd.oasis.opendocument.spreadsheet",
    "application/vnd.oasis.opendocument.presentation",
}
IMAGE_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "GIF": "image/gif", "WEBP": "image/webp"}
CONTAINER_MIME = {
    "mov,mp4,m4a,3gp,3g2,mj2": ("video/mp4", "audio/mp4"),
    "matroska,webm": ("video/webm", "audio/webm"),
    "ogg": ("video/ogg", "audio/ogg"),
    "wav": ("audio/wav", "audio/wav"),
    "mp3": ("audio/mpeg", "audio/mpeg"),
    "flac": ("audio/flac", "audio/flac"),
    "avi": ("video/x-msvideo", "video/x-msvideo"),
    "aac": ("audio/aac", "audio/aac"),
    "mpegts": ("video/mp2t", "video/mp2t"),
}
# One FFmpeg demuxer reads both members of these families; the file's signature tells them apart.
SIGNATURE_MIME = {
    "video/x-matroska": ("video/x-matroska", "audio/x-matroska"),
    "video/quicktime": ("video/quicktime", "audio/mp4"),
}
TEXT_SNIFF_BYTES = 64 * 1024


class UnsupportedMedia(Exception):
    """The file is none of the accepted kinds, or is damaged beyond reading."""


@dataclass(frozen=True)
class Probe:
    file_type: str  # video | audio | image | document
    mime_type: str
    duration: float | None = None
    codec: str | None = None  # of the first video stream, else of the first audio stream
    width: int | None = None
    height: int | None = None
    start_time: float | None = None  # seconds: the first timestamp in the file


def _audio_video(path: Path, signature: str | None) -> Probe | None:
    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            if container.format.name not in CONTAINER_MIME:
                return None  # FFmpeg will "recognise" raw formats in arbitrary bytes
            video = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
            audio = list(container.streams.audio)
            if not video and not audio:
                return None
            duration = container.duration / av.time_base if container.duration else None
            if duration is None:
                durations = [float(s.duration * s.time_base) for s in (*video, *audio) if s.duration]
                duration = max(durations) if durations else None
            # Decoding a packet proves the data is media, not a header glued on something else.
            decodable = video[0] if video else audio[0]
            for frame in container.decode(decodable):
                del frame
                break
            else:
                return None
            video_mime, audio_mime = SIGNATURE_MIME.get(signature or "", CONTAINER_MIME[container.format.name])
            codec = decodable.codec_context.name
            start = container.start_time / av.time_base if container.start_time is not None else None
            if video:
                context = video[0].codec_context
                size = (context.width or None, context.height or None)
                return Probe("video", video_mime, duration, codec, *size, start_time=start)
            return Probe("audio", audio_mime, duration, codec, start_time=start)
    except (av.FFmpegError, UnicodeDecodeError, ValueError, IndexError):
        return None


def end_time(path: Path) -> float | None:
    """Where an audio or video file's packets end, in seconds of its timestamps, read from the
    packets themselves (nothing is decoded): for a file whose header states no duration because
    its writer never finished it. None when it has no timed packet."""
    end: float | None = None
    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            for packet in container.demux():
                if packet.pts is not None and packet.time_base is not None:
                    moment = float((packet.pts + (packet.duration or 0)) * packet.time_base)
                    end = moment if end is None else max(end, moment)
    except (av.FFmpegError, UnicodeDecodeError, ValueError):
        pass  # the tail of a file cut short: what came before it stands
    return end


def _image(path: Path) -> Probe | None:
    try:
        with Image.open(path) as image:
            mime = IMAGE_FORMATS.get(image.format or "")
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None
    return Probe("image", mime) if mime else None


def _text(path: Path) -> Probe | None:
    with path.open("rb") as handle:
        head = handle.read(TEXT_SNIFF_BYTES)
    if not head or b"\0" in head:
        return None
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A multi-byte character cut at the sniff boundary is still text.
        if exc.start < len(head) - 4:
            return None
    return Probe("document", "text/plain")


def probe(path: Path) -> Probe:
    guess = filetype.guess(str(path))
    mime = guess.mime if guess else None
    if mime in DOCUMENT_MIME_TYPES:
        return Probe("document", mime)
    if mime and mime.startswith("image/"):
        found = _image(path)
        if found:
            return found
        raise UnsupportedMedia("image is damaged or of an unsupported format (use JPEG, PNG, GIF or WebP)")
    found = _audio_video(path, mime)
    if found:
        return found
    if mime is None:
        found = _text(path)
        if found:
            return found
    raise UnsupportedMedia(
        "unsupported or damaged file: accepted are video, audio, JPEG/PNG/GIF/WebP images, "
        "PDF, office documents and text"
    )


def stream_kinds(path: Path) -> set[str]:
    """The kinds of stream ("audio", "video") a media file has, from its header; a cover picture
    is not video. Empty for a file PyAV cannot open."""
    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            kinds = {"audio"} if container.streams.audio else set()
            if any(not s.disposition & av.stream.Disposition.attached_pic for s in container.streams.video):
                kinds.add("video")
            return kinds
    except (av.FFmpegError, UnicodeDecodeError, ValueError):
        return set()
