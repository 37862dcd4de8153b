"""VP9 SVC through the SFU with real Chromium peers: one publisher sends ``L3T3_KEY`` (three spatial,
three temporal layers on one stream) from a 1280x720 fake camera; two subscribers with different
bitrate caps decode different picture sizes cut from that one stream, a lower cap leaves a quarter
of the frames, and lifting the cap brings the full size back. The server drops a few percent of
what it sends, so repairs (NACKs answered from the history of the thinned, renumbered stream) run
too. The meeting is recorded meanwhile: the VP9 track's file holds its base spatial layer. A client
that cannot decode VP9 (aiortc) is not offered the VP9 video and keeps everything else."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser import needs_chromium, page_stats, video_from
from tests.rtc_clients import Participant, invite_code_of, join_meeting, make_user
from tests.server_process import ServerProcess, request, start_server
from tests.support import until

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


async def open_page(browser: Any, server: ServerProcess, meeting_id: int, token: str, user_id: int, query: str) -> Any:
    page = await (await browser.new_context()).new_page()
    page.on("console", lambda entry: entry.type == "error" and print(f"[user {user_id}] {entry.text}"))
    await page.goto(f"{server.url}/?token={token}&user_id={user_id}&meeting_id={meeting_id}&autostart=1&{query}")
    await page.evaluate("window.huiyiReady")
    return page


async def test_svc_subscribers_get_the_sizes_their_caps_allow_from_one_vp9_stream(server, browser) -> None:
    accounts = [make_user(server.url, name) for name in ("ann", "ben", "cat")]
    meetings = f"{server.url}/api/v1/meetings"
    status, body = request("POST", meetings, {"title": "svc", "settings": {"enable_recording": True}}, accounts[0][0])
    assert status == 201, body
    meeting_id = body["data"]["meeting_id"]
    assert request("POST", f"{meetings}/{meeting_id}/start", token=accounts[0][0])[0] == 200
    code = invite_code_of(server.url, accounts[0][0], meeting_id)
    for token, _ in accounts:
        join_meeting(server.url, token, meeting_id, code)
    ann_id, ben_id, cat_id = (user_id for _, user_id in accounts)
    ann = await open_page(browser, server, meeting_id, *accounts[0], "codec=vp9&svc=L3T3_KEY&width=1280&height=720")
    ben = await open_page(browser, server, meeting_id, *accounts[1], "audio=0&video=0")
    cat = await open_page(browser, server, meeting_id, *accounts[2], "audio=0&video=0")
    trace: list[str] = []

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

    forwarded: dict[int, str] = {}  # the rung the server forwards to Ben and Cat, as last seen

    def rungs() -> dict[str, int]:
        """Ann's rungs as the server measures them; notes what it forwards to Ben and Cat."""
        stats = room_stats()
        track = next(t for t in stats["tracks"] if t["user_id"] == ann_id and t["kind"] == "video")
        assert track["codec"] == "vp9" and not track["simulcast"], track
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

    # Both receive Ann's whole stream: the full picture, all three spatial layers measured.
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

    await expect(both_full, "ben and cat to decode ann's full-size VP9 picture")
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
    status_data = room_stats()
    assert subscription_of(status_data, ben_id)["current_layer"] in ("low-t0", "low-t1", "low")
    assert subscription_of(status_data, ben_id)["bitrate"] <= cap * 1.3, trace[-4:]

    # A cap under the smallest picture's full rate: Ben gets its base temporal layer only, a quarter
    # of the frames, and his decoder keeps up with the thinned stream.
    rates = rungs()
    low_cap = (rates["low-t0"] + rates["low-t1"]) // 2
    await ben.evaluate(f"window.huiyi.setMaxBitrate({low_cap})")
    counts: list[tuple[int, int]] = []  # frames decoded by Ben and Cat, at each check

    async def ben_on_fewer_frames() -> bool:
        rungs()
        ben_entry, cat_entry = await video_from(ben, ann_id), await video_from(cat, ann_id)
        counts.append((ben_entry["framesDecoded"], cat_entry["framesDecoded"]))
        if forwarded[ben_id] != "low-t0":
            counts.clear()
            return False
        if len(counts) < 8:  # 4 s on the base temporal layer
            return False
        ben_gained, cat_gained = counts[-1][0] - counts[0][0], counts[-1][1] - counts[0][1]
        return 0 < ben_gained <= cat_gained // 2 and await width_at(ben) == await sent_width() // 4

    await expect(ben_on_fewer_frames, f"ben to decode a quarter of ann's frames under a {low_cap} bit/s cap")

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
    for page in (ben, cat):
        entry = await video_from(page, ann_id)
        assert (entry.get("nackCount") or 0) > 0 and entry["framesDecoded"] > 60, entry

    # The recording holds Ann's VP9 track at its smallest size (every temporal layer: about 20 frames
    # a second from this busy machine's encoder).
    status, body = request("POST", f"{meetings}/{meeting_id}/recording/stop", token=accounts[0][0])
    assert status == 200, body

    def recorded() -> dict[str, Any] | None:
        status, body = request("GET", f"{server.url}/api/v1/recording/{recording_id}", token=accounts[0][0])
        assert status == 200, body
        return body["data"] if body["data"]["status"] == "ready" else None

    recording = await until(recorded, "the recording to be ready", 30, interval=0.5)
    video = next(t for t in recording["tracks"] if t["user_id"] == ann_id and t["kind"] == "video")
    assert video["codec"] == "vp9" and (video["width"], video["height"]) == (320, 180), video
    assert video["frames"] > 10 * video["duration"] > 0 and video["dropped_frames"] == 0, video


async def test_a_client_that_cannot_decode_vp9_gets_everything_but_the_vp9_video(server, browser) -> None:
    """aiortc decodes VP8 and H.264 only, and fails a whole offer with a section it cannot take: the
    server, knowing from its publisher offer what it handles, leaves the VP9 video out of its offers."""
    (ann_token, ann_id), (dan_token, dan_id) = make_user(server.url, "ann"), make_user(server.url, "dan")
    meetings = f"{server.url}/api/v1/meetings"
    status, body = request("POST", meetings, {"title": "mixed"}, ann_token)
    assert status == 201, body
    meeting_id = body["data"]["meeting_id"]
    code = invite_code_of(server.url, ann_token, meeting_id)
    join_meeting(server.url, ann_token, meeting_id, code)
    join_meeting(server.url, dan_token, meeting_id, code)
    dan = Participant(server.url, dan_token, dan_id, meeting_id)
    try:
        await dan.connect()
        await dan.publish(video=(320, 240))
        ann = await open_page(browser, server, meeting_id, ann_token, ann_id, "codec=vp9&width=1280&height=720")

        def dan_hears_ann() -> bool:
            audio = [r for r in dan.remote.values() if r.track.kind == "audio" and r.info.get("user_id") == ann_id]
            return bool(audio) and audio[0].frames >= 50

        await until(dan_hears_ann, "dan (aiortc) to play ann's audio", 30, interval=0.2)

        async def ann_sees_dan() -> bool:
            entry = await video_from(ann, dan_id)
            return entry is not None and (entry.get("framesDecoded") or 0) > 20

        await until(ann_sees_dan, "ann (Chromium, sending VP9) to decode dan's VP8 video", 30, interval=0.5)
        assert dan.video_from(ann_id) is None and not dan.errors
        status, body = request("GET", f"{server.url}/api/v1/webrtc/room/{meeting_id}/stats", token=ann_token)
        assert status == 200, body
        tracks = {(t["user_id"], t["kind"]): t for t in body["data"]["tracks"]}
        assert tracks[(ann_id, "video")]["codec"] == "vp9" and tracks[(dan_id, "video")]["codec"] == "vp8"
        dan_gets = {
            (sub["publisher_user_id"], sub["kind"])
            for sub in body["data"]["subscriptions"]
            if sub["subscriber_user_id"] == dan_id
        }
        assert dan_gets == {(ann_id, "audio")}
    finally:
        await dan.close()
