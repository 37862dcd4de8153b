"""The speech, models and nodes API on the embedded default: one worker node process beside the
server, real models (the packaged Moonshine and Silero, classifiers trained here), real speech from
espeak-ng, and the inputs a careless or hostile caller sends. One app and node per module, so
each model loads once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from config import load_settings
from control.app import create_app
from control.context import SETTINGS
from control.metrics.serve import ADMIN_ADDRESS
from tests.ai_support import (
    SENTENCES,
    conversation,
    emotion_examples,
    samples,
    speak,
    train_classifier,
    wer,
    write_wav,
)
from tests.conftest import Account, Api
from tests.support import until, uploaded, video_bytes
from tests.test_metrics import Samples, scrape, total

pytestmark = [pytest.mark.asyncio(loop_scope="module")]
SPEECH = "/api/v1/speech"


@dataclass
class World:
    api: Api
    user: Account
    other: Account
    work: Path
    models: Path
    audio: web.Application
    audio_url: str

    async def post(self, kind: str, payload: dict[str, Any], account: Account | None = None) -> dict[str, Any]:
        return await self.api.call("POST", f"{SPEECH}/{kind}", token=(account or self.user).access, json=payload)


def _audio_server(work: Path) -> web.Application:
    """Serves files of ``work`` on loopback, and a body that never ends."""

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        chunk = b"\0" * 65536
        for _ in range(100_000):
            await response.write(chunk)
        return response

    async def redirect(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("http://169.254.169.254/latest/meta-data")

    app = web.Application()
    app.router.add_get("/endless", endless)
    app.router.add_get("/redirect", redirect)
    app.router.add_static("/files", work)
    return app


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    work = tmp_path_factory.mktemp("ai-api")
    models = work / "models"
    models.mkdir()
    audio = TestServer(_audio_server(work), host="127.0.0.1")
    await audio.start_server()
    settings = load_settings(
        None,
        {
            "server": {"data_dir": str(work / "data")},
            "rate_limits": {"enabled": False},
            "metrics": {"port": 0},
            "sfu": {"workers": 0},
            "ai": {
                "model_dir": str(models),
                "heartbeat_seconds": 0.5,
                "wait_seconds": 30,
                "max_input_bytes": 4_000_000,
                "fetch_timeout_seconds": 5,
                # The audio server of this test is on loopback; other loopback ports stay refused.
                "url_allow_networks": ["127.0.0.1/32"],
            },
        },
        environ={},
    )
    client = TestClient(TestServer(create_app(settings)))
    await client.start_server()
    api = Api(client)
    try:
        yield World(
            api,
            await api.stored_account(),
            await api.stored_account(),
            work,
            models,
            audio.app,
            str(audio.make_url("/")),
        )
    finally:
        await client.close()
        await audio.close()


async def test_recognition_of_an_uploaded_recording_answers_text_and_timed_segments(world: World) -> None:
    wav = speak(SENTENCES[0], world.work / "upload.wav").read_bytes()
    record = await uploaded(world.api, world.user, wav, "speech.wav")
    body = await world.post("recognition", {"file_id": record["file_id"], "language": "en-US"})
    assert body["status"] == 200, body
    job = body["data"]
    assert job["status"] == "succeeded" and job["model_id"] == "moonshine-tiny-en", job
    result = job["result"]
    assert wer(SENTENCES[0], result["text"]) <= 0.1, result
    assert result["language"] == "en-US" and 4 < result["duration"] < 6
    (segment,) = result["segments"]
    assert 0 <= segment["start"] < 0.5 and 4 < segment["end"] <= result["duration"] + 0.01
    assert segment["confidence"] is None and segment["speech_probability"] > 0.5
    # The job stays readable by its owner only.
    status = await world.api.call("GET", f"{SPEECH}/job/{job['job_id']}/status", token=world.user.access, expect=200)
    assert status["data"]["result"]["text"] == result["text"]
    await world.api.call("GET", f"{SPEECH}/job/{job['job_id']}/status", token=world.other.access, expect=404)


async def test_recognition_of_an_audio_url_and_of_a_video_s_audio_track(world: World) -> None:
    conversation(SENTENCES[1:3], world.work / "two.wav", world.work)
    body = await world.post("recognition", {"audio_url": world.audio_url + "files/two.wav"})
    assert body["status"] == 200, body
    result = body["data"]["result"]
    assert len(result["segments"]) >= 2, result
    assert wer(" ".join(SENTENCES[1:3]), result["text"]) <= 0.1, result
    assert result["segments"][0]["end"] <= result["segments"][1]["start"]
    # A video file: its audio track is what gets heard (a silent test pattern: no words).
    video = await uploaded(world.api, world.user, video_bytes(), "clip.mp4")
    body = await world.post("recognition", {"file_id": video["file_id"]})
    if video["file_type"] == "video" and body["status"] == 400:
        assert "no audio track" in body["message"]
    else:
        assert body["status"] == 200 and body["data"]["result"]["text"] == "", body


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        ({"audio_url": "ftp://example.com/a.wav"}, "http or https"),
        ({"audio_url": "http://127.0.0.2:9/a.wav"}, "loopback"),
        ({"audio_url": "http://10.1.2.3/a.wav"}, "private"),
        ({"audio_url": "http://169.254.169.254/latest"}, "link-local"),
        ({"audio_url": "http://[::ffff:192.168.0.1]/a.wav"}, "private"),
        ({"audio_url": "http://[::1]:1/a.wav"}, "loopback"),
        ({"audio_url": "http://0.0.0.0:1/a.wav"}, "private"),
        ({"audio_url": "http://user:pw@example.com/a.wav"}, "credentials"),
    ],
)
async def test_audio_urls_to_places_the_server_must_not_reach_are_refused(
    world: World, payload: dict[str, str], fragment: str
) -> None:
    body = await world.post("recognition", payload)
    assert body["status"] == 400 and fragment in body["message"], body


async def test_bad_inputs_get_clear_errors_and_the_node_carries_on(world: World) -> None:
    (world.work / "text.wav").write_bytes(b"this is not audio at all " * 100)
    (world.work / "empty.wav").write_bytes(b"")
    whole = speak(SENTENCES[3], world.work / "whole.wav").read_bytes()
    (world.work / "cut.wav").write_bytes(whole[:40])  # the header, cut inside
    np.save(world.work / "noise.npy", np.zeros(10))
    cases = {
        "files/text.wav": "not audio",
        "files/empty.wav": "empty",
        "files/cut.wav": "",
        "files/missing.wav": "HTTP 404",
        "endless": "larger than",
        "redirect": "link-local",
    }
    for path, fragment in cases.items():
        body = await world.post("recognition", {"audio_url": world.audio_url + path})
        assert body["status"] == 400 and fragment in body["message"], (path, body)
    document = await uploaded(world.api, world.user, b"%PDF-1.4\n" + b"x" * 100, "notes.pdf")
    body = await world.post("recognition", {"file_id": document["file_id"]})
    assert body["status"] == 400 and "audio or video" in body["message"], body
    for payload in ({}, {"audio_url": "http://example.com/a.wav", "file_id": "0" * 32}, {"file_id": "nothex"}):
        body = await world.post("recognition", payload)
        assert body["status"] == 400, body
    body = await world.post("recognition", {"file_id": "0" * 32})
    assert body["status"] == 404 and body["code"] == 3002
    # After all of that the node still answers.
    body = await world.post("recognition", {"audio_url": world.audio_url + "files/whole.wav"})
    assert body["status"] == 200 and wer(SENTENCES[3], body["data"]["result"]["text"]) <= 0.1


async def test_without_a_model_for_the_language_or_task_the_answer_says_what_to_install(world: World) -> None:
    speak(SENTENCES[1], world.work / "short.wav")
    url = world.audio_url + "files/short.wav"
    available = {m["model_id"] for m in (await models(world))}
    if "whisper-base" not in available:
        body = await world.post("recognition", {"audio_url": url, "language": "zh-CN"})
        assert body["status"] == 503 and body["code"] == 4001, body
        assert "huiyi[whisper]" in body["message"] and "[ai] model_dir" in body["message"]
    body = await world.post("recognition", {"audio_url": url, "language": "xx-YY"})
    assert body["status"] == 503 and body["code"] == 4001 and "xx-YY" in body["message"], body
    for kind in ("emotion", "synthesis-detection"):
        body = await world.post(kind, {"audio_url": url})
        assert body["status"] == 503 and body["code"] == 4001, body
        assert "[ai] model_dir" in body["message"] and "HUIYI_AI_MODEL_DIR" in body["message"]
    body = await world.post("recognition", {"audio_url": url, "options": {"model_id": "no-such-model"}})
    assert body["status"] == 503 and body["code"] == 4001


async def models(world: World) -> list[dict[str, Any]]:
    return (await world.api.call("GET", "/api/v1/models", token=world.user.access, expect=200))["data"]


async def test_emotion_and_synthetic_speech_with_installed_classifiers(world: World) -> None:
    examples = emotion_examples(world.work)
    train_classifier(world.models / "emotion-test", "emotion", examples)
    # Genuine: the human readers of the recordings moonshine-voice ships (their later parts are
    # kept for the check); synthetic: espeak-ng.
    assets = Path(__import__("moonshine_voice").__file__).parent / "assets"
    readers = {name: samples(assets / name) for name in ("two_cities.wav", "endgame_nagg_nell.wav", "beckett.wav")}
    genuine = [readers["two_cities.wav"][: 16000 * 34], readers["endgame_nagg_nell.wav"]]
    genuine.append(readers["beckett.wav"])
    train_classifier(
        world.models / "synthetic-test",
        "synthesis-detection",
        {"genuine": genuine, "synthetic": examples["calm"] + examples["excited"]},
    )
    await until(lambda: has_models(world, {"emotion-test", "synthetic-test"}), "the node found the models", 10)
    calm = speak(SENTENCES[0], world.work / "calm.wav", speed=110, pitch=20)
    excited = speak(SENTENCES[0], world.work / "excited.wav", speed=220, pitch=90)
    for path, label in ((calm, "calm"), (excited, "excited")):
        body = await world.post("emotion", {"audio_url": world.audio_url + "files/" + path.name})
        assert body["status"] == 200, body
        result = body["data"]["result"]
        assert result["label"] == label and set(result["scores"]) == {"calm", "excited"}, result
        assert abs(sum(result["scores"].values()) - 1) < 0.01 and result["segments"][0]["label"] == label
    # Long speech gets a label per segment.
    conversation([SENTENCES[0]] * 2, world.work / "long.wav", world.work, gap=1.5)
    body = await world.post("emotion", {"audio_url": world.audio_url + "files/long.wav"})
    assert len(body["data"]["result"]["segments"]) >= 2, body
    write_wav(readers["two_cities.wav"][16000 * 36 :], world.work / "human.wav")
    verdicts = {}
    for name in ("human.wav", "excited.wav"):
        body = await world.post(
            "synthesis-detection", {"audio_url": world.audio_url + "files/" + name, "options": {"threshold": 0.5}}
        )
        assert body["status"] == 200, body
        result = body["data"]["result"]
        assert 0 <= result["probability"] <= 1 and result["segments"], result
        verdicts[name] = result["decision"]
    assert verdicts == {"human.wav": "genuine", "excited.wav": "synthetic"}


async def has_models(world: World, wanted: set[str]) -> bool:
    return wanted <= {m["model_id"] for m in await models(world)}


async def test_models_load_unload_and_status_while_loading(world: World) -> None:
    # Made beside the model directory and moved in whole, so the node never lists it half-written.
    big = world.models.parent / "big-test"
    train_classifier(
        big, "emotion", {"a": [np.zeros(16000, np.float32) + 0.01], "b": [np.ones(16000, np.float32) * 0.1]}
    )
    # Widen the hidden layer to ~130 MB of weights so that loading it takes memory and time.
    weights = dict(np.load(big / "weights.npz"))
    rng = np.random.default_rng(0)
    weights |= {
        "w1": rng.normal(0, 1, (80, 400_000)).astype(np.float32),
        "b1": np.zeros(400_000, np.float32),
        "w2": np.zeros((400_000, 2), np.float32),
    }
    np.savez(big / "weights.npz", **weights)
    big.rename(world.models / "big-test")
    corrupt = world.models / "corrupt-test"
    corrupt.mkdir()
    (corrupt / "model.json").write_text('{"task": "emotion", "engine": "mel-mlp", "labels": ["x", "y"]}')
    (corrupt / "weights.npz").write_bytes(b"PK\x03\x04 damaged")
    broken = world.models / "broken-manifest"
    broken.mkdir()
    (broken / "model.json").write_text("{not json")
    await until(lambda: has_models(world, {"big-test", "corrupt-test", "broken-manifest"}), "models found", 10)
    listed = {m["model_id"]: m for m in await models(world)}
    assert listed["broken-manifest"]["status"] == "error" and "cannot be read" in listed["broken-manifest"]["error"]
    assert listed["moonshine-tiny-en"]["source"] == "package:moonshine-voice"
    assert listed["big-test"]["size_bytes"] > 100_000_000 and listed["big-test"]["status"] == "available"
    node_id = listed["big-test"]["nodes"][0]["node_id"]
    rss_before = (await node(world, node_id))["memory_rss_bytes"]

    load = asyncio.create_task(world.api.call("POST", "/api/v1/models/big-test/load", token=world.user.access, json={}))
    seen = await until(lambda: model_status(world, "big-test"), "status while loading", 30, interval=0.01)
    loaded = (await load)["data"]
    assert loaded["status"] == "loaded" and loaded["node_id"] == node_id, loaded
    assert loaded["memory_bytes"] > 120_000_000
    assert seen in {"loading", "loaded"}
    loaded_rss = await until(lambda: rss_if(world, node_id, lambda rss: rss > rss_before + 100_000_000), "rss up", 10)
    unloaded = await world.api.call("DELETE", "/api/v1/models/big-test/unload", token=world.user.access, expect=200)
    assert unloaded["data"]["status"] == "available" and unloaded["data"]["memory_bytes"] is None
    await until(lambda: rss_if(world, node_id, lambda rss: rss < loaded_rss - 100_000_000), "rss down", 10)

    bad = await world.api.call("POST", "/api/v1/models/corrupt-test/load", token=world.user.access)
    assert bad["status"] == 503 and bad["code"] == 4001 and "damaged" in bad["message"], bad
    status = await world.api.call("GET", "/api/v1/models/corrupt-test/status", token=world.user.access, expect=200)
    assert status["data"]["status"] == "error" and "damaged" in status["data"]["error"]
    missing = await world.api.call("POST", "/api/v1/models/no-such-model/load", token=world.user.access)
    assert missing["status"] == 404, missing
    # The node is still up and serving.
    health = await world.api.call("POST", f"/api/v1/nodes/{node_id}/health-check", token=world.user.access)
    assert health["status"] == 200 and health["data"]["healthy"], health


async def model_status(world: World, model_id: str) -> str | None:
    body = await world.api.call("GET", f"/api/v1/models/{model_id}/status", token=world.user.access, expect=200)
    return body["data"]["status"] if body["data"]["status"] != "available" else None


async def node(world: World, node_id: str) -> dict[str, Any]:
    body = await world.api.call("GET", f"/api/v1/nodes/{node_id}/status", token=world.user.access, expect=200)
    return body["data"]


async def rss_if(world: World, node_id: str, test: Any) -> int | None:
    rss = (await node(world, node_id))["memory_rss_bytes"]
    return rss if test(rss) else None


async def test_the_nodes_jobs_are_counted_for_the_operators_metrics(world: World) -> None:
    """Earlier tests in this module ran recognition jobs to an answer and refused bad input."""
    host, port = world.api.app[ADMIN_ADDRESS]

    async def counted() -> Samples | None:
        samples = await scrape(f"http://{host}:{port}/metrics")
        done = total(samples, "huiyi_ai_jobs_finished_total", kind="recognition", outcome="done")
        # Heartbeats come every half second: the last job's end may not have reached one yet.
        return samples if done and total(samples, "huiyi_ai_jobs_running") == 0 else None

    samples = await until(counted, "the node's finished jobs in the metrics", 15, interval=0.5)
    assert total(samples, "huiyi_ai_job_duration_seconds_total", kind="recognition", outcome="done") > 0
    assert total(samples, "huiyi_ai_jobs_finished_total", outcome="input") >= 1, "refused input is counted"


async def test_the_local_node_reports_itself_and_answers_health_checks(world: World) -> None:
    nodes = (await world.api.call("GET", "/api/v1/nodes", token=world.user.access, expect=200))["data"]
    (local,) = nodes
    assert local["status"] == "online" and local["node_id"].endswith("-ai"), local
    assert local["cpu_count"] >= 1 and local["memory_rss_bytes"] > 0 and local["memory_total_bytes"] > 0
    assert "moonshine-tiny-en" in local["models"] and local["queue_depth"] >= 0
    loaded = {m["model_id"] for m in local["loaded_models"]}
    assert "moonshine-tiny-en" in loaded  # the recognition tests above loaded it
    health = await world.api.call("POST", f"/api/v1/nodes/{local['node_id']}/health-check", token=world.user.access)
    assert health["status"] == 200, health
    checks = {check["check"]: check for check in health["data"]["checks"]}
    assert checks["vad"]["ok"] and checks["moonshine-tiny-en"]["ok"], checks
    assert 0 < health["data"]["latency_ms"] <= health["data"]["round_trip_ms"]
    await world.api.call("GET", "/api/v1/nodes/nobody/status", token=world.user.access, expect=404)
    await world.api.call("POST", "/api/v1/nodes/nobody/health-check", token=world.user.access, expect=404)


async def test_a_long_recording_runs_as_a_job_with_progress(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    conversation(SENTENCES + SENTENCES[:2], world.work / "long-talk.wav", world.work, gap=0.8)
    monkeypatch.setattr(world.api.app[SETTINGS].ai, "wait_seconds", 0.0)  # answer at once with the job
    body = await world.post("recognition", {"audio_url": world.audio_url + "files/long-talk.wav"})
    assert body["status"] == 200 and body["data"]["status"] in {"queued", "running"}, body
    job_id = body["data"]["job_id"]
    progress: list[int] = []

    async def done() -> dict[str, Any] | None:
        status = await world.api.call("GET", f"{SPEECH}/job/{job_id}/status", token=world.user.access, expect=200)
        progress.append(status["data"]["progress"])
        return status["data"] if status["data"]["status"] == "succeeded" else None

    job = await until(done, "the long job finished", 120, interval=0.1)
    assert len(job["result"]["segments"]) >= len(SENTENCES) + 1
    assert wer(" ".join(SENTENCES + SENTENCES[:2]), job["result"]["text"]) <= 0.1
    assert progress == sorted(progress) and any(0 < p < 100 for p in progress), progress
