"""``python -m bench.turn``: relay throughput of huiyi's TURN server against coturn's, side by side.

Both servers run on 127.0.0.1 in turn, each loaded the same way by coturn's own load client
(``turnutils_uclient``: clients that allocate, bind a channel and send ChannelData to coturn's echo
peer ``turnutils_peer``, which sends every packet back through the relay). For each server it
reports what was relayed (packets and Mbit/s, both directions), what was lost, and the server
process's CPU time from /proc: CPU per Mbit/s, and packets relayed per second of one core.

Examples::

    python -m bench.turn                     # 40 clients x 1000 packets of 1000 bytes: ~10 s per server
    python -m bench.turn --clients 60 --messages 2000 --size 200 --json bench/results/turn.json

Needs coturn's programs (``apt-get install coturn``). Everything stays on loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.metrics import cpu_seconds
from config import load_settings
from turn.credentials import issue
from turn.process import TurnProcess

LOOPBACK = "127.0.0.1"
SECRET = "benchmark secret shared by both servers"
START_TIMEOUT = 10.0


@dataclass
class Figures:
    server: str
    seconds: float  # wall time of the load client's run
    sent: int  # packets the clients sent (each relayed to the peer and, echoed, back)
    received: int
    lost_percent: float
    relayed_packets: int  # both directions
    packets_per_second: float
    mbit_per_second: float
    server_cpu_seconds: float
    server_cpu_percent: float
    packets_per_core_second: float  # relayed packets per second of one core's CPU time
    cpu_percent_per_mbit: float


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def _program(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        sys.exit(f"bench.turn: {name} is missing (apt-get install coturn)")
    return path


@contextmanager
def echo_peer() -> Iterator[int]:
    port = _free_port(socket.SOCK_DGRAM)
    process = subprocess.Popen(
        [_program("turnutils_peer"), "-L", LOOPBACK, "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield port
    finally:
        process.terminate()
        process.wait(10)


@contextmanager
def coturn(directory: Path) -> Iterator[tuple[int, int]]:
    """coturn's turnserver on loopback with credentials of huiyi's scheme: (port, pid)."""
    port = _free_port(socket.SOCK_STREAM)
    process = subprocess.Popen(
        [
            _program("turnserver"),
            "-n",
            "--listening-ip=127.0.0.1",
            f"--listening-port={port}",
            "--relay-ip=127.0.0.1",
            "--use-auth-secret",
            f"--static-auth-secret={SECRET}",
            "--realm=huiyi",
            "--allow-loopback-peers",
            "--no-cli",
            "--no-tls",
            "--no-dtls",
            f"--log-file={directory / 'coturn.log'}",
            "--simple-log",
            f"--pidfile={directory / 'coturn.pid'}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                socket.create_connection((LOOPBACK, port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    sys.exit("bench.turn: coturn's turnserver did not start")
                time.sleep(0.1)
        yield port, process.pid
    finally:
        process.terminate()
        process.wait(10)


@contextmanager
def huiyi() -> Iterator[tuple[int, int]]:
    """huiyi's TURN server in its own process, as run_server.py runs it: (port, pid)."""
    turn = load_settings(
        None,
        {
            "turn": {
                "listen_host": LOOPBACK,
                "port": 0,
                "relay_port_min": 0,
                "relay_port_max": 0,
                "allowed_peer_cidrs": ["127.0.0.1/32"],
                "max_allocations_per_user": 10_000,
                "max_bytes_per_second": 0,
            }
        },
        environ={},
    ).turn
    process = TurnProcess(turn, SECRET, "WARNING")
    loop = asyncio.new_event_loop()
    try:
        endpoints = loop.run_until_complete(process.start())
        assert process.pid is not None
        yield endpoints.port, process.pid
    finally:
        loop.run_until_complete(process.close())
        loop.close()


def load(port: int, pid: int, peer_port: int, arguments: argparse.Namespace, name: str) -> Figures:
    """Run coturn's load client against the server on ``port``; measure the server process ``pid``."""
    username, password = issue(SECRET, "bench", 3600)
    command = [
        _program("turnutils_uclient"),
        "-c",  # one allocation per client (no RTCP companion)
        "-m", str(arguments.clients),
        "-n", str(arguments.messages),
        "-z", str(arguments.interval_ms),
        "-l", str(arguments.size),
        "-u", username,
        "-w", password,
        "-e", LOOPBACK,
        "-r", str(peer_port),
        "-p", str(port),
        LOOPBACK,
    ]  # fmt: skip
    cpu_before, started = cpu_seconds(pid), time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    seconds, cpu = time.monotonic() - started, cpu_seconds(pid) - cpu_before
    output = result.stdout + result.stderr
    totals = re.findall(r"tot_send_msgs=(\d+), tot_recv_msgs=(\d+)\n", output)
    if result.returncode != 0 or not totals:
        sys.exit(f"bench.turn: the load client failed against {name}:\n{output[-2000:]}")
    sent, received = (int(value) for value in totals[-1])
    relayed = sent + received
    mbit = relayed * arguments.size * 8 / seconds / 1e6
    return Figures(
        server=name,
        seconds=round(seconds, 2),
        sent=sent,
        received=received,
        lost_percent=round(100 * (sent - received) / sent, 3) if sent else 0.0,
        relayed_packets=relayed,
        packets_per_second=round(relayed / seconds),
        mbit_per_second=round(mbit, 2),
        server_cpu_seconds=round(cpu, 2),
        server_cpu_percent=round(100 * cpu / seconds, 1),
        packets_per_core_second=round(relayed / cpu) if cpu else 0,
        cpu_percent_per_mbit=round(100 * cpu / seconds / mbit, 3) if mbit else 0.0,
    )


def table(rows: list[Figures]) -> str:
    header = (
        f"{'server':8} {'seconds':>7} {'relayed pkt':>11} {'pkt/s':>7} {'Mbit/s':>7} {'lost %':>6} "
        f"{'CPU %':>6} {'pkt/core-s':>10} {'CPU %/Mbit/s':>12}"
    )
    lines = [header]
    for row in rows:
        lines.append(
            f"{row.server:8} {row.seconds:7.1f} {row.relayed_packets:11d} {row.packets_per_second:7.0f} "
            f"{row.mbit_per_second:7.1f} {row.lost_percent:6.2f} {row.server_cpu_percent:6.1f} "
            f"{row.packets_per_core_second:10.0f} {row.cpu_percent_per_mbit:12.3f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.turn", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=40, help="allocations relaying at once (default 40)")
    parser.add_argument("--messages", type=int, default=1000, help="packets each client sends (default 1000)")
    parser.add_argument("--size", type=int, default=1000, help="payload bytes per packet (default 1000)")
    parser.add_argument(
        "--interval-ms", type=int, default=2, help="each client sends a packet at most this often (default 2)"
    )
    parser.add_argument("--json", type=Path, help="write the figures here")
    arguments = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-turn-") as scratch, echo_peer() as peer_port:
        with huiyi() as (port, pid):
            rows.append(load(port, pid, peer_port, arguments, "huiyi"))
        with coturn(Path(scratch)) as (port, pid):
            rows.append(load(port, pid, peer_port, arguments, "coturn"))
    print(table(rows))
    ours, theirs = rows
    if theirs.packets_per_core_second:
        ratio = ours.packets_per_core_second / theirs.packets_per_core_second
        print(f"huiyi relays {ratio:.2f}x coturn's packets per core-second")
    if arguments.json:
        arguments.json.write_text(json.dumps([asdict(row) for row in rows], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
