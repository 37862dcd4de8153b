"""Helpers for driving the meeting app in web/ as people do: screenshots of its screens kept as
test artefacts, and axe-core's accessibility check of a screen."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# Kept after the run (CI artefacts), ignored by git.
ARTIFACTS = ROOT / "test-artifacts" / "webapp"
BLOCKING_IMPACTS = {"serious", "critical"}


async def screenshot(page: Any, name: str) -> Path:
    """The page as it looks now, saved as ``test-artifacts/webapp/<name>.png``."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{re.sub(r'[^a-z0-9-]+', '-', name.lower())}.png"
    await page.screenshot(path=str(path))
    return path


async def accessibility_problems(page: Any) -> list[str]:
    """axe-core's violations of serious or critical impact on the page as it is now."""
    from axe_playwright_python.async_playwright import Axe

    results = await Axe().run(page)
    return [
        f"{violation['id']} ({violation['impact']}): {violation['help']} — "
        + "; ".join(
            node["target"][0] if isinstance(node["target"][0], str) else str(node["target"])
            for node in violation["nodes"][:5]
        )
        for violation in results.response["violations"]
        if violation.get("impact") in BLOCKING_IMPACTS
    ]


async def check_screen(page: Any, name: str, checked: dict[str, list[str]]) -> None:
    """Screenshot the screen and record what axe-core finds on it (also added to
    ``test-artifacts/webapp/accessibility.json``, screen by screen)."""
    await screenshot(page, name)
    checked[name] = await accessibility_problems(page)
    report = ARTIFACTS / "accessibility.json"
    every = json.loads(report.read_text()) if report.exists() else {}
    report.write_text(json.dumps({**every, name: checked[name]}, indent=2, ensure_ascii=False))


class CuttableProxy:
    """A TCP relay in front of the server, for one browser: cutting it drops that browser's socket
    and API connections mid-meeting (its media, on UDP to the media server, is not relayed), and
    while it is held, new connections are refused, as on a network that went away."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.held = False
        self.server: asyncio.Server | None = None
        self.url = ""
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.held:
            writer.close()
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, upstream_writer}

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                sink.close()
                self._writers.discard(sink)

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

    def cut(self, *, hold: bool) -> None:
        """Drop every open connection; with ``hold``, refuse new ones until ``resume``."""
        self.held = hold
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    def resume(self) -> None:
        self.held = False

    async def close(self) -> None:
        self.cut(hold=True)
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
