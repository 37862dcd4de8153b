"""The caption worker on its own: espeak-ng speech encoded to Opus as a publisher would, cut into
utterances where the speech is, and a real worker process that falls behind or stalls: it drops the
oldest audio and counts it, and whoever feeds it is never held up."""

from __future__ import annotations

import fractions
import itertools
import os
import signal
import time
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from ai.captions import CaptionWorker
from ai.utterances import OpusDecoder, Utterances
from config import load_settings
from tests.ai_support import SENTENCES, microphone_samples, speak, speech_end, wer
from tests.support import until

EPOCH = 1_700_000_000.0  # the wall clock the frames are stamped from


def opus_frames(pcm: np.ndarray) -> list[tuple[int, bytes]]:
    """48 kHz mono int16 samples as a publisher sends them: 20 ms Opus frames with RTP timestamps."""
    encoder = av.CodecContext.create("libopus", "w")
    encoder.sample_rate, encoder.layout, encoder.format, encoder.bit_rate = 48000, "mono", "s16", 32000
    encoder.open()
    frames = []
    for start in range(0, pcm.size - 960 + 1, 960):
        frame = av.AudioFrame.from_ndarray(pcm[start : start + 960].reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = 48000, start, fractions.Fraction(1, 48000)
        frames += [(start, bytes(packet)) for packet in encoder.encode(frame)]
    return frames


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * 48000), np.int16)


@pytest.fixture(scope="module")
def talk(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Two sentences with a second of silence around each, and where (seconds) each is spoken."""
    work = tmp_path_factory.mktemp("talk")
    pieces, spans, at = [silence(1.0)], [], 1.0
    for index, text in enumerate(SENTENCES[:2]):
        clip = microphone_samples(speak(text, work / f"{index}.wav"))
        spans.append((at, at + speech_end(clip)))
        pieces += [clip, silence(1.0)]
        at += clip.size / 48000 + 1.0
    return np.concatenate(pieces), spans


def test_utterances_are_cut_where_the_speech_is(talk: tuple[np.ndarray, list[tuple[float, float]]]) -> None:
    pcm, spans = talk
    decoder, endpointer = OpusDecoder(), Utterances(silence_seconds=0.5, max_seconds=15, partial_seconds=1.0)
    found = []
    for timestamp, data in opus_frames(pcm):
        gap, samples = decoder.decode(timestamp, data)
        assert gap == 0 and abs(samples.size - 320) <= 16  # (the resampler holds a few samples back at first)
        found += endpointer.push(EPOCH + timestamp / 48000, samples)
    finals = [u for u in found if u.final]
    assert [u.number for u in finals] == [1, 2]
    for utterance, (start, end) in zip(finals, spans, strict=True):
        assert start - 0.3 <= utterance.start - EPOCH <= start + 0.1, (utterance.start - EPOCH, start)
        assert end - 0.2 <= utterance.end - EPOCH <= end + 0.2, (utterance.end - EPOCH, end)
        partials = [u for u in found if not u.final and u.number == utterance.number]
        assert partials and all(p.seconds < utterance.seconds for p in partials), "partials while it goes on"
    assert found.index(finals[0]) < min(found.index(u) for u in found if u.number == 2)


def test_a_pause_in_the_stream_ends_the_utterance_going_on(talk: tuple[np.ndarray, list[tuple[float, float]]]) -> None:
    pcm, spans = talk
    decoder, endpointer = OpusDecoder(), Utterances(silence_seconds=0.5, max_seconds=15, partial_seconds=0)
    cut = int((spans[0][0] + 1.0) * 48000)  # a second into the first sentence, its sender goes quiet
    found = []
    for timestamp, data in opus_frames(pcm):
        if cut <= timestamp < cut + 48000 * 2:
            continue
        gap, samples = decoder.decode(timestamp, data)
        if gap:
            assert abs(gap - 2.0) < 0.03
            found += endpointer.gap(EPOCH + timestamp / 48000, gap)
        found += endpointer.push(EPOCH + timestamp / 48000, samples)
    assert found[0].final and found[0].end - EPOCH <= cut / 48000 + 0.05, "the first ends where the pause began"
    assert all(u.final for u in found) and len(found) >= 2


def _worker(tmp_path: Path, messages: list[tuple[str, dict[str, Any]]], **captions: Any) -> CaptionWorker:
    settings = load_settings(None, {"server": {"data_dir": str(tmp_path / "data")}, "captions": captions}, environ={})
    return CaptionWorker(settings, lambda kind, payload: messages.append((kind, payload)))


async def test_a_recogniser_that_falls_behind_drops_the_oldest_speech(
    tmp_path: Path, talk: tuple[np.ndarray, list[tuple[float, float]]]
) -> None:
    pcm, spans = talk
    messages: list[tuple[str, dict[str, Any]]] = []
    worker = _worker(tmp_path, messages, partial_seconds=0, max_backlog_seconds=4, max_queued_frames=100_000)
    frames = opus_frames(pcm)
    length = pcm.size / 48000
    last = EPOCH + 5 * length + spans[1][0] - 0.5  # the last round's second sentence begins after this

    def sent(kind: str) -> list[dict[str, Any]]:
        return [payload for said, payload in messages if said == kind]

    try:
        worker.open("s1", {"model_id": "moonshine-tiny-en", "language": "en"})
        # Six times the talk at once, as fast as it can be handed over: far more than is recognised meanwhile.
        for rounds in range(6):
            for timestamp, data in frames:
                worker.frame("s1", timestamp + rounds * pcm.size, EPOCH + rounds * length + timestamp / 48000, data)
        worker.close("s1", flush=True)
        await until(lambda: sent("stats") and sent("stats")[-1]["dropped_seconds"] > 0, "speech to be dropped", 60)
        await until(lambda: sent("caption") and sent("caption")[-1]["start"] > last, "the last sentence's caption", 90)
    finally:
        await worker.stop()
    heard = sent("caption")
    assert worker.dropped_frames == 0, "the shipping kept up: the backlog is what overflowed"
    assert 2 <= len(heard) < 12, f"{len(heard)} of 12 utterances recognised: the oldest were dropped"
    assert sent("stats")[-1]["dropped_utterances"] + len(heard) <= 12
    assert wer(SENTENCES[1], heard[-1]["text"]) <= 0.2, heard[-1]["text"]
    assert all(earlier["start"] < later["start"] for earlier, later in itertools.pairwise(heard))


async def test_a_stalled_worker_never_holds_up_its_feed(
    tmp_path: Path, talk: tuple[np.ndarray, list[tuple[float, float]]]
) -> None:
    pcm, _ = talk
    messages: list[tuple[str, dict[str, Any]]] = []
    worker = _worker(tmp_path, messages, partial_seconds=0, max_queued_frames=200)
    frames = opus_frames(pcm)
    try:
        worker.open("s1", {"model_id": "moonshine-tiny-en", "language": "en"})
        await until(lambda: any(kind == "stats" for kind, _ in messages), "the worker to report", 60)
        assert worker.pid is not None
        os.kill(worker.pid, signal.SIGSTOP)
        sent = 0
        began = time.perf_counter()
        for rounds in range(40):  # 40 times the talk, 19 000 frames, into a process that reads nothing
            for timestamp, data in frames:
                worker.frame("s1", timestamp + rounds * pcm.size, EPOCH + timestamp / 48000, data)
                sent += 1
        spent = time.perf_counter() - began
        assert worker.dropped_frames >= sent // 2, f"{worker.dropped_frames} of {sent} dropped"
        # Blocked, one call would never return; queued, they take microseconds each (on a busy machine, more).
        assert spent < 5.0, f"{sent} frames took {spent:.1f} s to queue"
        os.kill(worker.pid, signal.SIGCONT)
        await until(lambda: any(kind == "caption" for kind, _ in messages), "captions once it runs again", 60)
    finally:
        if worker.pid is not None:
            os.kill(worker.pid, signal.SIGCONT)
        await worker.stop()


async def test_a_worker_that_dies_is_started_again_with_its_streams(
    tmp_path: Path, talk: tuple[np.ndarray, list[tuple[float, float]]]
) -> None:
    pcm, _ = talk
    messages: list[tuple[str, dict[str, Any]]] = []
    worker = _worker(tmp_path, messages, partial_seconds=0)
    frames = opus_frames(pcm)
    try:
        worker.open("s1", {"model_id": "moonshine-tiny-en", "language": "en"})
        # Killed once it holds the stream, as in a meeting: by then its shipping thread has sent to it.
        await until(lambda: any(p["streams"] for k, p in messages if k == "stats"), "the worker to hold it", 60)
        first = worker.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        await until(lambda: worker.pid not in (None, first), "a new worker process")
        for timestamp, data in frames:
            worker.frame("s1", timestamp, EPOCH + timestamp / 48000, data)
        await until(lambda: sum(kind == "caption" for kind, _ in messages) == 2, "both sentences captioned", 60)
    finally:
        await worker.stop()
    heard = [payload["text"] for kind, payload in messages if kind == "caption"]
    assert [wer(text, said) <= 0.2 for text, said in zip(SENTENCES[:2], heard, strict=True)] == [True, True], heard
