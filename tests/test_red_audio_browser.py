"""Redundant audio (RED, RFC 2198) with real peers: Chromium offers RED with Opus inside, so the
server has it send RED; another Chromium, which accepts RED too, receives the RED packets as they
are; an aiortc subscriber, which knows no RED, gets the primary Opus frames alone and hears the
publisher's microphone without a gap; and a recording of the meeting holds plain Opus."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.browser import needs_chromium, open_participant, page_stats
from tests.rtc_clients import Participant, invite_code_of, join_meeting, make_meeting, make_user
from tests.server_process import ServerProcess, request, start_server
from tests.support import until

pytestmark = needs_chromium

LISTEN_SECONDS = 6.0


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    process = start_server(
        "--data-dir", str(tmp_path / "data"), log=tmp_path / "server.log", env={"HUIYI_RATE_LIMITS": "off"}
    )
    yield process
    process.stop()


async def test_red_goes_to_receivers_that_accept_it_and_plain_opus_to_the_others(server, browser) -> None:
    (ann_token, ann_id), (ben_token, ben_id) = make_user(server.url, "ann"), make_user(server.url, "ben")
    carl_token, carl_id = make_user(server.url, "carl")
    meeting_id = make_meeting(server.url, ann_token)
    code = invite_code_of(server.url, ann_token, meeting_id)
    for token in (ann_token, ben_token, carl_token):
        join_meeting(server.url, token, meeting_id, code)
    carl = Participant(server.url, carl_token, carl_id, meeting_id)
    await carl.connect()
    try:
        await open_participant(browser, server, meeting_id, ann_token, ann_id)  # publishes
        ben = await open_participant(browser, server, meeting_id, ben_token, ben_id)

        # Ann's browser sends RED (the server answered it first), and the server forwards it to
        # Ben's, which accepted it, but not to Carl.
        def red_forwarding() -> tuple[bool, dict[int, bool]]:
            status, body = request("GET", f"{server.url}/api/v1/webrtc/room/{meeting_id}/stats", token=ann_token)
            assert status == 200, body
            track = next(t for t in body["data"]["tracks"] if t["user_id"] == ann_id and t["kind"] == "audio")
            subscribers = {
                sub["subscriber_user_id"]: sub["red"]
                for sub in body["data"]["subscriptions"]
                if sub["track_id"] == track["track_id"] and sub["packets"] > 0
            }
            return track["red"], subscribers

        # (A subscriber whose link showed congestion gets plain Opus for 30 s: a busy machine's
        # loopback may look congested for a moment while the estimates start.)
        expected = (True, {ben_id: True, carl_id: False})
        try:
            await until(lambda: red_forwarding() == expected, "RED to go to ben and not carl", 45, interval=0.5)
        except AssertionError as failure:
            raise AssertionError(f"{failure}: {red_forwarding()}") from None

        # Ben's browser decodes the RED stream without a gap (Chromium's statistics name the Opus
        # inside, not RED, so the server's word above is what tells RED was sent).
        async def ben_hears() -> dict[str, int]:
            inbound = (await page_stats(ben))["inbound"]
            entry = next((e for e in inbound if e["kind"] == "audio" and e.get("user_id") == ann_id), None)
            if entry is None:
                return {}
            return {"samples": entry.get("totalSamplesReceived") or 0, "concealed": entry.get("concealedSamples") or 0}

        await until(lambda: ben_hears(), "ben's browser to receive ann's audio", 20, interval=0.5)
        ben_before, ben_start = await ben_hears(), time.monotonic()

        # Carl (aiortc: no RED) decodes ann's microphone as plain Opus, continuously: as many samples
        # as the time that passed, and Chromium's fake microphone's beeps, not the noise that RED
        # bytes read as Opus would decode to.
        def ann_audio() -> Any:
            return next(
                (r for r in carl.remote.values() if r.info.get("user_id") == ann_id and r.track.kind == "audio"), None
            )

        await until(lambda: ann_audio() is not None and ann_audio().frames > 50, "carl to hear ann", 20, interval=0.2)
        remote = ann_audio()
        remote.captured = []
        start = time.monotonic()
        await asyncio.sleep(LISTEN_SECONDS)
        elapsed = time.monotonic() - start
        frames = [frame for _, frame in remote.captured]
        samples = np.concatenate([frame.to_ndarray().reshape(-1, len(frame.layout.channels))[:, 0] for frame in frames])
        rate = frames[0].sample_rate
        heard = len(samples) / rate
        window = rate // 50  # 20 ms
        levels = np.sqrt(np.mean(samples[: len(samples) // window * window].astype(float).reshape(-1, window) ** 2, 1))
        loud = levels > levels.max() / 4
        print(
            f"\ncarl decoded {len(frames)} frames, {heard:.2f} s of audio in {elapsed:.2f} s; "
            f"loud 20 ms windows: {int(loud.sum())} of {len(levels)}"
        )
        assert heard > 0.9 * elapsed, (heard, elapsed)
        # Chromium sends 20 ms Opus frames; RED headers read as Opus would give frames of other lengths.
        assert {frame.samples for frame in frames} == {rate // 50}, {frame.samples for frame in frames}
        assert levels.max() > 100  # int16 samples: the beeps are heard
        assert 0 < loud.sum() < 0.2 * len(levels)  # short beeps between quiet, not constant noise
        ben_after, ben_elapsed = await ben_hears(), time.monotonic() - ben_start
        ben_samples = ben_after["samples"] - ben_before["samples"]
        ben_concealed = ben_after["concealed"] - ben_before["concealed"]
        print(
            f"ben (RED) received {ben_samples / 48000:.2f} s of audio in {ben_elapsed:.2f} s, {ben_concealed} concealed"
        )
        assert ben_samples > 0.9 * ben_elapsed * 48000
        assert ben_concealed < 0.05 * ben_samples
    finally:
        await carl.close()
