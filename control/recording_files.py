"""A recording's files, from the media server's folder into media storage: each finished track
file becomes a media file of whoever started the recording (so the media endpoints serve it, to
the meeting's members), with a track row saying whose track it was and when it ran. Files a crash
left behind are probed first, since nobody closed them and said what they hold."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from control.storage import LocalStorage
from control.store import Store
from control.store.recordings import RecordingRecord
from media.probe import Probe, UnsupportedMedia, end_time, probe

if TYPE_CHECKING:
    from sfu.recording import TrackFile

log = logging.getLogger("huiyi.recordings")

# How the media server names a track's file.
TRACK_FILE = re.compile(r"(?P<user_id>\d+)-(?P<kind>audio|video)-(?P<track_id>.+)\.\w+")


def moment(timestamp: float | None) -> datetime | None:
    """A wall-clock time (UNIX seconds) as an aware UTC datetime."""
    return datetime.fromtimestamp(timestamp, UTC) if timestamp is not None else None


class TrackFiles:
    def __init__(self, store: Store, storage: LocalStorage, node_id: str) -> None:
        self.store = store
        self.storage = storage
        self.node_id = node_id

    async def keep_track_file(self, file: TrackFile) -> None:
        """A file the media server finished, described by it."""
        track = {
            "user_id": file.user_id,
            "peer_id": file.peer_id[:64],
            "track_id": file.track_id[:128],  # the publisher's choice: kept within the column
            "kind": file.kind,
            "codec": file.codec[:16],
            "started_at": moment(file.started_at),
            "ended_at": moment(file.ended_at),
            "frames": file.frames,
            "dropped_frames": file.dropped_frames,
            "width": file.width,
            "height": file.height,
            "reason": file.reason[:200],
        }
        duration = None
        if file.started_at is not None and file.ended_at is not None:
            duration = file.ended_at - file.started_at
        try:
            recording = await self.store.recordings.get(int(file.recording_id))
            written = file.frames > 0 and file.path.is_file()
            await self._keep(recording, file.path, track, file.mime_type if written else None, duration)
        except Exception:
            log.exception("could not keep the recorded file %s", file.path)

    async def keep_leftovers(self, directory: Path, recording_id: int) -> None:
        """Keep the files still in a recording's folder once nobody writes them any more: what a
        crash left, readable up to its last second. Files that are not media are removed."""
        if not directory.is_dir():
            return
        recording = await self.store.recordings.get(recording_id)
        for path in sorted(directory.iterdir()):
            if not path.is_file():
                continue
            try:
                await self._keep_leftover(recording, path)
            except Exception:
                log.exception("could not keep the recorded file %s", path)
        with contextlib.suppress(OSError):
            directory.rmdir()  # only once empty

    async def _keep_leftover(self, recording: RecordingRecord | None, path: Path) -> None:
        if recording is None:
            path.unlink(missing_ok=True)
            return
        found: Probe | None
        try:
            found = await asyncio.to_thread(probe, path)
        except UnsupportedMedia:
            found = None
        if found is None or found.file_type not in ("audio", "video"):
            log.warning("recording %s: %s holds no media; removed", recording.id, path.name)
            path.unlink(missing_ok=True)
            return
        named = TRACK_FILE.fullmatch(path.name)
        start = found.start_time or 0.0
        # A file its writer never finished states no duration: its last packet tells where it ends.
        end = found.duration if found.duration is not None else await asyncio.to_thread(end_time, path)
        duration = end - start if end is not None and end > start else end
        # The media server's timestamps count from the recording's start.
        started_at = recording.started_at.timestamp() + start
        track = {
            "user_id": int(named["user_id"]) if named else recording.started_by,
            "peer_id": "",
            "track_id": (named["track_id"] if named else path.stem)[:128],
            "kind": found.file_type,
            "codec": found.codec or "",
            "started_at": moment(started_at),
            "ended_at": moment(started_at + duration) if duration is not None else None,
            "frames": None,
            "dropped_frames": None,
            "width": found.width,
            "height": found.height,
            "reason": "interrupted",
        }
        log.info("recording %s: keeping %s, left by an interrupted run", recording.id, path.name)
        await self._keep(recording, path, track, found.mime_type, duration)

    async def _keep(
        self,
        recording: RecordingRecord | None,
        path: Path,
        track: dict[str, Any],
        mime_type: str | None,
        duration: float | None,
    ) -> None:
        """Move a finished track file into media storage and keep it as a media file of the
        recording's starter, with its track row. A file with nothing in it (``mime_type`` None)
        leaves only the row; one of a recording since deleted is removed."""
        if recording is None:
            path.unlink(missing_ok=True)
            return
        key: str | None = None
        media_file: dict[str, Any] | None = None
        if mime_type is not None:
            key, size = await self.storage.adopt(path)
            media_file = {
                "id": secrets.token_hex(16),
                "user_id": recording.started_by,
                "meeting_id": recording.meeting_id,
                "file_name": f"recording-{recording.id}-{path.name}"[:255],
                "storage_key": key,
                "file_type": track["kind"],
                "mime_type": mime_type,
                "size": size,
                "duration": duration,
            }
        else:
            path.unlink(missing_ok=True)
        row = {"recording_id": recording.id, "node_id": self.node_id, "file_name": path.name[:255], **track}
        if not await self.store.recordings.add_track(row, media_file):
            if key is not None:  # the recording or its meeting went meanwhile
                await self.storage.delete(key)
            return
        await self.store.recordings.refresh_size(recording.id)
