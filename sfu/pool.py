"""The server's media worker processes (``sfu.workers`` > 0, docs/sfu.md#workers), presented to the
control plane with the same face as media in its own process (``sfu.local.LocalMedia``).

Each meeting's room runs on one worker, placed when its first session joins on the worker that
forwards the fewest packets a second (then has the fewest rooms): load, not room count, since one
large meeting outweighs many small ones. Sessions, room views and host controls go to the room's
worker; recordings, live streams, captions and the rooms' noise-suppression switches go to every
worker, as a room may land on any, and are given again to a worker that restarts.

A worker that dies (its socket reaches its end) takes only its rooms with it: it is started again,
and each of its sessions is joined to its room on the least loaded live worker and told
``reconnect``, as when a room's node is lost (docs/sfu.md#rooms-across-nodes), so the client builds
its two connections anew."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from config import ConfigError
from config.settings import SfuSettings
from media.mux import EncodedFrame
from sfu import ipc
from sfu.captions import CaptionSink
from sfu.counters import MediaTotals
from sfu.denoise import WorkerSetup
from sfu.live import Outlet
from sfu.local import LocalMedia, NoEvents, PeerInfo, PoolEvents, WorkerLoad
from sfu.peer import Signal
from sfu.recording import TrackFile
from sfu.server import SignalError
from sfu.worker import file_from_data

log = logging.getLogger("huiyi.sfu.pool")

START_TIMEOUT = 60.0  # a worker imports the media stack and opens its sockets
STOP_TIMEOUT = 10.0  # for a worker to close its peers and finish its files after SIGTERM
KEYSPACE = 1_000_000  # a stream's track keys, per worker, so workers' keys never collide
LOST = "media server lost"
FRESH_SECONDS = 5.0  # a room placed this recently may not show in its worker's packet rate yet


def worker_settings(settings: SfuSettings, index: int, count: int) -> SfuSettings:
    """Worker ``index``'s share of the media network: its own slice of ``port_min``..``port_max``
    and, for the shared ports, ``udp_port + index`` and ``tcp_port + index``."""
    changes: dict[str, Any] = {"workers": 0}
    if settings.port_min:
        span = (settings.port_max - settings.port_min + 1) // count
        changes["port_min"] = settings.port_min + index * span
        changes["port_max"] = changes["port_min"] + span - 1
    if settings.udp_port:
        changes["udp_port"] = settings.udp_port + index
    if settings.tcp_port:
        changes["tcp_port"] = settings.tcp_port + index
    return settings.model_copy(update=changes)


def least_loaded(loads: list[WorkerLoad], rooms: dict[int, int], fresh: dict[int, int]) -> WorkerLoad:
    """The worker a new room goes to: the fewest packets forwarded a second, then the fewest rooms
    (``rooms``: rooms placed, by worker), then the lowest index. A room placed in the last few
    seconds (``fresh``) has no traffic in the figures yet: it counts as an average room, so rooms
    placed at once are spread rather than all sent to the worker that was idlest before them."""
    total = sum(load.packets_per_second for load in loads)
    per_room = max(1.0, total / max(1, sum(rooms.values())))

    def weight(load: WorkerLoad) -> tuple[float, int, int]:
        index = load.worker or 0
        return (load.packets_per_second + fresh.get(index, 0) * per_room, rooms.get(index, 0), index)

    return min(loads, key=weight)


@dataclass
class _Session:
    meeting_id: int
    user_id: int
    signal: Signal
    worker: int
    # Signals that came while the join was under way, given to the client only after whoever joined
    # has acted on the join (in the server's own process a peer's first offer always comes later).
    held: list[tuple[str, dict[str, Any]]] | None = field(default_factory=list)

    def deliver(self, kind: str, data: dict[str, Any]) -> None:
        if self.held is not None:
            self.held.append((kind, data))
        else:
            self.signal(kind, data)

    def release(self) -> None:
        held, self.held = self.held or [], None
        for kind, data in held:
            self.signal(kind, data)


@dataclass
class _Stream:
    meeting_id: int
    outlet: Outlet
    layer: str


class PoolFeed:
    """A live stream fed by the workers: the compositor's key-frame requests go to the worker whose
    track it names."""

    def __init__(self, pool: WorkerPool, stream_id: str) -> None:
        self.pool, self.stream_id = pool, stream_id
        self.dropped = 0  # frames the compositor's input refused

    def request_keyframe(self, key: int) -> None:
        self.pool._tell(key // KEYSPACE, "stream_keyframe", stream_id=self.stream_id, key=key % KEYSPACE)


@dataclass
class _Process:
    index: int
    process: asyncio.subprocess.Process
    writer: asyncio.StreamWriter
    ready: asyncio.Future[None]
    load: WorkerLoad
    reported: float = field(default_factory=time.monotonic)  # when the last load came
    reader: asyncio.Task[None] | None = None
    pending: dict[int, asyncio.Future[Any]] = field(default_factory=dict)
    alive: bool = True


class WorkerPool:
    def __init__(self, settings: SfuSettings, denoise_setup: WorkerSetup, log_level: str = "INFO") -> None:
        self.settings = settings
        self.count = settings.workers
        self.denoise_setup = denoise_setup
        self.log_level = log_level
        self.events: PoolEvents = NoEvents()
        self._workers: dict[int, _Process] = {}
        self._restarted: dict[int, asyncio.Future[None]] = {}
        self._rooms: dict[int, int] = {}  # meeting -> worker
        self._sessions: dict[str, _Session] = {}
        self._recordings: dict[str, tuple[int, Path, Callable[[TrackFile], None]]] = {}
        self._streams: dict[str, _Stream] = {}
        self._feeds: dict[str, PoolFeed] = {}
        self._captions: dict[int, CaptionSink] = {}  # where each meeting's caption frames go
        self._captioned: set[int] = set()  # meetings captioned now
        self._noise_rooms: dict[int, tuple[bool, str | None]] = {}
        self._next_id = 0
        self._placed: list[tuple[float, int]] = []  # (when, worker) of the rooms placed lately
        self._restarts: dict[int, int] = {}
        self._closing = False
        self._tasks: set[asyncio.Task[Any]] = set()

    # processes ----------------------------------------------------------------------------------

    async def start(self) -> None:
        started = await asyncio.gather(*(self._spawn(i) for i in range(self.count)), return_exceptions=True)
        failures = [result for result in started if isinstance(result, BaseException)]
        if failures:
            await self.close()
            raise failures[0]
        log.info(
            "%d media workers running (pids %s)",
            self.count,
            ", ".join(str(w.process.pid) for w in self._workers.values()),
        )

    async def _spawn(self, index: int) -> None:
        ours, theirs = socket.socketpair()
        config = {
            "settings": worker_settings(self.settings, index, self.count).model_dump(),
            "denoise": asdict(self.denoise_setup),
            "log_level": self.log_level,
        }
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "sfu.worker",
                str(theirs.fileno()),
                str(index),
                stdin=asyncio.subprocess.PIPE,
                pass_fds=(theirs.fileno(),),
                start_new_session=True,  # a terminal's Ctrl-C reaches the server, which stops them
            )
        finally:
            theirs.close()
        assert process.stdin is not None
        process.stdin.write(json.dumps(config).encode())
        process.stdin.close()
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        loop = asyncio.get_running_loop()
        worker = _Process(index, process, writer, loop.create_future(), WorkerLoad(index, process.pid or 0))
        self._workers[index] = worker
        worker.reader = loop.create_task(self._read(worker, reader))
        try:
            await asyncio.wait_for(asyncio.shield(worker.ready), START_TIMEOUT)
        except TimeoutError:
            process.kill()
            raise RuntimeError(f"media worker {index} did not start within {START_TIMEOUT:.0f} s") from None
        for recording_id, (meeting_id, directory, _) in self._recordings.items():
            self._tell(
                index, "start_recording", meeting_id=meeting_id, recording_id=recording_id, directory=str(directory)
            )
        for stream_id, stream in self._streams.items():
            self._tell(index, "start_stream", meeting_id=stream.meeting_id, stream_id=stream_id, layer=stream.layer)
        for meeting_id in self._captioned:
            self._tell(index, "start_captions", meeting_id=meeting_id)
        for meeting_id, (enabled, model) in self._noise_rooms.items():
            self._tell(index, "set_room_noise", meeting_id=meeting_id, enabled=enabled, model=model)

    async def close(self) -> None:
        self._closing = True
        for worker in self._workers.values():
            with contextlib.suppress(ProcessLookupError):
                worker.process.terminate()
        for worker in self._workers.values():
            try:
                await asyncio.wait_for(worker.process.wait(), STOP_TIMEOUT)
            except TimeoutError:
                log.warning("media worker %d did not stop within %.0f s; killed", worker.index, STOP_TIMEOUT)
                with contextlib.suppress(ProcessLookupError):
                    worker.process.kill()
                await worker.process.wait()
            if worker.reader is not None:
                worker.reader.cancel()
            worker.writer.close()
        for task in list(self._tasks):
            task.cancel()

    def pids(self) -> dict[int, int]:
        """The workers' process ids, by index."""
        return {index: worker.process.pid or 0 for index, worker in self._workers.items()}

    async def _read(self, worker: _Process, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                message, blob = await ipc.read(reader)
                self._take(worker, message, blob)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        except Exception:
            log.exception("media worker %d: unreadable message", worker.index)
        self._spawn_task(self._lost(worker))

    def _take(self, worker: _Process, message: dict[str, Any], blob: bytes) -> None:
        if "id" in message:
            future = worker.pending.pop(message["id"], None)
            if future is not None and not future.done():
                error = message.get("error")
                if error is not None:
                    future.set_exception(SignalError(error["code"], error["message"]))
                else:
                    future.set_result(message.get("result"))
            return
        event = message["event"]
        if event == "signal":
            session = self._sessions.get(message["peer_id"])
            if session is not None and session.worker == worker.index:
                session.deliver(message["kind"], message["data"])
        elif event == "load":
            self._take_load(worker, WorkerLoad.from_data(message["load"]))
        elif event == "published":
            self.events.track_published(message["view"])
        elif event == "unpublished":
            self.events.track_unpublished(message["view"], message["reason"])
        elif event == "flowing":
            self.events.media_flowing(message["seconds"])
        elif event == "file_closed":
            file = file_from_data(message["file"])
            recording = self._recordings.get(file.recording_id)
            if recording is not None:
                recording[2](file)
        elif event == "stream":
            self._relay_stream(worker.index, message, blob)
        elif event == "caption":
            self._relay_caption(message, blob)
        elif event == "failed" and not worker.ready.done():
            worker.ready.set_exception(ConfigError(message["message"]))

    def _take_load(self, worker: _Process, load: WorkerLoad) -> None:
        now = time.monotonic()
        before, then = worker.load.totals.forwarded_packets, worker.reported
        if worker.ready.done() and now > then:
            load.packets_per_second = round(max(0, load.totals.forwarded_packets - before) / (now - then), 1)
        worker.load, worker.reported = load, now
        if not worker.ready.done():
            worker.ready.set_result(None)

    def _relay_stream(self, index: int, message: dict[str, Any], blob: bytes) -> None:
        stream = self._streams.get(message["stream"])
        if stream is None:
            return
        key = index * KEYSPACE + message["key"]
        call = message["call"]
        if call == "add":
            stream.outlet.add_track(key, message["user_id"], message["kind"], message["codec"])
        elif call == "remove":
            stream.outlet.remove_track(key)
        else:
            fields = ("timestamp", "keyframe", "arrival", "width", "height", "wallclock")
            frame = EncodedFrame(blob, **{name: message[name] for name in fields})
            if not stream.outlet.frame(key, frame):
                self._feeds[message["stream"]].dropped += 1
                if frame.keyframe is False:
                    self._tell(index, "stream_keyframe", stream_id=message["stream"], key=message["key"])

    def _relay_caption(self, message: dict[str, Any], blob: bytes) -> None:
        sink = self._captions.get(message["meeting_id"])
        if sink is None:
            return
        call = message["call"]
        if call == "open":
            sink.open(message["stream"], message["user_id"], message["peer_id"])
        elif call == "frame":
            sink.frame(message["stream"], message["timestamp"], message["wallclock"], blob)
        else:
            sink.close(message["stream"], message["flush"])

    async def _lost(self, worker: _Process) -> None:
        """The worker's socket ended: it stopped with the server, or it died and takes its rooms."""
        worker.alive = False
        for future in worker.pending.values():
            if not future.done():
                future.set_exception(SignalError(503, LOST))
        worker.pending.clear()
        status = await worker.process.wait()
        if not worker.ready.done() or worker.ready.exception() is not None:
            # It never ran: whoever started it hears why, and retries or not.
            if not worker.ready.done():
                worker.ready.set_exception(RuntimeError(f"media worker {worker.index} exited at start ({status})"))
            return
        if self._closing or self._workers.get(worker.index) is not worker:
            return
        rooms = sorted(m for m, index in self._rooms.items() if index == worker.index)
        log.error("media worker %d (pid %s) ended (%s); its %d rooms are started again", worker.index,
                  worker.process.pid, status, len(rooms))  # fmt: skip
        for meeting_id in rooms:
            self._rooms.pop(meeting_id, None)
        self._restarts[worker.index] = self._restarts.get(worker.index, 0) + 1
        restarted = self._restarted[worker.index] = asyncio.get_running_loop().create_future()
        restart = self._spawn_task(self._restart(worker.index, restarted))
        # Its sessions are forgotten first: each is joined afresh, never taken for joined to the
        # worker started again under the same index.
        moved = [(peer_id, s) for peer_id, s in self._sessions.items() if s.worker == worker.index]
        for peer_id, _ in moved:
            del self._sessions[peer_id]
        for peer_id, session in moved:
            session.signal("reconnect", {"reason": LOST})
            try:
                await self.join(session.meeting_id, peer_id, session.user_id, session.signal)
            except SignalError:
                log.warning("session %s could not be joined again after worker %d ended", peer_id, worker.index)
        await asyncio.gather(restart, return_exceptions=True)

    async def _restart(self, index: int, done: asyncio.Future[None]) -> None:
        while not self._closing:
            try:
                await self._spawn(index)
            except Exception:
                log.exception("media worker %d could not start again; retrying", index)
                await asyncio.sleep(1.0)
            else:
                break
        self._restarted.pop(index, None)
        if not done.done():
            done.set_result(None)

    def _spawn_task(self, work: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # requests -----------------------------------------------------------------------------------

    def _tell(self, index: int, op: str, **args: Any) -> asyncio.Future[Any] | None:
        worker = self._workers.get(index)
        if worker is None or not worker.alive:
            return None
        self._next_id += 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.add_done_callback(lambda f: f.exception() if not f.cancelled() else None)  # read, not logged
        worker.pending[self._next_id] = future
        worker.writer.write(ipc.encode({"id": self._next_id, "op": op, "args": args}))
        return future

    async def _ask(self, index: int, op: str, **args: Any) -> Any:
        future = self._tell(index, op, **args)
        if future is None:
            raise SignalError(503, LOST)
        return await future

    async def _ask_all(self, op: str, **args: Any) -> list[Any]:
        futures = [f for f in (self._tell(i, op, **args) for i in list(self._workers)) if f is not None]
        results = await asyncio.gather(*futures, return_exceptions=True)
        return [result for result in results if not isinstance(result, BaseException)]

    def _tell_all(self, op: str, **args: Any) -> None:
        for index in list(self._workers):
            self._tell(index, op, **args)

    # sessions -----------------------------------------------------------------------------------

    async def _place(self, meeting_id: int) -> int:
        index = self._rooms.get(meeting_id)
        if index is not None and self._workers[index].alive:
            return index
        live = [w.load for w in self._workers.values() if w.alive and w.ready.done()]
        if not live:
            await asyncio.gather(*self._restarted.values(), return_exceptions=True)
            live = [w.load for w in self._workers.values() if w.alive and w.ready.done()]
            if not live:
                raise SignalError(503, LOST)
        placed: dict[int, int] = {}
        for worker_index in self._rooms.values():
            placed[worker_index] = placed.get(worker_index, 0) + 1
        now = time.monotonic()
        self._placed = [(when, i) for when, i in self._placed if now - when < FRESH_SECONDS]
        fresh: dict[int, int] = {}
        for _, worker_index in self._placed:
            fresh[worker_index] = fresh.get(worker_index, 0) + 1
        index = self._rooms[meeting_id] = least_loaded(live, placed, fresh).worker or 0
        self._placed.append((now, index))
        log.info("meeting %s placed on media worker %d", meeting_id, index)
        return index

    async def join(self, meeting_id: int, peer_id: str, user_id: int, signal: Signal) -> None:
        """Join the session to its room's media (a session already joined stays as it is)."""
        joined = self._sessions.get(peer_id)
        if joined is not None and joined.meeting_id == meeting_id and self._workers[joined.worker].alive:
            return
        index = await self._place(meeting_id)
        session = self._sessions[peer_id] = _Session(meeting_id, user_id, signal, index)
        try:
            await self._ask(index, "join", meeting_id=meeting_id, peer_id=peer_id, user_id=user_id)
        finally:
            asyncio.get_running_loop().call_soon(session.release)

    def _session(self, peer_id: str) -> _Session:
        session = self._sessions.get(peer_id)
        if session is None:
            raise SignalError(409, "this session has no media here (join first)")
        return session

    async def handle(self, peer_id: str, kind: str, data: dict[str, Any]) -> None:
        await self._ask(self._session(peer_id).worker, "handle", peer_id=peer_id, kind=kind, data=data)

    async def set_preferences(self, peer_id: str, data: dict[str, Any]) -> None:
        await self._ask(self._session(peer_id).worker, "preferences", peer_id=peer_id, data=data)

    async def leave(self, peer_id: str) -> None:
        session = self._sessions.pop(peer_id, None)
        if session is None:
            return
        with contextlib.suppress(SignalError):
            await self._ask(session.worker, "leave", peer_id=peer_id)
        if not any(s.meeting_id == session.meeting_id for s in self._sessions.values()):
            self._rooms.pop(session.meeting_id, None)

    def meetings(self) -> list[int]:
        return list(self._rooms)

    def peer_info(self, peer_id: str) -> PeerInfo | None:
        session = self._sessions.get(peer_id)
        return PeerInfo(session.meeting_id, session.user_id) if session is not None else None

    def worker_of(self, meeting_id: int) -> int | None:
        return self._rooms.get(meeting_id)

    # views and host controls --------------------------------------------------------------------

    async def room_peers(self, meeting_id: int) -> list[dict[str, Any]]:
        index = self._rooms.get(meeting_id)
        return await self._ask(index, "room_peers", meeting_id=meeting_id) if index is not None else []

    async def room_stats(self, meeting_id: int) -> dict[str, Any]:
        index = self._rooms.get(meeting_id)
        if index is None:
            return {
                "room_id": meeting_id,
                "peers": 0,
                "tracks": [],
                "subscriptions": [],
                "transports": [],
                "worker": None,
            }
        stats: dict[str, Any] = await self._ask(index, "room_stats", meeting_id=meeting_id)
        return {**stats, "worker": index}

    async def control_peer(self, peer_id: str, changes: dict[str, Any]) -> dict[str, Any] | None:
        session = self._sessions.get(peer_id)
        if session is None:
            return None
        view: dict[str, Any] | None = await self._ask(session.worker, "control_peer", peer_id=peer_id, changes=changes)
        return view

    # noise suppression --------------------------------------------------------------------------

    async def set_room_noise(self, meeting_id: int, enabled: bool, model: str | None) -> None:
        if enabled:
            self._noise_rooms[meeting_id] = (enabled, model)
        else:
            self._noise_rooms.pop(meeting_id, None)
        await self._ask_all("set_room_noise", meeting_id=meeting_id, enabled=enabled, model=model)

    async def _room_worker(self, meeting_id: int) -> int:
        index = self._rooms.get(meeting_id)
        return index if index is not None else min(i for i, w in self._workers.items() if w.alive)

    async def describe_noise(self, meeting_id: int) -> dict[str, Any]:
        found: dict[str, Any] = await self._ask(
            await self._room_worker(meeting_id), "describe_noise", meeting_id=meeting_id
        )
        return found

    async def noise_switches(self, meeting_id: int) -> dict[str, Any]:
        found: dict[str, Any] = await self._ask(
            await self._room_worker(meeting_id), "noise_switches", meeting_id=meeting_id
        )
        return found

    # recordings, streams, captions --------------------------------------------------------------

    def start_recording(
        self, meeting_id: int, recording_id: str, directory: Path, on_file_closed: Callable[[TrackFile], None]
    ) -> None:
        if recording_id in self._recordings:
            raise ValueError(f"recording {recording_id} is already running")
        self._recordings[recording_id] = (meeting_id, directory, on_file_closed)
        self._tell_all("start_recording", meeting_id=meeting_id, recording_id=recording_id, directory=str(directory))

    async def stop_recording(self, recording_id: str, reason: str = "stopped") -> list[TrackFile]:
        if self._recordings.pop(recording_id, None) is None:
            return []
        answers = await self._ask_all("stop_recording", recording_id=recording_id, reason=reason)
        return [file_from_data(data) for files in answers for data in files]

    def recording_files(self, recording_id: str) -> list[TrackFile]:
        return []  # the workers write them; the files closed so far went to the recording's callback

    def recordings(self) -> list[str]:
        return list(self._recordings)

    def start_stream(self, meeting_id: int, stream_id: str, outlet: Outlet, layer: str = "medium") -> PoolFeed:
        if stream_id in self._streams:
            raise ValueError(f"stream {stream_id} is already running")
        self._streams[stream_id] = _Stream(meeting_id, outlet, layer)
        feed = self._feeds[stream_id] = PoolFeed(self, stream_id)
        self._tell_all("start_stream", meeting_id=meeting_id, stream_id=stream_id, layer=layer)
        return feed

    def stop_stream(self, stream_id: str, reason: str = "stopped") -> None:
        if self._streams.pop(stream_id, None) is not None:
            self._feeds.pop(stream_id, None)
            self._tell_all("stop_stream", stream_id=stream_id, reason=reason)

    def start_captions(self, meeting_id: int, sink: CaptionSink) -> None:
        if meeting_id not in self._captioned:
            self._captioned.add(meeting_id)
            self._captions[meeting_id] = sink
            self._tell_all("start_captions", meeting_id=meeting_id)

    def stop_captions(self, meeting_id: int) -> None:
        """The workers close their taps, whose streams' ends still reach the sink."""
        if meeting_id not in self._captioned:
            return
        self._captioned.discard(meeting_id)
        sink = self._captions[meeting_id]

        async def forget() -> None:
            await self._ask_all("stop_captions", meeting_id=meeting_id)
            if meeting_id not in self._captioned and self._captions.get(meeting_id) is sink:
                del self._captions[meeting_id]

        self._spawn_task(forget())

    # load ---------------------------------------------------------------------------------------

    def loads(self) -> list[WorkerLoad]:
        """Each worker's last report; one not heard from lately, or gone, does not tick."""
        now, found = time.monotonic(), []
        for index in range(self.count):
            worker = self._workers.get(index)
            if worker is None:
                continue
            load = worker.load
            late = now - worker.reported
            ticking = worker.alive and load.ticking
            found.append(WorkerLoad(**{**load.__dict__, "ticking": ticking, "tick_age": load.tick_age + late}))
        return found

    def totals(self) -> MediaTotals:
        """Forwarded and received by every worker since it started."""
        total = MediaTotals()
        for load in self.loads():
            total = total.plus(load.totals)
        return total

    def restarts(self) -> dict[int, int]:
        """How often each worker was started again after it ended."""
        return {index: self._restarts.get(index, 0) for index in range(self.count)}

    def streams(self) -> list[str]:
        return list(self._streams)

    def log_status(self) -> None:
        self._tell_all("log_status")


MediaServer = LocalMedia | WorkerPool  # what the control plane holds as its media (``control.context.SFU``)


def media_server(settings: SfuSettings, denoise_setup: WorkerSetup, log_level: str = "INFO") -> MediaServer:
    """Media in worker processes (``sfu.workers`` > 0), or in this one."""
    if settings.workers > 0:
        return WorkerPool(settings, denoise_setup, log_level)
    return LocalMedia(settings, denoise_setup)
