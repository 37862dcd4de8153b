"""Media jobs across real process deaths: a server killed mid-job (its workers must go with it, the
job resumes on restart, a second interruption fails it), a worker killed mid-job or before it
could report the job started (the pool is replaced, the job tried again once), and two nodes
sharing a database (a job stays with the node running it until that node dies, then the other
node takes it over)."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from media.samples import write_clip
from tests.conftest import POSTGRES_URL, drop_schema, postgres_schema
from tests.server_process import ServerProcess, call, client_session, make_user, start_server
from tests.support import file_form, until

# Long enough to be caught running (a few seconds), short enough to let one run to the end.
SLOW_TRANSCODE = {"format": "webm", "video_codec": "vp8", "width": 320, "height": 240}
JOB_DEADLINE = 90.0
LEASE_SECONDS = "2"


def process_state(pid: int) -> str | None:
    """The /proc state letter, None once the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def alive(pid: int) -> bool:
    return process_state(pid) not in {None, "Z", "X"}


def job_workers(server_pid: int) -> list[int]:
    """The server's pool workers (spawned interpreters), not its resource tracker."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if parent == server_pid and b"spawn_main" in command and alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def kill(server: ServerProcess) -> list[int]:
    """SIGKILL the server as a crash would; the workers it had."""
    workers = job_workers(server.process.pid)
    server.process.send_signal(signal.SIGKILL)
    server.process.wait(timeout=10)
    return workers


async def kill_new_worker(server: ServerProcess, known: set[int]) -> int:
    """SIGKILL the first worker of the server not in ``known`` the moment it exists: long before
    it imported what a job needs, so before it could report anything."""
    new = await until(
        lambda: [pid for pid in job_workers(server.process.pid) if pid not in known],
        "a new worker process",
        JOB_DEADLINE,
        interval=0.002,
    )
    os.kill(new[0], signal.SIGKILL)
    return new[0]


OTHER_NODE_SCRATCH = "other-node-0123abcd"


def scratch_entries(data_dir: Path) -> list[Path]:
    """What is in scratch space, but for the folder of another node sharing the storage."""
    root = data_dir / "media" / ".scratch"
    if not root.is_dir():
        return []
    return [
        entry
        for node in root.iterdir()
        if node.name != OTHER_NODE_SCRATCH
        for entry in (node.iterdir() if node.is_dir() else [node])
    ]


class Client:
    """One user of a deployment, talking to whichever node it is pointed at."""

    def __init__(self, http: aiohttp.ClientSession) -> None:
        self.http = http
        self.token = ""

    async def call(self, method: str, url: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
        return await call(self.http, method, url, self.token, **kwargs)

    def sign_up(self, node: ServerProcess) -> None:
        self.token, _ = make_user(node.url, f"u{uuid.uuid4().hex[:10]}")

    async def upload(self, node: ServerProcess, data: bytes) -> str:
        status, body = await self.call("POST", node.url + "/api/v1/media/upload", data=file_form(data, "clip.webm"))
        assert status == 201, body
        return str(body["data"]["file_id"])

    async def start(self, node: ServerProcess, kind: str, body: dict[str, Any]) -> str:
        status, started = await self.call("POST", node.url + f"/api/v1/ffmpeg/{kind}", json=body)
        assert status == 201, started
        return str(started["data"]["job_id"])

    async def job(self, node: ServerProcess, job_id: str) -> dict[str, Any]:
        status, body = await self.call("GET", node.url + f"/api/v1/ffmpeg/job/{job_id}/status")
        assert status == 200, body
        return body["data"]

    async def running(self, node: ServerProcess, job_id: str) -> dict[str, Any]:
        async def check() -> dict[str, Any] | None:
            job = await self.job(node, job_id)
            assert job["status"] in {"queued", "running"}, job
            return job if job["status"] == "running" else None

        return await until(check, f"job {job_id} running", JOB_DEADLINE)

    async def finished(self, node: ServerProcess, job_id: str) -> dict[str, Any]:
        async def check() -> dict[str, Any] | None:
            job = await self.job(node, job_id)
            return job if job["status"] not in {"queued", "running"} else None

        return await until(check, f"job {job_id} finished", JOB_DEADLINE)


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return write_clip(tmp_path_factory.mktemp("clip") / "clip.webm", seconds=3, width=160, height=120).read_bytes()


def sqlite_job(data_dir: Path, job_id: str) -> dict[str, Any]:
    with sqlite3.connect(data_dir / "huiyi.db") as database:
        database.row_factory = sqlite3.Row
        return dict(database.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())


def single_node(data_dir: Path, log: Path) -> Callable[[], ServerProcess]:
    env = {
        "HUIYI_RATE_LIMITS": "off",
        "HUIYI_SERVER_NODE_ID": "solo",
        "HUIYI_MEDIA_JOB_WORKERS": "1",
        "HUIYI_MEDIA_JOB_LEASE_SECONDS": LEASE_SECONDS,
    }
    return lambda: start_server("--data-dir", str(data_dir), log=log, env=env)


async def test_a_killed_server_takes_its_workers_along_and_its_jobs_resume(tmp_path: Path, clip: bytes) -> None:
    data_dir, log = tmp_path / "data", tmp_path / "server.log"
    start = single_node(data_dir, log)
    server = await asyncio.to_thread(start)
    async with client_session() as http:
        user = Client(http)
        try:
            user.sign_up(server)
            file_id = await user.upload(server, clip)
            twice = await user.start(server, "transcode", {"file_id": file_id, **SLOW_TRANSCODE})
            await user.running(server, twice)
            workers = kill(server)
            assert workers, "the running job has a worker process"
            await until(lambda: not any(alive(pid) for pid in workers), "workers gone after the server", 5)
            assert scratch_entries(data_dir), "the killed job left its scratch folder"
            (own,) = (data_dir / "media" / ".scratch").iterdir()
            (own / "cut-upload.part").write_bytes(b"half")
            older_layout = data_dir / "media" / ".scratch" / ("e" * 32 + ".part")
            older_layout.write_bytes(b"left by a crash of a node of the older layout, long ago")
            long_ago = time.time() - 2 * 3600
            os.utime(older_layout, (long_ago, long_ago))
            other = data_dir / "media" / ".scratch" / OTHER_NODE_SCRATCH / "in-flight.part"
            other.parent.mkdir()
            other.write_bytes(b"another node's upload")

            # Started again: the job runs a second time, and is interrupted again.
            server = await asyncio.to_thread(start)
            await until(lambda: sqlite_job(data_dir, twice)["attempts"] == 2, "second attempt claimed", JOB_DEADLINE)
            # Killed once its worker runs the job: a worker still starting up leaves only when it is ready.
            await user.running(server, twice)
            workers = kill(server)
            await until(lambda: not any(alive(pid) for pid in workers), "workers gone after the server", 5)

            # Twice interrupted: failed, and nothing of the killed runs is left in scratch space.
            server = await asyncio.to_thread(start)
            gave_up = await user.job(server, twice)
            assert gave_up["status"] == "failed" and "interrupted" in gave_up["error"], gave_up
            assert scratch_entries(data_dir) == []
            assert other.read_bytes() == b"another node's upload"

            # Interrupted once: runs again after the restart, to the end.
            # A queued job (one worker, busy) runs after the restart as well.
            once = await user.start(server, "transcode", {"file_id": file_id, **SLOW_TRANSCODE})
            await user.running(server, once)
            waiting = await user.start(server, "thumbnail", {"file_id": file_id})
            assert (await user.job(server, waiting))["status"] == "queued"
            workers = kill(server)
            await until(lambda: not any(alive(pid) for pid in workers), "workers gone after the server", 5)
            server = await asyncio.to_thread(start)
            done = await user.finished(server, once)
            assert done["status"] == "succeeded" and len(done["result_file_ids"]) == 1, done
            assert (await user.finished(server, waiting))["status"] == "succeeded"
            assert sqlite_job(data_dir, once)["attempts"] == 2
            status, info = await user.call("GET", server.url + f"/api/v1/media/info/{done['result_file_ids'][0]}")
            assert status == 200 and info["data"]["mime_type"] == "video/webm", info
            assert scratch_entries(data_dir) == []
        finally:
            server.stop()
    assert "Traceback" not in log.read_text(), log.read_text()


async def test_a_killed_worker_is_replaced_and_its_job_tried_once_more(tmp_path: Path, clip: bytes) -> None:
    data_dir, log = tmp_path / "data", tmp_path / "server.log"
    server = await asyncio.to_thread(single_node(data_dir, log))
    async with client_session() as http:
        user = Client(http)
        try:
            user.sign_up(server)
            file_id = await user.upload(server, clip)
            job_id = await user.start(server, "transcode", {"file_id": file_id, **SLOW_TRANSCODE})
            await user.running(server, job_id)
            (first,) = job_workers(server.process.pid)
            os.kill(first, signal.SIGKILL)
            # Tried again in a new pool, by a new worker; killed again, the job fails.
            await until(lambda: sqlite_job(data_dir, job_id)["attempts"] == 2, "second attempt started", JOB_DEADLINE)
            second = await until(lambda: job_workers(server.process.pid), "a new worker", JOB_DEADLINE)
            assert first not in second
            os.kill(second[0], signal.SIGKILL)
            failed = await user.finished(server, job_id)
            assert failed["status"] == "failed" and "worker process crashed" in failed["error"], failed

            # Workers that die before they could report the job started (each new one of the
            # new pools killed as soon as it exists) use up its attempts all the same.
            early = await user.start(server, "thumbnail", {"file_id": file_id})
            killed = {first, *second}
            for _ in range(2):
                killed.add(await kill_new_worker(server, killed))
            failed = await user.finished(server, early)
            assert failed["status"] == "failed" and "worker process crashed" in failed["error"], failed
            assert sqlite_job(data_dir, early)["attempts"] == 2

            # The pool recovered: the next job runs.
            thumbnail = await user.start(server, "thumbnail", {"file_id": file_id})
            assert (await user.finished(server, thumbnail))["status"] == "succeeded"
            await until(lambda: scratch_entries(data_dir) == [], "scratch space empty", 5)
        finally:
            assert server.stop() == 0, log.read_text()


@pytest.fixture
async def shared_schema() -> AsyncIterator[str]:
    schema = await postgres_schema()
    yield schema
    await drop_schema(schema)


async def postgres_job(schema: str, job_id: str) -> dict[str, Any]:
    connection = await asyncpg.connect(POSTGRES_URL, server_settings={"search_path": schema})
    try:
        return dict(await connection.fetchrow("SELECT * FROM jobs WHERE id = $1", job_id))
    finally:
        await connection.close()


async def test_a_job_stays_with_its_node_until_that_node_dies(
    tmp_path: Path, clip: bytes, shared_schema: str, redis_url: str
) -> None:
    # One deployment: shared database, bus and file storage; each node its own id.
    env = {
        "HUIYI_DATABASE_SCHEMA": shared_schema,
        "HUIYI_AUTH_JWT_SECRET": uuid.uuid4().hex * 2,
        "HUIYI_REDIS_KEY_PREFIX": f"t{uuid.uuid4().hex}",
        "HUIYI_RATE_LIMITS": "off",
        "HUIYI_MEDIA_JOB_WORKERS": "1",
        "HUIYI_MEDIA_JOB_LEASE_SECONDS": LEASE_SECONDS,
    }
    args = ["--database-url", POSTGRES_URL, "--redis-url", redis_url, "--data-dir", str(tmp_path / "data")]

    def start(name: str) -> ServerProcess:
        return start_server(*args, log=tmp_path / f"{name}.log", env={**env, "HUIYI_SERVER_NODE_ID": name})

    a = await asyncio.to_thread(start, "node-a")
    b: ServerProcess | None = None
    async with client_session() as http:
        user = Client(http)
        try:
            user.sign_up(a)
            file_id = await user.upload(a, clip)
            kept = await user.start(a, "transcode", {"file_id": file_id, **SLOW_TRANSCODE})
            await user.running(a, kept)
            # Node a's worker is held still, so the job is running however long node b takes to
            # start; node a itself carries on and renews its lease.
            (held,) = job_workers(a.process.pid)
            os.kill(held, signal.SIGSTOP)
            try:
                b = await asyncio.to_thread(start, "node-b")
                assert (await user.job(b, kept))["status"] == "running"
                # Node b looked for jobs to take when it started, and again every third of a
                # lease while node a renewed its lease past a whole lease after that.
                renewed_past = (await postgres_job(shared_schema, kept))["lease_expires_at"] + timedelta(
                    seconds=float(LEASE_SECONDS)
                )

                async def renewed() -> bool:
                    return bool((await postgres_job(shared_schema, kept))["lease_expires_at"] > renewed_past)

                await until(renewed, "node a renewing its lease", JOB_DEADLINE)
            finally:
                os.kill(held, signal.SIGCONT)
            assert (await user.finished(a, kept))["status"] == "succeeded"
            row = await postgres_job(shared_schema, kept)
            assert (row["node_id"], row["attempts"]) == ("node-a", 1), "node b ran node a's job"

            moved = await user.start(a, "transcode", {"file_id": file_id, **SLOW_TRANSCODE})
            await user.running(a, moved)
            workers = kill(a)
            await until(lambda: not any(alive(pid) for pid in workers), "node a's workers gone", 5)
            done = await user.finished(b, moved)
            assert done["status"] == "succeeded", done
            row = await postgres_job(shared_schema, moved)
            assert (row["node_id"], row["attempts"]) == ("node-b", 2)
            assert "taking it over" in (tmp_path / "node-b.log").read_text()
        finally:
            for node in (a, b):
                if node is not None:
                    node.stop()
