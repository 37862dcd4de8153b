"""Tables and plots of benchmark figures: per run, and capacity against the baselines as ratios."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.harness import Figures

RECORDED = "+rec"  # ends the series of the SFU's runs with every room recorded (python -m bench --record)
RELAYED = "+turn"  # ends the series of the SFU's runs with every client behind TURN (--ice-transport)


def reference(everything: dict[str, list[Figures]]) -> str:
    """The series the others are compared with: the SFU's first plain one (``sfu``, or ``sfu/1w``
    when worker counts were swept)."""
    return next((name for name in everything if name.startswith("sfu") and "+" not in name), "sfu")


def _with_suffix(everything: dict[str, list[Figures]], suffix: str) -> str | None:
    return next((name for name in everything if name.startswith("sfu") and name.endswith(suffix)), None)


def series(scenario: dict[str, Any]) -> str:
    """The name runs of a kind are listed under: the target, and what was added to its load."""
    name = scenario["target"]
    if scenario.get("workers") is not None:
        name += f"/{scenario['workers']}w"
    if scenario.get("recording"):
        name += "+rec"
    if scenario.get("ice_transport", "host") == "relay":
        name += "+turn"
    return name


COLUMNS = (
    ("target", lambda f: series(f.scenario)),
    ("subs", lambda f: f.subscribers_total),
    ("layers", lambda f: f.scenario["layers"]),
    ("join p50/p99 ms", lambda f: f"{_num(f.join_ms['p50'])}/{_num(f.join_ms['p99'])}"),
    ("pkt/s", lambda f: f"{f.forwarded_packets_per_second:.0f}"),
    ("Mbit/s", lambda f: f"{f.forwarded_mbit_per_second:.1f}"),
    ("server CPU %", lambda f: _num(f.server_cpu_percent)),
    ("TURN CPU %", lambda f: _num(f.turn_cpu_percent)),
    ("RSS MB", lambda f: _num(f.server_rss_mb)),
    ("loss %", lambda f: f"{f.loss_percent:.2f}"),
    ("fps", lambda f: _num(f.delivered_fps_ratio)),
    ("lat p50/p99 ms", lambda f: f"{_num(f.latency_ms['p50'])}/{_num(f.latency_ms['p99'])}"),
    ("harness CPU %", lambda f: f"{f.harness_cpu_percent:.0f} ({f.harness_processes}p)"),
    ("ok", lambda f: "yes" if f.passes() else "NO: " + ", ".join(f.failures())),
)

# What each column of the run table means; printed under the table and in ``--help``.
LEGEND = """\
Columns: target = what was loaded (sfu, janus = Janus's VideoRoom, naive, relay; +rec recorded, +turn through
TURN); subs = subscribers in all rooms; layers = simulcast layers each publisher sent; join = a subscriber's
socket opened -> its first media packet; pkt/s and Mbit/s = what all subscribers received in the measurement
window; server CPU % = the server process and its media workers (100 = one core; TURN CPU % is its TURN process,
apart); RSS MB = the server's peak memory, its workers' included; loss % = sequence gaps seen by subscribers;
fps = frames delivered / frames published (1.0 = every frame); lat = a payload sent by a publisher -> received
by a subscriber; harness CPU % = the load clients' own CPU (Np = processes); ok = loss < 1 %, p99 latency
< 50 ms and fps >= 0.9, or why not."""


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = [
        "| " + " | ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)) + " |"
        for row in [header, ["-" * width for width in widths], *rows]
    ]
    return "\n".join(lines)


def run_table(runs: list[Figures]) -> str:
    return _table([name for name, _ in COLUMNS], [[str(value(f)) for _, value in COLUMNS] for f in runs])


def _capacity(runs: list[Figures]) -> Figures | None:
    """The heaviest run that still passes (loss < 1 %, p99 < 50 ms, frames delivered)."""
    passing = [f for f in runs if f.passes()]
    return max(passing, key=lambda f: f.subscribers_total) if passing else None


def _limit(runs: list[Figures]) -> Figures | None:
    """The lightest failing run heavier than every passing one: where a sweep found the limit."""
    best = _capacity(runs)
    floor = best.subscribers_total if best is not None else -1
    failing = [f for f in runs if not f.passes() and f.subscribers_total > floor]
    return min(failing, key=lambda f: f.subscribers_total) if failing else None


def _carried(runs: list[Figures]) -> str:
    """Capacity only when the runs found a limit; otherwise the most that was tried and carried."""
    best, limit = _capacity(runs), _limit(runs)
    if best is None:
        return f"none passed (fails at {limit.subscribers_total})" if limit else "none passed"
    if limit is None:
        return f"{best.subscribers_total} carried, no limit reached"
    return f"capacity {best.subscribers_total} (fails at {limit.subscribers_total})"


def _mbit_per_core(figures: Figures | None) -> float | None:
    if figures is None or not figures.server_cpu_percent:
        return None
    return figures.forwarded_mbit_per_second / (figures.server_cpu_percent / 100)


def _cost_ratio(runs: list[Figures], reference: list[Figures]) -> str:
    """CPU per forwarded Mbit/s against the SFU's, at the heaviest load both carried."""
    ours = {f.subscribers_total: f for f in runs if f.passes() and f.cpu_percent_per_mbit}
    theirs = {f.subscribers_total: f for f in reference if f.passes() and f.cpu_percent_per_mbit}
    common = sorted(set(ours) & set(theirs))
    if not common:
        return "-"
    load = common[-1]
    return f"{ours[load].cpu_percent_per_mbit / theirs[load].cpu_percent_per_mbit:.2f}x at {load}"


def capacity_table(everything: dict[str, list[Figures]]) -> str:
    """Capacity per target, and how its cost compares with the SFU's (ratios, never absolute claims)."""
    reference_name = reference(everything)
    reference_runs = everything.get(reference_name, [])
    best_reference = _capacity(reference_runs)
    rows = []
    for target, runs in everything.items():
        best = _capacity(runs)
        per_core = _mbit_per_core(best)
        capacity_ratio = "-"
        if target != reference_name and best_reference is not None and best is not None:
            capacity_ratio = f"{best_reference.subscribers_total / best.subscribers_total:.2f}x"
        rows.append(
            [
                target,
                _carried(runs),
                _num(round(per_core, 1) if per_core else None),
                _num(best.cpu_percent_per_mbit if best else None),
                _num(best.latency_ms["p99"] if best else None),
                capacity_ratio,
                _cost_ratio(runs, reference_runs) if target != reference_name else "-",
            ]
        )
    header = [
        "target",
        "subscribers carried",
        "Mbit/s per core",
        "CPU % per Mbit/s",
        "p99 ms",
        "sfu subs / target's",
        "target CPU per Mbit/s / sfu's",
    ]
    return _table(header, rows)


def recording_table(plain: list[Figures], recorded: list[Figures]) -> str:
    """What recording cost: each recorded run beside the run of the same load without recording
    (when there is one). The extra server CPU is put down to each recorded track, and to each
    Mbit/s of recorded video (audio's cost included: an upper bound for video alone)."""
    without = {(f.subscribers_total, f.scenario["rooms"], f.scenario["publishers"]): f for f in plain}
    rows = []
    for run in recorded:
        done = run.recording or {}
        base = without.get((run.subscribers_total, run.scenario["rooms"], run.scenario["publishers"]))
        extra = None
        if base is not None and base.server_cpu_percent is not None and run.server_cpu_percent is not None:
            extra = run.server_cpu_percent - base.server_cpu_percent
        tracks, video_mbit = done.get("tracks", 0), done.get("video_mbit_per_second", 0.0)
        rows.append(
            [
                str(run.subscribers_total),
                f"{done.get('video_tracks', 0)} + {done.get('audio_tracks', 0)}",
                _num(video_mbit),
                f"{_num(base.server_cpu_percent if base else None)} / {_num(run.server_cpu_percent)}",
                _num(round(extra, 1) if extra is not None else None),
                _num(round(extra / tracks, 2) if extra is not None and tracks else None),
                _num(round(extra / video_mbit, 2) if extra is not None and video_mbit else None),
                f"{_latency(base)} / {_latency(run)}",
                f"{_num(base.loss_percent if base else None)} / {_num(run.loss_percent)}",
                f"{done.get('frames', 0)} / {done.get('dropped_frames', 0)}",
            ]
        )
    header = [
        "subs",
        "tracks recorded (video + audio)",
        "video Mbit/s recorded",
        "server CPU % without / with",
        "extra CPU %",
        "per track",
        "per video Mbit/s",
        "lat p50/p99 ms without / with",
        "loss % without / with",
        "frames written / dropped",
    ]
    return _table(header, rows)


def relay_table(direct: list[Figures], relayed: list[Figures]) -> str:
    """Every client behind TURN: each relayed run beside the run of the same load made directly
    (when there is one). The TURN server is a process of its own, so its CPU is apart."""
    without = {(f.subscribers_total, f.scenario["rooms"], f.scenario["publishers"]): f for f in direct}
    rows = []
    for run in relayed:
        base = without.get((run.subscribers_total, run.scenario["rooms"], run.scenario["publishers"]))
        rows.append(
            [
                str(run.subscribers_total),
                ", ".join(f"{count} {kind}" for kind, count in sorted(run.candidate_types.items())) or "-",
                f"{_num(base.server_cpu_percent if base else None)} / {_num(run.server_cpu_percent)}",
                _num(run.turn_cpu_percent),
                f"{_num(base.forwarded_mbit_per_second if base else None)} / {_num(run.forwarded_mbit_per_second)}",
                f"{_latency(base)} / {_latency(run)}",
                f"{_num(base.loss_percent if base else None)} / {_num(run.loss_percent)}",
                f"{_num(base.harness_cpu_percent if base else None)} / {_num(run.harness_cpu_percent)}",
            ]
        )
    header = [
        "subs",
        "connections via",
        "server CPU % direct / via TURN",
        "TURN CPU %",
        "Mbit/s direct / via TURN",
        "lat p50/p99 ms direct / via TURN",
        "loss % direct / via TURN",
        "harness CPU % direct / via TURN",
    ]
    return _table(header, rows)


def render(everything: dict[str, list[Figures]]) -> str:
    """Every run once, what its columns mean, then what the runs add up to: carried loads (and
    capacity where a sweep found the limit), and recording's and TURN's costs when they were run."""
    parts = [run_table([figures for runs in everything.values() for figures in runs]), LEGEND]
    parts.append(capacity_table(everything) + "\n" + CAPACITY_LEGEND)
    plain = everything.get(reference(everything), [])
    if (recorded := _with_suffix(everything, RECORDED)) is not None:
        parts.append(recording_table(plain, everything[recorded]))
    if (relayed := _with_suffix(everything, RELAYED)) is not None:
        parts.append(relay_table(plain, everything[relayed]))
    return "\n\n".join(parts)


CAPACITY_LEGEND = """\
subscribers carried = the heaviest load that passed; "capacity" only where a heavier one failed (sweep with
--subscribers 10,20,40). Mbit/s per core and CPU % per Mbit/s are of that load; the last two columns compare
each target with the sfu (ratios of loads and of CPU per forwarded Mbit/s at the heaviest load both carried)."""


def _latency(figures: Figures | None) -> str:
    return "-" if figures is None else f"{_num(figures.latency_ms['p50'])}/{_num(figures.latency_ms['p99'])}"


def plot(everything: dict[str, list[Figures]], path: Path) -> None:
    """Server CPU and p99 latency against subscribers, one line per target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (cpu_axis, latency_axis) = plt.subplots(1, 2, figsize=(11, 4))
    colours = {
        "sfu": "tab:blue",
        "janus": "tab:brown",
        "naive": "tab:red",
        "relay": "tab:green",
        RECORDED: "tab:purple",
        RELAYED: "tab:orange",
    }
    for target, runs in everything.items():
        counts = [f.subscribers_total for f in runs]
        kind = next((suffix for suffix in (RECORDED, RELAYED) if target.endswith(suffix)), target.split("/")[0])
        style = {"marker": "o", "label": target, "color": colours.get(kind)}
        cpu_axis.plot(counts, [f.server_cpu_percent or 0 for f in runs], **style)
        latencies = [(f.subscribers_total, f.latency_ms["p99"]) for f in runs if f.latency_ms["p99"] is not None]
        if latencies:
            latency_axis.plot(*zip(*latencies, strict=True), **style)
    latency_axis.set_yscale("log")
    latency_axis.axhline(50, color="grey", linestyle="--", linewidth=1)
    cpu_axis.set(xlabel="subscribers", ylabel="server CPU % (100 = one core)", title="Server CPU")
    latency_axis.set(xlabel="subscribers", ylabel="p99 latency, ms", title="Added latency (p99)")
    for axis in (cpu_axis, latency_axis):
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def main() -> None:
    """``python -m bench.report A.json B.json [--png P]``: merge saved runs into one capacity table and plot."""
    import argparse
    import json

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("runs", nargs="+", type=Path, help="files written by python -m bench --json")
    parser.add_argument("--png", type=Path)
    arguments = parser.parse_args()
    everything: dict[str, list[Figures]] = {}
    for path in arguments.runs:
        for target, runs in json.loads(path.read_text()).items():
            everything.setdefault(target, []).extend(Figures(**figures) for figures in runs)
    for runs in everything.values():
        runs.sort(key=lambda figures: figures.subscribers_total)
    print(render(everything))
    if arguments.png:
        plot(everything, arguments.png)


if __name__ == "__main__":
    main()
