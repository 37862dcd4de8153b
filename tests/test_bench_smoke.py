"""The load harness end to end on a tiny scenario, so it keeps working: ``python -m bench`` spawns the
server, its synthetic clients publish and subscribe through it, and the figures say the load passed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.server_process import ROOT, server_environment


def run_bench(tmp_path: Path, *arguments: str) -> dict:
    report = tmp_path / "figures.json"
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--spawn",
            "--duration",
            "3",
            "--ramp-up",
            "0.5",
            "--json",
            str(report),
            *arguments,
        ],
        cwd=ROOT,
        env=server_environment(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "capacity (subs)" in completed.stdout
    return json.loads(report.read_text())


def test_sfu_and_relay_runs_report_the_figures(tmp_path: Path) -> None:
    figures = run_bench(tmp_path, "--compare", "--subscribers", "2", "--layers", "3", "--processes", "1")
    sfu = figures["sfu"][0]
    assert sfu["errors"] == [] and sfu["subscribers_total"] == 2
    assert sfu["scenario"]["layers"] == 3
    assert sfu["loss_percent"] < 1 and sfu["forwarded_packets_per_second"] > 100
    assert sfu["join_ms"]["p50"] is not None and sfu["latency_ms"]["p99"] < 50
    assert sfu["server_cpu_percent"] is not None and sfu["server_rss_mb"] > 0
    relay = figures["relay"][0]
    assert relay["errors"] == [] and relay["latency_ms"]["p50"] is not None
    naive = figures["naive"][0]
    assert naive["errors"] == [] and naive["forwarded_packets_per_second"] > 10


def test_a_short_churn_soak_reports_flat_figures(tmp_path: Path) -> None:
    report = tmp_path / "churn.json"
    arguments = ["--churn-minutes", "0.1", "--churn-peers", "3", "--sample-seconds", "1", "--json", str(report)]
    completed = subprocess.run(
        [sys.executable, "-m", "bench", "--spawn", *arguments],
        cwd=ROOT,
        env=server_environment(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    figures = json.loads(report.read_text())
    assert completed.returncode == 0, (completed.stdout, completed.stderr[-3000:])
    assert figures["flat"] and figures["cycles"] >= 3 and figures["failures"] == 0, figures
    start, end = figures["start"], figures["end"]
    assert start["tasks"] is not None and end["tasks"] is not None and start["peers"] == end["peers"] == 1
    assert end["fds"] <= start["fds"] + 8 and len(figures["samples"]) >= 3
    assert "join/leave cycles" in completed.stdout
