"""Firefox in a meeting with Chromium, both on the web client in web/: each decodes the other's
video. Firefox is Debian's ESR, driven over WebDriver BiDi (tests/firefox.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser import HEIGHT, WIDTH, needs_chromium, open_participant, video_from
from tests.conftest import IN_CI
from tests.firefox import FIREFOX, Firefox
from tests.server_process import ServerProcess, invite_code_of, join_meeting, make_meeting, make_user, start_server
from tests.support import until

if FIREFOX is None and IN_CI:
    raise RuntimeError("Firefox is required under CI (apt-get install firefox-esr)")
pytestmark = [needs_chromium, pytest.mark.skipif(FIREFOX is None, reason="Firefox is not installed")]

FIREFOX_VIDEO_FROM = """window.huiyi.getStats().then(({inbound}) =>
    inbound.filter((s) => s.kind === 'video' && s.user_id === %d).map((s) => s.framesDecoded || 0))"""


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    env = {"HUIYI_RATE_LIMITS": "off", "HUIYI_SFU_BIND_ADDRESSES": "127.0.0.1", "HUIYI_TURN_ENABLED": "false"}
    process = start_server("--data-dir", str(tmp_path / "data"), log=tmp_path / "server.log", env=env)
    yield process
    process.stop()


async def test_firefox_and_chromium_see_each_other(server: ServerProcess, browser: Any) -> None:
    (chrome_token, chrome_id), (fox_token, fox_id) = make_user(server.url, "cora"), make_user(server.url, "finn")
    meeting_id = make_meeting(server.url, chrome_token)
    join_meeting(server.url, chrome_token, meeting_id)
    join_meeting(server.url, fox_token, meeting_id, invite_code_of(server.url, chrome_token, meeting_id))
    chrome = await open_participant(browser, server, meeting_id, chrome_token, chrome_id)
    async with Firefox() as firefox:
        query = f"token={fox_token}&user_id={fox_id}&meeting_id={meeting_id}&autostart=1&width={WIDTH}&height={HEIGHT}"
        await firefox.goto(f"{server.url}/?{query}")
        await firefox.evaluate("window.huiyiReady.then(() => true)")

        async def firefox_decodes() -> bool:
            return any(frames > 30 for frames in await firefox.evaluate(FIREFOX_VIDEO_FROM % chrome_id))

        async def chromium_decodes() -> bool:
            entry = await video_from(chrome, fox_id)
            return entry is not None and (entry.get("framesDecoded") or 0) > 30

        await until(firefox_decodes, "Firefox to decode Chromium's video", 40, interval=0.5)
        await until(chromium_decodes, "Chromium to decode Firefox's video", 40, interval=0.5)
        # Firefox shows it on the page too: Chromium's tile plays.
        playing = f"document.querySelector(\"[data-key='user:{chrome_id}'] video\").videoWidth > 0"
        await until(lambda: firefox.evaluate(playing), "Chromium's tile to play in Firefox", 20, interval=0.5)
