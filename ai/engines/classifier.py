"""A small classifier of clips (emotion, synthetic speech) in a format of this project's own that
needs neither torch nor a runtime: log-mel statistics into a one-hidden-layer network whose
weights are a NumPy ``weights.npz`` beside the model's ``model.json``.

``weights.npz`` holds ``mean`` and ``scale`` (the feature normalisation, shape (80,)), ``w1``
(80, hidden), ``b1`` (hidden,), ``w2`` (hidden, labels) and ``b2`` (labels,). See docs/ai.md."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from ai.engines.base import Engine, ModelError, Scores, softmax
from ai.features import FEATURES, mel_statistics

WEIGHTS = "weights.npz"


class MelMlpEngine(Engine):
    def load(self) -> None:
        path = self.spec.path / WEIGHTS
        try:
            with np.load(path, allow_pickle=False) as stored:
                weights = {
                    name: np.array(stored[name], np.float32) for name in ("mean", "scale", "w1", "b1", "w2", "b2")
                }
        except FileNotFoundError:
            raise ModelError(f"{self.spec.id}: {path} is missing") from None
        except KeyError as exc:
            raise ModelError(f"{self.spec.id}: {WEIGHTS} lacks the array {exc}") from None
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
            raise ModelError(f"{self.spec.id}: {WEIGHTS} is damaged ({exc})") from None
        self._check(weights, path)
        self._weights = weights

    def _check(self, w: dict[str, np.ndarray], path: Path) -> None:
        hidden = w["w1"].shape[1] if w["w1"].ndim == 2 else -1
        expected = {
            "mean": (FEATURES,),
            "scale": (FEATURES,),
            "w1": (FEATURES, hidden),
            "b1": (hidden,),
            "w2": (hidden, len(self.spec.labels)),
            "b2": (len(self.spec.labels),),
        }
        for name, shape in expected.items():
            if w[name].shape != shape:
                raise ModelError(f"{self.spec.id}: {path.name} array {name} has shape {w[name].shape}, not {shape}")
        if not all(np.isfinite(array).all() for array in w.values()) or (w["scale"] == 0).any():
            raise ModelError(f"{self.spec.id}: {path.name} holds invalid numbers")

    def unload(self) -> None:
        if hasattr(self, "_weights"):
            del self._weights

    def memory_bytes(self) -> int | None:
        return sum(array.nbytes for array in self._weights.values())

    def infer(self, clip: np.ndarray, language: str | None) -> Scores:
        w = self._weights
        features = (mel_statistics(clip) - w["mean"]) / w["scale"]
        hidden = np.maximum(features @ w["w1"] + w["b1"], 0.0)
        probabilities = softmax(hidden @ w["w2"] + w["b2"])
        return {label: round(float(p), 4) for label, p in zip(self.spec.labels, probabilities, strict=True)}
