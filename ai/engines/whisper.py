"""Whisper-family recognition from a CTranslate2 model directory, run by faster-whisper (the
optional ``whisper`` extra): Whisper base for Mandarin and other languages, or any larger Whisper
an operator converts and points ``[ai] model_dir`` at."""

from __future__ import annotations

import math

import numpy as np

from ai.engines.base import Engine, ModelError, RecognizedLine, language_tag


class WhisperEngine(Engine):
    def load(self) -> None:
        try:
            from faster_whisper import WhisperModel
        except ImportError:
            raise ModelError("faster-whisper is not installed: pip install 'huiyi[whisper]'") from None
        if not (self.spec.path / "model.bin").is_file():
            raise ModelError(f"{self.spec.path} holds no CTranslate2 Whisper model (model.bin)")
        try:
            self._model = WhisperModel(
                str(self.spec.path),
                device="cpu",
                compute_type=self.spec.options.get("compute_type", "int8"),
                cpu_threads=int(self.spec.options.get("cpu_threads", 0)),
                local_files_only=True,
            )
        except Exception as exc:
            raise ModelError(f"the Whisper model in {self.spec.path} did not load: {exc}") from None

    def unload(self) -> None:
        if hasattr(self, "_model"):
            del self._model

    def infer(self, clip: np.ndarray, language: str | None) -> list[RecognizedLine]:
        # Greedy, one pass, tokens capped by the clip's length: Whisper can loop on audio it cannot
        # make out, and its fallback would decode such a clip up to six times over.
        segments, info = self._model.transcribe(
            clip,
            language=language_tag(language) if language else None,
            beam_size=1,
            temperature=0.0,
            condition_on_previous_text=False,
            max_new_tokens=min(440, 16 + int(12 * clip.size / 16_000)),
            vad_filter=False,
        )
        return [
            RecognizedLine(
                text=segment.text.strip(),
                start=float(segment.start),
                end=float(segment.end),
                confidence=round(math.exp(segment.avg_logprob), 3),
                language=info.language,
            )
            for segment in segments
            if segment.text.strip()
        ]
