"""Who the room hears as its active speaker: the loudest audio, held across the gaps of speech, and
announced once it has stayed the loudest for a moment."""

from __future__ import annotations

from dataclasses import dataclass

from sfu.room import Room


@dataclass(eq=False)
class Audio:
    """What speaker detection reads of a published audio track."""

    id: str
    publisher_id: str
    user_id: int
    kind: str = "audio"
    muted: bool = False
    audio_level: int = 127  # -dBov of the loudest packet since the last tick; 127 is silence


@dataclass
class Leaving:
    id: str


def room_with(*tracks: Audio) -> Room:
    room = Room(1, events=None, retired=None)  # type: ignore[arg-type]
    room.tracks = {track.id: track for track in tracks}
    return room


def ticks(room: Room, levels: dict[Audio, list[int]], count: int) -> list[dict]:
    """Run ``count`` ticks, each track's level taken in turn from its list (127: silent tick)."""
    announcements = []
    for tick in range(count):
        for track, pattern in levels.items():
            track.audio_level = pattern[tick % len(pattern)]
        if (said := room.detect_speaker()) is not None:
            announcements.append(said)
    return announcements


def test_a_beeping_microphone_is_announced_though_it_is_loud_only_every_other_tick() -> None:
    beeper = Audio("a", "peer-a", 1)
    room = room_with(beeper)
    announced = ticks(room, {beeper: [30, 127]}, 6)
    assert [said["user_id"] for said in announced] == [1]
    assert announced[0] == room.speaker_announcement
    assert 30 <= announced[0]["level"] < 60  # -dBov, as loud as the beep has recently been


def test_the_louder_speaker_takes_over_and_quiet_or_muted_ones_never_do() -> None:
    soft, loud, muted, hiss = Audio("s", "p-s", 1), Audio("l", "p-l", 2), Audio("m", "p-m", 3), Audio("h", "p-h", 4)
    muted.muted = True
    room = room_with(soft, loud, muted, hiss)
    first = ticks(room, {soft: [40], loud: [127], muted: [5], hiss: [90]}, 4)
    assert [said["user_id"] for said in first] == [1]
    then = ticks(room, {soft: [40], loud: [20, 127], muted: [5], hiss: [90]}, 8)
    assert [said["user_id"] for said in then] == [2]
    assert room.active_speaker == "p-l" and room.speaker_announcement == then[0]


def test_two_people_loud_in_turn_get_one_of_them_named_and_kept() -> None:
    """With nobody named yet, the loudest is named at once; after that, the lead changing every
    tick never moves the name back and forth."""
    ann, ben = Audio("a", "p-a", 1), Audio("b", "p-b", 2)
    room = room_with(ann, ben)
    announced = ticks(room, {ann: [20, 127], ben: [127, 20]}, 10)
    assert [said["user_id"] for said in announced] == [1]
    room.remove_peer(Leaving("p-a"))  # the named speaker leaves
    again = ticks(room, {ann: [20, 127], ben: [127, 20]}, 10)
    assert len(again) == 1
