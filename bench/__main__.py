"""``python -m bench``: load a server with synthetic WebRTC clients and report what it carried.

Examples::

    python -m bench --spawn --rooms 1 --publishers 1 --subscribers 10 --duration 20
    python -m bench --url http://127.0.0.1:8000 --subscribers 5,10,20,40      # capacity sweep
    python -m bench --spawn --compare --layers 1 --subscribers 5,10,20           # SFU vs baselines
    python -m bench --spawn --churn-minutes 10 --churn-peers 6                   # leak soak
    python -m bench --spawn --rooms 2 --publishers 2 --subscribers 2 --record compare   # recording's cost
    python -m bench --spawn --subscribers 10,20 --ice-transport compare        # direct, then all via TURN
    python -m bench --spawn --target janus --layers 3 --subscribers 10,20      # Janus's VideoRoom
    python -m bench --spawn --target sfu,janus --subscribers 1 --link-cap 300   # adapting to a shaped link
    python -m bench --spawn --workers 1 --layers 3 --rooms 2 --subscribers 20  # one media worker
    python -m bench --spawn --target sfu,janus --workers 1,2 --layers 1 --subscribers 40,80  # side by side

Janus (apt-get install janus) runs with its VideoRoom plugin and the same clients. It never offers a
loopback interface's address, so a run that includes it re-executes itself in a network namespace of
its own (root, or unprivileged user namespaces), where Janus's media is on 127.0.0.2 and everything
else on 127.0.0.1 as usual; the namespace goes when the run ends (see bench/netns.py).

With --link-cap, the subscribers (or the first --linked of each room) reach the server through a link of
the run's own, capped with tc tbf after --link-schedule's first seconds and lifted again after its second
(root, like the Janus run; see bench/shaped.py): the tables say how fast each target adapted what it sent,
down and back up, and what the subscribers saw meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import shutil
import sys
from dataclasses import asdict, replace
from pathlib import Path
from urllib.parse import urlparse

from bench import churn, metrics, netns, shaped
from bench.harness import Figures, Scenario, SpawnedServer, free_port, run
from bench.report import CAPACITY_LEGEND, LEGEND, plot, render, series

TARGETS = ("sfu", "janus", "naive", "relay")
RECORD_MODES = {"off": (False,), "on": (True,), "compare": (False, True)}
ICE_MODES = {"host": ("host",), "relay": ("relay",), "compare": ("host", "relay")}


JSON_NOTE = """\
--json writes {series: [run, ...]} where series is a run table's target (sfu, janus, naive, relay, sfu+rec, sfu+turn)
and each run holds the table's figures under stable names: subscribers_total, join_ms {p50, p99},
forwarded_packets_per_second, forwarded_mbit_per_second, server_cpu_percent, server_rss_mb, loss_percent,
delivered_fps_ratio, latency_ms {p50, p99}, harness_cpu_percent, errors, and the scenario it ran.
With --link-cap, each run also holds ``shaped``: cap_kbit, schedule_s, feedback, adapt_down_s, adapt_up_s,
left_top_layer, freezes, longest_freeze_s, freeze_total_s, video_loss_percent, kbit_per_second and size_at_end
{free, capped, lifted}, timeline [{t, capped, kbit_per_second, frames, size}], and each subscriber's apart.
python -m bench.report A.json B.json prints saved runs together."""


def _target_list(text: str) -> list[str]:
    targets = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [target for target in targets if target not in TARGETS]
    if unknown or not targets:
        raise argparse.ArgumentTypeError(f"targets are {', '.join(TARGETS)}; not {', '.join(unknown) or 'none'}")
    return targets


def _schedule(text: str) -> tuple[float, float, float]:
    parts = [float(part) for part in text.split(",")]
    if len(parts) != 3 or min(parts) < 0 or parts[1] <= 0:
        raise argparse.ArgumentTypeError("three seconds: at full speed, capped (> 0), lifted again")
    return parts[0], parts[1], parts[2]


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        epilog=f"{LEGEND}\n\n{CAPACITY_LEGEND}\n\nWith --link-cap: {shaped.LEGEND}\n\n{JSON_NOTE}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="a running huiyi server, e.g. http://127.0.0.1:8000")
    where.add_argument("--spawn", action="store_true", help="start the server(s) for the run and stop them after")
    parser.add_argument(
        "--target",
        type=_target_list,
        default=["sfu"],
        help=f"what to load (with --spawn), one or a comma list run one by one ({', '.join(TARGETS)}): default sfu",
    )
    parser.add_argument(
        "--compare",
        action="store_true",
        help="run the same scenarios on sfu, janus (when installed), naive and relay, one by one (with --link-cap: sfu "
        "and janus)",
    )
    parser.add_argument("--server-pid", type=int, help="pid of the --url server, when /proc cannot show it")
    parser.add_argument(
        "--workers",
        type=_worker_counts,
        help="the spawned server's media worker processes (sfu.workers; 0: media in the server's process); "
        "default: the server's, one per core; a comma list runs the sfu once per count (series sfu/1w, sfu/2w...)",
    )
    parser.add_argument("--rooms", type=int, default=1)
    parser.add_argument("--publishers", type=int, default=1, help="per room")
    parser.add_argument("--subscribers", default="10", help="per room; a comma list sweeps for capacity")
    parser.add_argument("--layers", type=int, choices=(1, 3), default=3, help="simulcast layers each publisher sends")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of steady load")
    parser.add_argument("--ramp-up", type=float, default=2.0, help="seconds over which subscribers join")
    parser.add_argument("--processes", type=int, default=2, help="client worker processes")
    parser.add_argument("--no-latency", action="store_true", help="count only; skip per-packet latency matching")
    parser.add_argument(
        "--record",
        choices=RECORD_MODES,
        default="off",
        help="sfu: record every room on the server through each run (on), or run each load without and "
        "then with recording (compare)",
    )
    parser.add_argument(
        "--ice-transport",
        choices=ICE_MODES,
        default="host",
        help="sfu: clients connect from their own loopback sockets (host), only through the TURN server "
        "their join reply names (relay), or each load both ways, one after the other (compare)",
    )
    parser.add_argument("--json", type=Path, help="write every run's figures here")
    parser.add_argument("--png", type=Path, help="plot CPU and latency against subscribers here")
    link = parser.add_argument_group("shaped link (sfu and janus; root)")
    link.add_argument("--link-cap", type=int, metavar="KBIT", help="cap the subscribers' link to KBIT kbit/s")
    link.add_argument(
        "--link-schedule",
        type=_schedule,
        default=shaped.DEFAULT_SCHEDULE,
        metavar="FREE,CAPPED,LIFTED",
        help="seconds at full speed (after --ramp-up), capped, then lifted again: default 5,15,15 "
        "(replaces --duration)",
    )
    link.add_argument("--linked", type=int, help="subscribers per room behind the link (default: all)")
    soak = parser.add_argument_group("churn soak (instead of a load run)")
    soak.add_argument("--churn-minutes", type=float, help="peers join and leave for this long; sample for leaks")
    soak.add_argument("--churn-peers", type=int, default=4, help="peers churning at once")
    soak.add_argument("--sample-seconds", type=float, default=10.0, help="time between samples of the server")
    return parser.parse_args(argv)


def _worker_counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"worker counts are whole numbers: {text!r}") from None
    if not counts or min(counts) < 0:
        raise argparse.ArgumentTypeError(f"worker counts are 0 or more: {text!r}")
    return counts


async def _sweep(target: str, arguments: argparse.Namespace, counts: list[int], workers: int | None) -> list[Figures]:
    base = Scenario(
        target=target,
        workers=workers,
        rooms=arguments.rooms,
        publishers=arguments.publishers,
        layers=arguments.layers if target in ("sfu", "janus") else 1,
        duration=arguments.duration,
        ramp_up=arguments.ramp_up,
        processes=arguments.processes,
        record_latency=not arguments.no_latency and target != "naive",
    )
    link = None
    if arguments.link_cap:
        base = replace(
            base,
            duration=sum(arguments.link_schedule),
            link_cap_kbit=arguments.link_cap,
            link_schedule=arguments.link_schedule,
            linked=arguments.linked,
        )
        link = shaped.Link(arguments.link_cap)
    server = None
    if arguments.spawn:
        setting = {"HUIYI_SFU_WORKERS": str(workers)} if workers is not None else {}
        server = SpawnedServer(target, free_port(), env=setting, shaped_link=link is not None)
        try:
            await server.wait_ready()
        except RuntimeError:
            server.stop()
            if link is not None:
                link.close()
            raise
        url, pid = server.url, server.process.pid
    else:
        url = arguments.url.rstrip("/")
        pid = arguments.server_pid or metrics.pid_listening_on(urlparse(url).port or 80)
    results = []
    try:
        modes = RECORD_MODES[arguments.record] if target == "sfu" else (False,)
        transports = ICE_MODES[arguments.ice_transport] if target == "sfu" else ("host",)
        for index, count in enumerate(counts):
            # The same load without and with recording, directly and through TURN, one after the other.
            for recording in modes:
                for transport in transports:
                    scenario = replace(base, subscribers=count, recording=recording, ice_transport=transport)
                    tag = f"{target[0]}{index}x{secrets.token_hex(3)}"
                    figures = await run(scenario, url, pid, tag, progress=_progress, link=link)
                    verdict = "carried" if figures.passes() else "not carried: " + ", ".join(figures.failures())
                    _progress(f"{scenario.label}: {verdict}", done=True)
                    results.append(figures)
    finally:
        if server is not None:
            server.stop()
        if link is not None:
            link.close()
    return results


def _progress(message: str, done: bool = False) -> None:
    """Live progress on stderr (the results go to stdout once, at the end): one line rewritten in
    place on a terminal, a line every few seconds in a log."""
    if sys.stderr.isatty():
        sys.stderr.write(f"\r\033[K{message}" + ("\n" if done else ""))
    else:
        sys.stderr.write(message + "\n")
    sys.stderr.flush()


async def _churn(arguments: argparse.Namespace) -> int:
    if arguments.workers and len(arguments.workers) > 1:
        print("a churn soak runs one server: give one --workers count", file=sys.stderr)
        return 2
    server = None
    if arguments.spawn:
        workers = {"HUIYI_SFU_WORKERS": str(arguments.workers[0])} if arguments.workers else {}
        server = SpawnedServer("sfu", free_port(), env={"HUIYI_SERVER_LOG_LEVEL": "INFO", **workers})
        url, probe = server.url, churn.ServerProbe(server.process.pid, server.log)
    else:
        url = arguments.url.rstrip("/")
        pid = arguments.server_pid or metrics.pid_listening_on(urlparse(url).port or 80)
        if pid is None:
            print("cannot find the server's process; give --server-pid", file=sys.stderr)
            return 2
        probe = churn.ServerProbe(pid, None)
    print(f"churning for {arguments.churn_minutes:g} min ...", file=sys.stderr, flush=True)
    try:
        if server is not None:
            await server.wait_ready()
        figures = await churn.soak(
            url, probe, arguments.churn_minutes, arguments.churn_peers, arguments.sample_seconds, secrets.token_hex(3)
        )
    finally:
        if server is not None:
            server.stop()
    print(churn.table(figures))
    if arguments.json:
        arguments.json.write_text(json.dumps(asdict(figures), indent=2))
    for error in figures.errors[:3]:
        print(f"churn error: {error}", file=sys.stderr)
    return 0 if figures.flat else 1


async def _main(arguments: argparse.Namespace) -> int:
    if arguments.churn_minutes is not None:
        return await _churn(arguments)
    counts = [int(value) for value in arguments.subscribers.split(",") if value.strip()]
    targets = _targets(arguments)
    if arguments.compare and "janus" not in targets:
        print("janus is not installed (apt-get install janus): comparing without it", file=sys.stderr)
    if not arguments.spawn and targets != ["sfu"]:
        print("--compare and baseline targets need --spawn", file=sys.stderr)
        return 2
    if arguments.link_cap and (not arguments.spawn or len(counts) != 1 or set(targets) - {"sfu", "janus"}):
        print("--link-cap needs --spawn, one --subscribers count and targets sfu and/or janus", file=sys.stderr)
        return 2
    everything: dict[str, list[Figures]] = {}
    for target in targets:
        for workers in (arguments.workers or [None]) if target == "sfu" else [None]:
            for figures in await _sweep(target, arguments, counts, workers):
                everything.setdefault(series(figures.scenario), []).append(figures)
    print(shaped.render(everything) if arguments.link_cap else render(everything))
    if arguments.json:
        arguments.json.write_text(
            json.dumps({t: [asdict(f) for f in runs] for t, runs in everything.items()}, indent=2)
        )
    if arguments.png:
        plot(everything, arguments.png)
    failed = [f for runs in everything.values() for f in runs if f.errors]
    for figures in failed:
        print(f"errors in {figures.scenario['target']} run: {figures.errors[:3]}", file=sys.stderr)
    return 0


def _targets(arguments: argparse.Namespace) -> list[str]:
    if not arguments.compare:
        return list(arguments.target)
    # A shaped link compares the servers that adapt to it (the baselines forward one layer as it comes).
    compared = ("sfu", "janus") if arguments.link_cap else TARGETS
    return [target for target in compared if target != "janus" or shutil.which("janus")]


def main(argv: list[str] | None = None) -> int:
    arguments = _arguments(argv)
    if arguments.spawn and arguments.churn_minutes is None and ("janus" in _targets(arguments) or arguments.link_cap):
        try:
            netns.enter(sys.argv[1:] if argv is None else argv)
        except netns.NamespaceError as error:
            print(error, file=sys.stderr)
            return 2
    return asyncio.run(_main(arguments))


if __name__ == "__main__":
    sys.exit(main())
