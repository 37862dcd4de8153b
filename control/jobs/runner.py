"""Runs jobs in a process pool so the event loop never does media work, keeps their state in the
database, and picks up what a stopped node left unfinished.

Each unfinished job belongs to one node, which renews a lease on it while it holds it. A node
starting up resumes its own unfinished jobs at once; those of another node only once that node's
lease lapsed (it stopped without finishing them), so a node starting beside a live one never
runs that one's jobs a second time."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import shutil
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from control.envelope import utc_now
from control.private_files import private_directory
from control.storage import LocalStorage
from control.store import Store
from control.store.media import JobRecord, MeetingGone
from media import worker
from media.jobs import JobFailed
from media.probe import UnsupportedMedia, probe

log = logging.getLogger("huiyi.jobs")
# A job started this many times without finishing (its server or worker process died each time)
# fails rather than being tried again.
MAX_ATTEMPTS = 2
MEETING_DELETED = "the meeting was deleted while the job was pending; its output was discarded"

# Told of every job this node finishes (succeeded, failed or cancelled), e.g. to act on its output.
JobListener = Callable[[JobRecord], Awaitable[None]]
# Runs a kind of job elsewhere than in this node's worker pool (AI work, on the worker nodes): told
# the job and where to report its progress (percent), it answers the outputs, as (path, suggested
# name), and what else the job measured; JobFailed says why it could not.
Executor = Callable[[JobRecord, Callable[[int], None]], Awaitable[tuple[list[tuple[str, str]], dict[str, Any]]]]


def default_workers() -> int:
    return max(1, (os.cpu_count() or 2) - 1)


class JobRunner:
    def __init__(
        self,
        store: Store,
        storage: LocalStorage,
        workers: int,
        node_id: str,
        lease_seconds: float,
        executors: dict[str, Executor] | None = None,
    ) -> None:
        self.store = store
        self.storage = storage
        self.workers = workers or default_workers()
        self.node_id = node_id
        self.lease = timedelta(seconds=lease_seconds)
        self._context = multiprocessing.get_context("spawn")
        self._progress: Any = self._context.Queue()
        self._pool = self._new_pool()
        self._tasks: set[asyncio.Task[None]] = set()
        self._held: dict[str, asyncio.Task[None]] = {}
        # A job goes to the pool only when a worker is free for it, so that one handed over is
        # one started: its attempt is counted then, and a pool that breaks takes only those along.
        self._free_worker = asyncio.Semaphore(self.workers)
        self._reader: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Progress writes run as separate tasks; per job they go through one lock and never go back.
        self._progress_locks: dict[str, asyncio.Lock] = {}
        self._progress_written: dict[str, int] = {}
        self.listeners: list[JobListener] = []
        self.executors = executors or {}

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=self._context,
            initializer=worker.initialise,
            initargs=(self._progress, os.getpid()),
        )

    def _lease_until(self) -> datetime:
        return utc_now() + self.lease

    async def start(self) -> None:
        """Clear this node's scratch space (nothing of this run is in it yet), then resume."""
        removed = await asyncio.to_thread(self.storage.clear_scratch)
        if removed:
            log.info("removed %d half-done files or folders left by this node's previous run", removed)
        self._loop = asyncio.get_running_loop()
        self._reader = threading.Thread(target=self._read_progress, name="job-progress", daemon=True)
        self._reader.start()
        await self._take_over()
        self._spawn(self._keep_leases())

    async def _take_over(self) -> None:
        """Run the unfinished jobs this node may claim and does not hold yet."""
        for job in await self.store.jobs.claimable(self.node_id):
            if job.id in self._held or not await self.store.jobs.claim(job, self.node_id, self._lease_until()):
                continue
            if job.node_id not in (None, self.node_id):
                log.info("job %s was left by node %s; taking it over", job.id, job.node_id)
            if job.attempts >= MAX_ATTEMPTS:
                await self._finish(job.id, "failed", error="interrupted by server restarts; giving up")
                continue
            if job.status == "running":
                await self.store.jobs.update(job.id, node_id=self.node_id, status="queued", progress=0)
                log.info("job %s was running when its server stopped; running it again", job.id)
            self._submit(job)

    async def _keep_leases(self) -> None:
        """Renew the leases of the jobs held here and take over those whose owner stopped."""
        while True:
            await asyncio.sleep(self.lease.total_seconds() / 3)
            try:
                await self.store.jobs.renew(self._held, self.node_id, self._lease_until())
                await self._take_over()
            except Exception:
                log.exception("renewing job leases failed; trying again")

    async def enqueue(self, *, job_id: str, user_id: int, kind: str, params: dict[str, Any]) -> JobRecord:
        job = await self.store.jobs.add(
            job_id=job_id,
            user_id=user_id,
            kind=kind,
            params=params,
            node_id=self.node_id,
            lease_until=self._lease_until(),
        )
        self._submit(job)
        return job

    def _submit(self, job: JobRecord) -> None:
        task = self._spawn(self._run(job))
        self._held[job.id] = task
        task.add_done_callback(lambda done: self._held.pop(job.id) if self._held.get(job.id) is done else None)

    def _spawn(self, work: Any) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _read_progress(self) -> None:
        while True:
            item = self._progress.get()
            if item is None or self._loop is None:
                return
            job_id, attempt, percent = item
            self._loop.call_soon_threadsafe(lambda j=job_id, a=attempt, p=percent: self.submit_progress(j, a, p))

    def submit_progress(self, job_id: str, attempt: int, percent: int) -> None:
        self._spawn(self._record_progress(job_id, attempt, percent))

    async def _record_progress(self, job_id: str, attempt: int, percent: int) -> None:
        """Reports of an earlier attempt (of a worker that died) arriving late change nothing."""
        if percent < 0:
            await self.store.jobs.mark_started(job_id, self.node_id, attempt)
            return
        async with self._progress_locks.setdefault(job_id, asyncio.Lock()):
            if percent <= self._progress_written.get(job_id, -1):
                return
            self._progress_written[job_id] = percent
            await self.store.jobs.update(
                job_id, node_id=self.node_id, only_if=["running"], attempt=attempt, progress=percent
            )

    async def _finish(self, job_id: str, status: str, **values: Any) -> None:
        self._forget_progress(job_id)
        if await self.store.jobs.update(job_id, node_id=self.node_id, status=status, finished_at=utc_now(), **values):
            await self._finished(job_id)

    async def _finished(self, job_id: str) -> None:
        job = await self.store.jobs.get(job_id)
        if job is None:
            return
        for listener in self.listeners:
            try:
                await listener(job)
            except Exception:
                log.exception("acting on the end of job %s failed", job_id)

    def _forget_progress(self, job_id: str) -> None:
        self._progress_locks.pop(job_id, None)
        self._progress_written.pop(job_id, None)

    async def _inputs(self, job: JobRecord) -> list[str]:
        paths = []
        for file_id in job.params["inputs"]:
            record = await self.store.media.get(file_id)
            if record is None:
                raise JobFailed(f"input file {file_id} no longer exists")
            paths.append(str(self.storage.local_path(record.storage_key)))
        return paths

    async def _meeting_gone(self, job: JobRecord) -> bool:
        meeting_id = job.params.get("meeting_id")
        return meeting_id is not None and await self.store.meetings.get(meeting_id) is None

    async def _run(self, job: JobRecord) -> None:
        scratch = self.storage.scratch_path("")
        private_directory(scratch)
        pool = self._pool
        try:
            if await self._meeting_gone(job):
                raise MeetingGone(job.params["meeting_id"])
            executor = self.executors.get(job.kind)
            if executor is not None:
                await self._execute(job, executor)
                return
            inputs = await self._inputs(job)
            async with self._free_worker:
                # Counted before the worker has it: the worker's own report comes through a queue,
                # too late when it dies at once.
                attempt = await self.store.jobs.begin_attempt(job.id, self.node_id)
                if attempt is None:
                    log.info("job %s is no longer this node's to run", job.id)
                    return
                work = (worker.run, job.id, attempt, job.kind, job.params, inputs, str(scratch))
                pool = self._pool  # the one of the moment, should another have broken meanwhile
                try:
                    submitted = pool.submit(*work)
                except BrokenProcessPool:  # an idle worker died: the job never got to it
                    self._replace_pool(pool)
                    pool = self._pool
                    submitted = pool.submit(*work)
                outputs = await asyncio.wrap_future(submitted)
            await self._keep(job, outputs)
        except JobFailed as exc:
            log.info("job %s (%s) failed: %s", job.id, job.kind, exc)
            await self._finish(job.id, "failed", error=str(exc), result={"error_kind": exc.kind})
        except MeetingGone:
            log.info("job %s (%s) cancelled: its meeting was deleted", job.id, job.kind)
            await self._finish(job.id, "cancelled", error=MEETING_DELETED)
        except BrokenProcessPool:
            await self._worker_died(job, pool)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("job %s (%s) failed unexpectedly", job.id, job.kind)
            await self._finish(job.id, "failed", error="internal error")
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    async def _execute(self, job: JobRecord, executor: Executor) -> None:
        """A job run by its executor: attempts, progress and outputs kept as for the pool's."""
        attempt = await self.store.jobs.begin_attempt(job.id, self.node_id)
        if attempt is None:
            log.info("job %s is no longer this node's to run", job.id)
            return
        await self.store.jobs.mark_started(job.id, self.node_id, attempt)
        outputs, result = await executor(job, lambda percent: self.submit_progress(job.id, attempt, min(99, percent)))
        await self._keep(job, outputs, result)

    async def _worker_died(self, job: JobRecord, pool: ProcessPoolExecutor) -> None:
        """A worker process died (killed, out of memory, a crash in a codec): every job the pool
        ran fails over to a new pool, and is tried again unless it has used up its attempts."""
        log.error("a worker process died during job %s", job.id)
        self._replace_pool(pool)
        self._forget_progress(job.id)
        current = await self.store.jobs.get(job.id)
        if current is None or current.node_id != self.node_id:
            return
        if current.attempts >= MAX_ATTEMPTS:
            await self._finish(job.id, "failed", error="the worker process crashed")
        elif await self.store.jobs.update(job.id, node_id=self.node_id, status="queued", progress=0):
            log.info("job %s: running it again after its worker died", job.id)
            self._submit(current)

    def _replace_pool(self, broken: ProcessPoolExecutor) -> None:
        """Start a new pool in place of ``broken``, unless another job already did."""
        if self._pool is broken:
            log.info("starting a new worker pool in place of the broken one")
            self._pool = self._new_pool()
            broken.shutdown(wait=False, cancel_futures=True)

    async def _keep(self, job: JobRecord, outputs: list[tuple[str, str]], result: dict[str, Any] | None = None) -> None:
        """Outputs become media files of the job's owner, in the meeting of its first input, only
        if that meeting still exists and this node still owns the job; otherwise they go."""
        files = []
        try:
            for path, name in outputs:
                try:
                    found = await asyncio.to_thread(probe, Path(path))
                except UnsupportedMedia as exc:
                    raise JobFailed(f"the output could not be read back: {exc}") from None
                key, size = await self.storage.adopt(Path(path))
                files.append(
                    {
                        "id": os.urandom(16).hex(),
                        "user_id": job.user_id,
                        "meeting_id": job.params.get("meeting_id"),
                        "file_name": name,
                        "storage_key": key,
                        "file_type": found.file_type,
                        "mime_type": found.mime_type,
                        "size": size,
                        "duration": found.duration,
                    }
                )
            self._forget_progress(job.id)
            file_ids = await self.store.jobs.succeed(job.id, self.node_id, files, result)
        except BaseException:
            await self._discard(files)
            raise
        if file_ids is None:
            await self._discard(files)
            log.warning("job %s finished here but another node had taken it over; output discarded", job.id)
            return
        log.info("job %s (%s) succeeded: %s", job.id, job.kind, ", ".join(file_ids))
        await self._finished(job.id)

    async def _discard(self, files: list[dict[str, Any]]) -> None:
        for values in files:
            await self.storage.delete(values["storage_key"])

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        # Jobs still running stay marked so: this node runs them again when it starts.
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._progress.put(None)
        self._progress.cancel_join_thread()  # as in the workers: exiting never waits on the queue
        if self._reader is not None:
            await asyncio.to_thread(self._reader.join, 5)
