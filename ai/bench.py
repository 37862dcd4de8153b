"""``python -m ai.bench``: how fast each installed recognition engine runs, and how the API answers
while a server's worker node is busy with AI jobs.

Speech is generated with espeak-ng (it must be installed). Two parts:

- **engines**: for every installed recognition model, its load time and memory, and its
  real-time factor (compute seconds per second of audio; below 1 is faster than real time) and
  word error rate on the same sentences, through the same VAD-and-engine path the jobs take.
- **api**: a server is started (embedded defaults, its own worker node); a probe times
  ``GET /api/v1/users/profile`` for ``--duration`` seconds while idle, then again while
  ``--clients`` callers keep recognition jobs of a long recording running back to back.

    python -m ai.bench --duration 20 --clients 2
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import tempfile
import time
import wave
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from ai.audio import SAMPLE_RATE, decode
from ai.registry import Registry
from ai.tasks import run_task
from ai.vad import Vad

SENTENCES = [
    "please schedule the quarterly budget review for next thursday afternoon",
    "the meeting will start in five minutes",
    "can everyone see my screen",
    "we need to finish the report before friday",
    "thank you all for joining the call today",
]


def speak(text: str, path: Path) -> Path:
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(path), text], check=True, timeout=60)
    return path


def word_errors(reference: str, hypothesis: str) -> int:
    ref = reference.lower().split()
    hyp = "".join(c.lower() if c.isalnum() or c.isspace() else " " for c in hypothesis).split()
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, start=1):
        previous, row[0] = row[0], i
        for j, h in enumerate(hyp, start=1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (r != h))
    return row[len(hyp)]


def engines(work: Path) -> list[dict[str, Any]]:
    registry = Registry(None, work / "cache")
    clips = [(text, decode(speak(text, work / f"s{i}.wav"), 600)) for i, text in enumerate(SENTENCES)]
    audio_seconds = sum(pcm.size for _, pcm in clips) / SAMPLE_RATE
    vad = Vad()
    rows = []
    for model in registry.describe():
        if model["task"] != "recognition":
            continue
        started = time.perf_counter()
        loaded = registry.load(model["model_id"])
        load_seconds = time.perf_counter() - started
        run_task(registry, vad, "recognition", model["model_id"], clips[0][1], "en", {}, lambda _: None)  # warm
        errors = 0
        started = time.perf_counter()
        for text, pcm in clips:
            result = run_task(registry, vad, "recognition", model["model_id"], pcm, "en", {}, lambda _: None)
            errors += word_errors(text, result["text"])
        compute = time.perf_counter() - started
        registry.unload(model["model_id"])
        rows.append(
            {
                "model": model["model_id"],
                "load_s": round(load_seconds, 2),
                "memory_mb": round((loaded["memory_bytes"] or 0) / 1e6),
                "audio_s": round(audio_seconds, 1),
                "rtf": round(compute / audio_seconds, 3),
                "wer": round(errors / sum(len(t.split()) for t, _ in clips), 3),
            }
        )
    return rows


async def _probe(http: aiohttp.ClientSession, url: str, token: str, seconds: float) -> list[float]:
    latencies = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.perf_counter()
        async with http.get(url + "/api/v1/users/profile", headers={"Authorization": f"Bearer {token}"}) as answer:
            await answer.read()
            assert answer.status == 200
        latencies.append(1000 * (time.perf_counter() - started))
        await asyncio.sleep(0.05)
    return latencies


async def _caller(http: aiohttp.ClientSession, url: str, token: str, file_id: str, stop: asyncio.Event) -> int:
    """Recognition jobs back to back until ``stop`` is set (one at least); how many succeeded."""
    done = 0
    headers = {"Authorization": f"Bearer {token}"}
    while True:
        async with http.post(url + "/api/v1/speech/recognition", json={"file_id": file_id}, headers=headers) as answer:
            job = (await answer.json())["data"]
        while job["status"] not in {"succeeded", "failed"}:
            await asyncio.sleep(0.2)
            async with http.get(f"{url}/api/v1/speech/job/{job['job_id']}/status", headers=headers) as answer:
                job = (await answer.json())["data"]
        done += job["status"] == "succeeded"
        if stop.is_set():
            return done


def _summary(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    return {
        "requests": len(ordered),
        "p50_ms": round(statistics.median(ordered), 2),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 2),
        "max_ms": round(ordered[-1], 2),
    }


async def api(work: Path, duration: float, clients: int) -> dict[str, Any]:
    from bench.harness import SpawnedServer, free_port

    server = SpawnedServer("sfu", free_port())
    try:
        await server.wait_ready()
        pcm = np.concatenate([decode(speak(t, work / f"l{i}.wav"), 600) for i, t in enumerate(SENTENCES * 4)])
        long = work / "long.wav"
        with wave.open(str(long), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(SAMPLE_RATE)
            out.writeframes((np.clip(pcm, -1, 1) * 32767).astype("<i2").tobytes())
        async with aiohttp.ClientSession() as http:
            account = {"username": "benchai", "email": "benchai@example.com", "password": "bench-password-1"}
            async with http.post(server.url + "/api/v1/auth/register", json=account) as answer:
                assert answer.status == 201, await answer.text()
            login = {"username": account["username"], "password": account["password"]}
            async with http.post(server.url + "/api/v1/auth/login", json=login) as answer:
                token = (await answer.json())["data"]["access_token"]
            form = aiohttp.FormData()
            form.add_field("file", long.read_bytes(), filename="long.wav", content_type="audio/wav")
            headers = {"Authorization": f"Bearer {token}"}
            async with http.post(server.url + "/api/v1/media/upload", data=form, headers=headers) as answer:
                file_id = (await answer.json())["data"]["file_id"]
            # The first job starts the worker node and loads the model: not part of what is timed.
            await _caller(http, server.url, token, file_id, _set_after_one())
            idle = await _probe(http, server.url, token, duration)
            stop = asyncio.Event()
            callers = [asyncio.create_task(_caller(http, server.url, token, file_id, stop)) for _ in range(clients)]
            busy = await _probe(http, server.url, token, duration)
            stop.set()
            jobs = sum(await asyncio.gather(*callers))
        return {
            "audio_s": round(pcm.size / SAMPLE_RATE, 1),
            "idle": _summary(idle),
            "busy": _summary(busy),
            "jobs_done": jobs,
        }
    finally:
        server.stop()


def _set_after_one() -> asyncio.Event:
    stop = asyncio.Event()
    stop.set()
    return stop


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ai.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of API probing per phase")
    parser.add_argument("--clients", type=int, default=2, help="callers keeping recognition jobs running")
    parser.add_argument("--skip-api", action="store_true", help="time the engines only")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="huiyi-ai-bench-") as scratch:
        work = Path(scratch)
        print("| model | load s | memory MB | audio s | real-time factor | WER |")
        print("|---|---|---|---|---|---|")
        for row in engines(work):
            print(
                f"| {row['model']} | {row['load_s']} | {row['memory_mb']} | {row['audio_s']} | {row['rtf']} | "
                f"{row['wer']:.1%} |"
            )
        if not args.skip_api:
            result = asyncio.run(api(work, args.duration, args.clients))
            print(f"\nGET /api/v1/users/profile, {result['audio_s']} s recordings recognised back to back:\n")
            print("| phase | requests | p50 ms | p99 ms | max ms |")
            print("|---|---|---|---|---|")
            for phase in ("idle", "busy"):
                row = result[phase]
                print(f"| {phase} | {row['requests']} | {row['p50_ms']} | {row['p99_ms']} | {row['max_ms']} |")
            print(f"\nrecognition jobs finished while busy: {result['jobs_done']}")


if __name__ == "__main__":
    main()
