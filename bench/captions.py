"""``python -m bench.captions [--streams 1 4] [--seconds 40] [--partial-seconds 1 0]``: what live
captions cost the server and how soon they come, with partial captions and without.

A server (``run_server.py``, a data directory of its own) holds one meeting per run; N synthetic
participants (``bench/client.py``: pre-encoded packets, no codec in the harness) each send their
camera clip and a microphone that says espeak-ng sentences in turn, 1.5 s apart (Opus, 20 ms
packets, as a browser sends them), the speakers staggered so that they overlap. A listener's socket
notes when each caption arrives. The load runs ``--seconds`` with captions off, then as long again
with the host having switched them on:

- **latency**: from the moment the last packet holding a sentence's speech was sent to the arrival
  of its final caption at the listener (this includes the ``[captions] silence_seconds`` an
  utterance needs to be over), and the word error rate of those captions;
- **worker CPU**: the caption worker process's CPU time over the window, per stream, as a share of
  one core (decoding, voice activity detection and recognition, partial captions included);
- **server CPU**: the server process's CPU with captions on minus the same load with them off, per
  stream (taps, depacketizing, shipping frames to the worker, storing and sending captions).

The window opens with the first caption after captions went on: before it the worker process
starts and loads its model, which is reported apart (seconds from switching on to that caption).

``--stages`` times the worker's path alone in this process instead (decoding and voice activity
detection, then recognition, in CPU time per second of audio), away from any load's noise.
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import json
import os
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import av
import numpy as np
from aiortc.rtcdtlstransport import RTCCertificate

from bench import metrics
from bench.client import SyntheticClient
from bench.clip import Clip, load_clip
from bench.harness import CACHE_DIR, SpawnedServer, account, create_meeting, free_port, join
from bench.metrics import cpu_seconds as cpu

SENTENCES = [
    "please schedule the quarterly budget review for next thursday afternoon",
    "the meeting will start in five minutes",
    "we need to finish the report before friday",
    "thank you all for joining the call today",
]
GAP_SECONDS = 1.5  # of silence after each sentence
FIRST_CAPTION_TIMEOUT = 120.0
LATE_SECONDS = 30.0  # how long the captions of the window's sentences are waited for after it


@dataclass
class Said:
    """One sentence as a speaker's microphone sent it."""

    user_id: int
    text: str
    ended: float  # wall clock when its last packet of speech was sent
    caption: dict[str, Any] | None = None
    latency: float | None = None


@dataclass
class Speech:
    """A speaker's microphone: the Opus packets of its sentences and silences, looped, and where
    in them each sentence's speech ends."""

    packets: list[bytes]
    ends: list[tuple[int, str]] = field(default_factory=list)  # (packet index, sentence)


def _words(text: str) -> list[str]:
    return "".join(c.lower() if c.isalnum() or c == "'" else " " for c in text).split()


def word_errors(reference: str, hypothesis: str) -> int:
    ref, hyp = _words(reference), _words(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, start=1):
        previous, row[0] = row[0], i
        for j, h in enumerate(hyp, start=1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (r != h))
    return row[len(hyp)]


def _samples(text: str, work: Path) -> np.ndarray:
    path = work / f"{abs(hash(text))}.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(path), text], check=True, timeout=60)
    with av.open(str(path)) as container:
        resampler = av.AudioResampler(format="s16", layout="mono", rate=48000)
        pieces = [o.to_ndarray().reshape(-1) for f in container.decode(audio=0) for o in resampler.resample(f)]
    return np.concatenate(pieces)


def microphone(order: list[str], work: Path) -> Speech:
    """The sentences in ``order``, each followed by GAP_SECONDS of silence, as 20 ms Opus packets."""
    encoder = av.CodecContext.create("libopus", "w")
    encoder.sample_rate, encoder.layout, encoder.format, encoder.bit_rate = 48000, "mono", "s16", 32000
    encoder.open()
    speech = Speech([])
    pcm_parts = []
    at = 0
    for text in order:
        clip = _samples(text, work)
        loud = np.flatnonzero(np.abs(clip.astype(np.int32)) > 327)
        speech.ends.append(((at + int(loud[-1])) // 960, text))
        pcm_parts += [clip, np.zeros(int(GAP_SECONDS * 48000), np.int16)]
        at += clip.size + int(GAP_SECONDS * 48000)
    pcm = np.concatenate(pcm_parts)
    pcm = np.concatenate([pcm, np.zeros(-pcm.size % 960, np.int16)])
    for start in range(0, pcm.size, 960):
        frame = av.AudioFrame.from_ndarray(pcm[start : start + 960].reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = 48000, start, fractions.Fraction(1, 48000)
        speech.packets += [bytes(packet) for packet in encoder.encode(frame)]
    speech.packets = speech.packets[: pcm.size // 960]
    return speech


def _worker_pid(server_pid: int) -> int | None:
    """The server's caption worker: its child process started by multiprocessing's spawn."""
    for children in Path(f"/proc/{server_pid}/task").glob("*/children"):
        for pid in children.read_text().split():
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            if b"spawn_main" in command:
                return int(pid)
    return None


class Listener:
    """A participant's signaling socket only, noting each final caption and when it came."""

    def __init__(self, url: str, token: str, user_id: int, meeting_id: int) -> None:
        self.url, self.token, self.user_id, self.meeting_id = url, token, user_id, meeting_id
        self.captions: list[tuple[float, dict[str, Any]]] = []  # (wall clock of arrival, data)
        self.partials = 0

    async def run(self, stop: asyncio.Event) -> None:
        params = {"meeting_id": str(self.meeting_id), "user_id": str(self.user_id), "token": self.token}
        async with aiohttp.ClientSession() as http, http.ws_connect(f"{self.url}/ws/signaling", params=params) as ws:
            await ws.send_str(json.dumps({"type": "join", "data": {}}))
            reader = asyncio.ensure_future(self._read(ws))
            await stop.wait()
            reader.cancel()

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for frame in ws:
            message = json.loads(frame.data)
            if message["type"] == "caption":
                if message["data"]["final"]:
                    self.captions.append((time.time(), message["data"]))
                else:
                    self.partials += 1


def _when(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def said_by(client: SyntheticClient, speech: Speech, wall_offset: float) -> list[Said]:
    """Every sentence the client's microphone finished saying, from the packets it sent."""
    audio = [sent_ns for _, sent_ns, stream in client.result.sent if stream == "audio"]
    found = []
    for loop in range(len(audio) // len(speech.packets) + 1):
        for index, text in speech.ends:
            number = loop * len(speech.packets) + index
            if number < len(audio):
                found.append(Said(client.user_id, text, audio[number] / 1e9 + wall_offset))
    return found


def match(said: list[Said], captions: list[tuple[float, dict[str, Any]]]) -> None:
    """Each final caption goes with the sentence of its speaker whose end is nearest its own."""
    for arrived, caption in captions:
        candidates = [s for s in said if s.user_id == caption["user_id"] and s.caption is None]
        if not candidates:
            continue
        ended = _when(caption["ended_at"])
        nearest = min(candidates, key=lambda s: abs(s.ended - ended))
        if abs(nearest.ended - ended) < 1.5:
            nearest.caption, nearest.latency = caption, arrived - nearest.ended


async def run(server: SpawnedServer, streams: int, seconds: float, clip: Clip, work: Path, tag: str) -> dict[str, Any]:
    url = server.url
    async with aiohttp.ClientSession() as http:
        host_token, host_id = await account(http, url, f"caphost{tag}")
        meeting_id, code = await create_meeting(http, url, host_token, f"captions {tag}")
        await join(http, url, meeting_id, host_token, code)
        speakers = []
        certificate = RTCCertificate.generateCertificate()
        for index in range(streams):
            token, user_id = await account(http, url, f"capspk{tag}x{index}")
            await join(http, url, meeting_id, token, code)
            order = SENTENCES[index % len(SENTENCES) :] + SENTENCES[: index % len(SENTENCES)]
            speech = microphone(order, work)
            speakers.append(
                (
                    SyntheticClient(
                        url,
                        token,
                        user_id,
                        meeting_id,
                        Clip(clip.width, clip.height, clip.layers, speech.packets),
                        certificate,
                        simulcast=False,
                    ),
                    speech,
                )
            )
        listener = Listener(url, host_token, host_id, meeting_id)
        stop = asyncio.Event()
        listening = asyncio.ensure_future(listener.run(stop))
        wall_offset = time.time() - time.monotonic()
        for index, (client, _) in enumerate(speakers):
            await client.connect()
            await client.publish()
            if index + 1 < len(speakers):
                await asyncio.sleep(1.3)  # staggered: speakers overlap at different points
        await asyncio.sleep(2.0)  # media flowing

        before = cpu(server.process.pid)
        await asyncio.sleep(seconds)
        off_cpu = cpu(server.process.pid) - before

        headers = {"Authorization": f"Bearer {host_token}"}
        switched = time.time()
        async with http.post(
            f"{url}/api/v1/meetings/{meeting_id}/captions", json={"enabled": True}, headers=headers
        ) as answer:
            if answer.status != 200:
                raise RuntimeError(f"captions on: {await answer.text()}")
        # The worker starts and loads its model: the window opens with the first caption.
        deadline = time.monotonic() + FIRST_CAPTION_TIMEOUT
        while not listener.captions and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if not listener.captions:
            raise RuntimeError(f"no caption within {FIRST_CAPTION_TIMEOUT:.0f} s of switching captions on")
        first_caption = listener.captions[0][0] - switched
        worker_pid = _worker_pid(server.process.pid)
        if worker_pid is None:
            raise RuntimeError("the caption worker process was not found")
        opened, server_before, worker_before = time.time(), cpu(server.process.pid), cpu(worker_pid)
        await asyncio.sleep(seconds)
        on_cpu = cpu(server.process.pid) - server_before
        worker_cpu = cpu(worker_pid) - worker_before
        worker_rss = metrics.rss_bytes(worker_pid)
        closed = time.time()
        # The captions of the window's last sentences, however late (a caption never sent stays missing).
        deadline = time.monotonic() + LATE_SECONDS
        while True:
            said = [s for client, speech in speakers for s in said_by(client, speech, wall_offset)]
            said = [s for s in said if opened < s.ended < closed]
            match(said, [(arrived, caption) for arrived, caption in listener.captions if arrived > opened])
            if all(s.caption is not None for s in said) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        async with http.post(f"{url}/api/v1/meetings/{meeting_id}/captions", json={"enabled": False}, headers=headers):
            pass
        stop.set()
        await listening
        for client, _ in speakers:
            await client.close()
    latencies = sorted(s.latency for s in said if s.latency is not None)
    heard = [s for s in said if s.caption is not None]
    words = sum(len(_words(s.text)) for s in heard)
    errors = sum(word_errors(s.text, s.caption["text"]) for s in heard if s.caption)
    return {
        "streams": streams,
        "sentences": len(said),
        "captioned": len(heard),
        "partials": listener.partials,
        "latency_p50_s": round(statistics.median(latencies), 2) if latencies else None,
        "latency_max_s": round(latencies[-1], 2) if latencies else None,
        "first_caption_s": round(first_caption, 1),
        "wer": round(errors / words, 3) if words else None,
        "worker_core_percent_per_stream": round(100 * worker_cpu / seconds / streams, 1),
        "worker_rss_mb": round(worker_rss / 1e6),
        "server_core_percent_per_stream": round(100 * (on_cpu - off_cpu) / seconds / streams, 2),
    }


def stages(work: Path, partial_seconds: float) -> dict[str, Any]:
    """The worker's path for one stream in this process, without a server or a clock to keep:
    the CPU time (every thread) of decoding and voice activity detection, and of recognition, per
    second of audio, for the sentences with their silences."""
    from ai.registry import Registry
    from ai.utterances import OpusDecoder, Utterances

    os.environ.setdefault("MOONSHINE_ORT_SINGLE_THREAD", "1")  # as the caption worker runs it
    speech = microphone(SENTENCES, work)
    registry = Registry(None, work / "cache")
    registry.load("moonshine-tiny-en")
    decoder, endpointer = OpusDecoder(), Utterances(0.5, 15.0, partial_seconds)
    listening = recognising = 0.0
    runs = 0
    for index, packet in enumerate(speech.packets):
        began = time.process_time()
        _, pcm = decoder.decode(index * 960, packet)
        found = endpointer.push(index * 0.02, pcm)
        listening += time.process_time() - began
        for utterance in found:
            began = time.process_time()
            with registry.using("moonshine-tiny-en") as engine:
                engine.infer(utterance.pcm, "en")
            recognising += time.process_time() - began
            runs += 1
    seconds = len(speech.packets) * 0.02
    return {
        "partial_seconds": partial_seconds,
        "audio_s": round(seconds, 1),
        "recognitions": runs,
        "decode_vad_core_percent": round(100 * listening / seconds, 1),
        "recognition_core_percent": round(100 * recognising / seconds, 1),
    }


async def main_async(streams: list[int], seconds: float, partials: list[float]) -> list[dict[str, Any]]:
    clip = load_clip(CACHE_DIR)
    rows = []
    with tempfile.TemporaryDirectory(prefix="huiyi-captions-bench-") as scratch:
        for partial in partials:
            env = {"HUIYI_SERVER_LOG_LEVEL": "WARNING", "HUIYI_CAPTIONS_PARTIAL_SECONDS": str(partial)}
            server = SpawnedServer("sfu", free_port(), env=env)
            try:
                await server.wait_ready()
                for count in streams:
                    # Captions off at the end of a run stop the worker: the next run starts it afresh.
                    tag = f"{count}{int(time.time())}"
                    rows.append(
                        {"partial_seconds": partial} | await run(server, count, seconds, clip, Path(scratch), tag)
                    )
            finally:
                server.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.captions", description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 4], help="speakers captioned at once, per run")
    parser.add_argument("--seconds", type=float, default=40.0, help="of load with captions off, then on")
    parser.add_argument(
        "--partial-seconds",
        type=float,
        nargs="+",
        default=[1.0, 0.0],
        help="[captions] partial_seconds of the server, one server each (0: final captions only)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--stages", action="store_true", help="only time the worker's stages in this process")
    arguments = parser.parse_args()
    if arguments.stages:
        with tempfile.TemporaryDirectory(prefix="huiyi-captions-bench-") as scratch:
            print("| partials every s | audio s | recognitions | decode + VAD % core | recognition % core |")
            print("|---|---|---|---|---|")
            for partial in arguments.partial_seconds:
                row = stages(Path(scratch), partial)
                print(
                    f"| {partial or 'off'} | {row['audio_s']} | {row['recognitions']} "
                    f"| {row['decode_vad_core_percent']} | {row['recognition_core_percent']} |"
                )
        return
    rows = asyncio.run(main_async(arguments.streams, arguments.seconds, arguments.partial_seconds))
    if arguments.json:
        arguments.json.write_text(json.dumps(rows, indent=2))
    print(
        "| partials every s | streams | sentences | captioned | partials | latency p50 s | latency max s "
        "| first caption s after on | WER | worker % core / stream | worker RSS MB | server % core / stream |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['partial_seconds'] or 'off'} | {row['streams']} | {row['sentences']} | {row['captioned']} "
            f"| {row['partials']} | {row['latency_p50_s']} | {row['latency_max_s']} | {row['first_caption_s']} "
            f"| {row['wer']} | {row['worker_core_percent_per_stream']} | {row['worker_rss_mb']} "
            f"| {row['server_core_percent_per_stream']} |"
        )


if __name__ == "__main__":
    main()
