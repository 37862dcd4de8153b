"""What each task does with a decoded recording: cut it where the speech is, run the model on each
piece, and shape the answer (text with timed segments, an emotion per segment and overall, the
probability of synthetic speech per segment and overall)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ai.audio import SAMPLE_RATE, BadAudio
from ai.engines.base import RecognizedLine
from ai.registry import Registry
from ai.vad import Segment, Vad

# Classifiers judge pieces of this length at most; longer speech gets a label per piece.
CLASSIFY_SECONDS = 8.0
Progress = Callable[[int], None]


def run_task(
    registry: Registry,
    vad: Vad,
    kind: str,
    model_id: str,
    pcm: np.ndarray,
    language: str | None,
    options: dict[str, Any],
    progress: Progress,
) -> dict[str, Any]:
    duration = round(pcm.size / SAMPLE_RATE, 3)
    segments = vad.segments(pcm, CLASSIFY_SECONDS if kind != "recognition" else 20.0)
    if kind != "recognition" and not segments:
        raise BadAudio("no speech was found in the audio")
    results = []
    with registry.using(model_id) as engine:
        for index, segment in enumerate(segments):
            results.append(engine.infer(segment.samples(pcm), language))
            progress(int(100 * (index + 1) / len(segments)))
    base = {"model_id": model_id, "duration": duration}
    if kind == "recognition":
        return base | _recognition(segments, results, language or _heard(results, engine.spec.languages))
    if kind == "emotion":
        return base | _emotion(segments, results)
    return base | _synthesis(segments, results, float(options.get("threshold", 0.5)))


def _recognition(segments: list[Segment], results: list[Any], language: str) -> dict[str, Any]:
    out = []
    for segment, lines in zip(segments, results, strict=True):
        line: RecognizedLine
        for line in lines:
            out.append(
                {
                    "start": round(segment.start + line.start, 2),
                    "end": round(min(segment.end, segment.start + line.end), 2),
                    "text": line.text,
                    "confidence": line.confidence,
                    "speech_probability": segment.speech_probability,
                }
            )
    return {"text": " ".join(item["text"] for item in out), "language": language, "segments": out}


def _heard(results: list[list[RecognizedLine]], languages: tuple[str, ...]) -> str:
    """Without a language asked for: the one the engine detected, the model's only one, or
    "und" (undetermined, as BCP 47 says)."""
    detected = [line.language for lines in results for line in lines if line.language]
    if detected:
        return max(set(detected), key=detected.count)
    return languages[0] if len(languages) == 1 and languages[0] != "*" else "und"


def _weighted(segments: list[Segment], scores: list[dict[str, float]]) -> dict[str, float]:
    weights = np.array([s.end - s.start for s in segments])
    labels = list(scores[0])
    matrix = np.array([[row[label] for label in labels] for row in scores])
    mean = weights @ matrix / weights.sum()
    return {label: round(float(value), 4) for label, value in zip(labels, mean, strict=True)}


def _emotion(segments: list[Segment], results: list[Any]) -> dict[str, Any]:
    overall = _weighted(segments, results)
    return {
        "label": max(overall, key=overall.__getitem__),
        "scores": overall,
        "segments": [
            {"start": round(s.start, 2), "end": round(s.end, 2), "label": max(r, key=r.__getitem__), "scores": r}
            for s, r in zip(segments, results, strict=True)
        ],
    }


def _synthesis(segments: list[Segment], results: list[Any], threshold: float) -> dict[str, Any]:
    probability = _weighted(segments, results)["synthetic"]
    return {
        "probability": probability,
        "threshold": threshold,
        "decision": "synthetic" if probability >= threshold else "genuine",
        "segments": [
            {"start": round(s.start, 2), "end": round(s.end, 2), "probability": r["synthetic"]}
            for s, r in zip(segments, results, strict=True)
        ],
    }
