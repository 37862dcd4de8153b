"""A media worker process (docs/sfu.md#workers): its own event loop and media sockets, running the
rooms the server places on it, driven over one unix socket (``sfu/ipc.py``) by the server's
``WorkerPool`` (``sfu/pool.py``).

Started as ``python -m sfu.worker <fd> <index>`` with the socket as file descriptor ``fd`` and its
settings as JSON on stdin. It ends when the socket closes (the server stopped or died) and, should
the server die without the socket closing, when the kernel's parent-death signal or the parent
check in the load loop says the server is gone: a worker is never left running on its own."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import json
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from config import ConfigError
from config.settings import SfuSettings
from media.mux import EncodedFrame
from sfu import ipc
from sfu.denoise import WorkerSetup
from sfu.live import LiveFeed
from sfu.local import LocalMedia
from sfu.recording import TrackFile
from sfu.server import SignalError

log = logging.getLogger("huiyi.sfu.worker")

LOAD_SECONDS = 1.0  # how often the worker tells the server its load (and checks its parent)
PR_SET_PDEATHSIG = 1
MAX_RELAYED = 4 * 1024 * 1024  # bytes of frames waiting for the server before frames are refused


class _Relay:
    """A live stream's outlet, or a caption feed's sink, in the server: its calls become events."""

    def __init__(self, worker: Worker, kind: str, name: str) -> None:
        self.worker, self.kind, self.name = worker, kind, name

    def add_track(self, key: int, user_id: int, kind: str, codec: str) -> None:
        self.worker.emit({"event": "stream", "call": "add", "stream": self.name, "key": key, "user_id": user_id,
                          "kind": kind, "codec": codec})  # fmt: skip

    def frame(self, key: int, frame: EncodedFrame) -> bool:
        if self.worker.backed_up:
            return False
        fields = {"key": key, "timestamp": frame.timestamp, "keyframe": frame.keyframe, "arrival": frame.arrival,
                  "width": frame.width, "height": frame.height, "wallclock": frame.wallclock}  # fmt: skip
        self.worker.emit({"event": "stream", "call": "frame", "stream": self.name, **fields}, frame.data)
        return True

    def remove_track(self, key: int) -> None:
        self.worker.emit({"event": "stream", "call": "remove", "stream": self.name, "key": key})


class _CaptionRelay:
    def __init__(self, worker: Worker, meeting_id: int) -> None:
        self.worker, self.meeting_id = worker, meeting_id

    def open(self, stream_id: str, user_id: int, peer_id: str) -> None:
        self.worker.emit({"event": "caption", "call": "open", "meeting_id": self.meeting_id, "stream": stream_id,
                          "user_id": user_id, "peer_id": peer_id})  # fmt: skip

    def frame(self, stream_id: str, timestamp: int, wallclock: float, data: bytes) -> None:
        if not self.worker.backed_up:
            self.worker.emit({"event": "caption", "call": "frame", "meeting_id": self.meeting_id, "stream": stream_id,
                              "timestamp": timestamp, "wallclock": wallclock}, data)  # fmt: skip

    def close(self, stream_id: str, flush: bool) -> None:
        self.worker.emit({"event": "caption", "call": "close", "meeting_id": self.meeting_id, "stream": stream_id,
                          "flush": flush})  # fmt: skip


class _Events:
    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def track_published(self, view: dict[str, Any]) -> None:
        self.worker.emit({"event": "published", "view": view})

    def track_unpublished(self, view: dict[str, Any], reason: str) -> None:
        self.worker.emit({"event": "unpublished", "view": view, "reason": reason})

    def media_flowing(self, seconds: float) -> None:
        self.worker.emit({"event": "flowing", "seconds": seconds})


def file_data(file: TrackFile) -> dict[str, Any]:
    return {**dataclasses.asdict(file), "path": str(file.path)}


def file_from_data(data: dict[str, Any]) -> TrackFile:
    return TrackFile(**{**data, "path": Path(data["path"])})


class Worker:
    def __init__(self, media: LocalMedia, index: int, writer: asyncio.StreamWriter) -> None:
        self.media, self.index, self.writer = media, index, writer
        self.streams: dict[str, LiveFeed] = {}
        self._chains: dict[str, asyncio.Task[None]] = {}
        media.events = _Events(self)

    @property
    def backed_up(self) -> bool:
        return self.writer.transport.get_write_buffer_size() > MAX_RELAYED

    def emit(self, message: dict[str, Any], blob: bytes = b"") -> None:
        if not self.writer.is_closing():
            self.writer.write(ipc.encode(message, blob))

    async def serve(self, reader: asyncio.StreamReader) -> None:
        while True:
            try:
                request, _ = await ipc.read(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            # A peer's requests run in the order they came, each after the one before has finished
            # (as on the server's own media); other peers' and other requests run alongside.
            key = request["args"].get("peer_id") or f"request {request['id']}"
            previous = self._chains.get(key)
            task = asyncio.get_running_loop().create_task(self._answer(request, previous))
            self._chains[key] = task
            task.add_done_callback(
                lambda done, k=key: self._chains.pop(k, None) if self._chains.get(k) is done else None
            )

    def _forget(self, key: str, done: asyncio.Task[None]) -> None:
        if self._chains.get(key) is done:
            del self._chains[key]

    async def _answer(self, request: dict[str, Any], previous: asyncio.Task[None] | None) -> None:
        if previous is not None:
            await asyncio.gather(previous, return_exceptions=True)
        reply: dict[str, Any] = {"id": request["id"]}
        try:
            reply["result"] = await self._run(request["op"], request["args"])
        except SignalError as exc:
            reply["error"] = {"code": exc.code, "message": exc.text}
        except Exception as exc:
            log.exception("worker %d: %s failed", self.index, request["op"])
            reply["error"] = {"code": 500, "message": f"internal error: {type(exc).__name__}"}
        self.emit(reply)

    async def _run(self, op: str, args: dict[str, Any]) -> Any:
        media = self.media
        if op == "join":
            peer_id = args["peer_id"]

            def signal(kind: str, data: dict[str, Any]) -> None:
                self.emit({"event": "signal", "peer_id": peer_id, "kind": kind, "data": data})

            await media.join(args["meeting_id"], peer_id, args["user_id"], signal)
        elif op == "handle":
            await media.handle(args["peer_id"], args["kind"], args["data"])
        elif op == "preferences":
            await media.set_preferences(args["peer_id"], args["data"])
        elif op == "leave":
            await media.leave(args["peer_id"])
        elif op == "room_peers":
            return await media.room_peers(args["meeting_id"])
        elif op == "room_stats":
            return await media.room_stats(args["meeting_id"])
        elif op == "control_peer":
            return await media.control_peer(args["peer_id"], args["changes"])
        elif op == "set_room_noise":
            await media.set_room_noise(args["meeting_id"], args["enabled"], args["model"])
        elif op == "describe_noise":
            return await media.describe_noise(args["meeting_id"])
        elif op == "noise_switches":
            return await media.noise_switches(args["meeting_id"])
        elif op == "start_recording":
            recording_id = args["recording_id"]

            def closed(file: TrackFile) -> None:
                self.emit({"event": "file_closed", "file": file_data(file)})

            media.start_recording(args["meeting_id"], recording_id, Path(args["directory"]), closed)
        elif op == "stop_recording":
            return [file_data(f) for f in await media.stop_recording(args["recording_id"], args["reason"])]
        elif op == "start_stream":
            stream_id = args["stream_id"]
            outlet = _Relay(self, "stream", stream_id)
            self.streams[stream_id] = media.start_stream(args["meeting_id"], stream_id, outlet, args["layer"])
        elif op == "stream_keyframe":
            feed = self.streams.get(args["stream_id"])
            if feed is not None:
                feed.request_keyframe(args["key"])
        elif op == "stop_stream":
            feed = self.streams.pop(args["stream_id"], None)
            media.stop_stream(args["stream_id"], args["reason"])
            return feed.dropped if feed is not None else 0
        elif op == "start_captions":
            media.start_captions(args["meeting_id"], _CaptionRelay(self, args["meeting_id"]))
        elif op == "stop_captions":
            media.stop_captions(args["meeting_id"])
        elif op == "log_status":
            media.log_status()
        else:
            raise SignalError(400, f"unknown operation {op}")
        return None

    async def report_load(self, parent: int) -> None:
        while True:
            if os.getppid() != parent:
                log.warning("worker %d: the server is gone; stopping", self.index)
                self.writer.close()
                return
            self.emit({"event": "load", "load": self.media.load(self.index).as_data()})
            await asyncio.sleep(LOAD_SECONDS)


def _die_with_parent() -> None:
    """The kernel sends SIGTERM when the server's process ends (Linux); elsewhere the load loop's
    parent check does it within a second."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


async def _main(fd: int, index: int, config: dict[str, Any]) -> None:
    parent = os.getppid()
    settings = SfuSettings.model_validate(config["settings"])
    media = LocalMedia(settings, WorkerSetup(**config["denoise"]))
    reader, writer = await asyncio.open_unix_connection(sock=socket.socket(fileno=fd))
    worker = Worker(media, index, writer)
    try:
        await media.start()
    except ConfigError as exc:  # its media port cannot be opened: the server stops, saying why
        worker.emit({"event": "failed", "message": str(exc)})
        await writer.drain()
        writer.close()
        return
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    # SIGUSR1 goes to the whole process group on a terminal; the server asks each worker itself.
    loop.add_signal_handler(signal.SIGUSR1, media.log_status)
    tasks = [loop.create_task(worker.serve(reader)), loop.create_task(worker.report_load(parent))]
    waiter = loop.create_task(stop.wait())
    await asyncio.wait([*tasks, waiter], return_when=asyncio.FIRST_COMPLETED)
    for task in [*tasks, waiter]:
        task.cancel()
    await media.close()
    writer.close()


def main() -> None:
    _die_with_parent()
    fd, index = int(sys.argv[1]), int(sys.argv[2])
    config = json.loads(sys.stdin.read())
    logging.basicConfig(
        level=config.get("log_level", "INFO"),
        format=f"%(asctime)s %(levelname)s %(name)s[worker {index}]: %(message)s",
    )
    try:
        import uvloop
    except ImportError:
        asyncio.run(_main(fd, index, config))
    else:
        uvloop.run(_main(fd, index, config))


if __name__ == "__main__":
    main()
