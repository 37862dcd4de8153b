"""AI worker nodes over Redis, as an operator runs them: the server (in-process here) with no node
of its own, two ``run_server.py worker`` processes taking jobs from the Dramatiq queues. Jobs
spread over both; a node killed (SIGKILL) in the middle of a job is shown offline and its job
finishes on the other node."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from config import load_settings
from control.app import create_app
from tests.ai_support import SENTENCES, conversation, speak, wer
from tests.conftest import REDIS_URL, Account, Api, unavailable
from tests.enhance_support import noisy_clip, speech, wav_bytes, with_noise
from tests.server_process import ROOT, server_environment
from tests.support import until, uploaded

pytestmark = [pytest.mark.asyncio(loop_scope="module")]
NODE_TIMEOUT = 3


@dataclass
class Cluster:
    api: Api
    user: Account
    audio_url: str
    work: Path
    env: dict[str, str]
    workers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start_worker(self, node_id: str) -> None:
        log = (self.work / f"{node_id}.log").open("wb")
        self.workers[node_id] = subprocess.Popen(
            [sys.executable, str(ROOT / "run_server.py"), "worker", "--node-id", node_id, *self.flags()],
            env=server_environment(self.env),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
        )

    def flags(self) -> list[str]:
        return ["--redis-url", REDIS_URL, "--data-dir", str(self.work / "data")]

    async def nodes(self) -> dict[str, dict[str, Any]]:
        body = await self.api.call("GET", "/api/v1/nodes", token=self.user.access, expect=200)
        return {node["node_id"]: node for node in body["data"]}

    async def submit(self, audio: str) -> str:
        body = await self.api.call(
            "POST", "/api/v1/speech/recognition", token=self.user.access, json={"audio_url": self.audio_url + audio}
        )
        assert body["status"] == 200, body
        return str(body["data"]["job_id"])

    async def job(self, job_id: str) -> dict[str, Any]:
        body = await self.api.call("GET", f"/api/v1/speech/job/{job_id}/status", token=self.user.access, expect=200)
        return body["data"]


@pytest.fixture(scope="module")
def redis_prefix() -> Iterator[str]:
    prefix = f"t{uuid.uuid4().hex[:12]}"
    yield prefix


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(tmp_path_factory: pytest.TempPathFactory, redis_prefix: str) -> AsyncIterator[Cluster]:
    client = aioredis.from_url(REDIS_URL)
    try:
        await client.ping()
    except (OSError, aioredis.RedisError) as exc:
        unavailable("Redis at " + REDIS_URL, exc)
    work = tmp_path_factory.mktemp("ai-nodes")
    files = web.Application()
    files.router.add_static("/files", work)
    audio = TestServer(files, host="127.0.0.1")
    await audio.start_server()
    env = {
        "HUIYI_REDIS_KEY_PREFIX": redis_prefix,
        "HUIYI_AI_HEARTBEAT_SECONDS": "0.5",
        "HUIYI_AI_NODE_TIMEOUT_SECONDS": str(NODE_TIMEOUT),
        "HUIYI_AI_URL_ALLOW_NETWORKS": "127.0.0.1/32",
        "HUIYI_LOG_LEVEL": "INFO",
    }
    settings = load_settings(
        None,
        {
            "server": {"data_dir": str(work / "data")},
            "redis": {"url": REDIS_URL, "key_prefix": redis_prefix},
            "rate_limits": {"enabled": False},
            "sfu": {"workers": 0},
            "ai": {
                "local_worker": False,
                "wait_seconds": 0,
                "heartbeat_seconds": 0.5,
                "node_timeout_seconds": NODE_TIMEOUT,
                "url_allow_networks": ["127.0.0.1/32"],
            },
        },
        environ={},
    )
    api = Api(TestClient(TestServer(create_app(settings))))
    await api.client.start_server()
    cluster = Cluster(api, await api.stored_account(), str(audio.make_url("/")), work, env)
    try:
        for name in ("node-a", "node-b"):
            cluster.start_worker(name)
        yield cluster
    finally:
        for process in cluster.workers.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in cluster.workers.values():
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
        await api.client.close()
        await audio.close()
        keys = [key async for key in client.scan_iter(f"{redis_prefix}:*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


async def test_two_nodes_join_and_share_the_jobs(cluster: Cluster) -> None:
    async def both_online() -> dict[str, dict[str, Any]] | None:
        nodes = await cluster.nodes()
        online = {n for n, node in nodes.items() if node["status"] == "online"}
        return nodes if online == {"node-a", "node-b"} else None

    nodes = await until(both_online, "both worker nodes reported", 60, interval=0.2)
    assert all("moonshine-tiny-en" in node["models"] for node in nodes.values())
    speak(SENTENCES[1], cluster.work / "short.wav")
    jobs = [await cluster.submit("files/short.wav") for _ in range(6)]

    async def all_done() -> list[dict[str, Any]] | None:
        found = [await cluster.job(job_id) for job_id in jobs]
        return found if all(job["status"] in {"succeeded", "failed"} for job in found) else None

    finished = await until(all_done, "the jobs finished", 120, interval=0.2)
    assert all(job["status"] == "succeeded" for job in finished), finished
    assert all(wer(SENTENCES[1], job["result"]["text"]) <= 0.1 for job in finished)
    assert {job["node_id"] for job in finished} == {"node-a", "node-b"}, [job["node_id"] for job in finished]
    for node_id in ("node-a", "node-b"):
        health = await cluster.api.call("POST", f"/api/v1/nodes/{node_id}/health-check", token=cluster.user.access)
        assert health["status"] == 200 and health["data"]["node_id"] == node_id, health


async def test_denoising_and_enhancement_run_on_the_nodes_from_their_queues(cluster: Cluster) -> None:
    """Denoising goes to its model's queue, enhancement (no model) to the task's; the nodes write
    the outputs into the shared media directory and the server keeps them as files."""
    clean = speech(SENTENCES[2], cluster.work)
    sound = await uploaded(cluster.api, cluster.user, wav_bytes(with_noise(clean, 5.0)), "noisy.wav")
    clip = noisy_clip(cluster.work / "clip.mp4", frames=10, sigma=10)
    picture = await uploaded(cluster.api, cluster.user, clip.read_bytes(), "clip.mp4")
    calls = [
        ("audio", "/api/v1/audio/denoising", {"file_id": sound["file_id"]}),
        ("video", "/api/v1/video/enhancement", {"file_id": picture["file_id"], "operations": [{"op": "sharpen"}]}),
    ]
    for area, path, payload in calls:
        body = await cluster.api.call("POST", path, token=cluster.user.access, json=payload)
        assert body["status"] == 200 and body["data"]["status"] in {"queued", "running", "succeeded"}, body
        status = f"/api/v1/{area}/job/{body['data']['job_id']}/status"

        async def done(status: str = status) -> dict[str, Any] | None:
            job = (await cluster.api.call("GET", status, token=cluster.user.access, expect=200))["data"]
            return job if job["status"] in {"succeeded", "failed"} else None

        job = await until(done, f"the {area} job finished", 120, interval=0.2)
        assert job["status"] == "succeeded" and job["result"]["node_id"] in {"node-a", "node-b"}, job
        info = f"/api/v1/media/info/{job['result']['file_id']}"
        assert (await cluster.api.call("GET", info, token=cluster.user.access, expect=200))["data"]["size"] > 0


async def test_a_job_whose_node_is_killed_finishes_on_the_other(cluster: Cluster) -> None:
    conversation(SENTENCES + SENTENCES[:2], cluster.work / "long.wav", cluster.work, gap=0.6)
    job_id = await cluster.submit("files/long.wav")

    async def running() -> dict[str, Any] | None:
        job = await cluster.job(job_id)
        return job if job["status"] == "running" and 0 < job["progress"] < 100 else None

    job = await until(running, "the long job running", 60, interval=0.05)
    victim = job["node_id"]
    survivor = ({"node-a", "node-b"} - {victim}).pop()
    os.kill(cluster.workers[victim].pid, signal.SIGKILL)
    cluster.workers[victim].wait(10)

    async def offline() -> bool:
        return (await cluster.nodes())[victim]["status"] == "offline"

    await until(offline, f"{victim} shown offline", NODE_TIMEOUT + 5, interval=0.2)

    async def finished() -> dict[str, Any] | None:
        job = await cluster.job(job_id)
        return job if job["status"] in {"succeeded", "failed"} else None

    done = await until(finished, "the job finished on the other node", 120, interval=0.2)
    assert done["status"] == "succeeded" and done["node_id"] == survivor and done["attempts"] == 2, done
    assert wer(" ".join(SENTENCES + SENTENCES[:2]), done["result"]["text"]) <= 0.1
    health = await cluster.api.call("POST", f"/api/v1/nodes/{victim}/health-check", token=cluster.user.access)
    assert health["status"] == 503 and health["code"] == 4001 and "offline" in health["message"], health
