"""SpeechBrain models from a local directory (the optional ``speechbrain`` extra, which brings
torch): an ``EncoderDecoderASR`` for recognition, an ``EncoderClassifier`` for emotion or
synthetic-speech detection. The directory is what ``from_hparams`` reads (hyperparams.yaml and
the checkpoints it names); nothing is fetched."""

from __future__ import annotations

import numpy as np

from ai.engines.base import Engine, ModelError, RecognizedLine, Scores


class SpeechbrainEngine(Engine):
    def load(self) -> None:
        try:
            from speechbrain.inference.ASR import EncoderDecoderASR
            from speechbrain.inference.classifiers import EncoderClassifier
        except ImportError:
            raise ModelError("speechbrain is not installed: pip install 'huiyi[speechbrain]'") from None
        if not (self.spec.path / "hyperparams.yaml").is_file():
            raise ModelError(f"{self.spec.path} holds no SpeechBrain model (hyperparams.yaml)")
        kind = EncoderDecoderASR if self.spec.task == "recognition" else EncoderClassifier
        try:
            self._model = kind.from_hparams(source=str(self.spec.path), savedir=str(self.spec.path))
        except Exception as exc:
            raise ModelError(f"the SpeechBrain model in {self.spec.path} did not load: {exc}") from None

    def unload(self) -> None:
        if hasattr(self, "_model"):
            del self._model

    def infer(self, clip: np.ndarray, language: str | None) -> list[RecognizedLine] | Scores:
        import torch

        batch = torch.from_numpy(clip).unsqueeze(0)
        lengths = torch.tensor([1.0])
        with torch.no_grad():
            if self.spec.task == "recognition":
                words, _ = self._model.transcribe_batch(batch, lengths)
                text = str(words[0]).strip()
                return [RecognizedLine(text, 0.0, clip.size / 16_000, None)] if text else []
            probabilities = self._model.classify_batch(batch, lengths)[0][0].softmax(-1).tolist()
        labels = self.spec.labels or tuple(
            self._model.hparams.label_encoder.decode_ndim(list(range(len(probabilities))))
        )
        return {str(label): round(float(p), 4) for label, p in zip(labels, probabilities, strict=True)}
