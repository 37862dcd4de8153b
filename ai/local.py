"""The embedded default: one worker node in a child process of the server, fed through a pipe.

The server keeps the jobs in memory (a restart forgets them, as it forgets the loaded models).
Should the node process die, a new one starts and the jobs it held run again there, once."""

from __future__ import annotations

import asyncio
import itertools
import logging
import multiprocessing
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ai.jobs import FINISHED, apply_finished, apply_started
from ai.node import MAX_ATTEMPTS, Node
from config import Settings
from config.logformat import capture_native_output, configure_logging

log = logging.getLogger("huiyi.ai.local")


class _PipeReport:
    def __init__(self, outbox: Any, attempts: dict[str, int]) -> None:
        self.outbox = outbox
        self.attempts = attempts

    def started(self, job_id: str, node_id: str) -> int:
        self.outbox.put(("started", job_id, node_id))
        return self.attempts[job_id]

    def progress(self, job_id: str, percent: int) -> None:
        self.outbox.put(("progress", job_id, percent))

    def finished(self, job_id: str, result: Any, error: str | None, error_kind: str | None) -> None:
        self.outbox.put(("finished", job_id, result, error, error_kind))


def node_main(settings: Settings, node_id: str, inbox: Any, outbox: Any) -> None:
    """The child process: jobs on a pool of ``node_concurrency`` threads, commands on their own
    thread so a long job never holds up a health check, a heartbeat every few seconds."""
    capture_native_output(configure_logging(settings.server.log_level, settings.server.log_format))
    node = Node(settings, node_id)
    jobs = ThreadPoolExecutor(settings.ai.node_concurrency, thread_name_prefix="ai-job")
    commands = ThreadPoolExecutor(4, thread_name_prefix="ai-command")
    attempts: dict[str, int] = {}
    report = _PipeReport(outbox, attempts)

    def beat() -> None:
        while True:
            outbox.put(("node", node.info()))
            time.sleep(settings.ai.heartbeat_seconds)

    def run(job: dict[str, Any]) -> None:
        node.received(-1)
        node.run_job(job, report)

    def command(request_id: int, name: str, args: dict[str, Any]) -> None:
        outbox.put(("reply", request_id, node.command(name, args)))

    threading.Thread(target=beat, name="ai-heartbeat", daemon=True).start()
    while True:
        message = inbox.get()
        if message is None:
            return
        if message[0] == "job":
            job = message[1]
            attempts[job["job_id"]] = job["attempts"] + 1
            node.received(1)
            jobs.submit(run, job)
        else:
            commands.submit(command, *message[1:])


class LocalQueue:
    """The server's side of the pipe: the jobs, the node's last heartbeat, answers to commands."""

    def __init__(self, settings: Settings, node_id: str) -> None:
        self.settings = settings
        self.node_id = node_id
        self._context = multiprocessing.get_context("spawn")
        self._jobs: dict[str, dict[str, Any]] = {}
        self._heartbeat: dict[str, Any] | None = None
        self._replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._process: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watch: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._spawn()
        self._watch = self._loop.create_task(self._watchdog())

    def _spawn(self) -> None:
        inbox, outbox = self._context.Queue(), self._context.Queue()
        process = self._context.Process(
            target=node_main, args=(self.settings, self.node_id, inbox, outbox), name="huiyi-ai-node", daemon=True
        )
        process.start()
        self._process, self._inbox = process, inbox
        threading.Thread(target=self._read, args=(outbox, process), name="ai-node-reports", daemon=True).start()
        log.info("started AI worker node %s (pid %s)", self.node_id, process.pid)

    def _read(self, outbox: Any, process: Any) -> None:
        while process.is_alive() or not outbox.empty():
            try:
                message = outbox.get(timeout=0.5)
            except queue.Empty:
                continue
            except (EOFError, OSError):
                return
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self._apply, message)

    def _apply(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "node":
            self._heartbeat = message[1]
            return
        if kind == "reply":
            future = self._replies.pop(message[1], None)
            if future is not None and not future.done():
                future.set_result(message[2])
            return
        job = self._jobs.get(message[1])
        if job is None or job["status"] in FINISHED:
            return
        if kind == "started":
            apply_started(job, message[2])
        elif kind == "progress":
            job["progress"] = max(job["progress"], int(message[2]))
        elif kind == "finished":
            apply_finished(job, *message[2:])

    async def _watchdog(self) -> None:
        """A node process that died is replaced; what it held runs again on the new one."""
        while True:
            await asyncio.sleep(0.5)
            self._forget_old()
            if self._process.is_alive():
                continue
            log.error("the AI worker node process exited (code %s); starting a new one", self._process.exitcode)
            self._heartbeat = None
            self._spawn()
            for job in self._jobs.values():
                if job["status"] in FINISHED:
                    continue
                if job["attempts"] >= MAX_ATTEMPTS:
                    apply_finished(job, None, "the node running this job stopped before it finished; giving up", "node")
                else:
                    job.update(status="queued", progress=0)
                    self._inbox.put(("job", job))

    def _forget_old(self) -> None:
        horizon = time.time() - self.settings.ai.keep_results_seconds
        for job_id in [j for j, job in self._jobs.items() if (job["finished_at"] or time.time()) < horizon]:
            del self._jobs[job_id]

    async def submit(self, job: dict[str, Any]) -> None:
        self._jobs[job["job_id"]] = job
        self._inbox.put(("job", job))

    async def job(self, job_id: str) -> dict[str, Any] | None:
        job = self._jobs.get(job_id)
        return dict(job) if job else None

    async def nodes(self) -> list[dict[str, Any]]:
        return [dict(self._heartbeat)] if self._heartbeat else []

    async def command(self, node_id: str, name: str, args: dict[str, Any], timeout: float) -> dict[str, Any] | None:
        if node_id != self.node_id:
            return None
        request_id = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._replies[request_id] = future
        self._inbox.put(("command", request_id, name, args))
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            self._replies.pop(request_id, None)
            return {"error": f"node {node_id} did not answer within {timeout:g} s", "error_kind": "timeout"}

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
        if self._process is not None and self._process.is_alive():
            self._inbox.put(None)
            await asyncio.to_thread(self._process.join, 5)
            if self._process.is_alive():
                self._process.kill()
                await asyncio.to_thread(self._process.join, 5)
