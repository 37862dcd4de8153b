"""Breadth of /api/v1/media and /api/v1/ffmpeg: every accepted upload format, admin access to
others' files, and every documented output of extract-audio, transcode and mux, checked with PyAV."""

from __future__ import annotations

import io
import math
import zipfile
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from PIL import Image

from control.context import STORAGE, STORE
from tests.conftest import Account, Api
from tests.support import finished, result_path, streams, uploaded

SECONDS, WIDTH, HEIGHT, FPS, RATE = 1.0, 160, 120, 25, 48000

# name -> (container, video encoder, audio encoder): every container docs/media.md accepts.
CLIPS: dict[str, tuple[str, str | None, str | None]] = {
    "clip.mp4": ("mp4", "libx264", "aac"),
    "clip.mov": ("mov", "libx264", "aac"),
    "clip.webm": ("webm", "libvpx", "libopus"),
    "clip.mkv": ("matroska", "libx264", "libopus"),
    "clip.ogv": ("ogg", "libvpx", "libopus"),
    "clip.avi": ("avi", "mpeg4", "libmp3lame"),
    "clip.ts": ("mpegts", "libx264", "aac"),
    "video.webm": ("webm", "libvpx", None),
    "tone.wav": ("wav", None, "pcm_s16le"),
    "tone.mp3": ("mp3", None, "libmp3lame"),
    "tone.flac": ("flac", None, "flac"),
    "tone.aac": ("adts", None, "aac"),
    "tone.m4a": ("ipod", None, "aac"),
    "tone.ogg": ("ogg", None, "libopus"),
    "tone.weba": ("webm", None, "libopus"),
}
IMAGES = {"picture.png": "PNG", "picture.jpg": "JPEG", "picture.gif": "GIF", "picture.webp": "WEBP"}
OPEN_XML = {"word.docx": "word/document.xml", "sheet.xlsx": "xl/workbook.xml", "slides.pptx": "ppt/presentation.xml"}
OPEN_DOCUMENT = {
    "text.odt": "application/vnd.oasis.opendocument.text",
    "sheet.ods": "application/vnd.oasis.opendocument.spreadsheet",
    "slides.odp": "application/vnd.oasis.opendocument.presentation",
    "book.epub": "application/epub+zip",
}
OLE = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
# Legacy Office files are recognised by the compound-file header and the first record after it.
LEGACY_OFFICE = {
    "word.doc": b"\xec\xa5\xc1\x00",
    "sheet.xls": b"\x09\x08\x10\x00\x00\x06\x05\x00",
    "slides.ppt": b"\xa0\x46\x1d\xf0",
}


def missing_encoders() -> set[str]:
    wanted = {codec for _, video, audio in CLIPS.values() for codec in (video, audio) if codec}
    return wanted - set(av.codecs_available)


def write_media(path: Path, container: str, video: str | None, audio: str | None) -> bytes:
    """A one-second clip in any container and codecs (media.samples.write_clip picks codecs by suffix)."""
    with av.open(str(path), "w", format=container) as output:
        picture = output.add_stream(video, rate=FPS) if video else None
        if picture is not None:
            picture.width, picture.height, picture.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        sound = output.add_stream(audio, rate=RATE, layout="mono") if audio else None
        if picture is not None:
            for index in range(int(SECONDS * FPS)):
                image = np.full((HEIGHT, WIDTH, 3), 40, dtype=np.uint8)
                image[40:80, index * 4 : index * 4 + 40] = (255, 220, 0)
                frame = av.VideoFrame.from_ndarray(image, format="rgb24")
                frame.pts, frame.time_base = index, Fraction(1, FPS)
                output.mux(picture.encode(frame))
            output.mux(picture.encode(None))
        if sound is not None:
            for start in range(0, int(SECONDS * RATE), 960):
                t = np.arange(start, start + 960) / RATE
                tone = (0.3 * np.sin(2 * math.pi * 440 * t)).astype(np.float32).reshape(1, -1)
                chunk = av.AudioFrame.from_ndarray(tone, format="flt", layout="mono")
                chunk.sample_rate, chunk.pts, chunk.time_base = RATE, start, Fraction(1, RATE)
                output.mux(sound.encode(chunk))
            output.mux(sound.encode(None))
    return path.read_bytes()


def zipped(first: str, first_data: bytes, *rest: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(zipfile.ZipInfo(first), first_data)  # stored, as the formats require
        for name in rest:
            archive.writestr(name, "<x/>", compress_type=zipfile.ZIP_DEFLATED)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    assert not missing_encoders(), f"cannot generate every accepted format here: {missing_encoders()}"
    folder = tmp_path_factory.mktemp("breadth")
    made = {name: write_media(folder / name, *spec) for name, spec in CLIPS.items()}
    for name, kind in IMAGES.items():
        picture = io.BytesIO()
        Image.new("RGB", (32, 24), "teal").save(picture, format=kind)
        made[name] = picture.getvalue()
    for name, inner in OPEN_XML.items():
        made[name] = zipped("[Content_Types].xml", b"<Types/>", "_rels/.rels", inner)
    for name, mime in OPEN_DOCUMENT.items():
        made[name] = zipped("mimetype", mime.encode(), "META-INF/manifest.xml", "content.xml")
    for name, record in LEGACY_OFFICE.items():
        made[name] = OLE + bytes(504) + record + bytes(2048)
    made["letter.rtf"] = rb"{\rtf1\ansi Minutes of the meeting.\par}"
    made["slides.pdf"] = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n%%EOF\n"
    made["notes.txt"] = "agenda: 一, two, three\n".encode()
    return made


UPLOADS: list[tuple[str, str, str]] = [
    ("clip.mp4", "video", "video/mp4"),
    ("clip.mov", "video", "video/quicktime"),
    ("clip.webm", "video", "video/webm"),
    ("clip.mkv", "video", "video/x-matroska"),
    ("clip.ogv", "video", "video/ogg"),
    ("clip.avi", "video", "video/x-msvideo"),
    ("clip.ts", "video", "video/mp2t"),
    ("tone.wav", "audio", "audio/wav"),
    ("tone.mp3", "audio", "audio/mpeg"),
    ("tone.flac", "audio", "audio/flac"),
    ("tone.aac", "audio", "audio/aac"),
    ("tone.m4a", "audio", "audio/mp4"),
    ("tone.ogg", "audio", "audio/ogg"),
    ("tone.weba", "audio", "audio/webm"),
    ("picture.png", "image", "image/png"),
    ("picture.jpg", "image", "image/jpeg"),
    ("picture.gif", "image", "image/gif"),
    ("picture.webp", "image", "image/webp"),
    ("slides.pdf", "document", "application/pdf"),
    ("word.docx", "document", "application/vnd.openxmlformats-officedocument.wordprocessingml.document"),
    ("sheet.xlsx", "document", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"),
    ("slides.pptx", "document", "application/vnd.openxmlformats-officedocument.presentationml.presentation"),
    ("word.doc", "document", "application/msword"),
    ("sheet.xls", "document", "application/vnd.ms-excel"),
    ("slides.ppt", "document", "application/vnd.ms-powerpoint"),
    ("text.odt", "document", "application/vnd.oasis.opendocument.text"),
    ("sheet.ods", "document", "application/vnd.oasis.opendocument.spreadsheet"),
    ("slides.odp", "document", "application/vnd.oasis.opendocument.presentation"),
    ("book.epub", "document", "application/epub+zip"),
    ("letter.rtf", "document", "application/rtf"),
    ("notes.txt", "document", "text/plain"),
]


async def test_every_accepted_format_is_detected(api: Api, samples: dict[str, bytes]) -> None:
    owner = await api.account()
    wrong = []
    for name, file_type, mime in UPLOADS:
        # A name that says nothing: the content alone decides.
        data = await uploaded(api, owner, samples[name], "upload.bin")
        timed = file_type in {"audio", "video"}
        found = (data["file_type"], data["mime_type"], data["duration"] is not None)
        if found != (file_type, mime, timed) or (timed and abs(data["duration"] - SECONDS) >= 0.1):
            wrong.append((name, data["file_type"], data["mime_type"], data["duration"]))
    assert not wrong, wrong


async def test_admins_reach_files_of_meetings_they_are_not_in(api: Api, samples: dict[str, bytes]) -> None:
    owner, member, stranger, admin = (await api.account(), await api.account(), await api.account(), await api.admin())
    meeting = await api.call("POST", "/api/v1/meetings", token=owner.access, json={"title": "Board"}, expect=201)
    meeting_id = meeting["data"]["meeting_id"]
    link = {"invite_code": meeting["data"]["invite_code"]}
    await api.call("POST", f"/api/v1/meetings/{meeting_id}/join", token=member.access, json=link, expect=200)
    data = await uploaded(api, owner, samples["clip.mp4"], "board.mp4", meeting_id=meeting_id)
    info, file_id = f"/api/v1/media/info/{data['file_id']}", data["file_id"]
    record = await api.app[STORE].media.get(file_id)
    assert record is not None
    stored = api.app[STORAGE].local_path(record.storage_key)

    # Neither in the meeting nor the owner: nothing.
    for method, path in (("GET", info), ("DELETE", f"/api/v1/media/{file_id}")):
        refused = await api.call(method, path, token=stranger.access)
        assert refused["status"] == 403, refused
    download = await api.client.get(data["file_url"], headers=stranger.auth)
    assert download.status == 403 and (await download.json())["code"] == 403
    # A participant reads the file but may not delete it.
    assert (await api.call("GET", info, token=member.access, expect=200))["data"] == data
    kept = await api.call("DELETE", f"/api/v1/media/{file_id}", token=member.access)
    assert kept["status"] == 403, kept
    assert stored.exists()

    # An admin outside the meeting reads, downloads and deletes it.
    assert (await api.call("GET", info, token=admin.access, expect=200))["data"] == data
    whole = await api.client.get(data["file_url"], headers=admin.auth)
    assert whole.status == 200 and await whole.read() == samples["clip.mp4"]
    part = await api.client.get(data["file_url"], headers={**admin.auth, "Range": "bytes=0-9"})
    assert part.status == 206 and await part.read() == samples["clip.mp4"][:10]
    await api.call("DELETE", f"/api/v1/media/{file_id}", token=admin.access, expect=200)
    gone = await api.call("GET", info, token=owner.access)
    assert (gone["status"], gone["code"]) == (404, 3002)
    assert not stored.exists()


async def run_jobs(api: Api, owner: Account, path: str, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Start every job first, so they share the worker pool, then wait for each."""
    started = [(await api.call("POST", path, token=owner.access, json=body, expect=201))["data"] for body in bodies]
    return [await finished(api, owner, job["job_id"]) for job in started]


async def output(api: Api, owner: Account, job: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    path = await result_path(api, job)
    info = await api.call("GET", f"/api/v1/media/info/{job['result_file_ids'][0]}", token=owner.access, expect=200)
    return path, info["data"]


def first_frame(path: Path) -> av.VideoFrame:
    with av.open(str(path)) as container:
        return next(container.decode(video=0))


# format -> (codec, the container PyAV reads it as, detected mime type)
AUDIO_OUTPUTS = {
    "opus": ("opus", "ogg", "audio/ogg"),
    "aac": ("aac", "mov,mp4,m4a,3gp,3g2,mj2", "audio/mp4"),
    "wav": ("pcm_s16le", "wav", "audio/wav"),
}


async def test_extract_audio_in_every_format(api: Api, samples: dict[str, bytes]) -> None:
    owner = await api.account()
    source = await uploaded(api, owner, samples["clip.mp4"], "talk.mp4")
    bodies = [{"file_id": source["file_id"], "format": name} for name in AUDIO_OUTPUTS]
    for body, job in zip(bodies, await run_jobs(api, owner, "/api/v1/ffmpeg/extract-audio", bodies), strict=True):
        codec, container, mime = AUDIO_OUTPUTS[body["format"]]
        path, info = await output(api, owner, job)
        found, duration = streams(path)
        assert [(kind, name) for kind, name, *_ in found] == [("audio", codec)], (body, found)
        assert abs(duration - SECONDS) < 0.1, (body, duration)
        with av.open(str(path)) as opened:
            assert opened.format.name == container
            assert next(opened.decode(audio=0)).samples > 0
        assert (info["file_type"], info["mime_type"]) == ("audio", mime), info
        assert abs(info["duration"] - SECONDS) < 0.1, info


# (format, video_codec, size asked) -> (video codec, audio codec, width, height) of the output
TRANSCODES: list[tuple[str, str | None, dict[str, int], tuple[str, str, int, int]]] = [
    ("mp4", None, {"width": 96}, ("h264", "aac", 96, 72)),
    ("mp4", "h264", {"height": 60}, ("h264", "aac", 80, 60)),
    ("webm", None, {"width": 64, "height": 64}, ("vp8", "opus", 64, 64)),
    ("webm", "vp8", {"width": 96}, ("vp8", "opus", 96, 72)),
    ("webm", "vp9", {"height": 60}, ("vp9", "opus", 80, 60)),
]


async def test_every_transcode_combination_decodes_at_the_asked_size(api: Api, samples: dict[str, bytes]) -> None:
    owner = await api.account()
    source = await uploaded(api, owner, samples["clip.mp4"], "talk.mp4")
    bodies = [
        {"file_id": source["file_id"], "format": fmt, **({"video_codec": codec} if codec else {}), **size}
        for fmt, codec, size, _ in TRANSCODES
    ]
    jobs = await run_jobs(api, owner, "/api/v1/ffmpeg/transcode", bodies)
    for (fmt, codec, _, (video, audio, width, height)), job in zip(TRANSCODES, jobs, strict=True):
        path, info = await output(api, owner, job)
        found, duration = streams(path)
        assert sorted(found) == [("audio", audio, None, None), ("video", video, width, height)], (fmt, codec, found)
        assert abs(duration - SECONDS) < 0.1, (fmt, codec, duration)
        frame = first_frame(path)
        assert (frame.width, frame.height) == (width, height)
        assert (info["file_type"], info["mime_type"]) == ("video", f"video/{fmt}"), info


# (video input, audio input) -> (output suffix, container PyAV reads, video codec, audio codec, mime)
MUXES: list[tuple[str, str, tuple[str, str, str, str, str]]] = [
    ("clip.mp4", "tone.m4a", ("mp4", "mov,mp4,m4a,3gp,3g2,mj2", "h264", "aac", "video/mp4")),
    ("video.webm", "tone.ogg", ("webm", "matroska,webm", "vp8", "opus", "video/webm")),
    ("clip.mp4", "tone.ogg", ("mkv", "matroska,webm", "h264", "opus", "video/x-matroska")),
]


async def test_mux_picks_mp4_webm_or_mkv_by_codecs(api: Api, samples: dict[str, bytes]) -> None:
    owner = await api.account()
    names = sorted({name for video, audio, _ in MUXES for name in (video, audio)})
    ids = {name: (await uploaded(api, owner, samples[name], name))["file_id"] for name in names}
    bodies = [{"file_ids": [ids[video], ids[audio]], "mode": "mux"} for video, audio, _ in MUXES]
    jobs = await run_jobs(api, owner, "/api/v1/ffmpeg/merge", bodies)
    for (video_in, audio_in, expected), job in zip(MUXES, jobs, strict=True):
        suffix, container, video, audio, mime = expected
        path, info = await output(api, owner, job)
        assert info["file_name"].endswith(f".{suffix}"), info
        with av.open(str(path)) as opened:
            assert opened.format.name == container, (video_in, audio_in, opened.format.name)
        found, duration = streams(path)
        assert sorted(found) == [("audio", audio, None, None), ("video", video, WIDTH, HEIGHT)], found
        assert abs(duration - SECONDS) < 0.1, (video_in, audio_in, duration)
        frame = first_frame(path)
        assert (frame.width, frame.height) == (WIDTH, HEIGHT)
        assert (info["file_type"], info["mime_type"]) == ("video", mime), info
