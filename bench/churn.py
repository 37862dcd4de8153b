"""The churn soak: peers join and leave a room continuously while one publisher keeps sending, and
the server's open file descriptors, asyncio tasks and memory are sampled. A server that leaks per
peer (a socket, a task, a buffer) shows it here as figures that keep growing, where a short run
cannot.

Descriptors and memory come from /proc; the task count from the server's ``media server status``
log line, which it writes on SIGUSR1 (so it is known only for a server whose log this process reads).
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiortc.rtcdtlstransport import RTCCertificate

from bench import metrics
from bench.client import SyntheticClient
from bench.clip import load_clip
from bench.harness import CACHE_DIR, account, create_meeting, join, wait_until_left

STATUS = re.compile(r"media server status: rooms=(\d+) peers=(\d+) media_sockets=(\d+) tasks=(\d+)")
MEDIA_TIMEOUT = 15.0  # a churning subscriber that has not received media by then counts as a failure
DRAIN_TIMEOUT = 30.0
STEADY_SOCKETS = 2  # the steady publisher's publisher and subscriber connections, once others have published
# Flat means: after the churn, descriptors and tasks are back within these of the figures before it,
# and memory at the end is within 10 % (+ 8 MB for allocator slack) of memory half way through.
FD_SLACK, TASK_SLACK, RSS_RATIO, RSS_SLACK_MB = 8, 12, 1.10, 8.0


@dataclass
class Sample:
    seconds: float  # since the churn started
    fds: int
    rss_mb: float
    tasks: int | None
    peers: int | None
    media_sockets: int | None


@dataclass
class ChurnFigures:
    minutes: float
    concurrent_peers: int
    cycles: int = 0  # peers that joined, received media and left
    failures: int = 0
    start: Sample | None = None  # before the churn, with only the steady publisher
    middle: Sample | None = None
    end: Sample | None = None  # after the churn, once the server dropped the last churning peer
    rss_slope_mb_per_minute: float | None = None  # over the second half of the churn
    flat: bool = False
    verdict: str = ""
    samples: list[Sample] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class ServerProbe:
    """Reads one server process and its media workers (docs/sfu.md#workers): /proc for descriptors
    and memory, its log for the status lines (one per worker, summed)."""

    def __init__(self, pid: int, log: Path | None) -> None:
        self.pid = pid
        self.log = log

    async def sample(self, seconds: float) -> Sample:
        processes = [self.pid, *metrics.media_workers(self.pid)]
        status = await self._status(max(1, len(processes) - 1))
        rooms_peers = status or (None, None, None, None)
        return Sample(
            seconds=round(seconds, 1),
            fds=sum(len(os.listdir(f"/proc/{pid}/fd")) for pid in processes),
            rss_mb=round(sum(metrics.rss_bytes(pid) for pid in processes) / 2**20, 1),
            tasks=rooms_peers[3],
            peers=rooms_peers[1],
            media_sockets=rooms_peers[2],
        )

    async def _status(self, lines: int, timeout: float = 5.0) -> tuple[int, int, int, int] | None:
        """The media status (rooms, peers, sockets, tasks), summed over the ``lines`` status lines
        one SIGUSR1 makes the server's media log."""
        if self.log is None:
            return None
        seen = len(STATUS.findall(self.log.read_text(errors="replace")))
        os.kill(self.pid, signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = STATUS.findall(self.log.read_text(errors="replace"))
            if len(found) >= seen + lines:
                rows = found[seen : seen + lines]
                rooms, peers, sockets, tasks = (sum(int(row[i]) for row in rows) for i in range(4))
                return rooms, peers, sockets, tasks
            await asyncio.sleep(0.05)
        return None


async def soak(
    url: str, probe: ServerProbe, minutes: float, peers: int, sample_seconds: float, tag: str
) -> ChurnFigures:
    figures = ChurnFigures(minutes=minutes, concurrent_peers=peers)
    clip = load_clip(CACHE_DIR)
    certificate = RTCCertificate.generateCertificate()
    async with aiohttp.ClientSession() as http:
        host = await account(http, url, f"c{tag}host")
        churners = [await account(http, url, f"c{tag}p{index}") for index in range(peers)]
        meeting_id, code = await create_meeting(http, url, host[0], f"churn {tag}")
        await join(http, url, meeting_id, host[0], code)
        steady = SyntheticClient(url, host[0], host[1], meeting_id, clip, certificate, simulcast=False, record=False)
        await steady.connect()
        await steady.publish()

        async def churner(index: int, stop_at: float) -> None:
            """Cycles of join, receive media (and publish, for every other peer), leave, until ``stop_at``;
            at least one."""
            token, user_id = churners[index]
            publishes = index % 2 == 1  # half of them publish too, so tracks come and go as well
            while True:
                client = SyntheticClient(
                    url, token, user_id, meeting_id, clip if publishes else None, certificate, False, False
                )
                try:
                    await join(http, url, meeting_id, token, code)
                    await client.connect()
                    if publishes:
                        await client.publish()
                    deadline = time.monotonic() + MEDIA_TIMEOUT
                    while not client.result.first_media_ns and time.monotonic() < deadline:
                        await asyncio.sleep(0.05)
                    if client.result.first_media_ns:
                        figures.cycles += 1
                    else:
                        figures.failures += 1
                        figures.errors.append(f"peer {index}: no media within {MEDIA_TIMEOUT:.0f} s")
                    await asyncio.sleep(random.uniform(0.2, 2.0))
                except Exception as exc:  # a soak reports a broken cycle and carries on
                    figures.failures += 1
                    figures.errors.append(f"peer {index}: {exc!r}")
                finally:
                    await client.close()
                figures.errors.extend(client.result.errors)
                try:
                    await wait_until_left(http, url, meeting_id, token, user_id)
                except RuntimeError as exc:
                    figures.failures += 1
                    figures.errors.append(f"peer {index}: {exc}")
                if time.monotonic() >= stop_at:
                    return

        # One cycle of every peer first, so that what the first peers leave behind for good (the steady
        # publisher's subscriber connection, pooled database and HTTP connections) is in the baseline.
        await asyncio.gather(*(churner(index, 0.0) for index in range(peers)))
        figures.start = await _drained(probe, None, 0.0)
        figures.cycles = figures.failures = 0
        started = time.monotonic()
        stop_at = started + minutes * 60

        async def sampler() -> None:
            while True:
                await asyncio.sleep(sample_seconds)
                figures.samples.append(await probe.sample(time.monotonic() - started))

        workers = [asyncio.get_running_loop().create_task(churner(index, stop_at)) for index in range(peers)]
        sampling = asyncio.get_running_loop().create_task(sampler())
        await asyncio.gather(*workers)
        sampling.cancel()
        await asyncio.gather(sampling, return_exceptions=True)
        figures.end = await _drained(probe, figures.start, time.monotonic() - started)
        await steady.close()
    _judge(figures)
    del figures.errors[20:]
    return figures


async def _drained(probe: ServerProbe, start: Sample | None, seconds: float) -> Sample:
    """A sample once the server holds only the steady publisher again, with no more media sockets than
    at ``start`` (or after ``DRAIN_TIMEOUT``)."""
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while True:
        sample = await probe.sample(seconds)
        if sample.peers is None:
            settled = start is None or sample.fds <= start.fds
        else:
            sockets = start.media_sockets if start is not None and start.media_sockets is not None else STEADY_SOCKETS
            settled = sample.peers <= 1 and (sample.media_sockets or 0) <= sockets
        if settled or time.monotonic() > deadline:
            return sample
        await asyncio.sleep(0.5)


def _judge(figures: ChurnFigures) -> None:
    start, end, samples = figures.start, figures.end, figures.samples
    assert start is not None and end is not None
    figures.middle = samples[len(samples) // 2] if samples else end
    reference = figures.middle.rss_mb
    half = [sample for sample in samples if sample.seconds >= figures.minutes * 30]
    if len(half) >= 3:
        figures.rss_slope_mb_per_minute = round(
            statistics.linear_regression([s.seconds / 60 for s in half], [s.rss_mb for s in half]).slope, 3
        )
    problems = []
    if end.fds > start.fds + FD_SLACK:
        problems.append(f"descriptors {start.fds} -> {end.fds}")
    if start.tasks is not None and end.tasks is not None and end.tasks > start.tasks + TASK_SLACK:
        problems.append(f"asyncio tasks {start.tasks} -> {end.tasks}")
    if end.rss_mb > reference * RSS_RATIO + RSS_SLACK_MB:
        problems.append(f"memory {reference} MB half way -> {end.rss_mb} MB at the end")
    if figures.cycles == 0:
        problems.append("no peer completed a join/leave cycle")
    figures.flat = not problems
    figures.verdict = "flat" if figures.flat else "growing: " + "; ".join(problems)


def table(figures: ChurnFigures) -> str:
    rows = [f"{'':8} {'s':>7} {'fds':>5} {'tasks':>6} {'peers':>6} {'sockets':>8} {'RSS MB':>8}"]
    for name in ("start", "middle", "end"):
        sample: Sample | None = getattr(figures, name)
        if sample is None:
            continue
        rows.append(
            f"{name:8} {sample.seconds:>7} {sample.fds:>5} {_or_dash(sample.tasks):>6} {_or_dash(sample.peers):>6}"
            f" {_or_dash(sample.media_sockets):>8} {sample.rss_mb:>8}"
        )
    rows.append(
        f"{figures.cycles} join/leave cycles, {figures.failures} failed, {figures.concurrent_peers} peers churning"
        f" for {figures.minutes:g} min; RSS slope {figures.rss_slope_mb_per_minute} MB/min; {figures.verdict}"
    )
    return "\n".join(rows)


def _or_dash(value: int | None) -> str:
    return "-" if value is None else str(value)
