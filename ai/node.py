"""A worker node: the process that holds models and runs AI work, whatever carries the work to it
(a pipe from the server on the embedded default, the Redis queue otherwise). It never runs in the
web process, so inference cannot stall the API or the media plane."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ai import audio, memory
from ai.audio import SAMPLE_RATE, BadAudio
from ai.denoising import denoise_file
from ai.engines import DenoiseEngine, ModelError, UpscaleEngine
from ai.enhance import enhance_file
from ai.fetch import UrlRefused, fetch, parse_networks
from ai.registry import Registry, Unavailable, UnknownModel, choose
from ai.tasks import run_task
from ai.vad import Vad
from config import Settings
from control.storage import LocalStorage
from media.jobs import JobFailed

log = logging.getLogger("huiyi.ai.node")
# A job started this many times without an answer (its node died each time) fails instead.
MAX_ATTEMPTS = 2
# Jobs that turn a file into a new one (written in the node's scratch folder of the shared media
# directory, for the server to adopt) rather than answering a result.
FILE_KINDS = ("denoising", "enhancement")


class JobReport(Protocol):
    """Where a node tells what became of a job."""

    def started(self, job_id: str, node_id: str) -> int:
        """Counts the attempt; how many there have been, this one included."""
        ...

    def progress(self, job_id: str, percent: int) -> None: ...

    def finished(
        self, job_id: str, result: dict[str, Any] | None, error: str | None, error_kind: str | None
    ) -> None: ...


@dataclass
class _Cpu:
    wall: float
    used: float


class Node:
    def __init__(self, settings: Settings, node_id: str) -> None:
        self.settings = settings
        self.node_id = node_id
        ai = settings.ai
        data_dir = settings.server.data_dir
        self.registry = Registry(Path(ai.model_dir) if ai.model_dir else None, data_dir / "ai-cache")
        self.storage = LocalStorage(data_dir / "media", node_id)
        self.storage.clear_scratch()  # outputs of a previous run that no server adopted
        self.scratch = data_dir / "ai-scratch" / "".join(c if c.isalnum() else "_" for c in node_id)
        shutil.rmtree(self.scratch, ignore_errors=True)
        self.allowed = parse_networks(ai.url_allow_networks)
        self.started_at = time.time()
        self.running = 0
        self.waiting = 0  # work the transport received and has not started; see ``received``
        self._lock = threading.Lock()
        self._vads = threading.local()
        self._cpu = _Cpu(time.monotonic(), time.process_time())
        # (kind, outcome) → [jobs, seconds] since the node started, for the operators' metrics.
        self.finished: dict[tuple[str, str], list[float]] = {}

    def _vad(self) -> Vad:
        vad = getattr(self._vads, "vad", None)
        if vad is None:
            vad = self._vads.vad = Vad()
        return vad

    # -- what the node is ------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """The heartbeat: who, where, how loaded, which models."""
        self.registry.refresh()
        now, used = time.monotonic(), time.process_time()
        cpu = 100.0 * (used - self._cpu.used) / max(now - self._cpu.wall, 1e-3)
        self._cpu = _Cpu(now, used)
        models = self.registry.describe()
        return {
            "node_id": self.node_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "cpu_count": os.cpu_count() or 1,
            "cpu_percent": round(cpu, 1),
            "load_average": round(os.getloadavg()[0], 2),
            "memory_rss_bytes": memory.rss_bytes(),
            "memory_total_bytes": memory.total_bytes(),
            "running_jobs": self.running,
            "queue_depth": self.running + self.waiting,
            "concurrency": self.settings.ai.node_concurrency,
            "loaded_models": [
                {"model_id": m["model_id"], "memory_bytes": m["memory_bytes"]}
                for m in models
                if m["status"] == "loaded"
            ],
            "models": models,
            "started_at": self.started_at,
            "last_seen": time.time(),
            "jobs_finished": self._finished_jobs(),
        }

    def _finished_jobs(self) -> list[dict[str, Any]]:
        with self._lock:
            return [
                {"kind": kind, "outcome": outcome, "count": int(count), "seconds": round(seconds, 3)}
                for (kind, outcome), (count, seconds) in sorted(self.finished.items())
            ]

    # -- commands addressed to this node ---------------------------------------------------------

    def command(self, name: str, args: dict[str, Any]) -> dict[str, Any]:
        """load, unload, status or health; an ``error`` key says why one could not be done."""
        try:
            if name == "load":
                return self.registry.load(args["model_id"])
            if name == "unload":
                return self.registry.unload(args["model_id"])
            if name == "status":
                return self.registry.state(args["model_id"]).describe()
            if name == "health":
                return self.health_check()
        except UnknownModel:
            return {"error": f"model {args.get('model_id')} is not on node {self.node_id}", "error_kind": "not_found"}
        except ModelError as exc:
            described = self.registry.state(args["model_id"]).describe() if "model_id" in args else {}
            return described | {"error": str(exc), "error_kind": "model"}
        return {"error": f"unknown command {name}", "error_kind": "input"}

    def health_check(self) -> dict[str, Any]:
        """A real inference on one second of a test signal: the VAD always, and each loaded model."""
        t = np.arange(SAMPLE_RATE, dtype=np.float32) / SAMPLE_RATE
        clip = (0.3 * np.sin(2 * np.pi * (200 + 300 * t) * t)).astype(np.float32)
        # For picture models: a 32x32 gradient.
        picture = np.broadcast_to((np.arange(32, dtype=np.uint8) * 8)[:, None, None], (32, 32, 3)).copy()
        checks = []
        started = time.perf_counter()
        self._vad().probabilities(clip)
        checks.append({"check": "vad", "ok": True, "latency_ms": round(1000 * (time.perf_counter() - started), 2)})
        for model_id in self.registry.loaded():
            began = time.perf_counter()
            try:
                with self.registry.using(model_id) as engine:
                    engine.infer(picture if isinstance(engine, UpscaleEngine) else clip, None)
                checks.append(
                    {"check": model_id, "ok": True, "latency_ms": round(1000 * (time.perf_counter() - began), 2)}
                )
            except Exception as exc:
                checks.append({"check": model_id, "ok": False, "error": f"{type(exc).__name__}: {exc}"})
        return {
            "node_id": self.node_id,
            "healthy": all(check["ok"] for check in checks),
            "latency_ms": round(1000 * (time.perf_counter() - started), 2),
            "checks": checks,
        }

    # -- jobs ------------------------------------------------------------------------------------

    def received(self, change: int) -> None:
        with self._lock:
            self.waiting += change

    def run_job(self, job: dict[str, Any], report: JobReport) -> None:
        """Run one job to an answer or a clear failure; never raises."""
        job_id = job["job_id"]
        attempt = report.started(job_id, self.node_id)
        if attempt > MAX_ATTEMPTS:
            report.finished(job_id, None, "the nodes running this job stopped before it finished; giving up", "node")
            return
        with self._lock:
            self.running += 1
        began = time.monotonic()
        outcome = "internal"
        source: Path | None = None
        try:
            source, temporary = self._source(job)
            if job["kind"] in FILE_KINDS:
                result = self._file_job(job, source, lambda percent: report.progress(job_id, percent))
                report.finished(job_id, result, None, None)
                outcome = "done"
                log.info("job %s (%s) done", job_id, job["kind"])
                return
            pcm = audio.decode(source, self.settings.ai.max_audio_seconds)
            model_id = (
                job.get("model_id")
                or choose(self.registry.describe(), job["kind"], job.get("language"), None)["model_id"]
            )
            result = run_task(
                self.registry,
                self._vad(),
                job["kind"],
                model_id,
                pcm,
                job.get("language"),
                job.get("options", {}),
                lambda percent: report.progress(job_id, percent),
            )
            report.finished(job_id, result, None, None)
            outcome = "done"
        except (BadAudio, UrlRefused, JobFailed) as exc:
            outcome = "input"
            report.finished(job_id, None, str(exc), "input")
        except (ModelError, Unavailable, UnknownModel) as exc:
            outcome = "unavailable"
            report.finished(job_id, None, str(exc), "unavailable")
        except Exception as exc:
            log.exception("job %s failed", job_id)
            report.finished(job_id, None, f"internal error ({type(exc).__name__})", "internal")
        else:
            log.info("job %s (%s) done", job_id, job["kind"])
        finally:
            with self._lock:
                self.running -= 1
                tally = self.finished.setdefault((job["kind"], outcome), [0, 0.0])
                tally[0] += 1
                tally[1] += time.monotonic() - began
            if source is not None and temporary:
                source.unlink(missing_ok=True)

    def _file_job(self, job: dict[str, Any], source: Path, progress: Callable[[int], None]) -> dict[str, Any]:
        """Denoise or enhance ``source`` into a new file in this node's scratch folder; the answer
        says where (``output``) and what was measured."""
        target_dir = self.storage.scratch_path("")
        target_dir.mkdir(mode=0o700)
        name = job["source"].get("file_name") or "input"
        options = job.get("options", {})
        try:
            if job["kind"] == "enhancement" and job.get("model_id"):
                with self.registry.using(job["model_id"]) as engine:
                    if not isinstance(engine, UpscaleEngine):
                        raise Unavailable(f"model {job['model_id']} is not a super-resolution model")
                    result = enhance_file(source, target_dir, name, options["operations"], progress, engine)
            elif job["kind"] == "enhancement":
                result = enhance_file(source, target_dir, name, options["operations"], progress)
            else:
                with self.registry.using(job["model_id"]) as engine:
                    if not isinstance(engine, DenoiseEngine):
                        raise Unavailable(f"model {job['model_id']} is not a denoising model")
                    result = denoise_file(engine, job["model_id"], source, target_dir, name, options, progress)
            # A file of its own in the scratch folder, so that adopting it leaves nothing behind.
            produced = Path(result["output"]["path"])
            final = self.storage.scratch_path(produced.suffix)
            produced.rename(final)
            result["output"]["path"] = str(final)
            return result
        finally:
            shutil.rmtree(target_dir, ignore_errors=True)

    def _source(self, job: dict[str, Any]) -> tuple[Path, bool]:
        source = job["source"]
        if "storage_key" in source:
            path = self.storage.local_path(source["storage_key"])
            if not path.is_file():
                raise BadAudio(f"the file is not reachable from node {self.node_id} (is the media directory shared?)")
            return path, False
        self.scratch.mkdir(parents=True, exist_ok=True)
        target = self.scratch / f"{job['job_id']}.input"
        ai = self.settings.ai
        try:
            asyncio.run(
                fetch(
                    source["url"],
                    target,
                    max_bytes=ai.max_input_bytes,
                    timeout=ai.fetch_timeout_seconds,
                    allowed=self.allowed,
                )
            )
        except BaseException:
            target.unlink(missing_ok=True)
            raise
        return target, True
