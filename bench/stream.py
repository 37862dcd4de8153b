"""``python -m bench.stream``: what one live stream costs, and what it does to the SFU's forwarding.

For each room size (2, 4 and 9 publishers of the synthetic simulcast clip, and one subscriber who
receives them all), the same load runs three times on one spawned server: without a stream, with a
360p stream and with a 720p stream (30 frame/s, HLS only so nothing leaves the machine). Each run
reports the compositor's CPU, the server's own CPU, and the SFU's forwarding latency and loss as
the subscriber measured them, so the three sit side by side::

    python -m bench.stream                        # 2, 4, 9 publishers; about 4 minutes
    python -m bench.stream --publishers 2 --duration 8 --json stream.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
from dataclasses import asdict, replace
from pathlib import Path

from bench.harness import Figures, Scenario, SpawnedServer, free_port, run
from bench.report import _num, _table

SIZES: dict[str, tuple[int, int] | None] = {"none": None, "360p": (640, 360), "720p": (1280, 720)}


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.stream", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--publishers", default="2,4,9", help="room sizes to run, a comma list")
    parser.add_argument("--sizes", default="none,360p,720p", help=f"streams to run each room with: {', '.join(SIZES)}")
    parser.add_argument("--duration", type=float, default=12.0, help="seconds of steady load per run")
    parser.add_argument("--processes", type=int, default=1, help="client worker processes")
    parser.add_argument("--json", type=Path, help="write every run's figures here")
    return parser.parse_args(argv)


def table(runs: list[Figures]) -> str:
    rows = []
    for figures in runs:
        scenario, streamed = figures.scenario, figures.streaming or {}
        rows.append(
            [
                str(scenario["publishers"]),
                streamed.get("size", "-") if scenario.get("stream") else "no stream",
                _num(streamed.get("compositor_cpu_percent")),
                _num(streamed.get("cpu_ms_per_frame")),
                _num(streamed.get("core_percent_at_30fps")),
                _num(figures.server_cpu_percent),
                _num(streamed.get("output_fps")),
                str(streamed.get("frames_dropped", "-")),
                f"{_num(figures.latency_ms['p50'])}/{_num(figures.latency_ms['p99'])}",
                f"{figures.loss_percent:.2f}",
                _num(figures.delivered_fps_ratio),
            ]
        )
    header = [
        "publishers",
        "stream",
        "compositor CPU %",
        "CPU ms/picture",
        "core % at 30 fps",
        "server CPU %",
        "stream fps",
        "dropped",
        "SFU lat p50/p99 ms",
        "SFU loss %",
        "delivered fps ratio",
    ]
    return _table(header, rows)


async def _main(arguments: argparse.Namespace) -> int:
    counts = [int(value) for value in arguments.publishers.split(",") if value.strip()]
    sizes = [name.strip() for name in arguments.sizes.split(",") if name.strip()]
    unknown = set(sizes) - set(SIZES)
    if unknown:
        print(f"unknown sizes: {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    server = SpawnedServer("sfu", free_port())
    runs: list[Figures] = []
    try:
        await server.wait_ready()
        base = Scenario(
            target="sfu", rooms=1, subscribers=1, layers=3, duration=arguments.duration, ramp_up=1.0,
            processes=arguments.processes,
        )  # fmt: skip
        for count in counts:
            for name in sizes:
                scenario = replace(base, publishers=count, stream=SIZES[name])
                print(f"running {count} publishers, stream {name} ...", file=sys.stderr, flush=True)
                figures = await run(scenario, server.url, server.process.pid, tag=f"s{count}{secrets.token_hex(3)}")
                runs.append(figures)
                print(table([figures]), file=sys.stderr, flush=True)
    finally:
        server.stop()
    print(table(runs))
    if arguments.json:
        arguments.json.write_text(json.dumps([asdict(figures) for figures in runs], indent=2))
    for figures in runs:
        if figures.errors:
            print(f"errors: {figures.errors[:3]}", file=sys.stderr)
    return 1 if any(figures.errors for figures in runs) else 0


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(_main(_arguments(argv)))


if __name__ == "__main__":
    sys.exit(main())
