"""``python -m bench.svc_cost [--packets 20000] [--receivers 10]``: what forwarding VP9 SVC costs the
media server per packet, against forwarding a single VP8 layer, measured in this process.

The same stream of packets goes through the forwarding path exactly as the server runs it for a
published track (``PublishedTrack.forward`` to its ``DownTrack``s, SRTP left out): once as a VP8
track, once as a VP9 track whose receivers all take every layer ("high"), and once with all of them
on the smallest picture ("low", two thirds of the packets dropped per receiver). The packets carry
payload descriptors shaped like Chromium's ``L3T3_KEY`` (flexible mode, three spatial layers, the
temporal pattern 0, 2, 1, 2; see tests/vp9_capture.py) in front of zero-filled 1000-byte payloads;
the descriptor is all the forwarding path reads. CPU time (``time.process_time``) per incoming
packet and per packet handed to a receiver."""

from __future__ import annotations

import argparse
import time

from sfu import rtp, svc
from sfu.forwarder import DownTrack
from sfu.sdp import Codec
from sfu.track import PublishedTrack
from sfu.vp9 import FLAG_B, FLAG_E, FLAG_F, FLAG_I, FLAG_L, FLAG_P, FLAG_V

SSRC = 0x5EC0DE
TEMPORAL_PATTERN = (0, 2, 1, 2)
PACKETS_PER_LAYER = (1, 1, 3)  # a 1280x720 picture's spatial layers at about 1 Mbit/s
PAYLOAD = bytes(1000)
SCALABILITY_STRUCTURE = bytes([0x50 | 0x10, 0x01, 0x40, 0x00, 0xB4, 0x02, 0x80, 0x01, 0x68, 0x05, 0x00, 0x02, 0xD0])


def svc_packets(count: int) -> list[rtp.Packet]:
    """``count`` packets of an L3T3_KEY stream at 30 pictures a second, a key picture first."""
    packets: list[rtp.Packet] = []
    picture = 0
    while len(packets) < count:
        key = picture == 0
        tid = TEMPORAL_PATTERN[picture % len(TEMPORAL_PATTERN)]
        for sid, parts in enumerate(PACKETS_PER_LAYER):
            for part in range(parts):
                flags = FLAG_I | FLAG_L | FLAG_F | (0 if key else FLAG_P)
                flags |= (FLAG_B if part == 0 else 0) | (FLAG_E if part == parts - 1 else 0)
                if key and sid == 0 and part == 0:
                    flags |= FLAG_V
                head = bytes([flags, 0x80 | (picture >> 8 & 0x7F), picture & 0xFF, tid << 5 | 0x10 | sid << 1])
                if not key:
                    head += bytes([(1 if tid else 4) << 1])  # one reference: the previous picture it uses
                elif flags & FLAG_V:
                    head += SCALABILITY_STRUCTURE
                marker = sid == len(PACKETS_PER_LAYER) - 1 and part == parts - 1
                second = (0x80 if marker else 0) | 98
                header = rtp.FIXED_HEADER.pack(0x80, second, len(packets) & 0xFFFF, picture * 3000, SSRC)
                packets.append(rtp.Packet(header + head + PAYLOAD))
        picture += 1
    return packets[:count]


def measure(codec: str, rung: str, packets: list[rtp.Packet], receivers: int) -> dict[str, float]:
    """Forward ``packets`` to ``receivers`` down-tracks; CPU µs per packet in and per packet out."""
    name, payload_type = ("vp9", 98) if codec == "vp9" else ("vp8", 96)
    track = PublishedTrack("bench", 1, "video", Codec(payload_type, name, 90000), "0", "bench", [], lambda _: None)
    layer = track.layers[0]
    layer.bind(SSRC)
    sent = [0]

    def count(data: bytes) -> None:
        sent[0] += 1

    for index in range(receivers):
        down = DownTrack(track, f"receiver{index}", "0", count)
        down.paused = False
        down.target_layer = svc.RUNG_NAMES.index(rung) if down.svc is not None else 0
        if down.svc is not None:
            down.svc.aim(down.target_layer)
        else:
            down.current_layer = 0  # forwarding already: a VP8 receiver waits for nothing
        track.downtracks.append(down)
    before = time.process_time()
    for packet in packets:
        layer.last_arrival = time.monotonic()
        track.forward(layer, packet)
    cpu = time.process_time() - before
    return {
        "us_per_packet_in": round(cpu / len(packets) * 1e6, 2),
        "us_per_packet_out": round(cpu / max(sent[0], 1) * 1e6, 2),
        "sent": sent[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.svc_cost", description=__doc__)
    parser.add_argument("--packets", type=int, default=20000)
    parser.add_argument("--receivers", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=5, help="runs of each case, interleaved; the fastest counts")
    arguments = parser.parse_args()
    packets = svc_packets(arguments.packets)
    cases = (("vp8", "high"), ("vp9", "high"), ("vp9", "low"))
    runs: dict[tuple[str, str], list[dict[str, float]]] = {case: [] for case in cases}
    for _ in range(arguments.repeat):  # interleaved, so that a busy moment of the machine hits every case
        for case in cases:
            runs[case].append(measure(*case, packets, arguments.receivers))
    print(f"| track | receivers get | µs per packet in ({arguments.receivers} receivers) | packets out |", end="")
    print(" µs per packet out |\n|---|---|---|---|---|")
    for codec, rung in cases:
        figures = min(runs[(codec, rung)], key=lambda run: run["us_per_packet_in"])
        print(
            f"| {codec} | {rung if codec == 'vp9' else 'the one layer'} | {figures['us_per_packet_in']} "
            f"| {figures['sent']} | {figures['us_per_packet_out']} |"
        )


if __name__ == "__main__":
    main()
