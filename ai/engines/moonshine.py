"""English recognition with the Moonshine model its package ships (tiny-en), run by its C library."""

from __future__ import annotations

import numpy as np

from ai.engines.base import Engine, ModelError, RecognizedLine


class MoonshineEngine(Engine):
    def load(self) -> None:
        try:
            from moonshine_voice import ModelArch
            from moonshine_voice.transcriber import Transcriber
        except ImportError as exc:  # the package or its native library
            raise ModelError(f"moonshine-voice cannot be imported ({exc}); reinstall huiyi") from None
        arch = ModelArch[self.spec.options.get("arch", "TINY")]
        try:
            self._transcriber = Transcriber(str(self.spec.path), arch, options={"identify_speakers": "false"})
        except Exception as exc:
            raise ModelError(f"the Moonshine model in {self.spec.path} did not load: {exc}") from None

    def unload(self) -> None:
        transcriber = getattr(self, "_transcriber", None)
        if transcriber is not None:
            transcriber.close()
            del self._transcriber

    def infer(self, clip: np.ndarray, language: str | None) -> list[RecognizedLine]:
        transcript = self._transcriber.transcribe_without_streaming(clip.tolist())
        return [
            RecognizedLine(
                text=line.text.strip(),
                start=float(line.start_time),
                end=float(line.start_time + line.duration),
                confidence=None,  # Moonshine reports no probabilities
            )
            for line in transcript.lines
            if line.text.strip()
        ]
