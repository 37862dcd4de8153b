"""The SFU with real Chromium peers (fake camera and microphone) using the web client in ``web/``:
three participants see each other, simulcast layers follow what a subscriber asks for, and lost
packets are recovered through NACKs and key-frame requests. The server drops a few percent of the
video it sends (``sfu.simulated_loss``) so the loss-recovery path runs for real."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser import REMOTE_UFRAGS, inbound_video, needs_chromium, open_participant, page_stats, video_from
from tests.rtc_clients import invite_code_of, join_meeting, make_meeting, make_user
from tests.server_process import ServerProcess, request, start_server
from tests.support import until

pytestmark = needs_chromium


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    process = start_server(
        "--data-dir",
        str(tmp_path / "data"),
        log=tmp_path / "server.log",
        env={"HUIYI_RATE_LIMITS": "off", "HUIYI_SFU_SIMULATED_LOSS": "0.03"},
    )
    yield process
    process.stop()


async def test_three_browsers_see_each_other_switch_layers_and_recover_losses(server, browser) -> None:
    accounts = [make_user(server.url, name) for name in ("ann", "ben", "cat")]
    meeting_id = make_meeting(server.url, accounts[0][0])
    code = invite_code_of(server.url, accounts[0][0], meeting_id)
    for token, _ in accounts:
        join_meeting(server.url, token, meeting_id, code)
    pages = [await open_participant(browser, server, meeting_id, token, user_id) for token, user_id in accounts]
    ids = [user_id for _, user_id in accounts]

    # Everyone decodes both others' video, and keeps decoding.
    for page, me in zip(pages, ids, strict=True):
        for other in ids:
            if other == me:
                continue

            async def decoding(page=page, other=other) -> bool:
                entry = await video_from(page, other)
                return entry is not None and (entry.get("framesDecoded") or 0) > 30

            await until(decoding, f"user {me} to decode user {other}'s video", 40, interval=0.5)
    first = (await video_from(pages[1], ids[0]))["framesDecoded"]

    async def still_decoding() -> bool:
        return (await video_from(pages[1], ids[0]))["framesDecoded"] > first + 30

    await until(still_decoding, "ben to keep decoding ann's video", 10, interval=0.5)

    # The REST view of the room, live.
    status, body = request("GET", f"{server.url}/api/v1/webrtc/room/{meeting_id}/peers", token=accounts[0][0])
    assert status == 200, body
    peers = body["data"]
    assert len(peers) == 3 and {peer["user_id"] for peer in peers} == set(ids)
    for peer in peers:
        assert peer["publisher_state"] == "connected" and peer["subscriber_state"] == "connected"
        video = next(track for track in peer["published"] if track["kind"] == "video")
        assert video["simulcast"] and [layer["name"] for layer in video["layers"]] == ["low", "medium", "high"]
        assert len(peer["subscriptions"]) == 4  # audio and video of two others

    # Ben asks for the low layer: what he decodes is the size of Ann's low layer, then her high one.
    ben_page = pages[1]
    trace: list[str] = []  # what the server forwarded, for the failure message
    traced_rates: list[dict[str, int]] = []  # Ann's layers' bitrates, as the server measured them

    async def sent_widths() -> dict[str, int]:
        """Ann's layers as her browser encodes them now (CPU adaptation may shrink them under load)."""
        outbound = (await page_stats(pages[0]))["outbound"]
        return {e["rid"]: e.get("frameWidth") or 0 for e in outbound if e["kind"] == "video" and e.get("rid")}

    def ben_from_ann() -> dict[str, Any]:
        status, body = request("GET", f"{server.url}/api/v1/webrtc/room/{meeting_id}/stats", token=accounts[1][0])
        assert status == 200, body
        subscription = next(
            sub
            for sub in body["data"]["subscriptions"]
            if sub["subscriber_user_id"] == ids[1] and sub["publisher_user_id"] == ids[0] and sub["kind"] == "video"
        )
        track = next(t for t in body["data"]["tracks"] if t["user_id"] == ids[0] and t["kind"] == "video")
        rates = {layer["name"]: layer["bitrate"] for layer in track["layers"]}
        traced_rates.append(rates)
        trace.append(f"{subscription['current_layer']} bandwidth={subscription['bandwidth']} layers={rates}")
        return subscription

    async def receives(layer: str) -> bool:
        """The server forwards ``layer`` of Ann's to Ben and his browser decodes frames of its size."""
        if ben_from_ann()["current_layer"] != layer:
            return False
        entry = await video_from(ben_page, ids[0])
        width = (await sent_widths()).get(layer[0])
        return entry is not None and bool(width) and entry.get("frameWidth") == width

    async def expect(layer: str, what: str) -> None:
        try:
            await until(lambda: receives(layer), what, 30, interval=0.5)
        except AssertionError as failure:
            raise AssertionError(f"{failure}; server trace, last 10 s: {trace[-20:]}") from None

    await ben_page.evaluate("window.huiyi.setLayer('low')")
    await expect("low", "ben to receive ann's low layer")

    async def low_and_high_sent() -> dict[str, int] | None:
        """Ann's low and high encodings, once both are sent: the high one only while a receiver
        takes it (dynacast pauses it otherwise), and cat, who asked for nothing, climbs to it."""
        widths = await sent_widths()
        return widths if widths.get("l") and widths.get("h") else None

    widths = await until(low_and_high_sent, "ann's browser to send her low and high layers", 30, interval=0.5)
    assert widths["l"] < widths["h"]
    await ben_page.evaluate("window.huiyi.setLayer('high')")
    await expect("high", "ben to receive ann's high layer once he asks for it")

    # A moderate cap, halfway between what Ann's medium and high layers take now (about 200 kbit/s
    # from this fake camera), steps ben down to a layer that fits it; lifting it brings the high layer back.
    # The layers must be far enough apart for a cap between them to tell them apart (a busy machine's
    # encoder sends less than the 200 kbit/s above, but keeps the layers apart; a layer dynacast has
    # just resumed takes a few seconds to reach its rate).
    def layers_apart() -> dict[str, int] | None:
        ben_from_ann()
        rates = traced_rates[-1]
        return rates if rates["high"] > 1.3 * rates["medium"] else None

    try:
        rates = await until(layers_apart, "ann's high layer to send well above her medium one", 20, interval=0.5)
    except AssertionError as failure:
        raise AssertionError(f"{failure}: {traced_rates[-10:]}") from None
    cap = (rates["medium"] + rates["high"]) // 2
    assert cap < 1_000_000, rates
    await ben_page.evaluate(f"window.huiyi.setMaxBitrate({cap})")

    async def under_the_cap() -> bool:
        subscription = ben_from_ann()
        return subscription["current_layer"] in ("low", "medium") and subscription["bitrate"] <= cap

    try:
        await until(under_the_cap, f"ben to step down under a {cap} bit/s cap", 30, interval=0.5)
    except AssertionError as failure:
        raise AssertionError(f"{failure}; server trace: {trace[-20:]}") from None
    await ben_page.evaluate("window.huiyi.setMaxBitrate(0)")
    await expect("high", "ben to climb back to ann's high layer once the cap is lifted")

    # Losses were repaired: subscribers sent NACKs, the server retransmitted.
    status, body = request("GET", f"{server.url}/api/v1/webrtc/room/{meeting_id}/stats", token=accounts[1][0])
    assert status == 200, body
    stats = body["data"]
    video_subscriptions = [sub for sub in stats["subscriptions"] if sub["kind"] == "video"]
    assert len(video_subscriptions) == 6
    assert sum(sub["nacks"] for sub in video_subscriptions) > 0
    assert sum(sub["retransmits"] for sub in video_subscriptions) > 0
    assert all(sub["packets"] > 0 and sub["bitrate"] > 0 for sub in video_subscriptions)
    browser_nacks = sum(entry.get("nackCount") or 0 for entry in await inbound_video(ben_page))
    assert browser_nacks > 0
    assert all(track["layers"][0]["packets"] > 0 for track in stats["tracks"])
    # Key frames were asked of the publishers (layer switches, subscribers' PLIs), and they saw the requests.
    video_tracks = [track for track in stats["tracks"] if track["kind"] == "video"]
    assert sum(layer["keyframe_requests"] for track in video_tracks for layer in track["layers"]) > 0
    published = (await page_stats(pages[0]))["outbound"]
    assert sum(entry.get("pliCount") or 0 for entry in published if entry["kind"] == "video") > 0

    # Cat restarts ICE on both connections: media keeps flowing both ways over the new candidate pairs.
    cat_page = pages[2]
    ufrags_before = await cat_page.evaluate(REMOTE_UFRAGS)
    await cat_page.evaluate("window.huiyi.restartIce()")

    async def restarted() -> bool:
        ufrags = await cat_page.evaluate(REMOTE_UFRAGS)
        return all(ufrags) and all(a != b for a, b in zip(ufrags, ufrags_before, strict=True))

    await until(restarted, "both of cat's connections to get new server ICE credentials", 15, interval=0.5)
    ann_before = (await video_from(pages[0], ids[2]))["framesDecoded"]
    cat_before = (await video_from(cat_page, ids[0]))["framesDecoded"]

    async def flowing() -> bool:
        sent = await video_from(pages[0], ids[2])
        received = await video_from(cat_page, ids[0])
        return sent["framesDecoded"] > ann_before + 30 and received["framesDecoded"] > cat_before + 30

    await until(flowing, "video to flow from and to cat after the ICE restart", 20, interval=0.5)


async def test_the_meeting_page_shows_while_the_meeting_is_recorded(server, browser) -> None:
    token, user_id = make_user(server.url, "rita")
    meetings = f"{server.url}/api/v1/meetings"
    status, body = request("POST", meetings, {"title": "recorded", "settings": {"enable_recording": True}}, token)
    assert status == 201, body
    meeting_id = body["data"]["meeting_id"]
    assert request("POST", f"{meetings}/{meeting_id}/start", token=token)[0] == 200
    join_meeting(server.url, token, meeting_id)
    page = await (await browser.new_context()).new_page()
    await page.goto(
        f"{server.url}/?token={token}&user_id={user_id}&meeting_id={meeting_id}&autostart=1&audio=0&video=0"
    )
    await page.evaluate("window.huiyiReady")
    indicator = page.locator("#recording")
    assert await indicator.is_hidden()

    assert request("POST", f"{meetings}/{meeting_id}/recording/start", {}, token)[0] == 201
    await indicator.wait_for(state="visible", timeout=10_000)
    assert await indicator.text_content() == "● Recording"
    assert request("POST", f"{meetings}/{meeting_id}/recording/stop", token=token)[0] == 200
    await indicator.wait_for(state="hidden", timeout=10_000)
