"""Speech for the AI suites, made here: espeak-ng saying known sentences (a missing espeak-ng
fails the run under CI), the word error rate of a transcript, and small classifiers in the
project's mel-mlp format, trained here on features of generated speech."""

from __future__ import annotations

import json
import shutil
import subprocess
import wave
from pathlib import Path

import av
import numpy as np
import pytest

from ai.audio import SAMPLE_RATE, decode
from ai.features import FEATURES, mel_statistics
from tests.conftest import IN_CI

SENTENCES = [
    "please schedule the quarterly budget review for next thursday afternoon",
    "the meeting will start in five minutes",
    "can everyone see my screen",
    "we need to finish the report before friday",
    "thank you all for joining the call today",
]


def espeak() -> str:
    found = shutil.which("espeak-ng")
    if found is None:
        if IN_CI:
            pytest.fail("espeak-ng is not installed; CI requires it (apt-get install espeak-ng)", pytrace=False)
        pytest.skip("espeak-ng is not installed")
    return found


def speak(text: str, path: Path, *, voice: str = "en-us", speed: int = 150, pitch: int = 50) -> Path:
    """``text`` spoken by espeak-ng into the WAV file ``path``."""
    subprocess.run(
        [espeak(), "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(path), text], check=True, timeout=60
    )
    return path


def samples(path: Path) -> np.ndarray:
    return decode(path, 3600)


def write_wav(pcm: np.ndarray, path: Path) -> Path:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes((np.clip(pcm, -1, 1) * 32767).astype("<i2").tobytes())
    return path


def conversation(texts: list[str], path: Path, work: Path, gap: float = 1.0) -> Path:
    """The sentences one after another with ``gap`` seconds of silence between them."""
    silence = np.zeros(int(gap * SAMPLE_RATE), np.float32)
    pieces = []
    for index, text in enumerate(texts):
        pieces += [samples(speak(text, work / f"part{index}.wav")), silence]
    return write_wav(np.concatenate(pieces), path)


def words(text: str) -> list[str]:
    return "".join(c.lower() if c.isalnum() or c == "'" else " " for c in text).split()


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate: word-level edit distance over the reference's length."""
    ref, hyp = words(reference), words(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, start=1):
        previous, row[0] = row[0], i
        for j, h in enumerate(hyp, start=1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (r != h))
    return row[len(hyp)] / max(1, len(ref))


def train_classifier(
    directory: Path,
    task: str,
    examples: dict[str, list[np.ndarray]],
    hidden: int = 256,
    seed: int = 0,
) -> Path:
    """A mel-mlp model in ``directory``: a fixed random hidden layer and an output layer fitted by
    least squares to the examples (an extreme learning machine), saved as the engine reads it."""
    labels = sorted(examples)
    pieces = [(label, piece) for label in labels for clip in examples[label] for piece in _windows(clip)]
    features = np.array([mel_statistics(piece) for _, piece in pieces], np.float64)
    targets = np.array([[float(label == other) for other in labels] for label, _ in pieces])
    mean, scale = features.mean(axis=0), features.std(axis=0) + 1e-3
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 1 / np.sqrt(FEATURES), (FEATURES, hidden))
    b1 = rng.normal(0, 0.1, hidden)
    h = np.maximum((features - mean) / scale @ w1 + b1, 0)
    w2 = np.linalg.solve(h.T @ h + np.eye(hidden), h.T @ (targets * 8 - 4))
    directory.mkdir(parents=True, exist_ok=True)
    np.savez(
        directory / "weights.npz",
        mean=mean.astype(np.float32),
        scale=scale.astype(np.float32),
        w1=w1.astype(np.float32),
        b1=b1.astype(np.float32),
        w2=w2.astype(np.float32),
        b2=np.zeros(len(labels), np.float32),
    )
    (directory / "model.json").write_text(
        json.dumps({"task": task, "engine": "mel-mlp", "labels": labels, "languages": ["*"]})
    )
    return directory


def _windows(clip: np.ndarray, seconds: float = 1.5) -> list[np.ndarray]:
    size = int(seconds * SAMPLE_RATE)
    return [clip[start : start + size] for start in range(0, max(1, clip.size - size + 1), size // 2)]


def emotion_examples(work: Path) -> dict[str, list[np.ndarray]]:
    """Calm speech (slow, low) and excited speech (fast, high) of the same sentences."""
    found: dict[str, list[np.ndarray]] = {"calm": [], "excited": []}
    for index, text in enumerate(SENTENCES[1:]):
        found["calm"].append(samples(speak(text, work / f"calm{index}.wav", speed=110, pitch=20)))
        found["excited"].append(samples(speak(text, work / f"excited{index}.wav", speed=220, pitch=90)))
    return found


def microphone_samples(path: Path) -> np.ndarray:
    """A WAV file as a microphone track sends it: 48 kHz mono int16."""
    with av.open(str(path)) as container:
        resampler = av.AudioResampler(format="s16", layout="mono", rate=48_000)
        pieces = [
            out.to_ndarray().reshape(-1) for frame in container.decode(audio=0) for out in resampler.resample(frame)
        ]
        pieces += [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]
    return np.concatenate(pieces)


def speech_end(clip: np.ndarray, rate: int = 48_000) -> float:
    """Seconds into ``clip`` (int16) at which its last sound louder than -40 dBFS ends."""
    loud = np.flatnonzero(np.abs(clip.astype(np.int32)) > 32767 * 0.01)
    return float(loud[-1] + 1) / rate if loud.size else 0.0
