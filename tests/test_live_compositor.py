"""The live compositor's picture, driven in process on a clock of the test's own: real VP8 and Opus
frames go in as the media server hands them over, and the picture it encodes follows who speaks,
who comes and who goes."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np

from media.layout import speaker_view
from media.live import DELAY, Composite, LiveConfig

SIZE = (320, 180)
FPS = 10
ORIGIN = 1_000_000.0
DARK, BRIGHT = 40, 210  # grey levels of the two participants' cameras


class Camera:
    """A participant's camera: one grey level, encoded as VP8 frame by frame."""

    def __init__(self, level: int) -> None:
        self.level = level
        self.encoder = av.CodecContext.create("libvpx", "w")
        self.encoder.width, self.encoder.height, self.encoder.pix_fmt = 320, 240, "yuv420p"
        self.encoder.time_base = Fraction(1, FPS)
        self.count = 0

    def frame(self) -> tuple[bytes, bool]:
        image = np.full((240, 320, 3), self.level, dtype=np.uint8)
        picture = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")
        picture.pts, picture.time_base = self.count, Fraction(1, FPS)
        self.count += 1
        packets = self.encoder.encode(picture)
        assert len(packets) == 1
        return bytes(packets[0]), packets[0].is_keyframe


class Microphone:
    """20 ms Opus frames of a tone, or of silence."""

    def __init__(self) -> None:
        self.encoder = av.CodecContext.create("libopus", "w")
        self.encoder.sample_rate, self.encoder.layout, self.encoder.format = 48000, "stereo", "s16"
        self.count = 0

    def frame(self, loud: bool) -> bytes:
        t = (np.arange(960) + self.count * 960) / 48000
        wave = (np.sin(2 * np.pi * 440 * t) * (12000 if loud else 0)).astype(np.int16)
        samples = av.AudioFrame.from_ndarray(np.repeat(wave, 2).reshape(1, -1), format="s16", layout="stereo")
        samples.sample_rate, samples.pts = 48000, self.count * 960
        self.count += 1
        packets = self.encoder.encode(samples)
        return bytes(packets[0]) if packets else b""


def luma(composite: Composite, top: int, left: int, height: int, width: int) -> float:
    return float(composite._planes[0][top : top + height, left : left + width].mean())


def test_the_picture_follows_the_speaker_and_who_leaves() -> None:
    config = LiveConfig(*SIZE, FPS, 200_000, 48_000, "speaker", outputs=[])
    composite = Composite(config, ORIGIN)
    ann, bob = Camera(DARK), Camera(BRIGHT)
    ann_mic, bob_mic = Microphone(), Microphone()
    composite.add_track(1, 11, "video", "vp8")
    composite.add_track(2, 12, "video", "vp8")
    composite.add_track(3, 11, "audio", "opus")
    composite.add_track(4, 12, "audio", "opus")
    big, strip = speaker_view(2, *SIZE)[0], speaker_view(2, *SIZE)[1]

    def run(seconds: float, start: float, speaking: int) -> float:
        """Feed both participants from ``start`` for ``seconds``, ``speaking`` (a user) loud."""
        steps = round(seconds / 0.02)
        for step in range(steps):
            moment = ORIGIN + start + step * 0.02
            for key, mic, user in ((3, ann_mic, 11), (4, bob_mic, 12)):
                if key in composite.audios:
                    data = mic.frame(loud=user == speaking)
                    if data:
                        composite.frame(key, moment, True, data)
            if step % 5 == 0:
                for key, camera in ((1, ann), (2, bob)):
                    if key in composite.videos:
                        data, keyframe = camera.frame()
                        composite.frame(key, moment, keyframe, data)
            composite.step(moment + DELAY + 0.02)
        return start + seconds

    def featured() -> float:
        return luma(composite, big.y + 20, big.x + 100, big.height - 40, big.width - 200)

    moment = run(1.5, 0.0, speaking=12)
    assert composite.speaker.user_id == 12
    assert abs(featured() - BRIGHT * 219 / 255 - 16) < 12, "bob, who speaks, is large"
    assert luma(composite, strip.y + 4, strip.x + 4, strip.height - 8, strip.width - 8) < 80, "ann in the strip"

    moment = run(1.5, moment, speaking=11)
    assert composite.speaker.user_id == 11
    assert abs(featured() - DARK * 219 / 255 - 16) < 12, "now ann, who speaks, is large"

    composite.remove_track(1)  # ann leaves (her video first)
    composite.remove_track(3)
    moment = run(1.0, moment, speaking=0)
    whole = luma(composite, 20, 100, 140, 120)
    assert abs(whole - BRIGHT * 219 / 255 - 16) < 12, "bob alone fills the picture"

    assert composite.lost == 0 and composite.skipped == 0
    assert abs(composite.frames - 4.0 * FPS) <= 2, composite.frames
    assert composite.encoded_bytes > 0
    composite.close()
