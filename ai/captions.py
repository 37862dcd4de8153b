"""Live captions, the AI side (docs/ai.md#live-captions): each server node's caption worker process.

The media server's caption feeds (``sfu/captions.py``) hand ``CaptionWorker`` the Opus frames of
every captioned audio track, as the publishers encoded them. Nothing is decoded on the event loop:
the frames are queued and a thread ships them to a child process, which decodes each stream and
cuts it into utterances as the frames come (``ai/utterances.py``), while a recognition thread
transcribes the utterances with the registry's model for the meeting's language (the same models
as ``/api/v1/speech``, loaded once for all meetings), finished utterances first, oldest first,
then the newest partial snapshot of a stream still speaking. Results go back through a second pipe.

Both ends are bounded, so a recogniser that falls behind can neither grow memory without end nor
hold up the media server: frames beyond ``[captions] max_queued_frames`` waiting to be shipped,
and speech beyond ``max_backlog_seconds`` waiting for the recogniser, are dropped oldest first and
counted. A worker process that dies is started again with the streams it had.

Live audio does not go through the job queue of the speech endpoints: it is a stream bound to the
machine that holds the media, 50 frames a second per speaker, where the queue carries whole files
to whichever node is free.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from ai.audio import SAMPLE_RATE
from config import Settings

log = logging.getLogger("huiyi.ai.captions")

SHIP_SECONDS = 0.02  # frames are shipped to the worker in batches at least this often
REPORT_SECONDS = 2.0  # the worker reports its counters this often while they change
STOP_SECONDS = 5.0  # a worker asked to stop is killed after this long
SHORT_LIFE = 10.0  # a worker that dies sooner after starting is started again after a delay
MAX_RESTART_DELAY = 30.0
NICENESS = 10  # the worker process's scheduling priority below the server's
DROPS_TOLD_SECONDS = 10.0  # frames dropped for want of a worker that keeps up are logged this often

Frame = tuple[str, int, float, bytes]  # stream id, RTP timestamp, capture wall clock, Opus payload
Close = tuple[str, bool]  # stream id, and whether what it was saying is still captioned
OnMessage = Callable[[str, dict[str, Any]], None]


# --- the worker process ---------------------------------------------------------------------------


@dataclass
class Job:
    """An utterance of a stream waiting for the recogniser."""

    stream_id: str
    model_id: str
    language: str | None
    utterance: Any  # ai.utterances.Utterance (imported in the worker process only)


class Backlog:
    """Utterances waiting for the recogniser: finished ones in order, at most ``max_seconds`` of
    audio (beyond that the oldest are dropped, and counted), and the newest partial snapshot of
    each stream, taken only when no finished one waits."""

    def __init__(self, max_seconds: float) -> None:
        self.max_seconds = max_seconds
        self._finals: deque[Job] = deque()
        self._partials: dict[str, Job] = {}
        self._seconds = 0.0
        self._ready = threading.Condition()
        self._closed = False
        self.dropped_utterances = 0
        self.dropped_seconds = 0.0

    @property
    def seconds(self) -> float:
        return self._seconds

    def put(self, job: Job) -> None:
        with self._ready:
            if job.utterance.final:
                self._partials.pop(job.stream_id, None)  # its final says it all
                self._finals.append(job)
                self._seconds += job.utterance.seconds
                while self._seconds > self.max_seconds and len(self._finals) > 1:
                    dropped = self._finals.popleft()
                    self._seconds -= dropped.utterance.seconds
                    self.dropped_utterances += 1
                    self.dropped_seconds += dropped.utterance.seconds
            else:
                self._partials[job.stream_id] = job
            self._ready.notify()

    def take(self) -> Job | None:
        """The next job, waiting for one; None once closed."""
        with self._ready:
            while not (self._finals or self._partials or self._closed):
                self._ready.wait()
            if self._closed:
                return None
            if self._finals:
                job = self._finals.popleft()
                self._seconds -= job.utterance.seconds
                return job
            return self._partials.pop(next(iter(self._partials)))

    def discard(self, stream_id: str) -> None:
        """Forget what waits of a stream that is no longer captioned."""
        with self._ready:
            self._partials.pop(stream_id, None)
            kept = deque(job for job in self._finals if job.stream_id != stream_id)
            self._seconds = sum(job.utterance.seconds for job in kept)
            self._finals = kept

    def close(self) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify_all()


class _Stream:
    """One captioned track in the worker: its decoder, its endpointer, what it is captioned with."""

    def __init__(self, meta: dict[str, Any], settings: Settings) -> None:
        from ai.utterances import OpusDecoder, Utterances

        captions = settings.captions
        self.model_id: str = meta["model_id"]
        self.language: str | None = meta.get("language")
        self.decoder = OpusDecoder()
        self.utterances = Utterances(captions.silence_seconds, captions.max_utterance_seconds, captions.partial_seconds)
        self.audio_seconds = 0.0

    def push(self, timestamp: int, wallclock: float, data: bytes) -> list[Any]:
        gap, pcm = self.decoder.decode(timestamp, data)
        found = self.utterances.gap(wallclock, gap) if gap > 0 else []
        self.audio_seconds += pcm.size / SAMPLE_RATE
        return found + self.utterances.push(wallclock, pcm)


class _Worker:
    def __init__(self, settings: Settings, outbox: Connection) -> None:
        from ai.registry import Registry

        self.settings = settings
        self.outbox = outbox
        data_dir = settings.server.data_dir
        self.registry = Registry(Path(settings.ai.model_dir) if settings.ai.model_dir else None, data_dir / "ai-cache")
        self.streams: dict[str, _Stream] = {}
        self.backlog = Backlog(settings.captions.max_backlog_seconds)
        self.recognised = 0
        self.compute_seconds = 0.0
        self._send_lock = threading.Lock()

    def send(self, kind: str, payload: dict[str, Any]) -> None:
        # A server that is gone cannot be told: this process ends with its pipe.
        with self._send_lock, contextlib.suppress(OSError, EOFError):
            self.outbox.send((kind, payload))

    def apply(self, opens: list[tuple[str, dict[str, Any]]], frames: list[Frame], closes: list[Close]) -> None:
        for stream_id, meta in opens:
            self.streams[stream_id] = _Stream(meta, self.settings)
            threading.Thread(target=self._preload, args=(meta["model_id"],), daemon=True).start()
        for stream_id, timestamp, wallclock, data in frames:
            stream = self.streams.get(stream_id)
            if stream is not None:
                for utterance in stream.push(timestamp, wallclock, data):
                    self.backlog.put(Job(stream_id, stream.model_id, stream.language, utterance))
        for stream_id, flush in closes:
            closed = self.streams.pop(stream_id, None)
            if closed is None:
                continue
            if flush:
                for utterance in closed.utterances.flush():
                    self.backlog.put(Job(stream_id, closed.model_id, closed.language, utterance))
            else:
                self.backlog.discard(stream_id)

    def _preload(self, model_id: str) -> None:
        """Load the model as the stream opens, so its first caption does not wait for it."""
        from ai.engines import ModelError
        from ai.registry import UnknownModel

        try:
            if self.registry.state(model_id).status != "loaded":
                self.registry.load(model_id)
        except (ModelError, UnknownModel) as exc:
            self.send("error", {"model_id": model_id, "error": str(exc) or f"model {model_id} is not installed"})

    def recognise_forever(self) -> None:
        while (job := self.backlog.take()) is not None:
            began = time.perf_counter()
            try:
                with self.registry.using(job.model_id) as engine:
                    lines = engine.infer(job.utterance.pcm, job.language)
            except Exception as exc:
                log.warning("captions: recognising with %s failed: %s", job.model_id, exc)
                self.send("error", {"model_id": job.model_id, "error": f"{type(exc).__name__}: {exc}"})
                continue
            spent = time.perf_counter() - began
            self.recognised += 1
            self.compute_seconds += spent
            utterance = job.utterance
            self.send(
                "caption",
                {
                    "stream_id": job.stream_id,
                    "number": utterance.number,
                    "final": utterance.final,
                    "text": " ".join(line.text for line in lines).strip(),
                    "model_id": job.model_id,
                    "start": utterance.start,
                    "end": utterance.end,
                    "audio_seconds": round(utterance.seconds, 3),
                    "compute_seconds": round(spent, 4),
                    "recognised_at": time.time(),
                },
            )

    def counters(self) -> dict[str, Any]:
        return {
            "streams": len(self.streams),
            "audio_seconds": round(sum(stream.audio_seconds for stream in self.streams.values()), 3),
            "backlog_seconds": round(self.backlog.seconds, 3),
            "dropped_utterances": self.backlog.dropped_utterances,
            "dropped_seconds": round(self.backlog.dropped_seconds, 3),
            "bad_frames": sum(stream.decoder.bad_frames for stream in self.streams.values()),
            "recognised": self.recognised,
            "compute_seconds": round(self.compute_seconds, 3),
            "cpu_seconds": round(time.process_time(), 3),
        }

    def report_forever(self) -> None:
        last: dict[str, Any] = {}
        while True:
            time.sleep(REPORT_SECONDS)
            counters = self.counters()
            if {k: v for k, v in counters.items() if k != "cpu_seconds"} != last:
                last = {k: v for k, v in counters.items() if k != "cpu_seconds"}
                self.send("stats", counters)


def worker_main(settings: Settings, inbox: Connection, outbox: Connection) -> None:
    """The child process: frames applied as they come on this thread (decoding and the VAD are
    cheap), recognition on a thread of its own, counters reported every few seconds."""
    logging.basicConfig(level=settings.server.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Captions give way to the media they come from: on a busy machine the server's media loop gets
    # the CPU first, and captions fall behind (dropping their oldest speech) instead.
    os.nice(NICENESS)
    # Moonshine on one thread: its runtime's thread pool spins between the short inferences of live
    # speech, which on a small machine took twice the CPU for twice the time.
    os.environ.setdefault("MOONSHINE_ORT_SINGLE_THREAD", "1")
    worker = _Worker(settings, outbox)
    threading.Thread(target=worker.recognise_forever, name="caption-recogniser", daemon=True).start()
    threading.Thread(target=worker.report_forever, name="caption-report", daemon=True).start()
    while True:
        try:
            message = inbox.recv()
        except (EOFError, OSError):
            break
        if message is None:
            break
        worker.apply(*message)
    worker.backlog.close()


# --- the server's side ----------------------------------------------------------------------------


@dataclass
class _Child:
    """One run of the worker process and the pipes to it."""

    process: Any
    inbox: Connection  # the server writes
    outbox: Connection  # the server reads
    stopping: threading.Event = field(default_factory=threading.Event)
    started: float = field(default_factory=time.monotonic)


class CaptionWorker:
    """This node's caption worker, as the event loop sees it: ``open``, ``frame`` and ``close``
    only queue (they never block), the process starts with the first stream opened, and
    ``on_message(kind, payload)`` is called on the loop with what it sends back ("caption",
    "stats", "error")."""

    def __init__(self, settings: Settings, on_message: OnMessage) -> None:
        self.settings = settings
        self.on_message = on_message
        self._context = multiprocessing.get_context("spawn")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._opens: list[tuple[str, dict[str, Any]]] = []
        self._frames: deque[Frame] = deque()
        self._closes: list[tuple[str, bool]] = []
        self._wake = threading.Event()
        self._streams: dict[str, dict[str, Any]] = {}  # open streams, opened again on a new process
        self._child: _Child | None = None
        self.idle_since = time.monotonic()
        self.dropped_frames = 0
        self.stats: dict[str, Any] = {}
        self._quick_deaths = 0
        self._drops_told = 0.0

    @property
    def pid(self) -> int | None:
        return self._child.process.pid if self._child is not None else None

    @property
    def streams(self) -> int:
        return len(self._streams)

    # the feed's side (sfu.captions.CaptionSink, with the meeting's model) -----------------------

    def open(self, stream_id: str, meta: dict[str, Any]) -> None:
        self._streams[stream_id] = meta
        if self._child is None:
            self._start()  # which opens every stream there
            return
        with self._lock:
            self._opens.append((stream_id, meta))
        self._wake.set()

    def frame(self, stream_id: str, timestamp: int, wallclock: float, data: bytes) -> None:
        with self._lock:
            full = len(self._frames) >= self.settings.captions.max_queued_frames
            if full:
                self._frames.popleft()
                self.dropped_frames += 1
            self._frames.append((stream_id, timestamp, wallclock, data))
        self._wake.set()
        if full and time.monotonic() - self._drops_told > DROPS_TOLD_SECONDS:
            self._drops_told = time.monotonic()
            log.warning("captions: the worker does not keep up; %d audio frames dropped so far", self.dropped_frames)

    def close(self, stream_id: str, flush: bool) -> None:
        """``flush``: caption what the stream's speaker was saying (they left); otherwise forget it."""
        if self._streams.pop(stream_id, None) is None:
            return
        if not self._streams:
            self.idle_since = time.monotonic()
        with self._lock:
            self._closes.append((stream_id, flush))
        self._wake.set()

    # the process ------------------------------------------------------------------------------

    def _start(self) -> None:
        self._loop = asyncio.get_running_loop()
        inbox_read, inbox_write = self._context.Pipe(duplex=False)
        outbox_read, outbox_write = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=worker_main,
            args=(self.settings, inbox_read, outbox_write),
            name="huiyi-captions",
            daemon=True,
        )
        process.start()
        inbox_read.close()
        outbox_write.close()
        child = _Child(process, inbox_write, outbox_read)
        with self._lock:
            self._child = child
            self._opens = list(self._streams.items())  # a new process knows none of them
            self._closes.clear()
        threading.Thread(target=self._ship, args=(child,), name="captions-ship", daemon=True).start()
        threading.Thread(target=self._read, args=(child,), name="captions-read", daemon=True).start()
        log.info("started the caption worker (pid %s)", process.pid)

    def _ship(self, child: _Child) -> None:
        """Send what is queued, in batches: opens first, then frames, then closes, which keeps each
        stream's order (its frames come after its open and before its close). Only the current
        process's thread takes from the queues: the thread of one that died may outlive it (a send
        into a pipe it no longer reads can still succeed), and a batch it took would be lost."""
        while True:
            self._wake.wait(SHIP_SECONDS)
            self._wake.clear()
            try:
                with self._lock:  # ``stop`` lets the process go under it: both are seen or neither
                    stopping, current = child.stopping.is_set(), self._child is child
                    if current and not stopping:
                        batch = (self._opens, list(self._frames), self._closes)
                        self._opens, self._closes = [], []
                        self._frames.clear()
                if stopping:
                    child.inbox.send(None)
                    return
                if not current:
                    return
                if any(batch):
                    child.inbox.send(batch)
            except (OSError, EOFError, ValueError):
                return  # the process is gone: ``_read`` notices

    def _read(self, child: _Child) -> None:
        while True:
            try:
                kind, payload = child.outbox.recv()
            except (EOFError, OSError):
                break
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self._received, kind, payload)
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._ended, child)

    def _received(self, kind: str, payload: dict[str, Any]) -> None:
        if kind == "stats":
            self._note(payload)
        self.on_message(kind, payload)

    def _note(self, stats: dict[str, Any]) -> None:
        dropped = stats["dropped_seconds"] - self.stats.get("dropped_seconds", 0.0)
        if dropped > 0:
            log.warning(
                "captions: the recogniser fell behind; %.1f s of speech dropped (%.1f s in all)",
                dropped,
                stats["dropped_seconds"],
            )
        self.stats = stats

    def _ended(self, child: _Child) -> None:
        child.process.join(0)
        if child is not self._child:
            return
        self._child = None
        if child.stopping.is_set():
            return
        # One that keeps dying at once (a broken install) is started again ever more slowly.
        self._quick_deaths = self._quick_deaths + 1 if time.monotonic() - child.started < SHORT_LIFE else 0
        delay = min(MAX_RESTART_DELAY, 2.0 ** (self._quick_deaths - 1)) if self._quick_deaths else 0.0
        log.error("the caption worker exited (code %s); starting another in %g s", child.process.exitcode, delay)
        assert self._loop is not None
        self._loop.call_later(delay, self._restart)

    def _restart(self) -> None:
        if self._child is None and self._streams:
            self._start()

    def stop(self) -> asyncio.Future[None]:
        """End the process; what it still had to recognise is dropped. It is let go at once (a
        stream opened next starts a new one); the future is done once it has exited and what it
        held is free."""
        with self._lock:
            child, self._child = self._child, None
            if child is not None:
                child.stopping.set()
            self._frames.clear()
            self._opens, self._closes = [], []
        if child is None:
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done
        self._wake.set()
        return asyncio.ensure_future(self._reap(child))

    async def _reap(self, child: _Child) -> None:
        await asyncio.to_thread(child.process.join, STOP_SECONDS)
        if child.process.is_alive():
            child.process.kill()
            await asyncio.to_thread(child.process.join, STOP_SECONDS)
        child.inbox.close()
        log.info("stopped the caption worker (pid %s)", child.process.pid)
