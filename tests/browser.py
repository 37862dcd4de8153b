"""Headless Chromium driving the web client in ``web/``: the distribution's browser, its flags, and
reading a page's media state. Under CI a missing browser or Playwright is a failure, never a skip."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from tests.conftest import IN_CI
from tests.server_process import ServerProcess

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if IN_CI:
    if CHROMIUM is None:
        raise RuntimeError("Chromium is required for the browser tests under CI (apt-get install chromium)")
    import playwright.async_api as playwright_api
else:
    playwright_api = pytest.importorskip("playwright.async_api")
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
    # Three simulcast layers from a 640x360 camera (Chromium would otherwise send two at that size).
    "--force-fieldtrials=WebRTC-LegacySimulcastLayerLimit/Disabled/",
]
WIDTH, HEIGHT = 640, 360
REMOTE_UFRAGS = """[window.huiyi.publisher, window.huiyi.subscriber].map(
    (pc) => (pc.remoteDescription.sdp.match(/a=ice-ufrag:(\\S+)/) || [])[1] || null)"""

needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed")


@asynccontextmanager
async def launch(*extra_flags: str, executable: str | None = None) -> AsyncIterator[Any]:
    """A headless Chromium with a fake camera and microphone, closed on leaving; ``executable`` runs
    it some other way (inside a test link's namespace: tests/links.py)."""
    async with playwright_api.async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=executable or CHROMIUM, headless=True, args=[*FLAGS, *extra_flags]
        )
        try:
            yield launched
        finally:
            await launched.close()


async def open_participant(browser: Any, server: ServerProcess, meeting_id: int, token: str, user_id: int) -> Any:
    """A page of the web client that has joined the meeting's media with camera and microphone."""
    page = await (await browser.new_context()).new_page()
    page.on("console", lambda entry: entry.type == "error" and print(f"[user {user_id}] {entry.text}"))
    query = f"token={token}&user_id={user_id}&meeting_id={meeting_id}&autostart=1&width={WIDTH}&height={HEIGHT}"
    await page.goto(f"{server.url}/?{query}")
    await page.evaluate("window.huiyiReady")
    return page


async def page_stats(page: Any) -> dict[str, Any]:
    return await page.evaluate("window.huiyi.getStats()")


async def inbound_video(page: Any) -> list[dict[str, Any]]:
    stats = await page_stats(page)
    return [entry for entry in stats["inbound"] if entry["kind"] == "video" and entry.get("user_id")]


async def video_from(page: Any, user_id: int) -> dict[str, Any] | None:
    """What the page receives of ``user_id``'s video (``inbound-rtp`` statistics), if anything."""
    return next((entry for entry in await inbound_video(page) if entry["user_id"] == user_id), None)
