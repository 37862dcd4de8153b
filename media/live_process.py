"""The server's handle on one live compositor process (``python -m media.live``).

It is the media server's ``Outlet`` for a stream (sfu/live.py): tracks and encoded frames go down
the child's standard input. Writing never waits: the pipe's buffer on this side is capped, and a
frame that would go past the cap is refused, so a compositor that falls behind costs frames,
never the media server's time. The child's status lines come back to ``on_event``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from media.live import CONFIG, FRAME, GONE, KEY, MEDIA, STOP, TRACK, LiveConfig, message
from media.mux import EncodedFrame

log = logging.getLogger("huiyi.media.live")

START_TIMEOUT = 30.0
# Outputs finish on stop: an RTMP server that stopped answering holds its close up to its timeout.
STOP_TIMEOUT = 20.0
MAX_BUFFERED = 4 * 1024 * 1024  # bytes waiting for the child: about 10 s of a few small videos
_SOURCE_ROOT = str(Path(__file__).resolve().parents[1])

OnEvent = Callable[[dict[str, Any]], None]


class CompositorUnavailable(RuntimeError):
    """The compositor process did not start."""


class LiveProcess:
    def __init__(self, config: LiveConfig, on_event: OnEvent, log_level: str = "INFO") -> None:
        self.config = config
        self.on_event = on_event
        self.log_level = log_level
        self.refused = 0  # frames refused because the child was behind
        self._child: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[dict[str, Any]] | None = None
        self.ended: asyncio.Event = asyncio.Event()

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._child is not None else None

    async def start(self) -> None:
        environment = dict(os.environ)
        environment["PYTHONPATH"] = os.pathsep.join(filter(None, [_SOURCE_ROOT, environment.get("PYTHONPATH")]))
        environment["HUIYI_LIVE_LOG_LEVEL"] = self.log_level
        self._child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "media.live",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=environment,
        )
        self._ready = asyncio.get_running_loop().create_future()
        self._reader = asyncio.get_running_loop().create_task(self._read())
        settings = {"config": asdict(self.config)}
        self._write(message(CONFIG, json.dumps(settings).encode()))
        try:
            reply = await asyncio.wait_for(asyncio.shield(self._ready), START_TIMEOUT)
        except TimeoutError:
            reply = {"event": "failed", "error": f"no answer within {START_TIMEOUT:.0f} s"}
        if reply.get("event") != "ready":
            await self.stop()
            raise CompositorUnavailable(str(reply.get("error") or "the compositor exited"))

    async def _read(self) -> None:
        child = self._child
        assert child is not None and child.stdout is not None and self._ready is not None
        try:
            while line := await child.stdout.readline():
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if not self._ready.done():
                    self._ready.set_result(event)
                    continue
                try:
                    self.on_event(event)
                except Exception:
                    log.exception("a live compositor event could not be handled")
        finally:
            if not self._ready.done():
                self._ready.set_result({"event": "failed", "error": "the compositor exited"})
            self.ended.set()

    # the outlet -------------------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        child = self._child
        return (
            child is not None
            and child.returncode is None
            and child.stdin is not None
            and not child.stdin.transport.is_closing()
        )

    def _write(self, data: bytes) -> bool:
        if not self.alive:
            return False
        assert self._child is not None and self._child.stdin is not None
        self._child.stdin.write(data)
        return True

    def add_track(self, key: int, user_id: int, kind: str, codec: str) -> None:
        track = {"key": key, "user_id": user_id, "kind": kind, "codec": codec}
        self._write(message(TRACK, json.dumps(track).encode()))

    def frame(self, key: int, frame: EncodedFrame) -> bool:
        if not self.alive:
            return False
        assert self._child is not None and self._child.stdin is not None
        if self._child.stdin.transport.get_write_buffer_size() > MAX_BUFFERED:
            self.refused += 1
            return False
        body = FRAME.pack(key, frame.wallclock, frame.keyframe) + frame.data
        return self._write(message(MEDIA, body))

    def remove_track(self, key: int) -> None:
        self._write(message(GONE, KEY.pack(key)))

    # the end ----------------------------------------------------------------------------------

    async def stop(self) -> None:
        """Ask the compositor to finish its outputs and wait for it (killed if it does not)."""
        child = self._child
        if child is None:
            return
        if self._write(message(STOP)):
            assert child.stdin is not None
            with contextlib.suppress(OSError, RuntimeError, ConnectionError):
                await child.stdin.drain()
                child.stdin.close()
        try:
            await asyncio.wait_for(child.wait(), STOP_TIMEOUT)
        except TimeoutError:
            log.warning("live compositor %s did not finish within %.0f s; killing it", child.pid, STOP_TIMEOUT)
            child.kill()
            await child.wait()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)
