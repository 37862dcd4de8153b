"""/api/v1/media: meeting files (slides, recordings, clips): upload, list, read, delete, process."""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import Any, Literal
from urllib.parse import quote

from aiohttp import web
from pydantic import BaseModel, Field, ValidationError

from control.api.ffmpeg import (
    ExtractAudioIn,
    ExtractVideoIn,
    JobOut,
    MergeIn,
    ThumbnailIn,
    TranscodeIn,
    file_not_found,
    readable_file,
    start_job,
)
from control.api.schemas import Page, RequestModel
from control.context import SETTINGS, STORAGE, STORE, current_user
from control.downloads import file_download
from control.endpoints import Access, EndpointGroup, validation_error
from control.envelope import iso_utc
from control.errors import ApiError, BusinessCode, forbidden
from control.rooms import load_meeting, meeting_not_found, require_member
from control.store.media import MediaRecord, MeetingGone
from control.uploads import store_upload
from media.probe import UnsupportedMedia, probe

log = logging.getLogger("huiyi.media")
group = EndpointGroup("/api/v1/media", "media")
FILE_ID = "{file_id:[0-9a-f]+}"


class MediaFileOut(BaseModel):
    file_id: str
    user_id: int
    meeting_id: int | None
    file_name: str
    file_url: str
    file_type: Literal["video", "audio", "image", "document"]
    mime_type: str
    size: int
    duration: float | None = Field(None, description="seconds, for audio and video")
    created_at: str

    @classmethod
    def of(cls, record: MediaRecord) -> MediaFileOut:
        return cls(
            file_id=record.id,
            user_id=record.user_id,
            meeting_id=record.meeting_id,
            file_name=record.file_name,
            file_url=f"{group.prefix}/download/{record.id}",
            file_type=record.file_type,  # type: ignore[arg-type]
            mime_type=record.mime_type,
            size=record.size,
            duration=round(record.duration, 3) if record.duration is not None else None,
            created_at=iso_utc(record.created_at),
        )


class MediaListQuery(RequestModel):
    page: int = Field(1, ge=1, le=1_000_000)
    page_size: int = Field(20, ge=1, le=100)
    meeting_id: int | None = Field(None, ge=1, le=2**63 - 1, description="a meeting's files instead of your own")
    file_type: Literal["video", "audio", "image", "document"] | None = None


class ProcessIn(RequestModel):
    """One body for every operation; fields an operation does not use are refused by its own model."""

    operation: Literal["transcode", "extract-audio", "extract-video", "merge", "thumbnail"]
    file_id: str | None = None
    file_ids: list[str] | None = None
    format: str | None = None
    video_codec: str | None = None
    width: int | None = None
    height: int | None = None
    video_bitrate: int | None = None
    audio_bitrate: int | None = None
    mode: str | None = None
    time: float | None = None


def upload_failed(message: str, status: int = 400) -> ApiError:
    return ApiError(status, message, code=BusinessCode.UPLOAD_FAILED)


async def _owned_or_admin(request: web.Request, file_id: str) -> MediaRecord:
    record = await readable_file(request, file_id)
    user = current_user(request)
    if record.user_id != user.id and not user.is_admin:
        raise forbidden("Only the file's owner may do this")
    return record


@group.route(
    "POST",
    "/upload",
    name="upload",
    summary="Upload a file (multipart: file, meeting_id?, user_id?); its type is detected from the content",
    access=Access.USER,
    limit="5/minute",
    response=MediaFileOut,
    status=201,
    errors=(413,),
    multipart={"file": "the file", "meeting_id": "optional meeting it belongs to", "user_id": "optional; must be you"},
)
async def upload(request: web.Request) -> MediaFileOut:
    app = request.app
    user = current_user(request)
    storage = app[STORAGE]
    try:
        stored = await store_upload(request, storage, "file", app[SETTINGS].media.max_upload_bytes)
    except ApiError as exc:
        raise upload_failed(exc.message, exc.status) from None
    try:
        if stored.key is None:
            raise upload_failed("Missing the file field `file`")
        if stored.size == 0:
            raise upload_failed("The uploaded file is empty")
        if stored.fields.get("user_id") not in (None, "", str(user.id)):
            raise forbidden("user_id must be your own id")
        meeting_id = None
        if stored.fields.get("meeting_id"):
            if not stored.fields["meeting_id"].isdigit() or len(stored.fields["meeting_id"]) > 18:
                raise upload_failed("meeting_id must be a meeting id")
            meeting = await load_meeting(app, int(stored.fields["meeting_id"]))
            await require_member(app, meeting, user)
            meeting_id = meeting.id
        try:
            found = await asyncio.to_thread(probe, storage.local_path(stored.key))
        except UnsupportedMedia as exc:
            raise upload_failed(str(exc)) from None
        try:
            record = await app[STORE].media.add(
                id=secrets.token_hex(16),
                user_id=user.id,
                meeting_id=meeting_id,
                file_name=stored.file_name,
                storage_key=stored.key,
                file_type=found.file_type,
                mime_type=found.mime_type,
                size=stored.size,
                duration=found.duration,
            )
        except MeetingGone:
            raise meeting_not_found() from None  # deleted while the upload was checked
    except BaseException:
        if stored.key is not None:
            await storage.delete(stored.key)
        raise
    log.info("user %s uploaded %s (%s, %d bytes)", user.id, record.id, record.mime_type, record.size)
    return MediaFileOut.of(record)


@group.route(
    "GET",
    "/download/" + FILE_ID,
    name="download",
    summary="Download a file (owner, the meeting's participants, admins); one HTTP byte range supported",
    access=Access.USER,
    limit="50/minute",
    # The file's own type, as detected at upload (MediaFile.mime_type).
    raw_response=(("video/*", "audio/*", "image/*", "application/*", "text/*"), {"type": "string", "format": "binary"}),
    errors=(416,),
)
async def download(request: web.Request) -> web.StreamResponse:
    record = await readable_file(request, request.match_info["file_id"])
    path = request.app[STORAGE].local_path(record.storage_key)
    if not path.is_file():
        raise file_not_found()
    return await file_download(
        request,
        path,
        {
            "Content-Type": record.mime_type,
            "Content-Disposition": f"attachment; filename*=UTF-8''{quote(record.file_name, safe='')}",
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "private, max-age=0",
        },
    )


@group.route(
    "GET",
    "",
    name="list",
    summary="Your files, or a meeting's files (participants), newest first",
    access=Access.USER,
    limit="50/minute",
    query=MediaListQuery,
    response=Page[MediaFileOut],
)
async def list_files(request: web.Request, query: MediaListQuery) -> Page[MediaFileOut]:
    user = current_user(request)
    criteria: dict[str, Any] = {"file_type": query.file_type}
    if query.meeting_id is not None:
        await require_member(request.app, await load_meeting(request.app, query.meeting_id), user)
        criteria["meeting_id"] = query.meeting_id
    else:
        criteria["owner_id"] = user.id
    items, total = await request.app[STORE].media.search(page=query.page, page_size=query.page_size, **criteria)
    return Page[MediaFileOut](
        items=[MediaFileOut.of(record) for record in items], total=total, page=query.page, page_size=query.page_size
    )


@group.route(
    "GET",
    "/info/" + FILE_ID,
    name="info",
    summary="A file's metadata",
    access=Access.USER,
    limit="100/minute",
    response=MediaFileOut,
)
async def info(request: web.Request) -> MediaFileOut:
    return MediaFileOut.of(await readable_file(request, request.match_info["file_id"]))


@group.route(
    "DELETE",
    "/" + FILE_ID,
    name="delete",
    summary="Delete a file and its bytes (owner or admin)",
    access=Access.USER,
    limit="50/minute",
)
async def delete(request: web.Request) -> None:
    record = await _owned_or_admin(request, request.match_info["file_id"])
    await request.app[STORE].media.delete(record.id)
    await request.app[STORAGE].delete(record.storage_key)
    log.info("file %s deleted by user %s", record.id, current_user(request).id)


OPERATIONS: dict[str, type[RequestModel]] = {
    "transcode": TranscodeIn,
    "extract-audio": ExtractAudioIn,
    "extract-video": ExtractVideoIn,
    "merge": MergeIn,
    "thumbnail": ThumbnailIn,
}


@group.route(
    "POST",
    "/process",
    name="process",
    summary="Start a job: `operation` is transcode, extract-audio, extract-video, merge or thumbnail, with that "
    "job's fields (as in /api/v1/ffmpeg)",
    access=Access.USER,
    limit="20/minute",
    body=ProcessIn,
    response=JobOut,
    status=201,
)
async def process(request: web.Request, body: ProcessIn) -> JobOut:
    fields = body.model_dump(exclude={"operation"}, exclude_none=True)
    try:
        parsed = OPERATIONS[body.operation].model_validate(fields)
    except ValidationError as exc:
        raise validation_error(exc, "request body") from None
    file_ids = getattr(parsed, "file_ids", None) or [parsed.file_id]
    params = parsed.model_dump(exclude={"file_id", "file_ids"}, exclude_none=True)
    return await start_job(request, body.operation, file_ids, params)
