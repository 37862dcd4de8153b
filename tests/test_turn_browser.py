"""Chromium peers that may use relayed candidates only (``?relay=1``, iceTransportPolicy "relay"),
as on a network that lets nothing but the TURN server through: with the server's TURN server on,
two of them meet and decode each other's video through it; with it off, the same two never
connect. The SFU and the TURN server listen on 127.0.0.1."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from tests.browser import needs_chromium
from tests.rtc_clients import invite_code_of, join_meeting, make_meeting, make_user
from tests.server_process import ServerProcess, start_server
from tests.support import until

LOOPBACK_ENV = {"HUIYI_RATE_LIMITS": "off", "HUIYI_SFU_BIND_ADDRESSES": "127.0.0.1"}
TURN_ON = {
    "HUIYI_TURN_ENABLED": "true",
    "HUIYI_TURN_LISTEN_HOST": "127.0.0.1",
    "HUIYI_TURN_PORT": "0",
    "HUIYI_TURN_RELAY_PORT_MIN": "0",
    "HUIYI_TURN_RELAY_PORT_MAX": "0",
    "HUIYI_TURN_ALLOWED_PEER_CIDRS": "127.0.0.1/32",
}
# Which candidate each connection sends media over, as the browser reports it.
SELECTED_CANDIDATE_TYPES = """async () => {
  const types = [];
  for (const pc of [window.huiyi.publisher, window.huiyi.subscriber]) {
    if (!pc) { types.push(null); continue; }
    const report = await pc.getStats();
    let pair = null;
    for (const stats of report.values()) {
      if (stats.type === 'transport' && stats.selectedCandidatePairId) pair = report.get(stats.selectedCandidatePairId);
    }
    types.push(pair ? report.get(pair.localCandidateId).candidateType : null);
  }
  return types;
}"""
CONNECTION_STATES = "[window.huiyi.publisher, window.huiyi.subscriber].map((pc) => pc ? pc.iceConnectionState : null)"

pytestmark = needs_chromium


async def relay_only_pair(browser: Any, server: ServerProcess) -> tuple[list[Any], list[int]]:
    """Two participants of one meeting, each in a page that publishes and may only relay."""
    accounts = [make_user(server.url, name) for name in ("ann", "ben")]
    meeting_id = make_meeting(server.url, accounts[0][0])
    code = invite_code_of(server.url, accounts[0][0], meeting_id)
    pages = []
    for token, user_id in accounts:
        join_meeting(server.url, token, meeting_id, code)
        page = await (await browser.new_context()).new_page()
        query = f"token={token}&user_id={user_id}&meeting_id={meeting_id}&autostart=1&width=320&height=240&relay=1"
        await page.goto(f"{server.url}/?{query}")
        await page.evaluate("window.huiyiReady")
        pages.append(page)
    return pages, [user_id for _, user_id in accounts]


async def frames_from(page: Any, user_id: int) -> int:
    stats = await page.evaluate("window.huiyi.getStats()")
    return sum(
        entry.get("framesDecoded") or 0
        for entry in stats["inbound"]
        if entry["kind"] == "video" and entry.get("user_id") == user_id
    )


async def test_relay_only_browsers_meet_through_the_turn_server(browser, tmp_path: Path) -> None:
    server = start_server(
        "--data-dir", str(tmp_path / "data"), log=tmp_path / "server.log", env={**LOOPBACK_ENV, **TURN_ON}
    )
    try:
        pages, ids = await relay_only_pair(browser, server)
        for page, other in ((pages[0], ids[1]), (pages[1], ids[0])):

            async def decoding(page: Any = page, other: int = other) -> bool:
                return await frames_from(page, other) > 30

            await until(decoding, f"user {other}'s video to be decoded through the relay", 40, interval=0.5)
        for page in pages:
            assert await page.evaluate(SELECTED_CANDIDATE_TYPES) == ["relay", "relay"]
        log = server.log.read_text()
        assert log.count("turn allocation 127.0.0.1:") >= 4, "an allocation per connection"
    finally:
        server.stop()


async def test_relay_only_browsers_cannot_connect_with_turn_off(browser, tmp_path: Path) -> None:
    server = start_server("--data-dir", str(tmp_path / "data"), log=tmp_path / "server.log", env=LOOPBACK_ENV)
    try:
        pages, ids = await relay_only_pair(browser, server)
        # Given no ICE servers, a relay-only page has no candidate to offer: within 15 s (more than
        # the other test needs to decode 30 frames) neither connection gets anywhere.
        deadline = asyncio.get_running_loop().time() + 15
        while asyncio.get_running_loop().time() < deadline:
            for page, other in ((pages[0], ids[1]), (pages[1], ids[0])):
                states = await page.evaluate(CONNECTION_STATES)
                assert not {"connected", "completed"} & set(states), states
                assert await frames_from(page, other) == 0
            await asyncio.sleep(0.5)
    finally:
        server.stop()
