"""Runs jobs in a process pool so the event loop never does media work, keeps their state in the
database, and picks up what a stopped server left unfinished."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import shutil
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from control.envelope import utc_now
from control.storage import LocalStorage
from control.store import Store
from control.store.media import JobRecord
from media import worker
from media.jobs import JobFailed
from media.probe import UnsupportedMedia, probe

log = logging.getLogger("huiyi.jobs")
MAX_ATTEMPTS = 2


def default_workers() -> int:
    return max(1, (os.cpu_count() or 2) - 1)


class JobRunner:
    def __init__(self, store: Store, storage: LocalStorage, workers: int) -> None:
        self.store = store
        self.storage = storage
        self.workers = workers or default_workers()
        self._context = multiprocessing.get_context("spawn")
        self._progress: Any = self._context.Queue()
        self._pool = self._new_pool()
        self._tasks: set[asyncio.Task[None]] = set()
        self._reader: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Progress writes run as separate tasks; per job they go through one lock and never go back.
        self._progress_locks: dict[str, asyncio.Lock] = {}
        self._progress_written: dict[str, int] = {}

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=self._context,
            initializer=worker.initialise,
            initargs=(self._progress,),
        )

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._reader = threading.Thread(target=self._read_progress, name="job-progress", daemon=True)
        self._reader.start()
        for job in await self.store.jobs.unfinished():
            if job.status == "running" and job.attempts >= MAX_ATTEMPTS:
                await self._finish(job.id, "failed", error="interrupted by server restarts; giving up")
                continue
            if job.status == "running":
                await self.store.jobs.update(job.id, status="queued", progress=0)
                log.info("job %s was running when the server stopped; running it again", job.id)
            self.submit(job)

    def submit(self, job: JobRecord) -> None:
        task = asyncio.get_running_loop().create_task(self._run(job))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _read_progress(self) -> None:
        while True:
            item = self._progress.get()
            if item is None or self._loop is None:
                return
            job_id, percent = item
            self._loop.call_soon_threadsafe(lambda j=job_id, p=percent: self.submit_progress(j, p))

    def submit_progress(self, job_id: str, percent: int) -> None:
        task = asyncio.get_running_loop().create_task(self._record_progress(job_id, percent))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _record_progress(self, job_id: str, percent: int) -> None:
        if percent < 0:
            job = await self.store.jobs.get(job_id)
            attempts = (job.attempts if job else 0) + 1
            await self.store.jobs.update(
                job_id, only_if=["queued"], status="running", started_at=utc_now(), attempts=attempts
            )
            return
        async with self._progress_locks.setdefault(job_id, asyncio.Lock()):
            if percent <= self._progress_written.get(job_id, -1):
                return
            self._progress_written[job_id] = percent
            await self.store.jobs.update(job_id, only_if=["running"], progress=percent)

    async def _finish(self, job_id: str, status: str, **values: Any) -> None:
        self._progress_locks.pop(job_id, None)
        self._progress_written.pop(job_id, None)
        await self.store.jobs.update(job_id, status=status, finished_at=utc_now(), **values)

    async def _inputs(self, job: JobRecord) -> list[str]:
        paths = []
        for file_id in job.params["inputs"]:
            record = await self.store.media.get(file_id)
            if record is None:
                raise JobFailed(f"input file {file_id} no longer exists")
            paths.append(str(self.storage.local_path(record.storage_key)))
        return paths

    async def _run(self, job: JobRecord) -> None:
        scratch = self.storage.scratch_path("")
        scratch.mkdir(parents=True)
        try:
            inputs = await self._inputs(job)
            outputs = await asyncio.get_running_loop().run_in_executor(
                self._pool, worker.run, job.id, job.kind, job.params, inputs, str(scratch)
            )
            file_ids = [await self._keep(job, path, name) for path, name in outputs]
        except JobFailed as exc:
            log.info("job %s (%s) failed: %s", job.id, job.kind, exc)
            await self._finish(job.id, "failed", error=str(exc))
        except BrokenProcessPool:
            log.error("a worker process died during job %s; starting a new pool", job.id)
            self._pool = self._new_pool()
            await self._finish(job.id, "failed", error="the worker process crashed")
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("job %s (%s) failed unexpectedly", job.id, job.kind)
            await self._finish(job.id, "failed", error="internal error")
        else:
            await self._finish(job.id, "succeeded", progress=100, result_file_ids=file_ids)
            log.info("job %s (%s) succeeded: %s", job.id, job.kind, ", ".join(file_ids))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    async def _keep(self, job: JobRecord, path: str, name: str) -> str:
        """An output becomes a media file of the job's owner, in the same meeting as its input."""
        try:
            found = await asyncio.to_thread(probe, Path(path))
        except UnsupportedMedia as exc:
            raise JobFailed(f"the output could not be read back: {exc}") from None
        key, size = await self.storage.adopt(Path(path))
        record = await self.store.media.add(
            id=os.urandom(16).hex(),
            user_id=job.user_id,
            meeting_id=job.params.get("meeting_id"),
            file_name=name,
            storage_key=key,
            file_type=found.file_type,
            mime_type=found.mime_type,
            size=size,
            duration=found.duration,
        )
        return record.id

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._progress.put(None)
        if self._reader is not None:
            await asyncio.to_thread(self._reader.join, 5)
