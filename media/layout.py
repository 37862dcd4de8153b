"""Where each participant's picture goes in a composite, and who is speaking: shared by the composite
of a recording (media/compositor.py) and the live compositor (media/live.py).

Two layouts: a grid of equal tiles, or the active speaker large above a strip of the others. The
speaker is the loudest voice over the last window, kept until someone else is heard, so the big
tile does not flicker between people in a pause."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SILENCE_RMS = 0.003  # a window quieter than this (full scale 1.0) counts as nobody speaking
BACKGROUND = (24, 24, 24)
LAYOUTS = ("grid", "speaker")


def even(value: int) -> int:
    """Picture sizes in 4:2:0 video are even."""
    return max(2, value - value % 2)


@dataclass(frozen=True)
class Box:
    x: int
    y: int
    width: int
    height: int


def grid(count: int, width: int, height: int) -> list[Box]:
    """Equal tiles, as square a grid as the count allows, filled row by row."""
    columns = math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    size = (width // columns, height // rows)
    return [Box((n % columns) * size[0], (n // columns) * size[1], *size) for n in range(count)]


def speaker_view(count: int, width: int, height: int) -> list[Box]:
    """The first box fills the picture above a strip of small ones for the rest."""
    if count == 1:
        return [Box(0, 0, width, height)]
    strip = height // 5
    tile_width = min(width // (count - 1), strip * 16 // 9)
    left = (width - tile_width * (count - 1)) // 2
    return [Box(0, 0, width, height - strip)] + [
        Box(left + n * tile_width, height - strip, tile_width, strip) for n in range(count - 1)
    ]


def arrange(layout: str, pictures: list[int], featured: int | None, width: int, height: int) -> list[tuple[int, Box]]:
    """A box for each of ``pictures`` (ids, in the order they came); with the speaker layout the
    ``featured`` one (the speaker's, when shown) comes first, large."""
    if not pictures:
        return []
    if layout == "speaker":
        ordered = [picture for picture in pictures if picture == featured][:1]
        ordered += [picture for picture in pictures if picture not in ordered]
        return list(zip(ordered, speaker_view(len(ordered), width, height), strict=True))
    return list(zip(pictures, grid(len(pictures), width, height), strict=True))


def fit(width: int, height: int, box: Box) -> tuple[int, int]:
    """The size a ``width`` x ``height`` picture is drawn at in ``box``, keeping its shape."""
    scale = min(box.width / width, box.height / height)
    return min(box.width, even(round(width * scale))), min(box.height, even(round(height * scale)))


def paste(canvas: np.ndarray, box: Box, image: np.ndarray) -> None:
    """``image`` (already fitted) centred in ``box``."""
    top = box.y + (box.height - image.shape[0]) // 2
    left = box.x + (box.width - image.shape[1]) // 2
    canvas[top : top + image.shape[0], left : left + image.shape[1]] = image


class Speaker:
    """Who is speaking: the loudest voice over the last window, kept until someone else is heard."""

    def __init__(self) -> None:
        self.user_id: int | None = None

    def hear(self, loudness: dict[int, float]) -> None:
        if loudness:
            user_id, level = max(loudness.items(), key=lambda item: item[1])
            if level >= SILENCE_RMS:
                self.user_id = user_id
