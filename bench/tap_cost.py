"""``python -m bench.tap_cost [--seconds 60]``: what recording one track costs the media server, in
CPU, measured in this process away from any load's noise.

The bench clip's top simulcast layer (VP8 640x360, about 1.1 Mbit/s) and its Opus audio are put
through the recording path exactly as the server runs it for a published track: a ``Tap`` (jitter
buffer, depacketizer, time stamps from a sender report) feeding a ``TrackWriter`` (its own thread,
muxing into WebM on disk). The packets are parsed beforehand, since the server parses them for
forwarding anyway. The CPU time of the whole process (every thread) per second of media is the
share of a core one recorded track takes."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench.clip import FPS, load_clip
from bench.harness import CACHE_DIR
from media.mux import TrackWriter
from sfu import rtcp, rtp
from sfu.sdp import Codec
from sfu.taps import SenderClock, Tap
from sfu.track import PublishedTrack

SSRC = 0x1234
BACKLOG = 32  # frames the writer may have queued before feeding waits for it (it never drops then)


def _packets(payloads: list[list[bytes]], payload_type: int, step: int) -> list[list[rtp.Packet]]:
    """Each frame's payloads as parsed RTP packets, marker on its last, one ``step`` of clock apart."""
    frames, seq = [], 0
    for index, parts in enumerate(payloads):
        packets = []
        for number, payload in enumerate(parts):
            second = payload_type | (0x80 if number == len(parts) - 1 else 0)
            packets.append(rtp.Packet(rtp.FIXED_HEADER.pack(0x80, second, seq & 0xFFFF, index * step, SSRC) + payload))
            seq += 1
        frames.append(packets)
    return frames


def measure(kind: str, seconds: float, directory: Path) -> dict[str, float]:
    """Record ``seconds`` of the clip's video or audio; its bit rate and the CPU it took."""
    clip = load_clip(CACHE_DIR)
    if kind == "video":
        codec, rate, step = Codec(96, "vp8", 90000), FPS, 90000 // FPS
        frames = [frame.payloads for frame in clip.layers["h"]]
    else:
        codec, rate, step = Codec(111, "opus", 48000, 2), 50, 960
        frames = [[packet] for packet in clip.audio]
    count = int(seconds * rate)
    packets = _packets([frames[index % len(frames)] for index in range(count)], codec.payload_type, step)
    media_bytes = sum(len(p.data) - p.payload_start for frame in packets for p in frame)

    track = PublishedTrack("bench", 1, kind, codec, "0", "bench", [], lambda layer: None)
    layer = track.layers[0]
    layer.bind(SSRC)
    start = time.time()
    layer.sender_report = rtcp.SenderReport(SSRC, rtcp.ntp_now(start), 0, 0, 0)
    writer = TrackWriter(directory / f"{kind}.webm", codec.name, start, lambda: None, lambda: None)
    tap = Tap(track, writer.put, SenderClock())
    track.taps.append(tap)

    before = time.process_time()
    for index, frame in enumerate(packets):
        for packet in frame:
            track.forward(layer, packet)
        if index % 8 == 0:
            while writer._queue.qsize() > BACKLOG:
                time.sleep(0.001)
    tap.close()
    writer.close()
    cpu = time.process_time() - before
    assert writer.failure is None and writer.dropped == 0 and tap.dropped == 0, (writer.failure, writer.dropped)
    mbit = media_bytes * 8 / seconds / 1e6
    share = cpu / seconds * 100
    return {
        "mbit_per_second": round(mbit, 3),
        "frames": writer.frames,
        "cpu_seconds": round(cpu, 3),
        "core_percent": round(share, 3),
        "core_percent_per_mbit": round(share / mbit, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.tap_cost", description=__doc__)
    parser.add_argument("--seconds", type=float, default=60.0, help="of media recorded per track")
    arguments = parser.parse_args()
    print("| track | Mbit/s | frames | CPU s | % of a core | % of a core per Mbit/s |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="huiyi-tap-cost-") as scratch:
        for kind in ("video", "audio"):
            figures = measure(kind, arguments.seconds, Path(scratch))
            print(
                f"| {kind} | {figures['mbit_per_second']} | {figures['frames']} | {figures['cpu_seconds']} "
                f"| {figures['core_percent']} | {figures['core_percent_per_mbit']} |"
            )


if __name__ == "__main__":
    main()
