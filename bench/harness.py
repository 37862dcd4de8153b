"""One benchmark run: accounts and meetings made over REST, clients spread over worker processes,
the server's CPU and memory sampled from /proc while they run, and the figures computed from what
every client sent and received."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import multiprocessing
import os
import queue as queue_module
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench import metrics, shaped
from bench.client import ClientResult
from bench.janus import janus_command
from bench.live import stream_rooms
from bench.recording import Room, record_rooms, start_meeting

ROOT = Path(__file__).resolve().parents[1]
CACHE_DIR = ROOT / "bench" / ".cache"
PASSWORD = "bench-password-2024"
WARMUP_SECONDS = 2.0
WORKER_START_TIMEOUT = 120.0
# The spawned server's TURN server, on loopback like everything else, relaying to the SFU there, with
# room for an allocation per connection of every client of a large run (--ice-transport relay).
LOOPBACK_TURN = {
    "HUIYI_TURN_ENABLED": "true",
    "HUIYI_TURN_LISTEN_HOST": "127.0.0.1",
    "HUIYI_TURN_PORT": "0",
    "HUIYI_TURN_ALLOWED_PEER_CIDRS": "127.0.0.1/32",
    "HUIYI_TURN_MAX_ALLOCATIONS": "5000",
}


@dataclass
class Scenario:
    target: str = "sfu"  # sfu, janus (Janus's VideoRoom), naive (aiortc fan-out) or relay (bare UDP)
    rooms: int = 1
    publishers: int = 1
    subscribers: int = 10
    layers: int = 3
    duration: float = 20.0
    ramp_up: float = 2.0
    processes: int = 2
    record_latency: bool = True
    recording: bool = False  # every room recorded on the server through the measurement window
    stream: tuple[int, int] | None = None  # every room streamed live at this size through the window
    ice_transport: str = "host"  # sfu: "relay" sends every client's media through the server's TURN server
    workers: int | None = None  # sfu: the spawned server's media worker processes (None: its default, one per core)
    # A shaped link (bench/shaped.py): the first ``linked`` subscribers of each room (all: None) behind a
    # link capped to ``link_cap_kbit`` kbit/s, on the ``link_schedule`` (free, capped, lifted seconds).
    link_cap_kbit: int | None = None
    link_schedule: tuple[float, float, float] | None = None
    linked: int | None = None

    @property
    def label(self) -> str:
        recorded = " recorded" if self.recording else ""
        streamed = f" streamed {self.stream[1]}p" if self.stream else ""
        relayed = " via TURN" if self.ice_transport == "relay" else ""
        shape = f"{self.rooms}x({self.publishers}p+{self.subscribers}s) {self.layers}L"
        capped = f" link capped {self.link_cap_kbit} kbit/s" if self.link_cap_kbit else ""
        workers = f" {self.workers} workers" if self.workers is not None else ""
        return f"{self.target}{workers} {shape}{recorded}{streamed}{relayed}{capped}"


@dataclass
class ClientSpec:
    role: str
    user_id: int
    token: str
    meeting_id: int
    start_offset: float
    room: int
    linked: bool = False  # a subscriber behind the shaped link (bench/shaped.py)


@dataclass
class Figures:
    scenario: dict[str, Any]
    subscribers_total: int
    join_ms: dict[str, float | None]
    forwarded_packets_per_second: float
    forwarded_mbit_per_second: float
    server_cpu_percent: float | None
    server_rss_mb: float | None
    harness_cpu_percent: float
    harness_processes: int
    loss_percent: float
    delivered_fps_ratio: float | None
    latency_ms: dict[str, float | None]
    cpu_percent_per_mbit: float | None
    turn_cpu_percent: float | None = None  # the server's TURN process, apart from the server's own CPU
    candidate_types: dict[str, int] = field(default_factory=dict)  # of the pairs the connections settled on
    errors: list[str] = field(default_factory=list)
    recording: dict[str, Any] | None = None  # what the server recorded (bench.recording), when it did
    streaming: dict[str, Any] | None = None  # what the live streams cost and did (bench.live), when run
    shaped: dict[str, Any] | None = None  # what the subscribers behind a shaped link got (bench.shaped)

    def passes(self) -> bool:
        """The load is carried: under 1 % loss, p99 latency under 50 ms, 90 % of frames delivered."""
        return not self.failures()

    def failures(self) -> list[str]:
        """Why the load was not carried, in the words of the run table's columns (none: it was)."""
        reasons = []
        if self.loss_percent >= 1.0:
            reasons.append("loss")
        p99 = self.latency_ms.get("p99")
        if p99 is not None and p99 >= 50.0:
            reasons.append("latency")
        if self.delivered_fps_ratio is not None and self.delivered_fps_ratio < 0.9:
            reasons.append("fps")
        if self.errors:
            reasons.append("errors")
        return reasons


# accounts -------------------------------------------------------------------------------------------


async def account(http: aiohttp.ClientSession, url: str, name: str) -> tuple[str, int]:
    body = {"username": name, "email": f"{name}@example.com", "password": PASSWORD}
    async with http.post(f"{url}/api/v1/auth/register", json=body) as response:
        answer = await response.json()
        if response.status not in (200, 201) and answer.get("code") != 1001:  # 1001: made by an earlier run
            raise RuntimeError(f"register {name}: {response.status} {answer}")
    async with http.post(f"{url}/api/v1/auth/login", json={"username": name, "password": PASSWORD}) as response:
        payload = await response.json()
        if response.status != 200:
            raise RuntimeError(f"login {name}: {payload}")
    return payload["data"]["access_token"], payload["data"]["user"]["user_id"]


async def create_meeting(
    http: aiohttp.ClientSession, url: str, host_token: str, title: str, *, recordable: bool = False
) -> tuple[int, str]:
    """A meeting for the run: its id, and the invite code (in the host's view) others join with."""
    settings = {"enable_recording": True} if recordable else {}
    async with http.post(
        f"{url}/api/v1/meetings",
        json={"title": title, "max_participants": 1000, "settings": settings},
        headers={"Authorization": f"Bearer {host_token}"},
    ) as response:
        payload = await response.json()
        if response.status not in (200, 201):
            raise RuntimeError(f"create meeting: {response.status} {payload}")
        return int(payload["data"]["meeting_id"]), str(payload["data"]["invite_code"])


async def join(http: aiohttp.ClientSession, url: str, meeting_id: int, token: str, invite_code: str) -> None:
    """Join a meeting over REST, which a client must do before its signaling socket is admitted
    (and again after its socket closed). Every benchmark join goes through here."""
    async with http.post(
        f"{url}/api/v1/meetings/{meeting_id}/join",
        json={"invite_code": invite_code},
        headers={"Authorization": f"Bearer {token}"},
    ) as response:
        if response.status != 200:
            raise RuntimeError(f"join: {await response.text()}")


async def wait_until_left(
    http: aiohttp.ClientSession, url: str, meeting_id: int, token: str, user_id: int, timeout: float = 10.0
) -> None:
    """After a client closed its socket: wait until the server has marked it offline, so that joining
    again is not undone by the server finishing the old socket."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        async with http.get(
            f"{url}/api/v1/meetings/{meeting_id}/participants", headers={"Authorization": f"Bearer {token}"}
        ) as response:
            payload = await response.json()
        if response.status != 200 or all(
            p["user_id"] != user_id or p["status"] != "online" for p in payload.get("data") or []
        ):
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"user {user_id} still online {timeout:.0f} s after closing its socket")


async def _prepare_sfu(url: str, scenario: Scenario, tag: str) -> tuple[list[ClientSpec], list[Room]]:
    """Users, one meeting per room, everyone joined over REST, as real clients do; to be recorded,
    a room's meeting allows it and is started by its host (the first publisher)."""
    specs: list[ClientSpec] = []
    rooms: list[Room] = []
    async with aiohttp.ClientSession() as http:
        for room in range(scenario.rooms):
            people = [("publisher", f"b{tag}r{room}p{i}") for i in range(scenario.publishers)]
            people += [("subscriber", f"b{tag}r{room}s{i}") for i in range(scenario.subscribers)]
            accounts = await asyncio.gather(*(account(http, url, name) for _, name in people))
            title = f"bench {tag} {room}"
            meeting_id, code = await create_meeting(http, url, accounts[0][0], title, recordable=scenario.recording)
            rooms.append(Room(meeting_id, accounts[0][0]))
            if scenario.recording or scenario.stream:
                await start_meeting(http, url, rooms[-1])
            for token, _ in accounts:
                await join(http, url, meeting_id, token, code)
            specs += _specs(people, accounts, meeting_id, room, scenario)
    return specs, rooms


def _prepare_anonymous(scenario: Scenario) -> list[ClientSpec]:
    specs: list[ClientSpec] = []
    user_id = 1
    for room in range(scenario.rooms):
        people = [("publisher", "")] * scenario.publishers + [("subscriber", "")] * scenario.subscribers
        accounts = [("anonymous", user_id + index) for index in range(len(people))]
        user_id += len(people)
        specs += _specs(people, accounts, room + 1, room, scenario)
    return specs


def _specs(people, accounts, meeting_id: int, room: int, scenario: Scenario) -> list[ClientSpec]:
    specs = []
    count = max(1, scenario.subscribers)
    linked = scenario.subscribers if scenario.linked is None else scenario.linked
    for index, ((role, _), (token, user_id)) in enumerate(zip(people, accounts, strict=True)):
        offset = 0.0 if role == "publisher" else scenario.ramp_up * (index - scenario.publishers) / count
        behind = bool(scenario.link_cap_kbit) and role == "subscriber" and index - scenario.publishers < linked
        specs.append(ClientSpec(role, user_id, token, meeting_id, offset, room, behind))
    return specs


# workers ------------------------------------------------------------------------------------------


def _worker_entry(url: str, specs: list[ClientSpec], scenario: Scenario, ready, go, start, queue) -> None:
    """A client worker: it gets ready (imports, the clip, a certificate), says so on ``ready``, and
    starts its clients on the clock the run sets (``start``) once ``go`` is set. The worker of the
    subscribers behind a shaped link first moves into a network namespace of its own, which the run
    joins to its own by the link (bench/shaped.py)."""
    if scenario.link_cap_kbit:
        shaped.end_with_parent()
    if any(spec.linked for spec in specs):
        shaped.enter_own_namespace()
        url = shaped.far_url(url)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    from aiortc.rtcdtlstransport import RTCCertificate

    from bench.clip import load_clip

    clip = load_clip(CACHE_DIR) if any(spec.role == "publisher" for spec in specs) else None
    certificate = RTCCertificate.generateCertificate()
    ready.put(os.getpid())
    go.wait()
    start_ns = start.value
    end_ns = start_ns + int((scenario.ramp_up + scenario.duration) * 1e9)
    cpu_before = metrics.own_cpu_seconds()
    results = asyncio.run(_run_clients(url, specs, scenario, clip, certificate, start_ns, end_ns))
    queue.put((results, metrics.own_cpu_seconds() - cpu_before))


async def _run_clients(
    url: str, specs: list[ClientSpec], scenario: Scenario, clip: Any, certificate: Any, start_ns: int, end_ns: int
) -> list[ClientResult]:
    from bench.client import SyntheticClient
    from bench.janus import JanusClient
    from bench.relay import RelayClient
    from sfu.network import LOOPBACK

    clients: list[Any] = []

    async def start(spec: ClientSpec) -> None:
        await asyncio.sleep(max(0.0, (start_ns - time.monotonic_ns()) / 1e9 + spec.start_offset))
        publisher = spec.role == "publisher"
        options: dict[str, Any] = {"simulcast": scenario.layers > 1, "record": scenario.record_latency}
        if scenario.link_cap_kbit and scenario.target != "relay":
            # Subscribers answer as browsers do, so the server can estimate their links.
            options |= {"feedback": True, "network": shaped.FAR_NETWORK if spec.linked else LOOPBACK}
        media = clip if publisher else None
        if scenario.target == "relay":
            client: Any = RelayClient(url, spec.room, media, scenario.record_latency)
        elif scenario.target == "janus":
            identity = (url, spec.token, spec.user_id, spec.meeting_id, media, certificate)
            client = JanusClient(*identity, publishers=scenario.publishers, **options)
        else:
            identity = (url, spec.token, spec.user_id, spec.meeting_id, media, certificate)
            client = SyntheticClient(*identity, ice_transport=scenario.ice_transport, **options)
        clients.append(client)
        try:
            await client.connect()
            if publisher:
                await client.publish()
        except Exception as exc:
            client.result.errors.append(f"{spec.role} {spec.user_id}: {exc!r}")

    starters = [asyncio.get_running_loop().create_task(start(spec)) for spec in specs]
    await asyncio.sleep(max(0.0, (end_ns - time.monotonic_ns()) / 1e9))
    for starter in starters:
        starter.cancel()
    await asyncio.gather(*starters, return_exceptions=True)
    await asyncio.gather(*(client.close() for client in clients), return_exceptions=True)
    return [client.result for client in clients]


# the run ------------------------------------------------------------------------------------------


Progress = Callable[[str], None]


async def run(
    scenario: Scenario,
    url: str,
    server_pid: int | None,
    tag: str,
    progress: Progress | None = None,
    link: shaped.Link | None = None,
) -> Figures:
    """One load, measured. ``progress`` hears where the run is, every few seconds, while it lasts.
    With a shaped link, its subscribers are put behind ``link``, capped and lifted on its schedule."""
    say = progress or (lambda _: None)
    rooms: list[Room] = []
    say(f"{scenario.label}: preparing accounts and meetings")
    if scenario.target == "sfu":
        specs, rooms = await _prepare_sfu(url, scenario, tag)
    else:
        specs = _prepare_anonymous(scenario)
    behind = [spec for spec in specs if spec.linked]
    specs_here = [spec for spec in specs if not spec.linked]
    processes = max(1, min(scenario.processes, len(specs_here)))
    shares: list[list[ClientSpec]] = [[] for _ in range(processes)]
    publishers = [spec for spec in specs_here if spec.role == "publisher"]
    for index, spec in enumerate(publishers + [spec for spec in specs_here if spec.role != "publisher"]):
        shares[index % processes].append(spec)
    shares.append(behind)  # the subscribers behind the shaped link: a worker in a namespace of its own

    context = multiprocessing.get_context("spawn")
    queue, ready, go, start = context.Queue(), context.Queue(), context.Event(), context.Value("q", 0)
    workers = [
        context.Process(target=_worker_entry, args=(url, share, scenario, ready, go, start, queue), daemon=True)
        for share in shares
        if share
    ]
    for worker in workers:
        worker.start()
    say(f"{scenario.label}: starting {len(specs)} clients in {len(workers)} processes")
    # The clock starts once every worker is ready, however long starting took on a busy machine.
    try:
        for _ in workers:
            await asyncio.get_running_loop().run_in_executor(None, ready.get, True, WORKER_START_TIMEOUT)
    except queue_module.Empty:
        for worker in workers:
            worker.kill()
        raise RuntimeError(f"a client worker was not ready within {WORKER_START_TIMEOUT:.0f} s") from None
    if behind:
        if link is None:
            raise ValueError("subscribers behind a shaped link need the link (bench.shaped.Link)")
        try:
            link.attach(workers[-1].pid or 0)
        except shaped.LinkError:
            for worker in workers:
                worker.kill()
            raise
    start_ns = time.monotonic_ns() + int(0.2e9)
    end_ns = start_ns + int((scenario.ramp_up + scenario.duration) * 1e9)
    start.value = start_ns
    go.set()
    shaping = None
    if behind and link is not None:
        shaping = asyncio.get_running_loop().create_task(link.follow(scenario, start_ns))

    window_start = start_ns + int((scenario.ramp_up + WARMUP_SECONDS) * 1e9)
    window_end = end_ns - int(0.5e9)
    recorder = None
    if scenario.recording and rooms:
        recorder = asyncio.get_running_loop().create_task(record_rooms(url, rooms, window_start, window_end))
    streamer = None
    if scenario.stream and rooms:
        streamer = asyncio.get_running_loop().create_task(
            stream_rooms(url, rooms, scenario.stream, start_ns, (window_start, window_end), server_pid)
        )
    reporter = asyncio.get_running_loop().create_task(
        _report_progress(say, scenario.label, server_pid, start_ns, window_start, end_ns)
    )
    try:
        cpu, rss, turn_cpu = await _sample_server(server_pid, window_start, window_end)
    finally:
        reporter.cancel()
    say(f"{scenario.label}: collecting the clients' counts")
    recorded: dict[str, Any] | None = None
    streamed: dict[str, Any] | None = None
    problems: list[str] = []
    if recorder is not None:
        try:
            recorded = await recorder
        except Exception as exc:
            problems.append(f"recording: {exc!r}")
    if streamer is not None:
        try:
            streamed = await streamer
        except Exception as exc:
            problems.append(f"streaming: {exc!r}")
    own_before = metrics.own_cpu_seconds()
    collected = [await asyncio.get_running_loop().run_in_executor(None, queue.get) for _ in workers]
    if shaping is not None and link is not None:
        shaping.cancel()
        await asyncio.gather(shaping, return_exceptions=True)
        link.lift()
    for worker in workers:
        worker.join(timeout=10)
    results = [result for batch, _ in collected for result in batch]
    harness_cpu = sum(cpu_time for _, cpu_time in collected) + metrics.own_cpu_seconds() - own_before
    run_seconds = (end_ns - start_ns) / 1e9
    figures = _figures(
        scenario, results, specs, window_start, window_end, (cpu, rss, turn_cpu), harness_cpu / run_seconds, processes
    )
    figures.recording = recorded
    figures.streaming = streamed
    if behind and link is not None:
        linked_ids = {spec.user_id for spec in behind}
        figures.shaped = shaped.figures(scenario, [r for r in results if r.user_id in linked_ids], link.moments)
    figures.errors.extend(problems)
    return figures


PROGRESS_SECONDS = 2.0


async def _report_progress(
    say: Progress, label: str, pid: int | None, start_ns: int, window_start: int, end_ns: int
) -> None:
    """Where the run is (joining, warming up, measuring) and the server's CPU over the last seconds."""
    total = (end_ns - start_ns) / 1e9
    before = (metrics.cpu_seconds(pid), time.monotonic()) if pid is not None else None
    while True:
        await asyncio.sleep(PROGRESS_SECONDS)
        now = time.monotonic_ns()
        phase = "joining and warming up" if now < window_start else "measuring"
        cpu = ""
        if before is not None and pid is not None:
            with contextlib.suppress(OSError):
                after = (metrics.cpu_seconds(pid), time.monotonic())
                cpu = f", server CPU {(after[0] - before[0]) / (after[1] - before[1]) * 100:.0f} %"
                before = after
        say(f"{label}: {phase}, {min(total, (now - start_ns) / 1e9):.0f}/{total:.0f} s{cpu}")


async def _sample_server(
    pid: int | None, start_ns: int, end_ns: int
) -> tuple[float | None, float | None, float | None]:
    """The server's CPU % and peak RSS (its media workers' included) over the window, and its TURN
    process's CPU % when it has one."""
    if pid is None:
        return None, None, None
    await asyncio.sleep(max(0.0, (start_ns - time.monotonic_ns()) / 1e9))
    turn = metrics.turn_child(pid)
    # The server's media workers are the server: their CPU and memory count with its own.
    server = [pid, *metrics.media_workers(pid)]
    cpu_start, wall_start = sum(map(metrics.cpu_seconds, server)), time.monotonic()
    turn_start = metrics.cpu_seconds(turn) if turn is not None else 0.0
    peak = sum(map(metrics.rss_bytes, server))
    while time.monotonic_ns() < end_ns:
        await asyncio.sleep(0.5)
        peak = max(peak, sum(map(metrics.rss_bytes, server)))
    wall = time.monotonic() - wall_start
    cpu = (sum(map(metrics.cpu_seconds, server)) - cpu_start) / wall * 100
    turn_cpu = None
    if turn is not None:
        with contextlib.suppress(OSError):  # it ended during the run
            turn_cpu = round((metrics.cpu_seconds(turn) - turn_start) / wall * 100, 1)
    return round(cpu, 1), round(peak / 2**20, 1), turn_cpu


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p90": None, "p99": None, "max": None}
    ordered = sorted(values)

    def at(fraction: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(fraction * len(ordered)))], 2)

    return {"p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": round(ordered[-1], 2)}


def _figures(
    scenario: Scenario,
    results: list[ClientResult],
    specs: list[ClientSpec],
    window_start: int,
    window_end: int,
    server: tuple[float | None, float | None, float | None],  # CPU %, RSS MB, TURN CPU %
    harness_cpu: float,
    processes: int,
) -> Figures:
    server_cpu, server_rss, turn_cpu = server
    subscribers = [result for result in results if result.role == "subscriber"]
    publishers = [result for result in results if result.role == "publisher"]
    errors = [error for result in results for error in result.errors]
    joins = [(r.first_media_ns - r.opened_ns) / 1e6 for r in subscribers if r.first_media_ns]
    missing = len(subscribers) - len(joins)
    if missing:
        errors.append(f"{missing} subscriber(s) received no media")
    seconds = (window_end - window_start) / 1e9
    packets = bytes_ = 0
    for result in subscribers:
        for _, moment, size in result.received:
            if window_start <= moment <= window_end:
                packets += 1
                bytes_ += size
    if not scenario.record_latency:
        packets = sum(stream.packets for r in subscribers for stream in r.streams.values())
        bytes_ = sum(stream.bytes for r in subscribers for stream in r.streams.values())
        seconds = scenario.duration + scenario.ramp_up
    expected = sum(s.highest - s.first_seq + 1 for r in subscribers for s in r.streams.values())
    received = sum(s.packets for r in subscribers for s in r.streams.values())
    loss = max(0.0, 100.0 * (expected - received) / expected) if expected else 100.0
    video_rates = [
        s.frames / ((s.last_ns - s.first_ns) / 1e9)
        for r in subscribers
        for s in r.streams.values()
        if s.frames > 30 and s.last_ns > s.first_ns and s.packets / s.frames > 1.5
    ]
    from bench.clip import FPS

    fps_ratio = round(statistics.mean(video_rates) / FPS, 3) if video_rates else None
    latencies = _latencies(publishers, subscribers, window_start, window_end) if scenario.record_latency else []
    mbit = bytes_ * 8 / seconds / 1e6
    return Figures(
        scenario=asdict(scenario),
        subscribers_total=len(subscribers),
        join_ms=percentiles(joins),
        forwarded_packets_per_second=round(packets / seconds, 1),
        forwarded_mbit_per_second=round(mbit, 2),
        server_cpu_percent=server_cpu,
        server_rss_mb=server_rss,
        turn_cpu_percent=turn_cpu,
        harness_cpu_percent=round(harness_cpu * 100, 1),
        harness_processes=processes,
        loss_percent=round(loss, 3),
        delivered_fps_ratio=fps_ratio,
        latency_ms=percentiles(latencies),
        cpu_percent_per_mbit=round(server_cpu / mbit, 2) if server_cpu is not None and mbit > 0 else None,
        candidate_types=dict(Counter(kind for result in results for kind in result.candidate_types)),
        errors=errors[:20],
    )


def _latencies(publishers: list[ClientResult], subscribers: list[ClientResult], start: int, end: int) -> list[float]:
    """Publisher send to subscriber receive, per packet, matched by payload: the server leaves payloads
    untouched, and the clip repeats only every few seconds, so the latest earlier send is the one."""
    sends: dict[int, list[int]] = defaultdict(list)
    for result in publishers:
        for key, moment, _ in result.sent:
            sends[key].append(moment)
    for moments in sends.values():
        moments.sort()
    found = []
    for result in subscribers:
        for key, moment, _ in result.received:
            if not start <= moment <= end:
                continue
            moments = sends.get(key)
            if not moments:
                continue
            index = bisect.bisect_right(moments, moment) - 1
            if index >= 0:
                found.append((moment - moments[index]) / 1e6)
    return found


# servers ------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class SpawnedServer:
    """A server this harness starts for the run: huiyi (``sfu``), Janus, the naive aiortc baseline,
    the UDP relay, or the bare aiohttp handler (``bare``); ``args`` and ``env`` add to huiyi's own."""

    def __init__(
        self,
        target: str,
        port: int,
        *,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        shaped_link: bool = False,
    ) -> None:
        self.target = target
        self.port = port
        self.data_dir = tempfile.mkdtemp(prefix="huiyi-bench-")
        self.log = Path(self.data_dir) / "server.log"
        # With a shaped link (bench/shaped.py), in the run's own namespace: reachable from the link's
        # far end too, and offering media there.
        host = "0.0.0.0" if shaped_link else "127.0.0.1"
        media = "127.0.0.1" + (f",{shaped.NEAR_ADDRESS}" if shaped_link else "")
        commands = {
            "sfu": [sys.executable, str(ROOT / "run_server.py"), "--host", host, "--port", str(port)],
            "naive": [sys.executable, "-m", "bench.naive_server", "--host", "127.0.0.1"],
            "relay": [sys.executable, "-m", "bench.relay", "--port", str(port)],
            "bare": [sys.executable, "-m", "bench.bare_http", "--port", str(port)],
        }
        janus_folder = Path(self.data_dir) / "janus"
        command = (
            janus_command(port, janus_folder, shaped_link=shaped.NEAR_LINK if shaped_link else None)
            if target == "janus"
            else commands[target]
        )
        if target == "sfu":
            command += ["--data-dir", self.data_dir, *args]
        if target == "naive":
            command += ["--port", str(port)]
        setpriv = shutil.which("setpriv")
        if shaped_link and target == "sfu" and setpriv:
            # It ends with the harness, however the harness ends, and the run's namespace with them.
            command = [setpriv, "--pdeathsig", "TERM", "--", *command]
        environment = {key: value for key, value in os.environ.items() if not key.startswith("HUIYI_")}
        environment.update(
            {
                "HUIYI_RATE_LIMITS": "off",
                "HUIYI_SERVER_LOG_LEVEL": "WARNING",
                "HUIYI_SFU_BIND_ADDRESSES": media,
                **LOOPBACK_TURN,
                **(env or {}),
            }
        )
        with self.log.open("w") as handle:
            self.process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=environment, cwd=ROOT)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}" if self.target != "relay" else f"udp://127.0.0.1:{self.port}"

    async def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.target} server exited:\n{self.log.read_text()[-3000:]}")
            if self.target == "relay":
                if "relaying" in self.log.read_text():
                    return
            else:
                alive = "/janus/info" if self.target == "janus" else "/api/v1/health"
                try:
                    async with aiohttp.ClientSession() as http, http.get(f"{self.url}{alive}") as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
            await asyncio.sleep(0.2)
        raise RuntimeError(f"{self.target} server did not start:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
