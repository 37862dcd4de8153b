"""Audio denoising and video enhancement as media jobs whose work runs on the AI worker nodes.

The job runner keeps these jobs as it keeps the others (in the database, leased, taken over when a
server stops, their outputs turned into media files of the job's owner); what differs is who does
the work: an AI job of the same id, queued for the worker nodes, followed here until it ends. The
node writes its output into its scratch folder of the shared media directory, from where the
runner adopts it. A server that restarts while a node still runs the job follows it again rather
than starting it over."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ai.registry import Unavailable
from ai.service import AiService
from control.jobs.runner import Executor
from control.storage import LocalStorage
from control.store.media import JobRecord
from media.jobs import JobFailed

log = logging.getLogger("huiyi.enhancement")
DENOISING = "audio-denoising"
ENHANCEMENT = "video-enhancement"
# The AI task of each job kind.
TASKS = {DENOISING: "denoising", ENHANCEMENT: "enhancement"}
POLL_SECONDS = 0.2


def executors(ai: AiService, storage: LocalStorage) -> dict[str, Executor]:
    run = NodeWork(ai, storage)
    return {kind: run for kind in TASKS}


class NodeWork:
    def __init__(self, ai: AiService, storage: LocalStorage) -> None:
        self.ai = ai
        self.scratch = (storage.root / ".scratch").resolve()

    async def __call__(
        self, job: JobRecord, progress: Callable[[int], None]
    ) -> tuple[list[tuple[str, str]], dict[str, Any]]:
        params = job.params
        try:
            current = await self.ai.job(job.id)
            if current is None or current["status"] == "failed":
                current = await self.ai.start(
                    job.id, job.user_id, TASKS[job.kind], params.get("model"), None, params["options"], params["source"]
                )
            while current["status"] not in ("succeeded", "failed"):
                await asyncio.sleep(POLL_SECONDS)
                progress(int(current["progress"]))
                found = await self.ai.job(job.id)
                if found is None:
                    raise JobFailed("the AI service lost this job (its results expired)", "unavailable")
                current = found
        except Unavailable as exc:
            raise JobFailed(str(exc), "unavailable") from None
        if current["status"] == "failed":
            kind = "input" if current["error_kind"] == "input" else "unavailable"
            raise JobFailed(current["error"] or "the job failed on its node", kind)
        result = dict(current["result"])
        output = result.pop("output")
        path = Path(output["path"]).resolve()
        if not path.is_relative_to(self.scratch) or not path.is_file():
            raise JobFailed(f"node {current['node_id']}'s output is not in the shared media directory", "unavailable")
        result["node_id"] = current["node_id"]
        return [(str(path), str(output["name"]))], result
