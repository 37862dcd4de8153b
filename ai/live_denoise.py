"""The process that cleans live microphones for the media server: Opus packets in, Opus packets
out, one for one, over a socket pair (``sfu/denoise.py`` is the server's side).

Each stream (one participant's published audio) has its own Opus decoder, denoise stream and
Opus encoders. A packet is decoded to 48 kHz mono, cleaned, measured (its level, for the active
speaker detection) and encoded again with the same duration, so the server can send it in place of
the original under the original's sequence number and timestamp. The media server's loop never
decodes: this process does, in one thread, one packet at a time.

Messages (one datagram each; integers big-endian):
  to the worker   O <stream u32> <model id>            open a stream
                  F <stream u32> <seq u16> <ts u32> <opus packet>
                  C <stream u32>                       close it
  from it         R <stream u32> <delay u32>           opened; the model's and the encoder's delay, samples
                  E <stream u32> <message>             could not open (or a stream failed)
                  F <stream u32> <seq u16> <ts u32> <level u8> <busy us u32> <opus packet>
A packet the worker cannot clean comes back as it went (level 127: unknown)."""

from __future__ import annotations

import contextlib
import fractions
import logging
import os
import socket
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np

from ai.engines import DenoiseEngine, DenoiseStream, ModelError
from ai.registry import Registry
from media.worker import die_with_parent

log = logging.getLogger("huiyi.ai.live")
STREAM = struct.Struct("!I")
FRAME_IN = struct.Struct("!IHI")
FRAME_OUT = struct.Struct("!IHIBI")
READY = struct.Struct("!II")
RATE = 48_000
# Opus frame durations (samples at 48 kHz) the encoder can make; others pass through as they came.
DURATIONS = {480: "10", 960: "20", 1920: "40", 2880: "60"}
MAX_DATAGRAM = 4096
OPUS_LOOKAHEAD = 120  # samples the low-delay Opus encoder holds back
PRIORITY = -10  # niceness asked for
SILENT = 127


@dataclass
class LiveStream:
    model_id: str
    denoiser: DenoiseStream
    bitrate: int
    decoder: av.CodecContext = field(init=False)
    encoders: dict[int, av.CodecContext] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.decoder = av.CodecContext.create("libopus", "r")
        self.decoder.format, self.decoder.layout, self.decoder.sample_rate = "s16", "mono", RATE

    def encoder(self, samples: int) -> av.CodecContext:
        found = self.encoders.get(samples)
        if found is None:
            found = av.CodecContext.create("libopus", "w")
            found.bit_rate, found.format, found.layout, found.sample_rate = self.bitrate, "s16", "mono", RATE
            found.time_base = fractions.Fraction(1, RATE)
            # CELT only: 2.5 ms of look-ahead, and at this bitrate the waveform stays close (the
            # speech modes reshape it, which costs intelligibility nothing but fidelity a lot).
            found.options = {"application": "lowdelay", "frame_duration": DURATIONS[samples]}
            self.encoders[samples] = found
        return found

    def clean(self, payload: bytes, timestamp: int) -> tuple[bytes, int] | None:
        """The packet cleaned and its level (-dBov), or None when it is not one to clean."""
        frames = self.decoder.decode(av.Packet(payload))
        if not frames:
            return None
        pcm = np.concatenate([frame.to_ndarray().reshape(-1) for frame in frames]).astype(np.float32) / 32768
        if pcm.size not in DURATIONS:
            return None
        cleaned = self.denoiser.process(pcm)
        if cleaned.size != pcm.size:
            return None
        rms = float(np.sqrt(np.mean(cleaned * cleaned)))
        level = min(SILENT, int(-20 * np.log10(rms))) if rms > 0 else SILENT
        block = av.AudioFrame.from_ndarray(
            (np.clip(cleaned, -1, 1) * 32767).astype(np.int16).reshape(1, -1), format="s16", layout="mono"
        )
        block.sample_rate, block.pts, block.time_base = RATE, timestamp, fractions.Fraction(1, RATE)
        packets = self.encoder(pcm.size).encode(block)
        if len(packets) != 1:
            return None
        return bytes(packets[0]), level

    def close(self) -> None:
        self.denoiser.close()


class Worker:
    def __init__(self, channel: socket.socket, model_dir: Path | None, cache_dir: Path, bitrate: int) -> None:
        self.channel = channel
        self.registry = Registry(model_dir, cache_dir)
        self.engines: dict[str, DenoiseEngine] = {}
        self.streams: dict[int, LiveStream] = {}
        self.bitrate = bitrate

    def _engine(self, model_id: str) -> DenoiseEngine:
        engine = self.engines.get(model_id)
        if engine is None:
            self.registry.load(model_id)
            loaded = self.registry.state(model_id).engine
            if not isinstance(loaded, DenoiseEngine):
                raise ModelError(f"{model_id} is not a denoising model")
            engine = self.engines[model_id] = loaded
        return engine

    def serve(self) -> None:
        while True:
            try:
                message = self.channel.recv(MAX_DATAGRAM)
            except (ConnectionError, OSError):
                return
            if not message:
                return
            kind, body = message[:1], message[1:]
            if kind == b"F":
                self._frame(body)
            elif kind == b"O":
                self._open(STREAM.unpack_from(body)[0], body[STREAM.size :].decode("utf-8", "replace"))
            elif kind == b"C":
                stream = self.streams.pop(STREAM.unpack_from(body)[0], None)
                if stream is not None:
                    stream.close()

    def _open(self, stream_id: int, model_id: str) -> None:
        try:
            denoiser = self._engine(model_id).stream()
        except Exception as exc:  # an unknown or broken model fails the stream, not the worker
            self._send(b"E" + STREAM.pack(stream_id) + f"{type(exc).__name__}: {exc}".encode()[:1000])
            return
        self.streams[stream_id] = LiveStream(model_id, denoiser, self.bitrate)
        self._send(b"R" + READY.pack(stream_id, denoiser.delay + OPUS_LOOKAHEAD))

    def _frame(self, body: bytes) -> None:
        stream_id, seq, timestamp = FRAME_IN.unpack_from(body)
        payload = body[FRAME_IN.size :]
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        started = time.thread_time()
        try:
            cleaned = stream.clean(payload, timestamp)
        except (av.FFmpegError, ValueError) as exc:
            log.info("stream %s: a packet could not be cleaned (%s)", stream_id, exc)
            cleaned = None
        busy = int((time.thread_time() - started) * 1e6)
        out, level = cleaned if cleaned is not None else (payload, SILENT)
        self._send(b"F" + FRAME_OUT.pack(stream_id, seq, timestamp, level, busy) + out)

    def _send(self, message: bytes) -> None:
        # A server that is gone or not reading treats what does not come back as late.
        with contextlib.suppress(OSError):
            self.channel.send(message)


def main(argv: list[str]) -> None:
    """``python -m ai.live_denoise FD PARENT_PID MODEL_DIR CACHE_DIR BITRATE LOG_LEVEL``: serve the
    socket inherited as FD for as long as the server (PARENT_PID) lives. A plain interpreter, not a
    multiprocessing child, so that starting it does not import the whole server again."""
    fd, parent_pid, model_dir, cache_dir, bitrate, level = argv
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    die_with_parent(int(parent_pid))
    # Live sound cannot wait behind batch work (media jobs, AI nodes): ask to be scheduled first.
    # Only a server allowed to (root, or CAP_SYS_NICE) gets it; otherwise this changes nothing.
    with contextlib.suppress(OSError):
        os.nice(PRIORITY)
    channel = socket.socket(fileno=int(fd))
    channel.setblocking(True)
    Worker(channel, Path(model_dir) if model_dir else None, Path(cache_dir), int(bitrate)).serve()


if __name__ == "__main__":
    main(sys.argv[1:])
