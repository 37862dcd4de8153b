"""Retransmissions lost on the way are found from the receiver's reports on the RTX stream and sent
again (sfu/repair.py): a receiver that asks for a packet only once (aiortc) would otherwise wait
for it for good, its picture stopped."""

from __future__ import annotations

from sfu import rtcp, rtp
from sfu.forwarder import RESEND_REACH, DownTrack
from sfu.repair import TAIL_SECONDS, RepairLedger
from tests.test_sfu_packets import _track, _vp8, rtp_packet


def test_a_report_whose_loss_grew_sends_again_what_it_newly_covers() -> None:
    ledger = RepairLedger()
    for offset in range(4):
        ledger.note(100 + offset, 5000 + offset, 0.0)
    assert ledger.on_report(101, 0, 0.1) == [], "nothing lost: 100 and 101 arrived"
    assert ledger.on_report(103, 1, 0.2) == [5002, 5003], "one of 102 and 103 was lost"
    assert ledger.on_report(103, 1, 1.5) == [], "each is settled once"


def test_a_report_that_shows_no_new_loss_settles_what_it_covers_across_the_wrap() -> None:
    ledger = RepairLedger()
    ledger.on_report(0x1FFFE, 3, 0.0)
    for rtx_seq, seq in ((0xFFFF, 10), (0, 11), (1, 12)):
        ledger.note(rtx_seq, seq, 0.1)
    assert ledger.on_report(0x20001, 3, 0.3) == []
    assert ledger.sent == {}


def test_a_retransmission_lost_at_the_tail_is_sent_again_once_reports_leave_it_out() -> None:
    """Nothing sent after it on the RTX stream shows the gap: a report that, long enough after it was
    sent for any queue to have delivered it, still stops short of it, says it was lost."""
    ledger = RepairLedger()
    ledger.on_report(199, 0, 0.0)
    ledger.note(200, 7000, 1.0)
    ledger.note(201, 7001, 1.0)
    assert ledger.on_report(199, 0, 1.2) == [], "maybe still in a queue"
    assert ledger.on_report(199, 0, 1.1 + TAIL_SECONDS) == [7000, 7001]


def _track_that_sent(frames: int, parts: int = 3) -> tuple[DownTrack, list[rtp.Packet]]:
    """A down-track with RTX that forwarded ``frames`` frames of ``parts`` packets each."""
    track, _ = _track(layers=1)
    sent: list[bytes] = []
    down = DownTrack(track, "sub", "0", sent.append)
    down.paused, down.rtx_payload_type = False, 97
    track.downtracks.append(down)
    down.choose_layer()
    layer = track.layers[0]
    seq = 100
    for frame in range(frames):
        for part in range(parts):
            payload = _vp8(frame == 0 and part == 0) + bytes(900)
            track.forward(layer, rtp.Packet(rtp_packet(seq, 3000 * frame, layer.ssrc, payload)))
            seq += 1
    return down, [rtp.Packet(data) for data in sent]


def test_a_down_track_sends_again_a_repair_its_receiver_reports_lost_but_not_one_far_behind() -> None:
    down, packets = _track_that_sent(RESEND_REACH + 20, parts=1)
    old, recent = packets[5], packets[-3]
    repairs: list[bytes] = []
    down.on_nack([old.seq, recent.seq], repairs.append)
    assert [rtp.Packet(data).payload[:2] for data in repairs] == [
        old.seq.to_bytes(2, "big"),
        recent.seq.to_bytes(2, "big"),
    ]
    rtx = [rtp.Packet(data).seq for data in repairs]
    # Neither reached the receiver; its next report on the RTX stream stops before them.
    report = rtcp.ReportBlock(down.rtx_ssrc, 0, 0, (rtx[0] - 1) & 0xFFFF, 0, 0, 0)
    now = down.repairs.sent[rtx[1]][1] + TAIL_SECONDS + 0.1
    down.on_rtx_report(report, repairs.append, now)
    assert down.reports_rtx
    again = rtp.Packet(repairs[-1])
    assert (
        len(repairs) == 3 and again.payload[:2] == recent.seq.to_bytes(2, "big") and again.payload[2:] == recent.payload
    )
    assert again.seq == (rtx[1] + 1) & 0xFFFF, "a new RTX packet"


def test_owed_packets_are_named_at_the_next_report() -> None:
    ledger = RepairLedger()
    ledger.owe(40)
    ledger.owe(41)
    assert ledger.on_report(0, 0, 0.0) == [40, 41]
    assert ledger.on_report(0, 0, 1.0) == []


def test_retransmissions_stay_within_the_tracks_share_of_the_estimate() -> None:
    """On a link that proved too narrow, repairs must not overfill it again: a burst of NACKs gets
    what the share allows, the rest is owed and sent once the budget has refilled."""
    down, packets = _track_that_sent(8)
    down.bandwidth = 80_000  # 10 kB a second, of which a quarter of a second may be spent at once
    asked = [packet.seq for packet in packets[::3]]
    repairs: list[bytes] = []
    down.on_nack(asked, repairs.append)
    assert 1 <= len(repairs) < len(asked) and sum(map(len, repairs)) <= 2_500
    owed = asked[len(repairs) :]
    assert list(down.repairs.owed) == owed
    # Reports on the RTX stream, a second apart: each sends what the refilled budget has room for.
    before, now = len(repairs), down.repair_at
    for _ in range(len(owed)):
        now += 1.0
        count = len(repairs)
        report = rtcp.ReportBlock(down.rtx_ssrc, 0, 0, rtp.Packet(repairs[-1]).seq, 0, 0, 0)
        down.on_rtx_report(report, repairs.append, now)
        assert sum(map(len, repairs[count:])) <= 2_500
        if not down.repairs.owed:
            break
    sent_again = [int.from_bytes(rtp.Packet(data).payload[:2], "big") for data in repairs[before:]]
    assert sent_again == owed


def test_a_paused_track_answers_for_what_it_sent_with_fillers() -> None:
    """Video paused (audio only on a starved link) resumes with a key frame: what was sent before is
    no use to the decoder, and sending it whole would take the room the audio needs."""
    down, packets = _track_that_sent(4)
    down.set_paused(True)
    repairs: list[bytes] = []
    down.on_nack([packet.seq for packet in packets[1:3]], repairs.append)
    assert len(repairs) == 2
    assert all(data[0] & 0x20 and len(rtp.Packet(data).payload) == 2 for data in repairs), "OSN only"
