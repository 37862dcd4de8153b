"""Live noise suppression over the real server (its codec factories trapped: the SFU itself never
decodes) with real aiortc peers: the host publishes espeak-ng speech under white noise at 5 dB SNR,
a participant receives it, decodes it, and its SNR (SI-SDR) against the clean speech is measured
before and after the host switches suppression on; the switches on and off leave the received
stream without a hole or a repeat; the added latency and CPU per stream are reported."""

from __future__ import annotations

import asyncio
import fractions
import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import pytest
from aiortc import MediaStreamTrack

from tests.codec_guard_server import CODEC_USED
from tests.enhance_support import si_sdr, speech, with_noise
from tests.rtc_clients import Participant, RemoteTrack, connect_user
from tests.server_process import ROOT, ServerProcess, request, start_server
from tests.support import until

SENTENCE = "we need to finish the report before friday"
BLOCK = 960  # 20 ms at 48 kHz


class ClipTrack(MediaStreamTrack):
    """A clip played in a loop, in real time, 20 ms at a time."""

    kind = "audio"

    def __init__(self, clip: np.ndarray) -> None:
        super().__init__()
        self.clip = (np.clip(clip, -1, 1) * 32767).astype(np.int16)
        self._sample = 0
        self._start: float | None = None

    async def recv(self) -> av.AudioFrame:
        if self._start is None:
            self._start = time.monotonic()
        await asyncio.sleep(max(0.0, self._start + self._sample / 48000 - time.monotonic()))
        index = (np.arange(BLOCK) + self._sample) % self.clip.size
        frame = av.AudioFrame.from_ndarray(self.clip[index].reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = 48000, self._sample, fractions.Fraction(1, 48000)
        self._sample += BLOCK
        return frame


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    env = {"HUIYI_RATE_LIMITS": "off", "HUIYI_SFU_BIND_ADDRESSES": "127.0.0.1", "PYTHONPATH": str(ROOT)}
    process = start_server(
        "--data-dir",
        str(tmp_path / "data"),
        log=tmp_path / "server.log",
        env=env,
        script=ROOT / "tests" / "codec_guard_server.py",
    )
    yield process
    process.stop()


def mono(frame: av.AudioFrame) -> np.ndarray:
    samples = frame.to_ndarray().astype(np.float32).reshape(-1, len(frame.layout.channels)).mean(axis=1)
    return samples / 32768


def period(captured: list[tuple[float, av.AudioFrame]], length: int) -> tuple[np.ndarray, int]:
    """The last ``length`` samples received, each frame placed by its timestamp (a frame that
    never came leaves silence, rather than shifting what follows), and the timestamp they start at."""
    frames = [frame for _, frame in captured]
    start = frames[-1].pts + frames[-1].samples - length
    timeline = np.zeros(length, np.float32)
    for frame in frames:
        if frame.pts >= start:
            timeline[frame.pts - start : frame.pts - start + frame.samples] = mono(frame)
    return timeline, start


def against_clean(received: tuple[np.ndarray, int], clean: np.ndarray) -> tuple[float, int]:
    """SI-SDR of one period of the looped clip as received, against the clean clip at the circular
    shift that fits best, and where the clip's start falls on the received timestamps (modulo the
    clip's length): between two periods, how much later the same sound came."""
    sound, start = received
    spectrum = np.fft.rfft(sound) * np.conj(np.fft.rfft(clean))
    shift = int(np.argmax(np.fft.irfft(spectrum, n=clean.size)))
    return si_sdr(np.roll(clean, shift), sound), (start + shift) % clean.size


def timestamps_whole(captured: list[tuple[float, av.AudioFrame]]) -> list[int]:
    """Where consecutive frames' timestamps do not follow on (a hole, or a repeat)."""
    stamps = [frame.pts for _, frame in captured]
    return [b - a for a, b in itertools.pairwise(stamps) if b - a != BLOCK]


def noise_state(server: ServerProcess, meeting_id: int, token: str) -> dict:
    status, body = request("GET", f"{server.url}/api/v1/webrtc/room/{meeting_id}/noise-suppression", token=token)
    assert status == 200, body
    return body["data"]


async def test_a_subscriber_hears_the_host_cleaned_without_a_hole_at_the_switches(
    server: ServerProcess, tmp_path: Path
) -> None:
    clean = speech(SENTENCE, tmp_path)
    clean = np.concatenate([clean, np.zeros(48000 // 2, np.float32)])
    clean = clean[: clean.size - clean.size % BLOCK]
    noisy = with_noise(clean, 5.0)
    people: list[Participant] = []
    try:
        host = await connect_user(server.url, "host", people=people)
        await host.publish(video=None, audio=ClipTrack(noisy))
        alice = await connect_user(server.url, "alice", host, people)
        remote: RemoteTrack = await until(
            lambda: next((r for r in alice.remote.values() if r.track.kind == "audio"), None), "alice's audio", 20
        )
        remote.captured = []
        await until(lambda: len(remote.captured) * BLOCK > clean.size + 48000, "a period of the original", 30)
        original, original_shift = against_clean(period(remote.captured, clean.size), clean)

        status, body = request(
            "POST",
            f"{server.url}/api/v1/webrtc/peer/{host.peer_id}/media",
            {"noise_suppression": True},
            token=host.token,
        )
        assert status == 200, body
        switched = await until(
            lambda: [t for t in noise_state(server, host.meeting_id, host.token)["tracks"] if t["state"] == "on"],
            "suppression on",
            30,
        )
        assert switched[0]["peer_id"] == host.peer_id
        remote.captured = remote.captured[-5:]  # from just before the switch
        await until(lambda: len(remote.captured) * BLOCK > clean.size + 48000, "a period cleaned", 30)
        cleaned, cleaned_shift = against_clean(period(remote.captured, clean.size), clean)
        [track] = noise_state(server, host.meeting_id, host.token)["tracks"]
        lag = (cleaned_shift - original_shift + clean.size // 2) % clean.size - clean.size // 2
        print(
            f"\nreceived SI-SDR: original {original:.1f} dB, cleaned {cleaned:.1f} dB ({track['model']}); "
            f"the cleaned sound lags by {lag / 48:.1f} ms; {track}"
        )
        assert cleaned > original + 2
        assert abs(lag - track["algorithmic_delay_ms"] * 48) <= 48, "lags by the model's delay"
        assert timestamps_whole(remote.captured) == [], "no hole or repeat across the switch on"
        assert track["latency_ms_p50"] < 50 and track["packets_cleaned"] > 100 and 0 < track["cpu_percent"] < 100

        # The host switches it off for everyone in the room (moderator's switch); the stream runs on.
        remote.captured = remote.captured[-5:]
        status, body = request(
            "POST",
            f"{server.url}/api/v1/webrtc/room/{host.meeting_id}/noise-suppression",
            {"enabled": True},
            token=host.token,
        )
        assert status == 200 and body["data"]["enabled"], body
        peer_media = f"{server.url}/api/v1/webrtc/peer/{host.peer_id}/media"
        request("POST", peer_media, {"noise_suppression": False}, token=host.token)
        status, body = request(
            "POST",
            f"{server.url}/api/v1/webrtc/room/{host.meeting_id}/noise-suppression",
            {"enabled": False},
            token=alice.token,
        )
        assert status == 403, body
        status, body = request(
            "POST",
            f"{server.url}/api/v1/webrtc/room/{host.meeting_id}/noise-suppression",
            {"enabled": False},
            token=host.token,
        )
        assert status == 200, body
        await until(lambda: noise_state(server, host.meeting_id, host.token)["tracks"] == [], "suppression off", 10)
        count = len(remote.captured)
        await until(
            lambda: len(remote.captured) > count + clean.size // BLOCK + 10, "a period after the switch off", 20
        )
        assert timestamps_whole(remote.captured) == [], "no hole or repeat across the switch off"
        again, _ = against_clean(period(remote.captured, clean.size), clean)
        assert again < cleaned - 3  # the original again (partly)
    finally:
        for person in people:
            await person.close()
    assert CODEC_USED not in server.log.read_text()
