"""Transport-wide feedback as a publisher's estimator reads it: every sequence number since the last
report, received or not, and each arrival time to 250 µs, also across a sequence wrap, reordering
and gaps. Read back here by the draft's rules (all chunk kinds), independently of the writer."""

from __future__ import annotations

import struct

from sfu import rtcp
from sfu.twcc import FEEDBACK_INTERVAL, ArrivalLog


def read_feedback(data: bytes) -> tuple[int, int, list[tuple[int, float | None]]]:
    """(base sequence number, feedback count, [(sequence number, arrival seconds or None)])."""
    first, packet_type, words = struct.unpack_from("!BBH", data)
    assert first >> 6 == 2 and first & 0x1F == 15 and packet_type == rtcp.RTPFB
    assert len(data) == 4 + 4 * words
    body = data[4:]
    if first & 0x20:
        body = body[: len(body) - body[-1]]
    _, _, base, count, times = struct.unpack_from("!IIHHI", body)
    reference = (times >> 8) * 0.064
    symbols: list[int] = []
    offset = 16
    while len(symbols) < count:
        (chunk,) = struct.unpack_from("!H", body, offset)
        offset += 2
        if not chunk & 0x8000:  # run length
            symbols += [(chunk >> 13) & 3] * (chunk & 0x1FFF)
        elif chunk & 0x4000:  # seven two-bit symbols
            symbols += [(chunk >> (12 - 2 * i)) & 3 for i in range(7)]
        else:  # fourteen one-bit symbols
            symbols += [(chunk >> (13 - i)) & 1 for i in range(14)]
    arrivals: list[tuple[int, float | None]] = []
    moment = reference
    for index, symbol in enumerate(symbols[:count]):
        seq = (base + index) & 0xFFFF
        if symbol == 0:
            arrivals.append((seq, None))
            continue
        if symbol == 1:
            ticks = body[offset]
            offset += 1
        else:
            (ticks,) = struct.unpack_from("!h", body, offset)
            offset += 2
        moment += ticks * 0.00025
        arrivals.append((seq, moment))
    assert len(body) - offset < 4, "only padding may follow the deltas"
    return base, times & 0xFF, arrivals


def test_arrivals_losses_and_a_wrap_are_reported_to_the_quarter_millisecond() -> None:
    log = ArrivalLog()
    sent = [(65530 + i) & 0xFFFF for i in range(12)]  # crosses 65535 -> 0
    lost = {sent[3], sent[8]}
    start = 1000.0
    times = {seq: start + 0.005 * i for i, seq in enumerate(sent)}
    for seq in sent:
        if seq not in lost:
            log.note(seq, times[seq])
    base, count, arrivals = read_feedback(log.feedback(1, 2, start + 0.1))
    assert base == 65530 and count == 0
    assert [seq for seq, _ in arrivals] == sent
    for seq, arrival in arrivals:
        if seq in lost:
            assert arrival is None
        else:
            assert arrival is not None and abs(arrival - times[seq]) < 0.0003


def test_reordered_and_late_packets() -> None:
    log = ArrivalLog()
    log.note(10, 50.000)
    log.note(12, 50.010)
    log.note(11, 50.012)  # overtaken: arrives after 12, its delta from 12's arrival is positive
    log.note(13, 50.011)  # clock order and sequence order disagree: a negative delta
    _, _, arrivals = read_feedback(log.feedback(1, 2, 50.1))
    got = dict(arrivals)
    assert all(abs(got[seq] - moment) < 0.0003 for seq, moment in [(10, 50.0), (11, 50.012), (12, 50.01), (13, 50.011)])

    log.note(11, 50.2)  # already reported: not news
    log.note(15, 50.2)
    base, count, arrivals = read_feedback(log.feedback(1, 2, 50.3))
    assert base == 14 and count == 1 and arrivals[0] == (14, None) and abs(arrivals[1][1] - 50.2) < 0.0003


def test_a_long_quiet_gap_uses_large_deltas_and_feedback_waits_its_interval() -> None:
    log = ArrivalLog()
    log.note(1, 10.0)
    assert log.due(10.0 + FEEDBACK_INTERVAL)
    log.note(2, 10.5)  # 500 ms later: more than one byte of ticks
    _, _, arrivals = read_feedback(log.feedback(1, 2, 10.5))
    assert abs(arrivals[1][1] - 10.5) < 0.0003
    log.note(3, 10.51)
    assert not log.due(10.51), "the next report waits for its interval"
    assert log.feedback(1, 2, 10.7) is not None and log.feedback(1, 2, 10.8) is None
