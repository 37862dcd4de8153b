"""Dynacast with real Chromium peers: when every subscriber of a simulcast camera takes its low layer,
the publisher's browser stops encoding the other two (its uplink falls to about the low layer's rate,
as its own ``outbound-rtp`` statistics count it), and when one subscriber asks for the high layer
again, the browser sends it again and that subscriber gets it within a few seconds."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sfu.dynacast import PAUSE_AFTER
from tests.browser import needs_chromium, open_participant, page_stats, video_from
from tests.rtc_clients import invite_code_of, join_meeting, make_meeting, make_user
from tests.server_process import ServerProcess, request, start_server
from tests.support import until

pytestmark = needs_chromium

RESUME_LIMIT = 8.0  # seconds from asking for the high layer to decoding it: "a few seconds"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    process = start_server(
        "--data-dir", str(tmp_path / "data"), log=tmp_path / "server.log", env={"HUIYI_RATE_LIMITS": "off"}
    )
    yield process
    process.stop()


# The publisher's video encodings as its browser counts them: bytes sent, key frames, PLIs received.
OUTBOUND_VIDEO = """async () => {
  const report = await window.huiyi.publisher.getStats();
  const encodings = {};
  for (const stats of report.values()) {
    if (stats.type === 'outbound-rtp' && stats.kind === 'video' && stats.rid) {
      encodings[stats.rid] = [stats.bytesSent || 0, stats.keyFramesEncoded || 0, stats.pliCount || 0];
    }
  }
  return encodings;
}"""


async def uplink(page: Any, seconds: float = 3.0) -> dict[str, Any]:
    """The page's outgoing video in bit/s over ``seconds``, per rid and in total (``"all"``), and the
    key frames each encoding sent meanwhile (``"keyframes"``)."""
    before, start = await page.evaluate(OUTBOUND_VIDEO), time.monotonic()
    await asyncio.sleep(seconds)
    after, elapsed = await page.evaluate(OUTBOUND_VIDEO), time.monotonic() - start
    rates: dict[str, Any] = {
        rid: int((after[rid][0] - before.get(rid, [0])[0]) * 8 / elapsed) for rid in sorted(after, key="lmh".index)
    }
    rates["all"] = sum(rates.values())
    rates["keyframes"] = {rid: after[rid][1] - before.get(rid, [0, 0])[1] for rid in after}
    return rates


async def test_unwatched_layers_are_paused_at_the_publisher_and_resumed_on_demand(server, browser) -> None:
    accounts = [make_user(server.url, name) for name in ("ann", "ben", "cat")]
    meeting_id = make_meeting(server.url, accounts[0][0])
    code = invite_code_of(server.url, accounts[0][0], meeting_id)
    for token, _ in accounts:
        join_meeting(server.url, token, meeting_id, code)
    pages = [await open_participant(browser, server, meeting_id, token, user_id) for token, user_id in accounts]
    ann, ben, cat = pages
    ann_id = accounts[0][1]

    def ann_video() -> dict[str, Any]:
        status, body = request("GET", f"{server.url}/api/v1/webrtc/room/{meeting_id}/stats", token=accounts[0][0])
        assert status == 200, body
        track = next(t for t in body["data"]["tracks"] if t["user_id"] == ann_id and t["kind"] == "video")
        forwarded = {
            sub["subscriber_user_id"]: sub["current_layer"]
            for sub in body["data"]["subscriptions"]
            if sub["track_id"] == track["track_id"]
        }
        return {"layers": {layer["name"]: layer for layer in track["layers"]}, "forwarded": forwarded}

    def paused() -> set[str]:
        return {name for name, layer in ann_video()["layers"].items() if layer["paused"]}

    async def decoding(page: Any, rid: str) -> bool:
        """The page decodes frames the size of ann's encoding ``rid``."""
        entry = await video_from(page, ann_id)
        widths = {e["rid"]: e.get("frameWidth") or 0 for e in (await page_stats(ann))["outbound"] if e.get("rid")}
        return entry is not None and bool(widths.get(rid)) and entry.get("frameWidth") == widths[rid]

    # Ben takes the medium layer, cat the high one: all three encodings are sent.
    await ben.evaluate("window.huiyi.setLayer('medium')")
    await until(lambda: decoding(ben, "m"), "ben to decode ann's medium layer", 40, interval=0.5)
    await until(lambda: decoding(cat, "h"), "cat to decode ann's high layer", 40, interval=0.5)
    await until(lambda: all(ann_video()["layers"][n]["active"] for n in ("low", "medium", "high")), "3 layers", 10)
    before = await uplink(ann)
    server_rates = {name: layer["bitrate"] for name, layer in ann_video()["layers"].items()}
    assert not paused()

    # Both ask for the low layer: after the pause delay the medium and high encodings stop.
    for page in (ben, cat):
        await page.evaluate("window.huiyi.setLayer('low')")
    asked_low = time.monotonic()
    await until(lambda: paused() == {"medium", "high"}, "ann's medium and high layers to be paused", 20, interval=0.5)
    paused_after = time.monotonic() - asked_low
    assert paused_after >= PAUSE_AFTER  # no sooner than the hysteresis allows

    async def encodings_stopped() -> bool:
        outbound = (await page_stats(ann))["outbound"]
        return {e["rid"]: e.get("active") for e in outbound if e["kind"] == "video"} == {
            "l": True,
            "m": False,
            "h": False,
        }

    await until(encodings_stopped, "ann's browser to stop its m and h encodings", 10, interval=0.5)
    after = await uplink(ann)
    print(f"\nann's video uplink, ben on medium, cat on high: {before}; the server measured {server_rates}")
    print(f"ann's video uplink, all receiving low:  {after} (paused {paused_after:.1f} s after the ask)")
    assert after["m"] == 0 and after["h"] == 0, after
    assert after["l"] > 0
    assert after["all"] < before["all"] / 2, (before, after)
    assert all(layer == "low" for layer in ann_video()["forwarded"].values())

    # Cat asks for the high layer: it is sent again and cat gets it within a few seconds.
    await cat.evaluate("window.huiyi.setLayer('high')")
    asked_high = time.monotonic()
    await until(lambda: decoding(cat, "h"), "cat to decode ann's high layer again", 30, interval=0.2)
    resumed_in = time.monotonic() - asked_high
    video = ann_video()
    assert video["forwarded"][accounts[2][1]] == "high"
    assert not video["layers"]["high"]["paused"]
    resumed = await uplink(ann)
    print(f"ann's video uplink, cat back on high:  {resumed}; cat decoded high {resumed_in:.1f} s after asking")
    assert resumed["h"] > 0
    assert resumed_in < RESUME_LIMIT, resumed_in
    # Ben still wants only low, so the medium layer stays paused.
    assert video["layers"]["medium"]["paused"]
