"""Server-side recording, the control plane's half (behaviour: docs/recording.md).

A recording belongs to one meeting and runs on every node at once: a room's media live on the
nodes its participants' sockets came through, so each node's media server records the peers it
holds, one file per track under ``<data_dir>/recordings/<id>/``. Starting and stopping go out on
the bus to every node. Each finished file is moved into media storage and kept as a media file of
whoever started the recording, with a track row saying whose track it was and when it ran.
Stopped, a recording is ``ready``, or ``processing`` until the composite job has made its MP4.

The rows are the truth: a node starting after a crash marks the recordings it was answerable for
``interrupted`` and keeps whatever their files on its disk hold."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import shutil
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from config.settings import RecordingSettings
from control.envelope import utc_now
from control.errors import ApiError, BusinessCode, not_found
from control.jobs.runner import JobRunner
from control.private_files import private_directory
from control.recording_files import TrackFiles, moment
from control.signaling.hub import SERVER, Hub, message
from control.storage import LocalStorage
from control.store import Store
from control.store.media import JobRecord
from control.store.meetings import MeetingRecord
from control.store.recordings import RUNNING, RecordingRecord, StartRefusal, StartRefused

if TYPE_CHECKING:
    from sfu.recording import TrackFile

log = logging.getLogger("huiyi.recordings")

CHANNEL = "recordings"  # every node listens: recordings starting and stopping
MIB = 1024 * 1024
# Not finished yet: such a recording cannot be deleted.
BUSY = (*RUNNING, "processing")
FINISHED_JOB = ("succeeded", "failed", "cancelled")


class RecordingMedia(Protocol):
    """What the media server offers for recording (``sfu.local.LocalMedia``, ``sfu.pool.WorkerPool``)."""

    def start_recording(
        self, meeting_id: int, recording_id: str, directory: Path, on_file_closed: Callable[[TrackFile], None]
    ) -> None: ...

    async def stop_recording(self, recording_id: str, reason: str = "stopped") -> list[TrackFile]: ...

    def recording_files(self, recording_id: str) -> list[TrackFile]: ...

    def recordings(self) -> list[str]: ...


def recording_not_found() -> ApiError:
    return not_found("Recording not found", BusinessCode.RECORDING_NOT_FOUND)


def not_running() -> ApiError:
    return ApiError(400, "The recording is not running", code=BusinessCode.RECORDING_NOT_RUNNING)


_REFUSALS = {
    StartRefusal.GONE: (404, "Meeting not found", BusinessCode.MEETING_NOT_FOUND),
    StartRefusal.NOT_STARTED: (400, "The meeting has not started; start it first", BusinessCode.MEETING_NOT_STARTED),
    StartRefusal.OVER: (400, "Meeting is already over", BusinessCode.MEETING_ENDED),
    StartRefusal.DISABLED: (
        400,
        "Recording is off in this meeting's settings (settings.enable_recording)",
        BusinessCode.RECORDING_DISABLED,
    ),
    StartRefusal.RUNNING: (400, "The meeting is being recorded already", BusinessCode.RECORDING_RUNNING),
}


def _refused(reason: StartRefusal) -> ApiError:
    status, text, code = _REFUSALS[reason]
    return ApiError(status, text, code=code)


class Recorder:
    """The node's part in every recording, and the operations the API offers on them."""

    def __init__(
        self,
        *,
        store: Store,
        hub: Hub,
        storage: LocalStorage,
        jobs: JobRunner,
        media: RecordingMedia,
        settings: RecordingSettings,
        data_dir: Path,
        node_id: str,
    ) -> None:
        self.store = store
        self.hub = hub
        self.storage = storage
        self.jobs = jobs
        self.media = media
        self.settings = settings
        self.root = data_dir / "recordings"
        self.node_id = node_id
        self.files = TrackFiles(store, storage, node_id)
        # Below this much free space no recording starts, and those this node records stop.
        self.min_free_bytes = settings.min_free_disk_mb * MIB
        self._here: set[int] = set()  # recordings this node's media server was asked to record
        self._ended: set[int] = set()  # and those it stopped: ids are never reused, none comes back
        self._keeping: dict[Path, tuple[int, asyncio.Task[None]]] = {}  # finished files being kept
        self._stopping: dict[int, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._watcher: asyncio.Task[None] | None = None
        # Told of each recording this node saw become ready (stopped, its composite made if any).
        self.ready_listeners: list[Callable[[RecordingRecord], Awaitable[None]]] = []

    # lifecycle ----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Recover from a crash, then take part in every recording running anywhere."""
        private_directory(self.root)
        await self._recover()
        await self.hub.listen(CHANNEL, self._on_event)
        for recording in await self.store.recordings.with_status(["recording"]):
            self._record_here(recording.id, recording.meeting_id)
        self.jobs.listeners.append(self.composite_done)
        self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def close(self) -> None:
        """Going away: the recordings this node is answerable for stop; the others go on without
        it, and the files it wrote for them are kept."""
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
        self.jobs.listeners.remove(self.composite_done)
        for recording in await self.store.recordings.with_status(["recording"], node_id=self.node_id):
            with contextlib.suppress(ApiError):
                await self.stop(recording, "server shutdown")
        for recording_id in list(self._here):
            await self._stop_here(recording_id, "server shutdown")
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, work: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # operations ---------------------------------------------------------------------------------

    async def begin(self, meeting: MeetingRecord, user_id: int, layout: str, composite: bool) -> RecordingRecord:
        """Start recording an ongoing meeting that allows it; raises ApiError when refused."""
        if meeting.is_over:
            raise _refused(StartRefusal.OVER)
        if meeting.status != "ongoing":
            raise _refused(StartRefusal.NOT_STARTED)
        if not meeting.settings.get("enable_recording", False):
            raise _refused(StartRefusal.DISABLED)
        free = self.free_bytes()
        if free < self.min_free_bytes:
            raise ApiError(
                503,
                f"Not enough free disk space to record ({free // MIB} MiB free, "
                f"{self.min_free_bytes // MIB} MiB needed)",
                code=BusinessCode.RECORDING_NO_DISK,
            )
        try:
            recording = await self.store.recordings.create(
                meeting_id=meeting.id,
                started_by=user_id,
                layout=layout,
                composite=composite,
                node_id=self.node_id,
                root=str(self.root),
            )
        except StartRefused as refused:
            raise _refused(refused.reason) from None
        log.info("user %s started recording %s of meeting %s", user_id, recording.id, meeting.id)
        await self.hub.bus.publish(CHANNEL, {"event": "start", "recording_id": recording.id, "meeting_id": meeting.id})
        await self._tell_room(recording, True)
        return recording

    async def stop(self, recording: RecordingRecord, reason: str) -> RecordingRecord:
        """Stop a running recording; answers once every node has kept its files (or
        ``stop_wait_seconds`` passed), with the recording ready or processing its composite."""
        values = {"status": "stopping", "stopped_at": utc_now(), "stop_reason": reason, "node_id": self.node_id}
        stopping = await self.store.recordings.transition(recording.id, ["recording"], **values)
        if stopping is None:
            raise not_running()
        log.info("recording %s of meeting %s stopping: %s", recording.id, recording.meeting_id, reason)
        await self._tell_room(stopping, False)
        # Finished even if the request that asked for it goes away.
        return await asyncio.shield(self._spawn(self._complete(stopping)))

    async def stop_in(self, meeting_id: int, reason: str) -> None:
        """The meeting is over: its recording, if one runs, stops."""
        recording = await self.store.recordings.running_in(meeting_id)
        if recording is not None:
            with contextlib.suppress(ApiError):  # stopped by someone else meanwhile
                await self.stop(recording, reason)

    async def delete(self, recording: RecordingRecord) -> None:
        """Remove a finished recording with its files."""
        keys = await self.store.recordings.delete(recording.id, unless=BUSY)
        if keys is None:
            raise ApiError(
                400, "The recording is not finished yet; stop it or wait for it", code=BusinessCode.RECORDING_BUSY
            )
        for key in keys:
            await self.storage.delete(key)
        await asyncio.to_thread(shutil.rmtree, self.root / str(recording.id), ignore_errors=True)
        log.info("recording %s deleted", recording.id)

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    async def _tell_room(self, recording: RecordingRecord, on: bool) -> None:
        state = {"recording": on, "recording_id": recording.id}
        await self.hub.broadcast(message("media-state", recording.meeting_id, SERVER, state))

    async def _complete(self, recording: RecordingRecord) -> RecordingRecord:
        event = {"event": "stop", "recording_id": recording.id, "reason": recording.stop_reason}
        try:
            await self.hub.bus.publish_confirmed(CHANNEL, event, self.settings.stop_wait_seconds)
        except Exception:
            log.exception("could not tell the other nodes to stop recording %s; stopping here only", recording.id)
            await self._stop_here(recording.id, recording.stop_reason or "stopped")
        # Nobody writes for it any more: files left over (by a node that crashed meanwhile) are kept too.
        await self.files.keep_leftovers(self.root / str(recording.id), recording.id)
        tracks = (await self.store.recordings.tracks([recording.id]))[recording.id]
        kept = [track for track in tracks if track.media_file_id is not None and track.started_at is not None]
        assert recording.stopped_at is not None
        duration = (recording.stopped_at - recording.started_at).total_seconds()
        done: RecordingRecord | None
        if recording.composite and kept:
            job = await self.jobs.enqueue(
                job_id=secrets.token_hex(16),
                user_id=recording.started_by,
                kind="composite",
                params={
                    "inputs": [track.media_file_id for track in kept],
                    "meeting_id": recording.meeting_id,
                    "recording_id": recording.id,
                    "layout": recording.layout,
                    "tracks": [
                        {
                            "kind": track.kind,
                            "user_id": track.user_id,
                            "started_at": track.started_at.timestamp(),  # type: ignore[union-attr]
                            "duration": track.duration,
                        }
                        for track in kept
                    ],
                },
            )
            done = await self.store.recordings.transition(
                recording.id, ["stopping"], status="processing", duration=duration, composite_job_id=job.id
            )
        else:
            done = await self.store.recordings.transition(recording.id, ["stopping"], status="ready", duration=duration)
        await self.store.recordings.refresh_size(recording.id)
        log.info("recording %s stopped with %d files", recording.id, len(kept))
        final = await self.store.recordings.get(recording.id) or done or recording
        if final.status == "ready":
            await self._tell_ready(final)
        return final

    async def _tell_ready(self, recording: RecordingRecord) -> None:
        for listener in self.ready_listeners:
            try:
                await listener(recording)
            except Exception:
                log.exception("acting on recording %s being ready failed", recording.id)

    # this node's media ------------------------------------------------------------------------

    async def _on_event(self, event: dict[str, Any]) -> None:
        recording_id = int(event["recording_id"])
        if event["event"] == "start":
            self._record_here(recording_id, int(event["meeting_id"]))
        elif event["event"] == "stop":
            await self._stop_here(recording_id, str(event["reason"]))

    def _record_here(self, recording_id: int, meeting_id: int) -> None:
        """This node's media server records the room's peers it holds, now and as they come."""
        if recording_id in self._here or recording_id in self._ended:
            return
        self._here.add(recording_id)
        try:
            self.media.start_recording(meeting_id, str(recording_id), self.root / str(recording_id), self._file_closed)
        except Exception:
            log.exception("this node cannot record its peers for recording %s", recording_id)

    async def _stop_here(self, recording_id: int, reason: str) -> None:
        """This node's media server stops recording; returns once its files are kept, however
        many callers ask at once (the stop on the bus, the watch, shutting down)."""
        stopping = self._stopping.get(recording_id)
        if stopping is None:
            stopping = self._stopping[recording_id] = self._spawn(self._end_here(recording_id, reason))
            stopping.add_done_callback(lambda _: self._stopping.pop(recording_id, None))
        await asyncio.shield(stopping)

    async def _end_here(self, recording_id: int, reason: str) -> None:
        self._ended.add(recording_id)
        if recording_id in self._here:
            self._here.discard(recording_id)
            try:
                for file in await self.media.stop_recording(str(recording_id), reason):
                    if file.closed:
                        self._file_closed(file)
            except Exception:
                log.exception("stopping this node's part of recording %s failed", recording_id)
        keeping = [(path, task) for path, (owner, task) in self._keeping.items() if owner == recording_id]
        await asyncio.gather(*(task for _, task in keeping), return_exceptions=True)
        for path, _ in keeping:
            self._keeping.pop(path, None)

    def _file_closed(self, file: TrackFile) -> None:
        """A track's file is finished (its publisher left or unpublished it, or recording stopped)."""
        if file.path not in self._keeping:
            self._keeping[file.path] = (int(file.recording_id), self._spawn(self.files.keep_track_file(file)))

    # crashes ------------------------------------------------------------------------------------

    async def _recover(self) -> None:
        """Recordings this node was answerable for when it stopped without closing them are
        interrupted; every finished recording's files left on this node's disk are kept."""
        for recording in await self.store.recordings.with_status(RUNNING, node_id=self.node_id):
            ended = self._last_write(recording.id) or utc_now()
            interrupted = await self.store.recordings.transition(
                recording.id,
                RUNNING,
                status="interrupted",
                stopped_at=recording.stopped_at or ended,
                duration=max(0.0, ((recording.stopped_at or ended) - recording.started_at).total_seconds()),
                stop_reason=recording.stop_reason or "server stopped unexpectedly",
            )
            if interrupted is None:
                continue
            log.warning("recording %s was interrupted: this node stopped while it ran", recording.id)
            # Other nodes that record it stop and keep their files; its room hears it stopped.
            event = {"event": "stop", "recording_id": recording.id, "reason": "interrupted"}
            await self.hub.bus.publish(CHANNEL, event)
            await self._tell_room(interrupted, False)
        for directory in sorted(self.root.iterdir()):
            if directory.is_dir() and directory.name.isdigit():
                recording = await self.store.recordings.get(int(directory.name))
                if recording is None or recording.status not in RUNNING:
                    await self.files.keep_leftovers(directory, int(directory.name))

    def _last_write(self, recording_id: int) -> datetime | None:
        """When a file of the recording was last written on this node's disk."""
        directory = self.root / str(recording_id)
        times = [path.stat().st_mtime for path in directory.iterdir() if path.is_file()] if directory.is_dir() else []
        return moment(max(times)) if times else None

    # watching -----------------------------------------------------------------------------------

    async def _watch(self) -> None:
        """Stop what this node records when its disk runs short; follow the rows where the bus
        said nothing (it lost messages while Redis was away); finish recordings whose composite
        job ended without their hearing of it (a node stopped in between)."""
        while True:
            await asyncio.sleep(self.settings.disk_check_seconds)
            try:
                if self._here and self.free_bytes() < self.min_free_bytes:
                    await self._stop_for_disk()
                running = {
                    recording.id: recording for recording in await self.store.recordings.with_status(["recording"])
                }
                for recording_id in self._here - running.keys():
                    current = await self.store.recordings.get(recording_id)  # read again: it may have just started
                    if current is None or current.status != "recording":
                        await self._stop_here(recording_id, (current and current.stop_reason) or "stopped")
                for recording in running.values():
                    self._record_here(recording.id, recording.meeting_id)
                for recording in await self.store.recordings.with_status(["processing"]):
                    job = await self.store.jobs.get(recording.composite_job_id or "")
                    if job is None or job.status in FINISHED_JOB:
                        await self._settle(recording, job)
            except Exception:
                log.exception("recording watch failed; trying again")

    async def _stop_for_disk(self) -> None:
        log.warning("less than %d MiB free for recordings: stopping them", self.min_free_bytes // MIB)
        for recording_id in list(self._here):
            recording = await self.store.recordings.get(recording_id)
            if recording is not None and recording.status == "recording":
                with contextlib.suppress(ApiError):
                    await self.stop(recording, "disk")

    async def composite_done(self, job: JobRecord) -> None:
        if job.kind == "composite":
            recording = await self.store.recordings.by_job(job.id)
            if recording is not None and recording.status == "processing":
                await self._settle(recording, job)

    async def _settle(self, recording: RecordingRecord, job: JobRecord | None) -> None:
        if job is not None and job.status == "succeeded" and job.result_file_ids:
            # The composite is counted in the size before the recording shows ready.
            await self.store.recordings.transition(
                recording.id, ["processing"], composite_file_id=job.result_file_ids[0]
            )
            await self.store.recordings.refresh_size(recording.id)
            ready = await self.store.recordings.transition(recording.id, ["processing"], status="ready")
            if ready is not None:
                await self._tell_ready(ready)
        else:
            error = job.error if job is not None and job.error else "the composite job is gone"
            await self.store.recordings.transition(
                recording.id, ["processing"], status="failed", error=f"composite failed: {error}"[:1000]
            )
        await self.store.recordings.refresh_size(recording.id)
