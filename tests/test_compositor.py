"""The composite of a recording (media/compositor.py) from track files as the media server writes
them: one track per file, timestamps in milliseconds since the recording started, placed by each
file's ``started_at``. Two participants, the second arriving a second late."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from media import worker
from media.compositor import composite
from media.jobs import JobFailed
from tests.support import audio_track_file, video_track_file

ORIGIN = 1_700_000_000.0  # wall clock of the recording's first frame
RED, BLUE = (230, 20, 20), (20, 20, 230)


@pytest.fixture
def meeting(tmp_path: Path) -> tuple[list[str], list[dict[str, Any]]]:
    """User 1 (red, a quiet voice) from the start for 2 s; user 2 (blue, a loud voice) from 1 s to 3 s."""
    video_track_file(tmp_path / "1-video.webm", RED, 0, 2.0)
    audio_track_file(tmp_path / "1-audio.webm", 440, 0.05, 0, 2.0)
    video_track_file(tmp_path / "2-video.webm", BLUE, 1000, 2.0)
    audio_track_file(tmp_path / "2-audio.webm", 660, 0.5, 1000, 2.0)
    inputs = [str(tmp_path / name) for name in ("1-video.webm", "1-audio.webm", "2-video.webm", "2-audio.webm")]
    tracks = [
        {"kind": "video", "user_id": 1, "started_at": ORIGIN, "duration": 2.0},
        {"kind": "audio", "user_id": 1, "started_at": ORIGIN, "duration": 2.0},
        {"kind": "video", "user_id": 2, "started_at": ORIGIN + 1, "duration": 2.0},
        {"kind": "audio", "user_id": 2, "started_at": ORIGIN + 1, "duration": 2.0},
    ]
    return inputs, tracks


def picture_at(path: Path, moment: float) -> np.ndarray:
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            if frame.time is not None and frame.time >= moment:
                return frame.to_ndarray(format="rgb24")
    raise AssertionError(f"no frame at {moment} s")


def colour_at(picture: np.ndarray, x: float, y: float) -> str:
    """red, blue or other, for the pixel at fractions ``x``, ``y`` of the picture."""
    r, g, b = (int(v) for v in picture[int(y * picture.shape[0]), int(x * picture.shape[1])])
    if r > 150 and g < 90 and b < 90:
        return "red"
    if b > 150 and r < 90 and g < 90:
        return "blue"
    return "other"


def loudness(path: Path, start: float, end: float) -> float:
    with av.open(str(path)) as container:
        chunks = [
            frame.to_ndarray().reshape(-1)
            for frame in container.decode(audio=0)
            if frame.time is not None and start <= frame.time < end
        ]
    return float(np.sqrt(np.mean(np.square(np.concatenate(chunks)))))


def run(meeting: tuple[list[str], list[dict[str, Any]]], tmp_path: Path, layout: str) -> tuple[Path, list[float]]:
    inputs, tracks = meeting
    scratch = tmp_path / f"out-{layout}"
    scratch.mkdir()
    reported: list[float] = []
    params = {"tracks": tracks, "layout": layout, "width": 320, "height": 180, "fps": 10, "recording_id": 7}
    ((output, name),) = composite(inputs, scratch, params, reported.append)
    assert name == "recording-7.mp4" and output.parent == scratch
    return output, reported


def test_grid_composite_is_one_mp4_of_both_participants_on_one_clock(
    meeting: tuple[list[str], list[dict[str, Any]]], tmp_path: Path
) -> None:
    output, reported = run(meeting, tmp_path, "grid")
    with av.open(str(output)) as container:
        assert container.format.name.startswith("mov,mp4")
        assert container.streams.video[0].codec_context.name == "h264"
        assert container.streams.audio[0].codec_context.name == "aac"
        assert (container.streams.video[0].codec_context.width, container.streams.video[0].height) == (320, 180)
        assert container.duration / av.time_base == pytest.approx(3.0, abs=0.15)
    # Alone at first, user 1 fills the picture; once user 2 is in, they share it side by side.
    alone = picture_at(output, 0.5)
    assert colour_at(alone, 0.5, 0.5) == "red"
    both = picture_at(output, 1.5)
    assert (colour_at(both, 0.25, 0.5), colour_at(both, 0.75, 0.5)) == ("red", "blue")
    # User 1 left at 2 s: user 2 alone once user 1's last frame is no longer held.
    assert colour_at(picture_at(output, 2.7), 0.5, 0.5) == "blue"
    # Both voices are in the mix, each where it was spoken.
    assert loudness(output, 0.2, 0.9) > 0.02
    assert loudness(output, 1.2, 1.9) > loudness(output, 0.2, 0.9) * 3
    assert reported and reported == sorted(reported) and reported[-1] == pytest.approx(1.0)


def test_speaker_layout_shows_the_loudest_voice_large(
    meeting: tuple[list[str], list[dict[str, Any]]], tmp_path: Path
) -> None:
    output, _ = run(meeting, tmp_path, "speaker")
    assert colour_at(picture_at(output, 0.5), 0.5, 0.4) == "red"  # the only one there
    # Both in, user 2 is the louder: large above, user 1 small in the strip below.
    both = picture_at(output, 1.8)
    assert colour_at(both, 0.5, 0.4) == "blue"
    assert colour_at(both, 0.5, 0.9) == "red"


def test_a_worker_runs_composite_jobs(meeting: tuple[list[str], list[dict[str, Any]]], tmp_path: Path) -> None:
    inputs, tracks = meeting
    # The two voices alone, their lengths unsaid: an audio-only composite as long as they are.
    voices = [{key: value for key, value in track.items() if key != "duration"} for track in tracks[1::2]]
    outputs = worker.run("job", 1, "composite", {"tracks": voices}, inputs[1::2], str(tmp_path))
    ((path, name),) = outputs
    assert name == "composite.mp4"
    with av.open(path) as container:
        assert not container.streams.video and container.streams.audio[0].codec_context.name == "aac"
        assert container.duration / av.time_base == pytest.approx(3.0, abs=0.15)
    with pytest.raises(JobFailed, match="nothing was recorded"):
        worker.run("job", 1, "composite", {"tracks": []}, [], str(tmp_path))
