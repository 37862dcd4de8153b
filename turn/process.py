"""The TURN server runs in a process of its own, started and stopped with the main server.

Relaying is a packet-per-packet loop in Python: on the main server's event loop it would compete
with HTTP, signaling and the SFU for the same core, and a thread would still share the GIL. A
process gets a core of its own, its own event loop, and fails alone. It needs nothing from the
main process but its settings and the shared secret, handed over at start; the two talk over a
pipe: the child says when it listens (or why it cannot), and answers requests for its counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
from typing import Any

from config.settings import TurnSettings
from turn.server import Endpoints, TurnServer

log = logging.getLogger("huiyi.turn")

START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0


class TurnProcess:
    """The main server's handle on the TURN process."""

    def __init__(self, settings: TurnSettings, secret: str, log_level: str = "INFO") -> None:
        self.settings = settings
        self.secret = secret
        self.log_level = log_level
        self.endpoints: Endpoints | None = None
        self._process: multiprocessing.process.BaseProcess | None = None
        self._pipe: multiprocessing.connection.Connection | None = None
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        """Started, and still alive."""
        return self.endpoints is not None and self._process is not None and self._process.is_alive()

    async def start(self) -> Endpoints:
        context = multiprocessing.get_context("spawn")
        ours, theirs = context.Pipe()
        process = context.Process(
            target=run,
            args=(self.settings, self.secret, self.log_level, theirs),
            name="huiyi-turn",
            daemon=True,
        )
        process.start()
        theirs.close()
        self._process, self._pipe = process, ours
        reply = await asyncio.to_thread(self._receive, START_TIMEOUT)
        if reply is None or reply[0] != "ready":
            await self.close()
            reason = reply[1] if reply is not None else f"no answer within {START_TIMEOUT:.0f} s"
            raise RuntimeError(f"the TURN server did not start: {reason}")
        self.endpoints = reply[1]
        return reply[1]

    def _receive(self, timeout: float) -> Any:
        pipe = self._pipe
        if pipe is None:
            return None
        try:
            if pipe.poll(timeout):
                return pipe.recv()
        except (EOFError, OSError):
            pass
        return None

    async def counters(self) -> dict[str, int]:
        """The TURN server's counters, as of now."""
        return await asyncio.to_thread(self._ask, "counters")

    def _ask(self, what: str) -> Any:
        with self._lock:
            if self._pipe is None:
                raise RuntimeError("the TURN server is not running")
            self._pipe.send((what,))
            reply = self._receive(5.0)
        if reply is None:
            raise RuntimeError("the TURN server did not answer")
        return reply[1]

    def log_status(self) -> None:
        """The TURN process logs its status line (it has its own SIGUSR1 handler)."""
        # Before it is ready the child has no handler yet, and the signal would end it.
        if self.running and self._process is not None and self._process.pid:
            os.kill(self._process.pid, signal.SIGUSR1)
        elif self.endpoints is not None:
            log.warning("turn server process is not running (exit code %s)", self._process and self._process.exitcode)

    async def close(self) -> None:
        process, pipe = self._process, self._pipe
        if process is None:
            return
        with contextlib.suppress(OSError, ValueError):
            if pipe is not None:
                with self._lock:
                    pipe.send(("stop",))
        await asyncio.to_thread(process.join, STOP_TIMEOUT)
        if process.is_alive():
            log.warning("turn server did not stop within %.0f s; killing it", STOP_TIMEOUT)
            process.kill()
            await asyncio.to_thread(process.join, STOP_TIMEOUT)
        if pipe is not None:
            pipe.close()
        self._process = self._pipe = None
        self.endpoints = None


# the child ------------------------------------------------------------------------------------


def run(
    settings: TurnSettings,
    secret: str,
    log_level: str,
    pipe: multiprocessing.connection.Connection,
) -> None:
    """The TURN process's main: serve until told to stop, or until the main process is gone."""
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    # Ctrl-C reaches the whole process group; the main process decides when this one stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import uvloop
    except ImportError:
        pass
    else:
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(_serve(settings, secret, pipe))


async def _serve(settings: TurnSettings, secret: str, pipe: multiprocessing.connection.Connection) -> None:
    loop = asyncio.get_running_loop()
    server = TurnServer(settings, secret)
    try:
        endpoints = await server.start()
    except (OSError, ValueError, RuntimeError) as exc:
        log.error("turn server cannot start: %s", exc)
        await server.close()
        pipe.send(("failed", str(exc)))
        return
    stopped = asyncio.Event()

    def on_command() -> None:
        try:
            command = pipe.recv()
        except (EOFError, OSError):
            command = ("stop",)  # the main process is gone
        if command[0] == "counters":
            pipe.send(("counters", server.counters.as_dict()))
        else:
            stopped.set()

    loop.add_reader(pipe.fileno(), on_command)
    loop.add_signal_handler(signal.SIGTERM, stopped.set)
    loop.add_signal_handler(signal.SIGUSR1, server.log_status)
    pipe.send(("ready", endpoints))
    try:
        await stopped.wait()
    finally:
        loop.remove_reader(pipe.fileno())
        log.info("turn server stopping; %s", server.status_line())
        await server.close()
