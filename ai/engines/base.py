"""The interface every engine offers (load, unload, infer, describe) and what a model is.

An engine knows how to run one kind of model on one clip of mono samples (16 kHz for speech,
48 kHz for denoising), or on one RGB picture (super-resolution); it knows nothing of jobs,
queues or nodes, so it can be tried with a file in and a result out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

TASKS = ("recognition", "emotion", "synthesis-detection", "denoising", "super-resolution")


class ModelError(Exception):
    """A model cannot be loaded or run (missing files, a damaged file, its package not installed);
    the message says which and what to do."""


@dataclass(frozen=True)
class ModelSpec:
    """A model the registry knows: where it is and what it does, whether loaded or not."""

    id: str
    task: str
    engine: str
    languages: tuple[str, ...]  # lower-case primary tags ("en", "zh"), or "*" for any language
    path: Path
    source: str  # "package:<name>" or "directory:<path>"
    labels: tuple[str, ...] = ()
    description: str = ""
    options: dict[str, Any] = field(default_factory=dict, compare=False)

    def speaks(self, language: str | None) -> bool:
        return "*" in self.languages or language is None or language_tag(language) in self.languages

    def size_bytes(self) -> int:
        if self.path.is_file():
            return self.path.stat().st_size
        return sum(entry.stat().st_size for entry in self.path.rglob("*") if entry.is_file())


def language_tag(language: str) -> str:
    """The primary subtag that models are matched on: "zh-CN" -> "zh", "en_US" -> "en"."""
    return language.replace("_", "-").split("-", 1)[0].lower()


@dataclass(frozen=True)
class RecognizedLine:
    text: str
    start: float  # seconds into the clip
    end: float
    confidence: float | None  # the engine's own, when it gives one
    language: str | None = None  # the language the engine heard, when it detects one


# Per-label scores summing to 1, in the model's label order.
Scores = dict[str, float]


class Engine(ABC):
    """A model of one task, loaded or not. ``infer`` is only called between ``load`` and
    ``unload`` and never concurrently (the registry holds the model's lock)."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec

    @abstractmethod
    def load(self) -> None: ...

    @abstractmethod
    def unload(self) -> None: ...

    @abstractmethod
    def infer(self, clip: np.ndarray, language: str | None) -> list[RecognizedLine] | Scores | np.ndarray:
        """Recognition engines answer lines; classifiers answer scores over their labels;
        denoisers the cleaned clip; upscalers the larger picture."""

    def memory_bytes(self) -> int | None:
        """What the loaded model holds, when the engine can tell; otherwise the registry measures
        the growth of the process across the load."""
        return None

    def describe(self) -> dict[str, Any]:
        return {
            "engine": self.spec.engine,
            "task": self.spec.task,
            "languages": list(self.spec.languages),
            "labels": list(self.spec.labels),
            "description": self.spec.description,
        }


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max())
    return shifted / shifted.sum()
