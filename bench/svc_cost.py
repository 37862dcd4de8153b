"""``python -m bench.svc_cost [--packets 20000] [--receivers 10]``: what forwarding VP9 or AV1 SVC costs
the media server per packet, against forwarding a single VP8 layer, measured in this process.

The same stream of packets goes through the forwarding path exactly as the server runs it for a
published track (``PublishedTrack.forward`` to its ``DownTrack``s, SRTP left out): once as a VP8
track, then as a VP9 and as an AV1 track whose receivers all take every layer ("high"), and with all
of them on the smallest picture ("low", two thirds of the packets dropped per receiver). The VP9
packets carry payload descriptors shaped like Chromium's ``L3T3_KEY`` (flexible mode, three spatial
layers, the temporal pattern 0, 2, 1, 2; see tests/vp9_capture.py) in front of zero-filled 1000-byte
payloads; the AV1 ones carry the same layers in a dependency descriptor header extension, the key
picture's with the template structure Chromium sends (tests/av1_capture.py). The descriptor is all
the forwarding path reads. CPU time (``time.process_time``) per incoming packet and per packet handed
to a receiver."""

from __future__ import annotations

import argparse
import time

from sfu import av1dd, rtp, svc
from sfu.forwarder import DownTrack
from sfu.sdp import Codec
from sfu.track import PublishedTrack
from sfu.vp9 import FLAG_B, FLAG_E, FLAG_F, FLAG_I, FLAG_L, FLAG_P, FLAG_V

SSRC = 0x5EC0DE
TEMPORAL_PATTERN = (0, 2, 1, 2)
PACKETS_PER_LAYER = (1, 1, 3)  # a 1280x720 picture's spatial layers at about 1 Mbit/s
PAYLOAD = bytes(1000)
SCALABILITY_STRUCTURE = bytes([0x50 | 0x10, 0x01, 0x40, 0x00, 0xB4, 0x02, 0x80, 0x01, 0x68, 0x05, 0x00, 0x02, 0xD0])
# Chromium's L3T3_KEY template structure (tests/av1_capture.py): fifteen templates, nine decode
# targets, three chains, the three sizes; after the descriptor's mandatory three bytes.
AV1_STRUCTURE = bytes.fromhex(
    "80081485214eaaaaa8000600004000100002aa80a8000600004000100002a000a800060000400016d549241b5524"
    "906d54923157e001974ca864330e222396eca8655304224390eca87753013f00b3027f016704ff02cf"
)
AV1_EXTENSION_ID = 4


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


def av1_packets(count: int) -> list[rtp.Packet]:
    """The same pictures as ``svc_packets`` as AV1, each packet's layer in its dependency descriptor."""
    structure = av1dd.parse(bytes(3) + AV1_STRUCTURE, None).structure
    assert structure is not None
    # Per (spatial, temporal) layer, the last template of it: one that references an earlier frame.
    template_of = {(t.spatial, t.temporal): index for index, t in enumerate(structure.templates)}
    packets: list[rtp.Packet] = []
    picture = frame = 0
    while len(packets) < count:
        key = picture == 0
        tid = TEMPORAL_PATTERN[picture % len(TEMPORAL_PATTERN)]
        for sid, parts in enumerate(PACKETS_PER_LAYER):
            frame += 1
            template = 0 if key and sid == 0 else template_of[(sid, tid)]
            for part in range(parts):
                head = (0x80 if part == 0 else 0) | (0x40 if part == parts - 1 else 0) | template
                descriptor = bytes([head, frame >> 8 & 0xFF, frame & 0xFF])
                if key and sid == 0 and part == 0:
                    descriptor += AV1_STRUCTURE
                block = rtp.extension_block([(AV1_EXTENSION_ID, descriptor)], wide=True)
                marker = sid == len(PACKETS_PER_LAYER) - 1 and part == parts - 1
                second = (0x80 if marker else 0) | 45
                header = rtp.FIXED_HEADER.pack(0x90, second, len(packets) & 0xFFFF, picture * 3000, SSRC)
                packets.append(rtp.Packet(header + block + bytes([0x10]) + PAYLOAD))
        picture += 1
    return packets[:count]


def measure(codec: str, rung: str, packets: list[rtp.Packet], receivers: int) -> dict[str, float]:
    """Forward ``packets`` to ``receivers`` down-tracks; CPU µs per packet in and per packet out."""
    payload_type = {"vp8": 96, "vp9": 98, "av1": 45}[codec]
    track = PublishedTrack("bench", 1, "video", Codec(payload_type, codec, 90000), "0", "bench", [], lambda _: None,
                           dependency_extension_id=AV1_EXTENSION_ID)  # fmt: skip
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
    packets = {"vp8": svc_packets(arguments.packets), "av1": av1_packets(arguments.packets)}
    packets["vp9"] = packets["vp8"]
    cases = (("vp8", "high"), ("vp9", "high"), ("vp9", "low"), ("av1", "high"), ("av1", "low"))
    runs: dict[tuple[str, str], list[dict[str, float]]] = {case: [] for case in cases}
    for _ in range(arguments.repeat):  # interleaved, so that a busy moment of the machine hits every case
        for case in cases:
            runs[case].append(measure(*case, packets[case[0]], arguments.receivers))
    print(f"| track | receivers get | µs per packet in ({arguments.receivers} receivers) | packets out |", end="")
    print(" µs per packet out |\n|---|---|---|---|---|")
    for codec, rung in cases:
        figures = min(runs[(codec, rung)], key=lambda run: run["us_per_packet_in"])
        print(
            f"| {codec} | {rung if codec != 'vp8' else 'the one layer'} | {figures['us_per_packet_in']} "
            f"| {figures['sent']} | {figures['us_per_packet_out']} |"
        )


if __name__ == "__main__":
    main()
