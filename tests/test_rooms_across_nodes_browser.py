"""The web client (headless Chromium) on one node of two gets its media back by itself when the node
running its meeting's media dies."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.browser import needs_chromium, open_participant, video_from
from tests.rtc_clients import Participant, connect_user
from tests.server_process import ServerProcess, invite_code_of, join_meeting, make_user
from tests.support import until

LOOPBACK = {"HUIYI_SFU_BIND_ADDRESSES": "127.0.0.1"}
RECOVERY_SECONDS = 10.0


@needs_chromium
@pytest.mark.parametrize("nodes", [LOOPBACK], indirect=True)
async def test_a_browser_gets_its_media_back_by_itself_when_the_media_node_dies(
    nodes: tuple[ServerProcess, ServerProcess], people: list[Participant], browser: Any
) -> None:
    a, b = nodes
    alice = await connect_user(a.url, "alice", people=people)  # the room goes to node a
    token, user_id = make_user(b.url, "bea")
    join_meeting(b.url, token, alice.meeting_id, invite_code_of(a.url, alice.token, alice.meeting_id))
    await alice.publish()
    page = await open_participant(browser, b, alice.meeting_id, token, user_id)  # the web client, on node b

    async def decoding(frames: int) -> bool:
        entry = await video_from(page, alice.user_id)
        return entry is not None and (entry.get("framesDecoded") or 0) > frames

    await until(lambda: decoding(10), "the browser to decode alice's video", 30, interval=0.25)
    await until(lambda: alice.receives_video(user_id, 10), "alice to decode the browser's video", 20)
    await page.evaluate("window.moves = 0; window.huiyi.addEventListener('reconnecting', () => window.moves++)")

    alice.fallback_urls = [b.url]
    a.process.kill()
    killed = time.monotonic()

    async def both_back() -> bool:
        moved = await page.evaluate("window.moves") > 0
        return moved and await decoding(5) and alice.rebuilds > 0 and alice.receives_video(user_id, 5)

    await until(both_back, "the browser and alice to receive each other again", RECOVERY_SECONDS, interval=0.25)
    print(f"browser media back on node b {time.monotonic() - killed:.1f} s after node a was killed")
    assert await page.evaluate("window.huiyi.state") == "connected"
