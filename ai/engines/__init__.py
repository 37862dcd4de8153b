"""One engine per way of running a model; ``ENGINES`` maps the name a model's manifest gives to it."""

from __future__ import annotations

from ai.engines.base import Engine, ModelError, ModelSpec, RecognizedLine, Scores
from ai.engines.classifier import MelMlpEngine
from ai.engines.deepfilter import DeepFilterEngine
from ai.engines.denoise import DenoiseEngine, DenoiseStream
from ai.engines.moonshine import MoonshineEngine
from ai.engines.rnnoise import RnnoiseEngine
from ai.engines.spectral import SpectralGatingEngine
from ai.engines.speechbrain import SpeechbrainEngine
from ai.engines.superres import RealEsrganEngine, UpscaleEngine
from ai.engines.whisper import WhisperEngine

ENGINES: dict[str, type[Engine]] = {
    "moonshine": MoonshineEngine,
    "whisper": WhisperEngine,
    "speechbrain": SpeechbrainEngine,
    "mel-mlp": MelMlpEngine,
    "deepfilternet": DeepFilterEngine,
    "rnnoise": RnnoiseEngine,
    "spectral-gating": SpectralGatingEngine,
    "realesrgan": RealEsrganEngine,
}

__all__ = [
    "ENGINES",
    "DenoiseEngine",
    "DenoiseStream",
    "Engine",
    "ModelError",
    "ModelSpec",
    "RecognizedLine",
    "Scores",
    "UpscaleEngine",
]
