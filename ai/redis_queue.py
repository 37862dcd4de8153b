"""Work over Redis: jobs and node commands travel as Dramatiq messages; job state, node heartbeats
and command answers are Redis keys any server node can read.

Each model has a queue (``ai.model.<id>``) that every node holding the model consumes, one message
at a time per free job slot, so jobs spread over the nodes that can run them. Each node also has a
queue of its own (``ai.node.<id>``) for load, unload and health checks, served by a thread apart
from the jobs. Dramatiq's Redis broker records a heartbeat per node and puts the messages a silent
node had taken back on their queue once ``[ai] node_timeout_seconds`` pass, so a job whose node was
killed runs again elsewhere."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import threading
import time
import uuid
from typing import Any

import redis
import redis.asyncio as aioredis
from dramatiq import Actor, Message, Worker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import AgeLimit, Retries

from ai.jobs import FINISHED
from ai.node import Node
from config import Settings

log = logging.getLogger("huiyi.ai.redis")
JOB_ACTOR = "ai_job"
COMMAND_ACTOR = "ai_command"
# Each idle poll of a queue has this chance in a million of also returning a dead node's messages.
MAINTENANCE_CHANCE = 200_000
# Commands (a status asked while a model loads, say) run side by side.
COMMAND_THREADS = 4
# Heartbeats of nodes gone this long are dropped from the list.
FORGET_NODES_SECONDS = 3600


def model_queue(model_id: str) -> str:
    return f"ai.model.{model_id}"


def node_queue(node_id: str) -> str:
    return f"ai.node.{node_id}"


# Work that needs no model (video enhancement: FFmpeg filters every node has) goes to a queue of
# its task, which every node serves.
TASK_QUEUES = ("ai.task.enhancement",)


def job_queue(job: dict[str, Any]) -> str:
    return model_queue(job["model_id"]) if job["model_id"] else f"ai.task.{job['kind']}"


class Keys:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.namespace = f"{prefix}:ai:dramatiq"
        self.nodes = f"{prefix}:ai:nodes"

    def job(self, job_id: str) -> str:
        return f"{self.prefix}:ai:job:{job_id}"

    def reply(self, request_id: str) -> str:
        return f"{self.prefix}:ai:reply:{request_id}"

    def queue(self, name: str) -> str:
        return f"{self.namespace}:{name}"


def make_broker(settings: Settings) -> RedisBroker:
    return RedisBroker(
        url=settings.redis.url,
        namespace=Keys(settings.redis.key_prefix).namespace,
        heartbeat_timeout=int(settings.ai.node_timeout_seconds * 1000),
        maintenance_chance=MAINTENANCE_CHANCE,
        # No time limit (long recordings take long) and no retry of a job that raised: a node
        # reports every failure itself; only a node's death sends a job round again.
        middleware=[AgeLimit(), Retries(max_retries=0)],
    )


def _encode(job: dict[str, Any]) -> dict[str, str]:
    return {key: json.dumps(value) for key, value in job.items()}


def _decode(fields: dict[bytes, bytes]) -> dict[str, Any]:
    return {key.decode(): json.loads(value) for key, value in fields.items()}


class _RedisReport:
    def __init__(self, client: redis.Redis, keys: Keys, keep_seconds: int) -> None:
        self.client = client
        self.keys = keys
        self.keep = keep_seconds

    def started(self, job_id: str, node_id: str) -> int:
        key = self.keys.job(job_id)
        with self.client.pipeline() as pipe:
            pipe.hincrby(key, "attempts", 1)
            pipe.hset(
                key,
                mapping=_encode({"status": "running", "node_id": node_id, "progress": 0, "started_at": time.time()}),
            )
            attempts, _ = pipe.execute()
        return int(attempts)

    def progress(self, job_id: str, percent: int) -> None:
        self.client.hset(self.keys.job(job_id), "progress", json.dumps(percent))

    def finished(self, job_id: str, result: Any, error: str | None, error_kind: str | None) -> None:
        key = self.keys.job(job_id)
        values = {
            "status": "failed" if error else "succeeded",
            "result": result,
            "error": error,
            "error_kind": error_kind,
            "finished_at": time.time(),
        }
        if not error:
            values["progress"] = 100
        with self.client.pipeline() as pipe:
            pipe.hset(key, mapping=_encode(values))
            pipe.expire(key, self.keep)
            pipe.execute()


class RedisQueue:
    """The server's side: enqueue jobs and commands, read job state and heartbeats."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.keys = Keys(settings.redis.key_prefix)
        self.client = aioredis.from_url(settings.redis.url)
        self.broker = make_broker(settings)

    async def start(self) -> None:
        await self.client.ping()

    async def submit(self, job: dict[str, Any]) -> None:
        key = self.keys.job(job["job_id"])
        await self.client.hset(key, mapping=_encode(job))
        await self.client.expire(key, self.settings.ai.keep_results_seconds)
        message = Message(queue_name=job_queue(job), actor_name=JOB_ACTOR, args=(job["job_id"],), kwargs={}, options={})
        await asyncio.to_thread(self.broker.enqueue, message)

    async def job(self, job_id: str) -> dict[str, Any] | None:
        fields = await self.client.hgetall(self.keys.job(job_id))
        return _decode(fields) if fields else None

    async def nodes(self) -> list[dict[str, Any]]:
        beats = [json.loads(value) for value in (await self.client.hgetall(self.keys.nodes)).values()]
        gone = [b["node_id"] for b in beats if b["last_seen"] < time.time() - FORGET_NODES_SECONDS]
        if gone:
            await self.client.hdel(self.keys.nodes, *gone)
        return [b for b in beats if b["node_id"] not in gone]

    async def command(self, node_id: str, name: str, args: dict[str, Any], timeout: float) -> dict[str, Any] | None:
        request_id = uuid.uuid4().hex
        message = Message(
            queue_name=node_queue(node_id),
            actor_name=COMMAND_ACTOR,
            args=(request_id, name, args),
            kwargs={},
            # Dropped if no node thread took it up in time (a node that died, or one kept busy).
            options={"max_age": int(self.settings.ai.command_timeout_seconds * 1000)},
        )
        await asyncio.to_thread(self.broker.enqueue, message)
        answer = await self.client.blpop([self.keys.reply(request_id)], timeout=timeout)
        if answer is None:
            return {"error": f"node {node_id} did not answer within {timeout:g} s", "error_kind": "timeout"}
        return json.loads(answer[1])

    async def close(self) -> None:
        await self.client.aclose()
        await asyncio.to_thread(self.broker.close)


class RedisNode:
    """A worker node process serving the queues (``run_server.py worker``, or the server's own
    local node when Redis is configured)."""

    def __init__(self, settings: Settings, node_id: str) -> None:
        self.settings = settings
        self.node = Node(settings, node_id)
        self.keys = Keys(settings.redis.key_prefix)
        self.client = redis.Redis.from_url(settings.redis.url)
        self.report = _RedisReport(self.client, self.keys, settings.ai.keep_results_seconds)
        self.broker = make_broker(settings)
        # Dramatiq's decorator wants module functions; these actors are bound to this node.
        Actor(self._job, broker=self.broker, actor_name=JOB_ACTOR, queue_name="ai.jobs", priority=0, options={})
        Actor(
            self._command,
            broker=self.broker,
            actor_name=COMMAND_ACTOR,
            queue_name="ai.commands",
            priority=0,
            options={},
        )
        self._stop = threading.Event()
        self._queues: set[str] = set()

    def _job(self, job_id: str) -> None:
        job = _decode(self.client.hgetall(self.keys.job(job_id)) or {})
        if not job or job["status"] in FINISHED:
            return  # gone (results expired) or already answered: a repeated delivery
        self.node.run_job(job, self.report)

    def _command(self, request_id: str, name: str, args: dict[str, Any]) -> None:
        answer = self.node.command(name, args)
        key = self.keys.reply(request_id)
        with self.client.pipeline() as pipe:
            pipe.rpush(key, json.dumps(answer))
            pipe.expire(key, 60)
            pipe.execute()

    def _serve_models(self) -> None:
        """Consume the queue of every model this node can run (checked again at each heartbeat,
        so models added to the model directory are served without a restart)."""
        for model in self.node.registry.describe():
            queue = model_queue(model["model_id"])
            if model["status"] != "error" and queue not in self._queues:
                self._queues.add(queue)
                self.jobs.consumer_whitelist.add(queue)
                self.broker.declare_queue(queue)

    def _beat(self) -> None:
        info = self.node.info()
        waiting = 0
        for queue in self._queues:
            waiting += self.client.llen(self.keys.queue(queue))
        info["queue_depth"] = info["running_jobs"] + waiting
        self.client.hset(self.keys.nodes, self.node.node_id, json.dumps(info))

    def run(self) -> None:
        # Two workers share the broker (and so its heartbeat) on purpose; Dramatiq warns of it.
        logging.getLogger("dramatiq.broker.RedisBroker").addFilter(lambda r: "same type twice" not in r.getMessage())
        models = {model_queue(m["model_id"]) for m in self.node.registry.describe() if m["status"] != "error"}
        self.jobs = Worker(
            self.broker, queues=models | set(TASK_QUEUES), worker_threads=self.settings.ai.node_concurrency
        )
        # One message at a time per free slot: a busy node leaves queued jobs to idle ones.
        self.jobs.queue_prefetch = 1
        commands = Worker(self.broker, queues={node_queue(self.node.node_id)}, worker_threads=COMMAND_THREADS)
        self.broker.declare_queue(node_queue(self.node.node_id))
        for queue in TASK_QUEUES:
            self._queues.add(queue)
            self.broker.declare_queue(queue)
        self._serve_models()
        self.jobs.start()
        commands.start()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self._stop.set())
        log.info("AI worker node %s serving %s", self.node.node_id, ", ".join(sorted(self._queues)) or "no model")
        try:
            while not self._stop.is_set():
                try:
                    self._serve_models()
                    self._beat()
                except redis.RedisError as exc:
                    log.warning("heartbeat failed: %s", exc)
                self._stop.wait(self.settings.ai.heartbeat_seconds)
        finally:
            commands.stop()
            self.jobs.stop()
            self.broker.close()
            self.client.hdel(self.keys.nodes, self.node.node_id)
