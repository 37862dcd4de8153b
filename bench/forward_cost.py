"""``python -m bench.forward_cost [--packets 200000]``: what forwarding one VP8 packet to one receiver
costs the media server, in CPU time, with and without rewriting its payload descriptor.

The bench clip's top simulcast layer is given the payload descriptor Chromium sends (15-bit
PictureID, TL0PICIDX, temporal layer ID in the 0-2-1-2 pattern) and put through ``DownTrack.send``
exactly as ``PublishedTrack.send_down`` calls it, the outgoing packet thrown away. Three runs: the
descriptor rewriter off (the fixed header only, as before it existed), on with nothing to change
(the first layer a receiver gets keeps its counters), and on after a switch (every descriptor
rewritten). The difference is the rewriter's cost per packet."""

from __future__ import annotations

import argparse
import time

from bench.clip import FPS, load_clip
from bench.harness import CACHE_DIR
from sfu import rtp
from sfu.forwarder import DownTrack
from sfu.sdp import Codec
from sfu.track import PublishedTrack

SSRC = 0x1234


def _descriptor(first: int, index: int) -> bytes:
    """X set; I (15-bit picture ID), L and T; the clip's S bit and partition index kept."""
    tid = (0, 2, 1, 2)[index % 4]
    picture = 0x8000 | (index & 0x7FFF)
    return bytes((0x80 | first, 0xE0, picture >> 8, picture & 0xFF, (index // 4) & 0xFF, tid << 6))


def _packets(count: int) -> list[rtp.Packet]:
    clip = load_clip(CACHE_DIR)
    payloads = [(index, part) for index, frame in enumerate(clip.layers["h"]) for part in frame.payloads]
    packets = []
    for number in range(count):
        index, payload = payloads[number % len(payloads)]
        frame = index + number // len(payloads) * len(clip.layers["h"])
        header = rtp.FIXED_HEADER.pack(0x80, 96, number & 0xFFFF, frame * (90000 // FPS), SSRC)
        packets.append(rtp.Packet(header + _descriptor(payload[0], frame) + payload[1:]))
    return packets


def measure(packets: list[rtp.Packet], rewrite: bool, shifted: bool) -> float:
    """Seconds of CPU per packet sent to one receiver."""
    track = PublishedTrack("bench", 1, "video", Codec(96, "vp8", 90000), "0", "bench", [], lambda layer: None)
    layer = track.layers[0]
    layer.bind(SSRC)
    down = DownTrack(track, "bench", "0", lambda data: None)
    down.paused, down.target_layer = False, 0
    if not rewrite:
        down.rewriter = None
    elif shifted:
        assert down.rewriter is not None
        down.rewriter.last_picture = down.rewriter.last_tl0 = 100  # as after a switch: every field moves
    extension = rtp.extension_block([(rtp.OUT_ID_ABS_SEND_TIME, rtp.abs_send_time())])
    tails = [extension + packet.payload for packet in packets]
    start = time.process_time()
    for packet, tail in zip(packets, tails, strict=True):
        down.send(layer, packet, 0x90, 96, tail, len(extension))
    return (time.process_time() - start) / len(packets)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--packets", type=int, default=200_000)
    args = parser.parse_args()
    packets = _packets(args.packets)
    measure(packets[:2000], True, True)  # warm up
    plain = measure(packets, False, False)
    unchanged = measure(packets, True, False)
    shifted = measure(packets, True, True)
    print(f"fixed header only: {plain * 1e6:.2f} µs per packet")
    print(f"descriptor rewriter, nothing to change: {unchanged * 1e6:.2f} µs (+{(unchanged - plain) * 1e6:.2f})")
    print(f"descriptor rewriter, every field moved: {shifted * 1e6:.2f} µs (+{(shifted - plain) * 1e6:.2f})")


if __name__ == "__main__":
    main()
