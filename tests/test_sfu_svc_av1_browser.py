"""AV1 SVC through the SFU with real Chromium peers: one publisher sends AV1 ``L3T3_KEY`` (three
spatial, three temporal layers on one stream, told apart by the dependency descriptor extension) from
a 1280x720 fake camera; two subscribers with different bitrate caps decode different picture sizes
cut from that one stream, and lifting the cap brings the full size back. The server drops a few
percent of what it sends, so repairs from the thinned, renumbered stream run too. The meeting is
recorded meanwhile: the AV1 video is left out (said in the log), its publisher's audio is kept."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser import needs_chromium, page_stats, video_from
from tests.rtc_clients import invite_code_of, join_meeting, make_user
from tests.server_process import ServerProcess, request, start_server
from tests.support import until
from tests.test_sfu_svc_browser import open_page

pytestmark = needs_chromium


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    process = start_server(
        "--data-dir",
        str(tmp_path / "data"),
        log=tmp_path / "server.log",
        env={"HUIYI_RATE_LIMITS": "off", "HUIYI_SFU_SIMULATED_LOSS": "0.02", "HUIYI_SFU_BIND_ADDRESSES": "127.0.0.1"},
    )
    yield process
    process.stop()


async def test_av1_svc_subscribers_get_the_sizes_their_caps_allow(server, browser, tmp_path: Path) -> None:
    accounts = [make_user(server.url, name) for name in ("ann", "ben", "cat")]
    meetings = f"{server.url}/api/v1/meetings"
    status, body = request("POST", meetings, {"title": "av1", "settings": {"enable_recording": True}}, accounts[0][0])
    assert status == 201, body
    meeting_id = body["data"]["meeting_id"]
    assert request("POST", f"{meetings}/{meeting_id}/start", token=accounts[0][0])[0] == 200
    code = invite_code_of(server.url, accounts[0][0], meeting_id)
    for token, _ in accounts:
        join_meeting(server.url, token, meeting_id, code)
    ann_id, ben_id, cat_id = (user_id for _, user_id in accounts)
    ann = await open_page(browser, server, meeting_id, *accounts[0], "codec=av1&svc=L3T3_KEY&width=1280&height=720")
    ben = await open_page(browser, server, meeting_id, *accounts[1], "audio=0&video=0")
    cat = await open_page(browser, server, meeting_id, *accounts[2], "audio=0&video=0")
    trace: list[str] = []
    forwarded: dict[int, str] = {}  # the rung the server forwards to Ben and Cat, as last seen

    def room_stats() -> dict[str, Any]:
        status, body = request("GET", f"{server.url}/api/v1/webrtc/room/{meeting_id}/stats", token=accounts[0][0])
        assert status == 200, body
        return body["data"]

    def subscription_of(stats: dict[str, Any], user_id: int) -> dict[str, Any]:
        return next(
            sub
            for sub in stats["subscriptions"]
            if sub["subscriber_user_id"] == user_id and sub["publisher_user_id"] == ann_id and sub["kind"] == "video"
        )

    def rungs() -> dict[str, int]:
        """Ann's rungs as the server measures them; notes what it forwards to Ben and Cat."""
        stats = room_stats()
        track = next(t for t in stats["tracks"] if t["user_id"] == ann_id and t["kind"] == "video")
        assert track["codec"] == "av1" and not track["simulcast"], track
        rates = {rung["name"]: rung["bitrate"] for rung in track["svc"] if rung["active"]}
        forwarded.update({user: subscription_of(stats, user)["current_layer"] for user in (ben_id, cat_id)})
        trace.append(f"rungs={rates} forwarded={forwarded}")
        return rates

    async def sent_width() -> int:
        outbound = [e for e in (await page_stats(ann))["outbound"] if e["kind"] == "video"]
        assert len(outbound) == 1 and outbound[0]["scalabilityMode"] == "L3T3_KEY", outbound
        return outbound[0].get("frameWidth") or 0

    async def width_at(page: Any) -> int:
        entry = await video_from(page, ann_id)
        return (entry or {}).get("frameWidth") or 0

    async def expect(check: Any, what: str, timeout: float = 40) -> None:
        try:
            await until(check, what, timeout, interval=0.5)
        except AssertionError as failure:
            raise AssertionError(f"{failure}; server trace: {trace[-16:]}") from None

    async def both_full() -> bool:
        full = await sent_width()
        rates = rungs()
        return (
            full >= 640
            and {"low", "medium", "high"} <= set(rates)
            and forwarded[ben_id] == forwarded[cat_id] == "high"
            and await width_at(ben) == full
            and await width_at(cat) == full
        )

    await expect(both_full, "ben and cat to decode ann's full-size AV1 picture")
    status, body = request("POST", f"{meetings}/{meeting_id}/recording/start", {"composite": False}, accounts[0][0])
    assert status == 201, body
    recording_id = body["data"]["recording_id"]

    # A cap between the smallest and the middle spatial layer's rates: Ben gets the smallest picture,
    # Cat, uncapped, keeps the full one, from the same stream.
    rates = rungs()
    assert rates["medium"] > 1.3 * rates["low"], rates
    cap = (rates["low"] + rates["medium"]) // 2
    await ben.evaluate(f"window.huiyi.setMaxBitrate({cap})")

    async def ben_small_cat_full() -> bool:
        rungs()
        full = await sent_width()
        ben_width, cat_width = await width_at(ben), await width_at(cat)
        return (
            forwarded[ben_id] in ("low-t0", "low-t1", "low")
            and forwarded[cat_id] == "high"
            and 0 < ben_width <= full // 4 + 1
            and cat_width == full
        )

    await expect(ben_small_cat_full, f"ben to decode ann's smallest picture under a {cap} bit/s cap, cat her full one")
    ben_frames = (await video_from(ben, ann_id))["framesDecoded"]

    async def ben_keeps_decoding() -> bool:
        return (await video_from(ben, ann_id))["framesDecoded"] > ben_frames + 30

    await expect(ben_keeps_decoding, "ben to keep decoding the smallest picture", 15)
    assert subscription_of(room_stats(), ben_id)["bitrate"] <= cap * 1.3, trace[-4:]

    # The cap is lifted: Ben climbs back to the full picture.
    await ben.evaluate("window.huiyi.setMaxBitrate(0)")

    async def ben_full() -> bool:
        rungs()
        return forwarded[ben_id] == "high" and await width_at(ben) == await sent_width()

    await expect(ben_full, "ben to decode ann's full picture again once the cap is lifted", 60)

    # Losses on the thinned, renumbered stream were repaired from its history.
    stats = room_stats()
    for user in (ben_id, cat_id):
        subscription = subscription_of(stats, user)
        assert subscription["nacks"] > 0 and subscription["retransmits"] > 0, subscription

    # The recording keeps Ann's audio; her AV1 video is left out, and the log says so.
    status, body = request("POST", f"{meetings}/{meeting_id}/recording/stop", token=accounts[0][0])
    assert status == 200, body

    def recorded() -> dict[str, Any] | None:
        status, body = request("GET", f"{server.url}/api/v1/recording/{recording_id}", token=accounts[0][0])
        assert status == 200, body
        return body["data"] if body["data"]["status"] == "ready" else None

    recording = await until(recorded, "the recording to be ready", 30, interval=0.5)
    ann_tracks = [t for t in recording["tracks"] if t["user_id"] == ann_id]
    assert [t["kind"] for t in ann_tracks] == ["audio"] and ann_tracks[0]["duration"] > 0, recording["tracks"]
    assert "is not recorded: no AV1 recording" in (tmp_path / "server.log").read_text()
