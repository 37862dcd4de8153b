"""SVC through the SFU with real Chromium peers, for each codec Chromium layers on one stream (VP9,
and AV1, whose layers the dependency descriptor extension tells apart): one publisher sends
``L3T3_KEY`` (three spatial, three temporal layers) from a 1280x720 fake camera; two subscribers
with different bitrate caps decode different picture sizes cut from that one stream, a lower cap
leaves a quarter of the frames, and lifting the cap brings the full size back. The server drops a
few percent of what it sends, so repairs (NACKs answered from the history of the thinned, renumbered
stream) run too. The meeting is recorded meanwhile: a VP9 track's file holds its base spatial layer;
an AV1 video is left out (said in the log), its publisher's audio is kept. A client that cannot
decode VP9 (aiortc) is not offered the VP9 video and keeps everything else.

One server and one Chromium serve the whole module; each test closes its pages, so the next one's
encoders have the machine to themselves."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio

from tests.browser import launch, needs_chromium, page_stats, video_from
from tests.rtc_clients import Participant, invite_code_of, join_meeting, make_user
from tests.server_process import ServerProcess, request, room_stats, start_server
from tests.support import until

pytestmark = [needs_chromium, pytest.mark.asyncio(loop_scope="module")]
OpenPage = Callable[[int, str, int, str], Awaitable[Any]]
SMALLEST = ("low-t0", "low-t1", "low")  # the rungs that forward the 320x180 picture only


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("svc")
    process = start_server(
        "--data-dir",
        str(tmp / "data"),
        log=tmp / "server.log",
        env={"HUIYI_RATE_LIMITS": "off", "HUIYI_SFU_SIMULATED_LOSS": "0.02", "HUIYI_SFU_BIND_ADDRESSES": "127.0.0.1"},
    )
    yield process
    process.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def chromium() -> AsyncIterator[Any]:
    async with launch() as browser:
        yield browser


@pytest_asyncio.fixture(loop_scope="module")
async def open_page(chromium: Any, server: ServerProcess) -> AsyncIterator[OpenPage]:
    """Opens a page of the web client in a meeting, with the query's camera and codec settings; the
    pages are closed at the test's end (a publisher left running would slow the next test's)."""
    contexts: list[Any] = []

    async def open_one(meeting_id: int, token: str, user_id: int, query: str) -> Any:
        context = await chromium.new_context()
        contexts.append(context)
        page = await context.new_page()
        page.on("console", lambda entry: entry.type == "error" and print(f"[user {user_id}] {entry.text}"))
        await page.goto(f"{server.url}/?token={token}&user_id={user_id}&meeting_id={meeting_id}&autostart=1&{query}")
        await page.evaluate("window.huiyiReady")
        return page

    yield open_one
    for context in contexts:
        await context.close()


@dataclass
class SvcRoom:
    """Ann publishing SVC video to Ben and Cat, who send nothing: what the server measures of her
    rungs and forwards to each of them, and what their pages decode."""

    server: ServerProcess
    codec: str
    meeting_id: int
    host_token: str
    ann_id: int
    ben_id: int
    cat_id: int
    ann: Any
    ben: Any
    cat: Any
    trace: list[str] = field(default_factory=list)
    forwarded: dict[int, str] = field(default_factory=dict)  # the rung forwarded to Ben and Cat, as last seen

    def stats(self) -> dict[str, Any]:
        return room_stats(self.server.url, self.meeting_id, self.host_token)

    def subscription(self, stats: dict[str, Any], user_id: int) -> dict[str, Any]:
        """``user_id``'s subscription to Ann's video."""
        return next(
            sub
            for sub in stats["subscriptions"]
            if sub["subscriber_user_id"] == user_id
            and sub["publisher_user_id"] == self.ann_id
            and sub["kind"] == "video"
        )

    def rungs(self) -> dict[str, int]:
        """Ann's active rungs and their rates as the server measures them; notes what it forwards to
        Ben and Cat."""
        stats = self.stats()
        track = next(t for t in stats["tracks"] if t["user_id"] == self.ann_id and t["kind"] == "video")
        assert track["codec"] == self.codec and not track["simulcast"], track
        rates = {rung["name"]: rung["bitrate"] for rung in track["svc"] if rung["active"]}
        self.forwarded.update(
            {user: self.subscription(stats, user)["current_layer"] for user in (self.ben_id, self.cat_id)}
        )
        self.trace.append(f"rungs={rates} forwarded={self.forwarded}")
        return rates

    async def sent_width(self) -> int:
        """The width Ann's encoder sends at its top spatial layer, from one L3T3_KEY stream."""
        outbound = [e for e in (await page_stats(self.ann))["outbound"] if e["kind"] == "video"]
        assert len(outbound) == 1 and outbound[0]["scalabilityMode"] == "L3T3_KEY", outbound
        return outbound[0].get("frameWidth") or 0

    async def width_at(self, page: Any) -> int:
        entry = await video_from(page, self.ann_id)
        return (entry or {}).get("frameWidth") or 0

    async def expect(self, check: Callable[[], Awaitable[bool]], what: str, timeout: float = 40) -> None:
        """Wait for ``check``; a failure shows the last rungs and forwarding the server reported."""
        try:
            await until(check, what, timeout, interval=0.5)
        except AssertionError as failure:
            raise AssertionError(f"{failure}; server trace: {self.trace[-16:]}") from None


def recording(server: ServerProcess, token: str, recording_id: int) -> dict[str, Any] | None:
    """The recording once it is ready."""
    status, body = request("GET", f"{server.url}/api/v1/recording/{recording_id}", token=token)
    assert status == 200, body
    return body["data"] if body["data"]["status"] == "ready" else None


@pytest.mark.parametrize("codec", ["vp9", "av1"])
async def test_svc_subscribers_get_the_sizes_their_caps_allow_from_one_stream(
    server: ServerProcess, open_page: OpenPage, codec: str
) -> None:
    log_start = server.log.stat().st_size
    accounts = [make_user(server.url, f"{name}-{codec}") for name in ("ann", "ben", "cat")]
    token = accounts[0][0]
    meetings = f"{server.url}/api/v1/meetings"
    status, body = request("POST", meetings, {"title": codec, "settings": {"enable_recording": True}}, token)
    assert status == 201, body
    meeting_id = body["data"]["meeting_id"]
    assert request("POST", f"{meetings}/{meeting_id}/start", token=token)[0] == 200
    code = invite_code_of(server.url, token, meeting_id)
    for account_token, _ in accounts:
        join_meeting(server.url, account_token, meeting_id, code)
    ann_id, ben_id, cat_id = (user_id for _, user_id in accounts)
    room = SvcRoom(
        server,
        codec,
        meeting_id,
        token,
        ann_id,
        ben_id,
        cat_id,
        ann=await open_page(meeting_id, *accounts[0], f"codec={codec}&svc=L3T3_KEY&width=1280&height=720"),
        ben=await open_page(meeting_id, *accounts[1], "audio=0&video=0"),
        cat=await open_page(meeting_id, *accounts[2], "audio=0&video=0"),
    )
    ben, cat, forwarded = room.ben, room.cat, room.forwarded

    # Both receive Ann's whole stream: the full picture, all three spatial layers measured.
    async def both_full() -> bool:
        full = await room.sent_width()
        rates = room.rungs()
        return (
            full >= 640
            and {"low", "medium", "high"} <= set(rates)
            and forwarded[ben_id] == forwarded[cat_id] == "high"
            and await room.width_at(ben) == full
            and await room.width_at(cat) == full
        )

    await room.expect(both_full, f"ben and cat to decode ann's full-size {codec.upper()} picture")
    status, body = request("POST", f"{meetings}/{meeting_id}/recording/start", {"composite": False}, token)
    assert status == 201, body
    recording_id = body["data"]["recording_id"]

    # A cap between the smallest and the middle spatial layer's rates: Ben gets the smallest picture,
    # Cat, uncapped, keeps the full one, from the same stream.
    rates = room.rungs()
    assert rates["medium"] > 1.3 * rates["low"], rates
    cap = (rates["low"] + rates["medium"]) // 2
    await ben.evaluate(f"window.huiyi.setMaxBitrate({cap})")

    async def ben_small_cat_full() -> bool:
        room.rungs()
        full = await room.sent_width()
        ben_width, cat_width = await room.width_at(ben), await room.width_at(cat)
        return (
            forwarded[ben_id] in SMALLEST
            and forwarded[cat_id] == "high"
            and 0 < ben_width <= full // 4 + 1
            and cat_width == full
        )

    await room.expect(
        ben_small_cat_full, f"ben to decode ann's smallest picture under a {cap} bit/s cap, cat her full one"
    )
    ben_frames = (await video_from(ben, ann_id))["framesDecoded"]

    async def ben_keeps_decoding() -> bool:
        return (await video_from(ben, ann_id))["framesDecoded"] > ben_frames + 30

    await room.expect(ben_keeps_decoding, "ben to keep decoding the smallest picture", 15)
    ben_gets = room.subscription(room.stats(), ben_id)
    assert ben_gets["current_layer"] in SMALLEST, ben_gets
    assert ben_gets["bitrate"] <= cap * 1.3, room.trace[-4:]

    # A cap under the smallest picture's full rate: Ben gets its base temporal layer only, a quarter
    # of the frames, and his decoder keeps up with the thinned stream.
    rates = room.rungs()
    low_cap = (rates["low-t0"] + rates["low-t1"]) // 2
    await ben.evaluate(f"window.huiyi.setMaxBitrate({low_cap})")
    counts: list[tuple[int, int]] = []  # frames decoded by Ben and Cat, at each check

    async def ben_on_fewer_frames() -> bool:
        room.rungs()
        ben_entry, cat_entry = await video_from(ben, ann_id), await video_from(cat, ann_id)
        counts.append((ben_entry["framesDecoded"], cat_entry["framesDecoded"]))
        if forwarded[ben_id] != "low-t0":
            counts.clear()
            return False
        if len(counts) < 8:  # 4 s on the base temporal layer
            return False
        ben_gained, cat_gained = counts[-1][0] - counts[0][0], counts[-1][1] - counts[0][1]
        return 0 < ben_gained <= cat_gained // 2 and await room.width_at(ben) == await room.sent_width() // 4

    await room.expect(ben_on_fewer_frames, f"ben to decode a quarter of ann's frames under a {low_cap} bit/s cap")

    # The cap is lifted: Ben climbs back to the full picture.
    await ben.evaluate("window.huiyi.setMaxBitrate(0)")

    async def ben_full() -> bool:
        room.rungs()
        return forwarded[ben_id] == "high" and await room.width_at(ben) == await room.sent_width()

    await room.expect(ben_full, "ben to decode ann's full picture again once the cap is lifted", 60)

    # Losses on the thinned, renumbered stream were repaired from its history.
    stats = room.stats()
    for user in (ben_id, cat_id):
        subscription = room.subscription(stats, user)
        assert subscription["nacks"] > 0 and subscription["retransmits"] > 0, subscription
    for page in (ben, cat):
        entry = await video_from(page, ann_id)
        assert (entry.get("nackCount") or 0) > 0 and entry["framesDecoded"] > 60, entry

    status, body = request("POST", f"{meetings}/{meeting_id}/recording/stop", token=token)
    assert status == 200, body
    recorded = await until(
        lambda: recording(server, token, recording_id), "the recording to be ready", 30, interval=0.5
    )
    ann_tracks = [t for t in recorded["tracks"] if t["user_id"] == ann_id]
    if codec == "vp9":
        # The recording holds Ann's VP9 track at its smallest size (every temporal layer: about 20
        # frames a second from this busy machine's encoder).
        video = next(t for t in ann_tracks if t["kind"] == "video")
        assert video["codec"] == "vp9" and (video["width"], video["height"]) == (320, 180), video
        assert video["frames"] > 10 * video["duration"] > 0 and video["dropped_frames"] == 0, video
    else:
        # The recording keeps Ann's audio; her AV1 video is left out, and the log says so.
        assert [t["kind"] for t in ann_tracks] == ["audio"] and ann_tracks[0]["duration"] > 0, recorded["tracks"]
        with server.log.open("rb") as log:
            log.seek(log_start)
            assert b"is not recorded: no AV1 recording" in log.read()


async def test_a_client_that_cannot_decode_vp9_gets_everything_but_the_vp9_video(
    server: ServerProcess, open_page: OpenPage
) -> None:
    """aiortc decodes VP8 and H.264 only, and fails a whole offer with a section it cannot take: the
    server, knowing from its publisher offer what it handles, leaves the VP9 video out of its offers."""
    (ann_token, ann_id), (dan_token, dan_id) = make_user(server.url, "ann-mixed"), make_user(server.url, "dan-mixed")
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
        ann = await open_page(meeting_id, ann_token, ann_id, "codec=vp9&width=1280&height=720")

        def dan_hears_ann() -> bool:
            audio = [r for r in dan.remote.values() if r.track.kind == "audio" and r.info.get("user_id") == ann_id]
            return bool(audio) and audio[0].frames >= 50

        await until(dan_hears_ann, "dan (aiortc) to play ann's audio", 30, interval=0.2)

        async def ann_sees_dan() -> bool:
            entry = await video_from(ann, dan_id)
            return entry is not None and (entry.get("framesDecoded") or 0) > 20

        await until(ann_sees_dan, "ann (Chromium, sending VP9) to decode dan's VP8 video", 30, interval=0.5)
        assert dan.video_from(ann_id) is None and not dan.errors
        stats = room_stats(server.url, meeting_id, ann_token)
        tracks = {(t["user_id"], t["kind"]): t for t in stats["tracks"]}
        assert tracks[(ann_id, "video")]["codec"] == "vp9" and tracks[(dan_id, "video")]["codec"] == "vp8"
        dan_gets = {
            (sub["publisher_user_id"], sub["kind"])
            for sub in stats["subscriptions"]
            if sub["subscriber_user_id"] == dan_id
        }
        assert dan_gets == {(ann_id, "audio")}
    finally:
        await dan.close()
