"""Live noise suppression inside the media server, packet by packet: a published Opus track fed
in real time with speech under white noise, a subscriber's down-track capturing what it sends, the
real worker process cleaning in between. What the subscriber gets must run on without a hole or a
repeat through the switch on and the switch off, and be cleaner while suppression is on."""

from __future__ import annotations

import asyncio
import fractions
import itertools
import time
from pathlib import Path

import av
import numpy as np

from config import load_settings
from sfu import rtp
from sfu.forwarder import DownTrack
from sfu.room import Room
from sfu.sdp import Codec
from sfu.server import Sfu
from sfu.track import PublishedTrack
from tests.enhance_support import si_sdr, speech, with_noise
from tests.support import until

BLOCK = 960
SSRC = 0x5EED


def opus_packets(pcm: np.ndarray) -> list[bytes]:
    """20 ms Opus packets as a browser sends them (speech mode, 32 kbit/s)."""
    encoder = av.CodecContext.create("libopus", "w")
    encoder.bit_rate, encoder.format, encoder.layout, encoder.sample_rate = 32_000, "s16", "mono", 48000
    encoder.time_base = fractions.Fraction(1, 48000)
    encoder.options = {"application": "voip"}
    packets = []
    for start in range(0, pcm.size - BLOCK + 1, BLOCK):
        block = (np.clip(pcm[start : start + BLOCK], -1, 1) * 32767).astype(np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(block, format="s16", layout="mono")
        frame.sample_rate, frame.pts = 48000, start
        packets += [bytes(packet) for packet in encoder.encode(frame)]
    return packets


def decoded(sent: list[bytes]) -> tuple[list[int], dict[int, np.ndarray]]:
    """The sequence numbers the subscriber got, and its sound by RTP timestamp (counted from the
    first packet's: the down-track rewrites them from a random start)."""
    decoder = av.CodecContext.create("libopus", "r")
    decoder.format, decoder.layout, decoder.sample_rate = "s16", "mono", 48000
    seqs: list[int] = []
    sound: dict[int, np.ndarray] = {}
    first = 0
    for data in sent:
        packet = rtp.Packet(data)
        seqs.append(packet.seq)
        frames = decoder.decode(av.Packet(packet.payload))
        first = packet.timestamp if not seqs[:-1] else first
        samples = np.concatenate([frame.to_ndarray().reshape(-1) for frame in frames]) / 32768
        sound[(packet.timestamp - first) & 0xFFFFFFFF] = samples
    return seqs, sound


def span(sound: dict[int, np.ndarray], start: int, length: int) -> np.ndarray:
    return np.concatenate([sound[start + offset] for offset in range(0, length, BLOCK)])


def best_si_sdr(clean: np.ndarray, heard: np.ndarray) -> float:
    spectrum = np.fft.rfft(heard) * np.conj(np.fft.rfft(clean))
    return si_sdr(np.roll(clean, int(np.argmax(np.fft.irfft(spectrum, n=clean.size)))), heard)


async def test_switching_on_and_off_keeps_the_stream_whole_and_cleans_it(tmp_path: Path) -> None:
    clean = speech("thank you all for joining the call today", tmp_path)
    clean = np.concatenate([clean, np.zeros(24000, np.float32)])
    clean = clean[: clean.size - clean.size % BLOCK]
    packets = opus_packets(with_noise(clean, 5.0))
    settings = load_settings(None, {"server": {"data_dir": str(tmp_path / "data")}}, environ={})
    sfu = Sfu(settings.sfu)
    room = sfu.rooms[1] = Room(1, sfu.events, sfu.retired)
    track = PublishedTrack("publisher", 7, "audio", Codec(111, "opus", 48000, 2), "0", "s", [""], lambda _: None)
    room.add_track(track)
    sent: list[bytes] = []
    down = DownTrack(track, "subscriber", "0", sent.append)
    track.downtracks.append(down)
    down.set_paused(False)
    layer = track.layers[0]
    layer.bind(SSRC)
    fed = 0
    try:

        async def feed(count: int) -> None:
            nonlocal fed
            started = time.monotonic()
            for index in range(count):
                await asyncio.sleep(max(0.0, started + index * 0.02 - time.monotonic()))
                seq = fed & 0xFFFF
                data = rtp.FIXED_HEADER.pack(0x80, 111, seq, fed * BLOCK, SSRC) + packets[fed % len(packets)]
                track.forward(layer, rtp.Packet(data))
                fed += 1
                if fed % 12 == 0:
                    sfu.noise.tick()

        periods = len(packets)
        await feed(periods)  # one period as it came
        sfu.noise.set_room(1, True)
        feeding = asyncio.ensure_future(feed(10_000))
        await until(lambda: sfu.noise.tracks and sfu.noise.tracks[track.id].state == "on", "suppression on", 30)
        on_from = fed + 5
        await until(lambda: fed >= on_from + periods + 5, "a period cleaned", 60)
        stats = sfu.noise.tracks[track.id].describe()
        sfu.noise.set_room(1, False)
        await until(lambda: track.cleaner is None, "the switch off done", 10)
        off_at = fed
        await until(lambda: fed >= off_at + 25, "half a second after the switch off", 10)
        feeding.cancel()
        assert sfu.noise.describe_room(1)["tracks"] == []
    finally:
        sfu.noise.close()
    seqs, sound = decoded(sent)
    jumps = [(a, b) for a, b in itertools.pairwise(seqs) if (b - a) & 0xFFFF != 1]
    assert not jumps, f"holes or repeats: {jumps[:20]} ({len(seqs)} sent of {fed})"
    assert len(seqs) == fed - 1 or len(seqs) == fed
    length = periods * BLOCK
    original = best_si_sdr(clean, span(sound, 0, length))
    cleaned = best_si_sdr(clean, span(sound, on_from * BLOCK, length))
    print(f"\nSI-SDR as sent down: original {original:.1f} dB, cleaned {cleaned:.1f} dB; {stats}")
    assert cleaned > original + 2
    assert stats["state"] == "on" and stats["algorithmic_delay_ms"] == 22.5 and stats["packets_cleaned"] > periods
