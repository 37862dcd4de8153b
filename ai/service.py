"""What the API asks of the AI side, whichever queue carries the work: jobs submitted and followed,
the models of every online node, commands to one node. Nothing here runs a model: the nodes do."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import secrets
import socket
import time
from typing import Any, Protocol

from ai.jobs import FINISHED, new_job
from ai.registry import Unavailable, choose
from config import Settings

log = logging.getLogger("huiyi.ai")
# How long the first AI request waits for a freshly started node to report.
START_SECONDS = 60.0
STATUS_SECONDS = 5.0


class NotFound(Exception):
    pass


class Queue(Protocol):
    async def start(self) -> None: ...
    async def submit(self, job: dict[str, Any]) -> None: ...
    async def job(self, job_id: str) -> dict[str, Any] | None: ...
    async def nodes(self) -> list[dict[str, Any]]: ...
    async def command(self, node_id: str, name: str, args: dict[str, Any], timeout: float) -> dict[str, Any] | None: ...
    async def close(self) -> None: ...


def worker_node_id(settings: Settings) -> str:
    return settings.server.node_id or f"{socket.gethostname()}-{os.getpid()}"


def _redis_node_main(settings: Settings, node_id: str) -> None:
    from ai.redis_queue import RedisNode
    from config.logformat import capture_native_output, configure_logging

    capture_native_output(configure_logging(settings.server.log_level, settings.server.log_format))
    RedisNode(settings, node_id).run()


class AiService:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.local_node_id = f"{settings.node_id}-ai"
        self._queue: Queue | None = None
        self._child: Any = None
        self._watch: asyncio.Task[None] | None = None
        self._starting = asyncio.Lock()
        self._awaiting: asyncio.Task[None] | None = None

    # -- starting on first use -------------------------------------------------------------------

    async def _started(self) -> Queue:
        """The queue, started on first use (and with it the local node, if there is one)."""
        if self._queue is not None:
            return self._queue
        async with self._starting:
            if self._queue is None:
                self._queue = await self._start()
        return self._queue

    async def _ready(self) -> Queue:
        """The queue, once a local node just started has reported (or START_SECONDS passed), so
        that the first lists of nodes and models are not empty for want of a heartbeat."""
        queue = await self._started()
        if self._awaiting is not None:
            await self._awaiting
        return queue

    async def _first_heartbeat(self, queue: Queue) -> None:
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline and not await self._online(queue):
            await asyncio.sleep(0.1)

    async def _start(self) -> Queue:
        settings = self.settings
        if settings.redis.url:
            from ai.redis_queue import RedisQueue

            queue: Queue = RedisQueue(settings)
            await queue.start()
            if settings.ai.local_worker:
                self._spawn_redis_node()
                self._watch = asyncio.get_running_loop().create_task(self._keep_redis_node())
        else:
            if not settings.ai.local_worker:
                raise Unavailable("AI work needs a worker node: set [ai] local_worker = true, or configure Redis")
            from ai.local import LocalQueue

            queue = LocalQueue(settings, self.local_node_id)
            await queue.start()
        if settings.ai.local_worker:
            self._awaiting = asyncio.get_running_loop().create_task(self._first_heartbeat(queue))
        return queue

    def _spawn_redis_node(self) -> None:
        context = multiprocessing.get_context("spawn")
        self._child = context.Process(
            target=_redis_node_main, args=(self.settings, self.local_node_id), name="huiyi-ai-node", daemon=True
        )
        self._child.start()
        log.info("started AI worker node %s (pid %s)", self.local_node_id, self._child.pid)

    async def _keep_redis_node(self) -> None:
        while True:
            await asyncio.sleep(1)
            if not self._child.is_alive():
                log.error("the AI worker node process exited (code %s); starting a new one", self._child.exitcode)
                self._spawn_redis_node()

    async def close(self) -> None:
        if self._awaiting is not None:
            self._awaiting.cancel()
        if self._watch is not None:
            self._watch.cancel()
        if self._child is not None and self._child.is_alive():
            self._child.terminate()
            await asyncio.to_thread(self._child.join, 10)
            if self._child.is_alive():
                self._child.kill()
        if self._queue is not None:
            await self._queue.close()

    # -- nodes -----------------------------------------------------------------------------------

    async def _online(self, queue: Queue) -> list[dict[str, Any]]:
        return [node for node in await self._all_nodes(queue) if node["status"] == "online"]

    async def _all_nodes(self, queue: Queue) -> list[dict[str, Any]]:
        now = time.time()
        nodes = []
        for beat in await queue.nodes():
            online = now - beat["last_seen"] <= self.settings.ai.node_timeout_seconds
            nodes.append(beat | {"status": "online" if online else "offline"})
        return sorted(nodes, key=lambda node: node["node_id"])

    async def nodes(self) -> list[dict[str, Any]]:
        return await self._all_nodes(await self._ready())

    @property
    def started(self) -> bool:
        """Some request used AI work on this server (the queue, and any local node, run)."""
        return self._queue is not None

    async def known_nodes(self) -> list[dict[str, Any]]:
        """The nodes as now known, without starting anything (none before the first AI request)."""
        return await self._all_nodes(self._queue) if self._queue is not None else []

    async def local_node_problem(self) -> str | None:
        """Why the worker node this server started beside itself cannot take work, or None: also
        when it started none (no AI request yet, or its work goes to other machines), and while
        the node is still starting."""
        if self._queue is None or not self.settings.ai.local_worker:
            return None
        if self._awaiting is not None and not self._awaiting.done():
            return None
        for node in await self._all_nodes(self._queue):
            if node["node_id"] == self.local_node_id:
                if node["status"] == "online":
                    return None
                return f"its worker node was last heard {time.time() - node['last_seen']:.0f} s ago"
        return "its worker node never reported"

    async def node(self, node_id: str) -> dict[str, Any]:
        for node in await self.nodes():
            if node["node_id"] == node_id:
                return node
        raise NotFound(f"node {node_id} is unknown")

    async def health_check(self, node_id: str) -> dict[str, Any]:
        node = await self.node(node_id)
        if node["status"] != "online":
            raise Unavailable(f"node {node_id} is offline (last seen {time.time() - node['last_seen']:.0f} s ago)")
        answer = await self._command(node_id, "health", {}, self.settings.ai.command_timeout_seconds)
        if "error" in answer:
            raise Unavailable(answer["error"])
        return answer

    async def _command(self, node_id: str, name: str, args: dict[str, Any], wait: float) -> dict[str, Any]:
        queue = await self._ready()
        answer = await queue.command(node_id, name, args, wait)
        if answer is None:
            raise NotFound(f"node {node_id} is unknown")
        return answer

    # -- models ----------------------------------------------------------------------------------

    async def models(self) -> list[dict[str, Any]]:
        merged: dict[str, dict[str, Any]] = {}
        for node in await self._online(await self._ready()):
            for model in node["models"]:
                entry = merged.setdefault(model["model_id"], model | {"nodes": []})
                entry["nodes"].append(
                    {
                        "node_id": node["node_id"],
                        "status": model["status"],
                        "memory_bytes": model["memory_bytes"],
                        "error": model["error"],
                    }
                )
        return [summarise(entry) for _, entry in sorted(merged.items())]

    async def model(self, model_id: str, live: bool = True) -> dict[str, Any]:
        for model in await self.models():
            if model["model_id"] == model_id:
                if live:
                    await self._refresh(model)
                return model
        raise NotFound(f"model {model_id} is not installed on any online node")

    async def _refresh(self, model: dict[str, Any]) -> None:
        """Heartbeats lag; ask each holder for the model's state now (a node busy past a few
        seconds keeps its last heartbeat's word)."""

        async def ask(entry: dict[str, Any]) -> None:
            answer = await self._command(entry["node_id"], "status", {"model_id": model["model_id"]}, STATUS_SECONDS)
            if "status" in answer:
                entry.update({key: answer[key] for key in ("status", "memory_bytes", "error")})

        await asyncio.gather(*(ask(entry) for entry in model["nodes"]))
        model.update(summarise(model))

    async def load(self, model_id: str, node_id: str | None, unload: bool = False) -> dict[str, Any]:
        model = await self.model(model_id, live=False)
        holders = [entry["node_id"] for entry in model["nodes"] if node_id in (None, entry["node_id"])]
        if not holders:
            raise NotFound(f"model {model_id} is not on node {node_id}")
        name = "unload" if unload else "load"
        answers = await asyncio.gather(
            *(self._command(holder, name, {"model_id": model_id}, self.settings.ai.wait_seconds) for holder in holders)
        )
        failed = [a["error"] for a in answers if a.get("error_kind") == "model"]
        if failed and len(failed) == len(answers):
            raise Unavailable(failed[0])
        return await self.model(model_id)

    # -- jobs ------------------------------------------------------------------------------------

    async def submit(
        self, user_id: int, kind: str, source: dict[str, Any], language: str | None, options: dict[str, Any]
    ) -> dict[str, Any]:
        model_id = await self.model_for(kind, language, options.pop("model_id", None))
        job = await self.start(secrets.token_hex(16), user_id, kind, model_id, language, options, source)
        return await self.wait(job["job_id"], self.settings.ai.wait_seconds)

    async def model_for(self, task: str, language: str | None, model_id: str | None) -> str:
        """The model an online node would run ``task`` with (the one asked for, if it can)."""
        online = await self._online(await self._ready())
        if not online:
            raise Unavailable("No AI worker node is online: start one with `run_server.py worker --redis-url ...`")
        return str(choose(summarised_catalogue(online), task, language, model_id)["model_id"])

    async def start(
        self,
        job_id: str,
        user_id: int,
        kind: str,
        model_id: str | None,
        language: str | None,
        options: dict[str, Any],
        source: dict[str, Any],
    ) -> dict[str, Any]:
        """Queue a job (``model_id`` None: work any node does without a model) and answer it."""
        queue = await self._ready()
        if not await self._online(queue):
            raise Unavailable("No AI worker node is online: start one with `run_server.py worker --redis-url ...`")
        job = new_job(job_id, user_id, kind, model_id, language, options, source)
        await queue.submit(job)
        return job

    async def job(self, job_id: str) -> dict[str, Any] | None:
        return await (await self._started()).job(job_id)

    async def wait(self, job_id: str, seconds: float) -> dict[str, Any]:
        deadline = time.monotonic() + seconds
        pause = 0.02
        while True:
            job = await self.job(job_id)
            if job is None:
                raise NotFound(f"job {job_id} is unknown")
            if job["status"] in FINISHED or time.monotonic() >= deadline:
                return job
            await asyncio.sleep(pause)
            pause = min(pause * 1.5, 0.25)


def summarise(entry: dict[str, Any]) -> dict[str, Any]:
    """A model's state across the nodes that have it: loaded where any holds it, and so on."""
    states = [node["status"] for node in entry["nodes"]]
    status = next((s for s in ("loaded", "loading", "unloading", "available") if s in states), "error")
    holders = [node for node in entry["nodes"] if node["status"] == "loaded"]
    errors = [node["error"] for node in entry["nodes"] if node["error"]]
    return entry | {
        "status": status,
        "error": errors[0] if status == "error" and errors else None,
        "memory_bytes": sum(node["memory_bytes"] or 0 for node in holders) if holders else None,
        "node_id": holders[0]["node_id"] if holders else None,
    }


def summarised_catalogue(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: dict[str, dict[str, Any]] = {}
    for node in nodes:
        for model in node["models"]:
            if model["model_id"] not in seen or seen[model["model_id"]]["status"] == "error":
                seen[model["model_id"]] = model
    return list(seen.values())
