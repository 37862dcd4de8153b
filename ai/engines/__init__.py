"""One engine per way of running a model; ``ENGINES`` maps the name a model's manifest gives to it."""

from __future__ import annotations

from ai.engines.base import Engine, ModelError, ModelSpec, RecognizedLine, Scores
from ai.engines.classifier import MelMlpEngine
from ai.engines.moonshine import MoonshineEngine
from ai.engines.speechbrain import SpeechbrainEngine
from ai.engines.whisper import WhisperEngine

ENGINES: dict[str, type[Engine]] = {
    "moonshine": MoonshineEngine,
    "whisper": WhisperEngine,
    "speechbrain": SpeechbrainEngine,
    "mel-mlp": MelMlpEngine,
}

__all__ = ["ENGINES", "Engine", "ModelError", "ModelSpec", "RecognizedLine", "Scores"]
