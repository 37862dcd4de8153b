"""The TURN server runs in a process of its own, started and stopped with the main server.

Relaying is a packet-per-packet loop in Python: on the main server's event loop it would compete
with HTTP, signaling and the SFU for the same core, and a thread would still share the GIL. A
process gets a core of its own, its own event loop, and fails alone. It needs nothing from the
main process but its settings and the shared secret.

The child is ``python -m turn``, so it imports only what the TURN server needs (not the main
program, as a multiprocessing child would). The two talk in JSON lines over the child's standard
input and output: the settings go first; the child answers when it listens (or why it cannot),
answers ``counters`` requests, and stops on ``stop`` or when its input closes because the main
process is gone. It logs to the standard error it shares with the main process.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import resource
import signal
import sys
from pathlib import Path
from typing import Any

from config.logformat import configure_logging
from config.settings import TurnSettings
from turn.server import Endpoints, TurnServer

log = logging.getLogger("huiyi.turn")

START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
ANSWER_TIMEOUT = 5.0
# Open descriptors the TURN process asks for when the hard limit is unlimited.
DESCRIPTOR_LIMIT = 65536
# Where the ``turn`` and ``config`` packages are, for a child started from a checkout.
_SOURCE_ROOT = str(Path(__file__).resolve().parents[1])


class TurnProcess:
    """The main server's handle on the TURN process."""

    def __init__(self, settings: TurnSettings, secret: str, log_level: str = "INFO", log_format: str = "text") -> None:
        self.settings = settings
        self.secret = secret
        self.log_level = log_level
        self.log_format = log_format
        self.endpoints: Endpoints | None = None
        self._child: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._child is not None else None

    @property
    def running(self) -> bool:
        """Started, and still alive."""
        return self.endpoints is not None and self._child is not None and self._child.returncode is None

    async def start(self) -> Endpoints:
        environment = dict(os.environ)
        environment["PYTHONPATH"] = os.pathsep.join(filter(None, [_SOURCE_ROOT, environment.get("PYTHONPATH")]))
        self._child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "turn",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=environment,
        )
        start = {
            "settings": self.settings.model_dump(mode="json"),
            "secret": self.secret,
            "log_level": self.log_level,
            "log_format": self.log_format,
        }
        try:
            reply = await self._exchange(start, START_TIMEOUT)
        except (RuntimeError, OSError) as exc:
            reply = {"failed": str(exc)}
        if "ready" not in reply:
            await self.close()
            raise RuntimeError(f"the TURN server did not start: {reply.get('failed', reply)}")
        self.endpoints = Endpoints(**reply["ready"])
        return self.endpoints

    async def _exchange(self, message: dict[str, Any], timeout: float) -> dict[str, Any]:
        child = self._child
        if child is None or child.stdin is None or child.stdout is None:
            raise RuntimeError("the TURN server is not running")
        async with self._lock:
            child.stdin.write(json.dumps(message).encode() + b"\n")
            await child.stdin.drain()
            try:
                line = await asyncio.wait_for(child.stdout.readline(), timeout)
            except TimeoutError:
                raise RuntimeError(f"no answer within {timeout:.0f} s") from None
        if not line:
            raise RuntimeError(f"it exited ({await child.wait()})")
        answer: dict[str, Any] = json.loads(line)
        return answer

    async def counters(self) -> dict[str, int]:
        """The TURN server's counters, as of now."""
        answer = await self._exchange({"command": "counters"}, ANSWER_TIMEOUT)
        counters: dict[str, int] = answer["counters"]
        return counters

    def log_status(self) -> None:
        """The TURN process logs its status line (it has its own SIGUSR1 handler)."""
        # Before it is ready the child has no handler yet, and the signal would end it.
        if self.running and self._child is not None:
            self._child.send_signal(signal.SIGUSR1)
        elif self.endpoints is not None and self._child is not None:
            log.warning("turn server process is not running (exit status %s)", self._child.returncode)

    async def close(self) -> None:
        child = self._child
        if child is None:
            return
        self._child, self.endpoints = None, None
        if child.returncode is None and child.stdin is not None:
            with contextlib.suppress(OSError, RuntimeError):
                child.stdin.write(b'{"command": "stop"}\n')
                await child.stdin.drain()
                child.stdin.close()
        try:
            await asyncio.wait_for(child.wait(), STOP_TIMEOUT)
        except TimeoutError:
            log.warning("turn server did not stop within %.0f s; killing it", STOP_TIMEOUT)
            child.kill()
            await child.wait()


# the child ------------------------------------------------------------------------------------


def main() -> int:
    """``python -m turn``: serve until told to stop, or until the main process is gone."""
    # Ctrl-C reaches the whole process group; the main process decides when this one stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    first = sys.stdin.buffer.readline()
    if not first:
        return 1
    start = json.loads(first)
    configure_logging(start["log_level"], start.get("log_format", "text"))
    try:
        import uvloop
    except ImportError:
        pass
    else:
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    settings = TurnSettings.model_validate(start["settings"])
    _raise_descriptor_limit()
    return asyncio.run(_serve(settings, start["secret"]))


def _raise_descriptor_limit() -> None:
    """Every allocation holds two descriptors (its relay socket, and its UDP client's own socket or
    its TCP connection), more than the usual soft limit of 1024 allows at ``max_allocations``: take
    what the hard limit grants."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = DESCRIPTOR_LIMIT if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def _reply(message: dict[str, Any]) -> bool:
    """Answer the main process; False when it is gone."""
    try:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        return False
    return True


async def _serve(settings: TurnSettings, secret: str) -> int:
    loop = asyncio.get_running_loop()
    server = TurnServer(settings, secret)
    try:
        endpoints = await server.start()
    except (OSError, ValueError) as exc:
        log.error("turn server cannot start: %s", exc)
        await server.close()
        _reply({"failed": str(exc)})
        return 1
    commands = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(commands), sys.stdin)
    stopped = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stopped.set)
    loop.add_signal_handler(signal.SIGUSR1, server.log_status)

    async def obey() -> None:
        if _reply({"ready": dataclasses.asdict(endpoints)}):
            while line := await commands.readline():  # an empty line: the main process is gone
                if json.loads(line).get("command") != "counters":
                    break
                if not _reply({"counters": server.counters.as_dict()}):
                    break
        stopped.set()

    listener = loop.create_task(obey())
    try:
        await stopped.wait()
    finally:
        listener.cancel()
        log.info("turn server stopping; %s", server.status_line())
        await server.close()
    return 0
