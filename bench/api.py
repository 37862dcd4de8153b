"""``python -m bench.api``: load the REST API the way meetings do, beside a bare aiohttp handler.

Each run starts a bare aiohttp handler (the baseline) and huiyi on each database asked for, all on
loopback, then drives them over keep-alive connections with a lean HTTP/1.1 client:

- ``bare``: the baseline handler, GET only;
- ``health``: ``GET /api/v1/health``;
- ``profile``: ``GET /api/v1/users/profile`` with one valid token (authentication on every call);
- ``register``, ``login``, ``join``: every user of the run registers, logs in and joins its
  meeting, ``--connections`` at a time (Argon2 makes the first two cost ~0.1 s of CPU each);
- ``meeting``: the mix a meeting of ``--users`` people produces, for ``--duration`` seconds —
  profile reads, meeting details, participant lists, chat history, chat posts and re-joins.

Figures per phase and per endpoint: requests per second, p50 and p99 latency, answers that were
not 2xx, and the server's CPU (from /proc): ``req/s per core`` is requests per CPU-second of the
server, the number that does not depend on how busy the machine's other core was.

Examples::

    python -m bench.api --database sqlite,postgresql --connections 16 --duration 10
    python -m bench.api --database postgresql --users 200 --json api.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import metrics
from bench.harness import PASSWORD, SpawnedServer, free_port, percentiles

POSTGRES_URL = os.environ.get("HUIYI_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")

# The meeting mix: (weight, label), as 100 people in a meeting poll and post.
MIX = (
    (25, "users.get_profile"),
    (10, "meetings.get"),
    (25, "meetings.participants"),
    (25, "meetings.messages"),
    (10, "meetings.send_message"),
    (5, "meetings.join"),
)


@dataclass
class Prepared:
    label: str
    raw: bytes


@dataclass
class PhaseFigures:
    phase: str
    target: str
    requests: int
    seconds: float
    requests_per_second: float
    server_cpu_percent: float | None
    requests_per_core_second: float | None
    client_cpu_percent: float
    failures: int
    latency_ms: dict[str, float | None]
    endpoints: dict[str, dict[str, Any]] = field(default_factory=dict)


def http_request(method: str, path: str, token: str | None = None, body: Any = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    if token:
        lines.append(f"Authorization: Bearer {token}")
    data = b""
    if body is not None:
        data = json.dumps(body, separators=(",", ":")).encode()
        lines += ["Content-Type: application/json", f"Content-Length: {len(data)}"]
    elif method != "GET":
        lines.append("Content-Length: 0")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


class Tally:
    """Latencies and failures per endpoint label."""

    def __init__(self) -> None:
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.failures: dict[str, int] = defaultdict(int)
        self.bodies: list[bytes] = []

    def add(self, label: str, milliseconds: float, status: int, body: bytes, keep: bool) -> None:
        self.latencies[label].append(milliseconds)
        if not 200 <= status < 300:
            self.failures[label] += 1
        if keep:
            self.bodies.append(body)


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: bytes) -> tuple[int, bytes]:
    writer.write(raw)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
            break
    return status, await reader.readexactly(length)


async def drive(
    port: int, connections: int, next_request: Callable[[], Prepared], *, until: float | None, count: int | None
) -> tuple[Tally, float]:
    """Run ``connections`` keep-alive connections until the deadline (or until ``count`` requests
    were made); answers the tally and the seconds it took."""
    tally = Tally()
    issued = 0

    async def connection() -> None:
        nonlocal issued
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while (until is None or time.monotonic() < until) and (count is None or issued < count):
                issued += 1
                request = next_request()
                started = time.perf_counter()
                status, body = await _exchange(reader, writer, request.raw)
                tally.add(request.label, (time.perf_counter() - started) * 1000, status, body, count is not None)
        finally:
            writer.close()

    started = time.monotonic()
    await asyncio.gather(*(connection() for _ in range(connections)))
    return tally, time.monotonic() - started


async def measure(
    phase: str,
    target: str,
    port: int,
    pid: int | None,
    connections: int,
    next_request: Callable[[], Prepared],
    *,
    duration: float | None = None,
    count: int | None = None,
) -> tuple[PhaseFigures, Tally]:
    print(f"  {target}: {phase} ...", file=sys.stderr, flush=True)
    cpu_before = metrics.cpu_seconds(pid) if pid else None
    own_before = metrics.own_cpu_seconds()
    until = time.monotonic() + duration if duration is not None else None
    tally, seconds = await drive(port, connections, next_request, until=until, count=count)
    server_cpu = (metrics.cpu_seconds(pid) - cpu_before) / seconds * 100 if pid and cpu_before is not None else None
    everything = [value for values in tally.latencies.values() for value in values]
    rate = len(everything) / seconds
    endpoints = {
        label: {
            "requests": len(values),
            "requests_per_second": round(len(values) / seconds, 1),
            "failures": tally.failures[label],
            "latency_ms": percentiles(values),
        }
        for label, values in sorted(tally.latencies.items())
    }
    figures = PhaseFigures(
        phase=phase,
        target=target,
        requests=len(everything),
        seconds=round(seconds, 2),
        requests_per_second=round(rate, 1),
        server_cpu_percent=round(server_cpu, 1) if server_cpu is not None else None,
        requests_per_core_second=round(rate / (server_cpu / 100), 1) if server_cpu else None,
        client_cpu_percent=round((metrics.own_cpu_seconds() - own_before) / seconds * 100, 1),
        failures=sum(tally.failures.values()),
        latency_ms=percentiles(everything),
        endpoints=endpoints if len(endpoints) > 1 else {},
    )
    return figures, tally


def _data(body: bytes) -> Any:
    return json.loads(body)["data"]


async def run_huiyi(database: str, arguments: argparse.Namespace) -> list[PhaseFigures]:
    """Every phase against one huiyi server on one database."""
    env = {"HUIYI_SERVER_LOG_LEVEL": "INFO"}
    args: list[str] = []
    schema = ""
    if database == "postgresql":
        schema = f"bench_{secrets.token_hex(6)}"
        env["HUIYI_DATABASE_SCHEMA"] = schema
        args = ["--database-url", POSTGRES_URL]
    server = SpawnedServer("sfu", free_port(), args=args, env=env)
    results: list[PhaseFigures] = []
    try:
        await server.wait_ready()
        port, pid, c = server.port, server.process.pid, arguments.connections
        target = f"huiyi {database}"

        def cycle(requests: list[Prepared]) -> Callable[[], Prepared]:
            position = iter(range(len(requests)))
            return lambda: requests[next(position)]

        def constant(request: Prepared) -> Callable[[], Prepared]:
            return lambda: request

        names = [f"u{secrets.token_hex(4)}{n}" for n in range(arguments.users)]
        register = [
            Prepared(
                "auth.register",
                http_request(
                    "POST",
                    "/api/v1/auth/register",
                    body={"username": n, "email": f"{n}@example.com", "password": PASSWORD},
                ),
            )
            for n in names
        ]
        figures, _ = await measure("register", target, port, pid, c, cycle(register), count=len(register))
        results.append(figures)
        login = [
            Prepared(
                "auth.login", http_request("POST", "/api/v1/auth/login", body={"username": n, "password": PASSWORD})
            )
            for n in names
        ]
        figures, tally = await measure("login", target, port, pid, c, cycle(login), count=len(login))
        results.append(figures)
        sessions = [_data(body) for body in tally.bodies]
        tokens = [session["access_token"] for session in sessions]

        host = tokens[0]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        _, body = await _exchange(
            reader,
            writer,
            http_request("POST", "/api/v1/meetings", host, {"title": "bench", "max_participants": 1000}),
        )
        meeting = _data(body)
        meeting_id = meeting["meeting_id"]
        await _exchange(reader, writer, http_request("POST", f"/api/v1/meetings/{meeting_id}/start", host))
        writer.close()
        join_body = {"invite_code": meeting["invite_code"]} if meeting.get("invite_code") else {}
        join = [
            Prepared("meetings.join", http_request("POST", f"/api/v1/meetings/{meeting_id}/join", t, join_body))
            for t in tokens
        ]
        figures, _ = await measure("join", target, port, pid, c, cycle(join), count=len(join))
        results.append(figures)

        figures, _ = await measure(
            "health",
            target,
            port,
            pid,
            c,
            constant(Prepared("meta.health", http_request("GET", "/api/v1/health"))),
            duration=arguments.duration,
        )
        results.append(figures)
        figures, _ = await measure(
            "profile",
            target,
            port,
            pid,
            c,
            constant(Prepared("users.get_profile", http_request("GET", "/api/v1/users/profile", tokens[-1]))),
            duration=arguments.duration,
        )
        results.append(figures)

        base = f"/api/v1/meetings/{meeting_id}"
        builders: dict[str, Callable[[str], bytes]] = {
            "users.get_profile": lambda t: http_request("GET", "/api/v1/users/profile", t),
            "meetings.get": lambda t: http_request("GET", base, t),
            "meetings.participants": lambda t: http_request("GET", base + "/participants", t),
            "meetings.messages": lambda t: http_request("GET", base + "/messages?limit=50", t),
            "meetings.send_message": lambda t: http_request("POST", base + "/messages", t, {"text": "hello all"}),
            "meetings.join": lambda t: http_request("POST", base + "/join", t, join_body),
        }
        labels = [label for weight, label in MIX for _ in range(weight)]
        chooser = random.Random(7)

        def mixed() -> Prepared:
            label = chooser.choice(labels)
            return Prepared(label, builders[label](chooser.choice(tokens)))

        figures, _ = await measure("meeting", target, port, pid, c, mixed, duration=arguments.duration)
        results.append(figures)
    finally:
        server.stop()
        if schema:
            await _drop_schema(schema)
    return results


async def run_bare(arguments: argparse.Namespace) -> PhaseFigures:
    server = SpawnedServer("bare", free_port())
    try:
        await server.wait_ready()
        request = Prepared("bare", http_request("GET", "/api/v1/health"))
        figures, _ = await measure(
            "bare",
            "bare aiohttp",
            server.port,
            server.process.pid,
            arguments.connections,
            lambda: request,
            duration=arguments.duration,
        )
        return figures
    finally:
        server.stop()


async def _drop_schema(schema: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(POSTGRES_URL)
    try:
        await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await connection.close()


def table(runs: list[PhaseFigures]) -> str:
    """One line per phase (and per endpoint of the mix), and the ratios to the bare handler."""
    header = (
        f"{'target':<18} {'phase / endpoint':<24} {'requests':>8} {'req/s':>8} {'server CPU %':>12} "
        f"{'req/s per core':>14} {'p50 ms':>7} {'p99 ms':>7} {'non-2xx':>7}"
    )
    lines = [header, "-" * len(header)]
    bare = next((run for run in runs if run.phase == "bare"), None)
    for run in runs:
        cpu = f"{run.server_cpu_percent:.1f}" if run.server_cpu_percent is not None else "-"
        per_core = f"{run.requests_per_core_second:.0f}" if run.requests_per_core_second else "-"
        lines.append(
            f"{run.target:<18} {run.phase:<24} {run.requests:>8} {run.requests_per_second:>8.0f} {cpu:>12} "
            f"{per_core:>14} {run.latency_ms['p50']:>7} {run.latency_ms['p99']:>7} {run.failures:>7}"
        )
        for label, endpoint in run.endpoints.items():
            latency = endpoint["latency_ms"]
            lines.append(
                f"{'':<18} {'  ' + label:<24} {endpoint['requests']:>8} {endpoint['requests_per_second']:>8.0f} "
                f"{'':>12} {'':>14} {latency['p50']:>7} {latency['p99']:>7} {endpoint['failures']:>7}"
            )
    if bare is not None and bare.requests_per_core_second:
        lines.append("")
        for run in runs:
            if run.phase in ("health", "profile", "meeting") and run.requests_per_core_second:
                ratio = run.requests_per_core_second / bare.requests_per_core_second
                lines.append(f"{run.target} {run.phase}: {ratio:.2f}x the bare handler's requests per core")
    lines.append("")
    lines.append(
        "req/s: answered requests per second of wall time; server CPU %: of one core, from /proc; "
        "req/s per core: requests per CPU-second of the server; p50/p99: client-side latency; "
        "non-2xx: answers that were not a success (should be 0)."
    )
    return "\n".join(lines)


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.api", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database", default="sqlite,postgresql", help="sqlite, postgresql, or both comma-separated")
    parser.add_argument("--users", type=int, default=100, help="users registering, logging in and meeting")
    parser.add_argument("--connections", type=int, default=16, help="keep-alive connections driving the load")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per timed phase")
    parser.add_argument("--json", type=Path, help="write every phase's figures here")
    arguments = parser.parse_args(argv)
    databases = [name.strip() for name in arguments.database.split(",") if name.strip()]
    unknown = set(databases) - {"sqlite", "postgresql"}
    if unknown or not databases:
        parser.error(f"--database takes sqlite and/or postgresql, not {', '.join(sorted(unknown)) or 'nothing'}")
    if arguments.users < 1 or arguments.connections < 1 or arguments.duration <= 0:
        parser.error("--users, --connections and --duration must be positive")
    arguments.databases = databases
    return arguments


async def _main(arguments: argparse.Namespace) -> int:
    runs = [await run_bare(arguments)]
    for database in arguments.databases:
        runs += await run_huiyi(database, arguments)
    print(table(runs))
    if arguments.json:
        arguments.json.write_text(json.dumps([asdict(run) for run in runs], indent=2))
    return 1 if any(run.failures for run in runs) else 0


def main(argv: list[str] | None = None) -> int:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    return asyncio.run(_main(_arguments(argv)))


if __name__ == "__main__":
    sys.exit(main())
