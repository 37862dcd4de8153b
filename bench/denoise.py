"""``python -m bench.denoise``: how well and how fast the denoisers and video filters work, and what
live noise suppression costs per stream.

- **audio** — the five test sentences (espeak-ng, which must be installed) with white noise at
  ``--snr`` dB, cleaned by every installed denoising model through the same path as the jobs
  (``ai.denoising``): SI-SDR against the clean speech before and after, and the real-time factor.
- **video** — a generated 320x240 clip with Gaussian noise of sigma 15, through each denoise
  method (``ai.enhance``): PSNR and SSIM of the luma against the clean clip, and frames per second.
- **superres** — super-resolution (``upscale`` with ``method: superres``) with every installed
  model: seconds per frame upscaling a 640x360 clip to 1280x720, and PSNR of the luma against the
  clean 320x240 clip of the same clip shrunk to 160x120 and upscaled x2, beside lanczos.
- **live** — the live worker (``python -m ai.live_denoise``, as the media server starts it) fed
  ``--streams`` streams of 20 ms Opus packets of noisy speech in real time for ``--seconds``:
  each packet's round trip (decode, denoise, encode, and the socket both ways), and the worker's
  CPU time per stream, from /proc.

    python -m bench.denoise --part audio,video,superres,live --streams 1,4,8 --seconds 20
"""

from __future__ import annotations

import argparse
import fractions
import os
import select
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np

from ai.denoising import denoise_file
from ai.engines import DenoiseEngine, UpscaleEngine
from ai.enhance import enhance_file, usable_denoisers
from ai.registry import Registry
from bench.quality import (
    RATE,
    clean_picture,
    decode_mono,
    frames_of,
    noisy_clip,
    picture_scores,
    psnr,
    si_sdr,
    with_noise,
)

SENTENCES = [
    "please schedule the quarterly budget review for next thursday afternoon",
    "the meeting will start in five minutes",
    "can everyone see my screen",
    "we need to finish the report before friday",
    "thank you all for joining the call today",
]
FRAME_IN = struct.Struct("!IHI")
FRAME_OUT = struct.Struct("!IHIBI")
BLOCK = 960


def speech(work: Path) -> np.ndarray:
    """The sentences one after another, half a second apart, at 48 kHz."""
    pieces = []
    for index, text in enumerate(SENTENCES):
        path = work / f"s{index}.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(path), text], check=True, timeout=60)
        pieces += [decode_mono(str(path)), np.zeros(RATE // 2, np.float32)]
    return np.concatenate(pieces)


def write_wav(pcm: np.ndarray, path: Path) -> Path:
    with av.open(str(path), "w", format="wav") as out:
        stream = out.add_stream("pcm_s16le", rate=RATE, layout="mono")
        frame = av.AudioFrame.from_ndarray((np.clip(pcm, -1, 1) * 32767).astype(np.int16).reshape(1, -1), "s16", "mono")
        frame.sample_rate = RATE
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def audio(work: Path, snr: float) -> None:
    clean = speech(work)
    noisy = with_noise(clean, snr)
    source = write_wav(noisy, work / "noisy.wav")
    registry = Registry(None, work / "cache")
    print(f"audio: {clean.size / RATE:.1f} s of speech, white noise at {snr:g} dB SNR (48 kHz)")
    print(f"  {'model':16} {'SI-SDR in':>9} {'out':>6} {'gain':>6} {'RTF':>6} {'noise floor':>12}")
    for model in registry.describe():
        if model["task"] != "denoising":
            continue
        with registry.using(model["model_id"]) as engine:
            assert isinstance(engine, DenoiseEngine)
            started = time.perf_counter()
            result = denoise_file(
                engine, model["model_id"], source, work, f"{model['model_id']}.wav", {}, lambda _: None
            )
            elapsed = time.perf_counter() - started
        cleaned = decode_mono(result["output"]["path"])
        before, after = si_sdr(clean, noisy), si_sdr(clean, cleaned)
        print(
            f"  {model['model_id']:16} {before:9.2f} {after:6.2f} {after - before:+6.2f} "
            f"{elapsed / (clean.size / RATE):6.3f} {result['noise_reduction_db']:+11.1f}"
        )


def video(work: Path) -> None:
    frames = 50
    clip = noisy_clip(work / "noisy.mp4", frames, sigma=15)
    noisy_psnr, noisy_ssim, _ = picture_scores(str(clip))
    print(f"video: {frames} frames 320x240, Gaussian noise sigma 15: PSNR {noisy_psnr:.2f} dB, SSIM {noisy_ssim:.3f}")
    print(f"  {'method':12} {'strength':>8} {'PSNR':>7} {'SSIM':>6} {'fps':>6}")
    for method in usable_denoisers():
        for strength in (10, 15, 25):
            started = time.perf_counter()
            operations = [{"op": "denoise", "method": method, "strength": strength}]
            result = enhance_file(clip, work, f"{method}-{strength}.mp4", operations, lambda _: None)
            elapsed = time.perf_counter() - started
            value, structure, _ = picture_scores(result["output"]["path"])
            print(f"  {method:12} {strength:8} {value:7.2f} {structure:6.3f} {frames / elapsed:6.1f}")


def superres(work: Path, frames: int) -> None:
    large = work / "640x360.mp4"
    with av.open(str(large), "w") as out:
        stream = out.add_stream("libx264", rate=25, options={"crf": "12", "preset": "veryfast"})
        stream.width, stream.height, stream.pix_fmt = 640, 360, "yuv420p"
        for index in range(frames):
            picture = np.repeat(np.repeat(clean_picture(index), 2, 0), 2, 1)[60:420]  # 640x480, cut to 360
            frame = av.VideoFrame.from_ndarray(picture.astype(np.uint8), format="rgb24")
            frame.pts = index
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    small = noisy_clip(work / "160x120.mp4", frames, sigma=0, audio=False, shrink=2)

    def scored(path: str) -> float:
        return float(np.mean([psnr(clean_picture(i), picture) for i, picture in enumerate(frames_of(path))]))

    lanczos = enhance_file(small, work, "lanczos.mp4", [{"op": "upscale", "factor": 2}], lambda _: None)
    print(f"superres: {frames} frames; x2 of 160x120 by lanczos: PSNR {scored(lanczos['output']['path']):.2f} dB")
    print(f"  {'model':26} {'s/frame 640x360->1280x720':>26} {'PSNR x2 160x120':>16}")
    registry = Registry(None, work / "cache")
    for model in registry.describe():
        if model["task"] != "super-resolution":
            continue
        with registry.using(model["model_id"]) as engine:
            assert isinstance(engine, UpscaleEngine)
            started = time.perf_counter()
            operation = {"op": "upscale", "method": "superres", "width": 1280}
            enhance_file(large, work, "large.mp4", [operation], lambda _: None, engine)
            per_frame = (time.perf_counter() - started) / frames
            operation = {"op": "upscale", "method": "superres", "factor": 2}
            result = enhance_file(small, work, "small.mp4", [operation], lambda _: None, engine)
        registry.unload(model["model_id"])
        print(f"  {model['model_id']:26} {per_frame:26.2f} {scored(result['output']['path']):16.2f}")


def opus_packets(pcm: np.ndarray) -> list[bytes]:
    encoder = av.CodecContext.create("libopus", "w")
    encoder.bit_rate, encoder.format, encoder.layout, encoder.sample_rate = 48_000, "s16", "mono", RATE
    encoder.time_base = fractions.Fraction(1, RATE)
    packets = []
    for start in range(0, pcm.size - BLOCK + 1, BLOCK):
        block = (np.clip(pcm[start : start + BLOCK], -1, 1) * 32767).astype(np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(block, format="s16", layout="mono")
        frame.sample_rate, frame.pts = RATE, start
        packets += [bytes(packet) for packet in encoder.encode(frame)]
    return packets


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def live(work: Path, streams: list[int], seconds: float, model: str) -> None:
    packets = opus_packets(with_noise(speech(work), 5.0))
    print(f"live: {model}, 20 ms Opus packets of noisy speech in real time for {seconds:g} s per run")
    print(f"  {'streams':>7} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'CPU/stream':>11} {'late':>5}")
    for count in streams:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ai.live_denoise",
                str(theirs.fileno()),
                str(os.getpid()),
                "",
                str(work / "cache"),
                "48000",
                "WARNING",
            ],
            pass_fds=[theirs.fileno()],
        )
        theirs.close()
        for stream in range(count):
            ours.send(b"O" + struct.pack("!I", stream) + model.encode())
        for _ in range(count):
            assert ours.recv(4096)[:1] == b"R"
        sent: dict[tuple[int, int], float] = {}
        latencies: list[float] = []
        start_cpu, started = cpu_seconds(worker.pid), time.monotonic()
        total = int(seconds * RATE / BLOCK)
        for index in range(total):
            due = started + index * BLOCK / RATE
            # Replies are read until the next packet is due (and at least those waiting, so that
            # neither side ever blocks on a full socket).
            while select.select([ours], [], [], max(0.0, due - time.monotonic()))[0]:
                stream, seq = FRAME_OUT.unpack_from(ours.recv(4096), 1)[:2]
                latencies.append(time.monotonic() - sent.pop((stream, seq)))
            for stream in range(count):
                seq = index & 0xFFFF
                sent[(stream, seq)] = time.monotonic()
                ours.send(b"F" + FRAME_IN.pack(stream, seq, index * BLOCK) + packets[index % len(packets)])
        while sent and select.select([ours], [], [], 5)[0]:
            reply = ours.recv(4096)
            stream, seq = FRAME_OUT.unpack_from(reply, 1)[:2]
            latencies.append(time.monotonic() - sent.pop((stream, seq)))
        cpu = (cpu_seconds(worker.pid) - start_cpu) / (time.monotonic() - started)
        worker.kill()
        worker.wait()
        ours.close()
        ordered = sorted(latencies)
        p50, p95, p99 = (1000 * ordered[int(q * (len(ordered) - 1))] for q in (0.5, 0.95, 0.99))
        late = sum(1 for value in latencies if value > 0.02) / len(latencies)
        print(f"  {count:7} {p50:7.2f} {p95:7.2f} {p99:7.2f} {100 * cpu / count:10.1f}% {100 * late:4.1f}%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", default="audio,video,live", help="audio, video, superres and/or live")
    parser.add_argument("--frames", type=int, default=5, help="superres: frames per clip")
    parser.add_argument("--snr", type=float, default=5.0, help="dB of speech over white noise")
    parser.add_argument("--streams", default="1,4,8", help="live: stream counts to run")
    parser.add_argument("--seconds", type=float, default=20.0, help="live: seconds per stream count")
    parser.add_argument("--model", default="rnnoise", help="live: the model")
    options = parser.parse_args()
    parts = set(options.part.split(","))
    with tempfile.TemporaryDirectory(prefix="huiyi-bench-denoise-") as folder:
        work = Path(folder)
        if "audio" in parts:
            audio(work, options.snr)
        if "video" in parts:
            video(work)
        if "superres" in parts:
            superres(work, options.frames)
        if "live" in parts:
            live(work, [int(n) for n in options.streams.split(",")], options.seconds, options.model)


if __name__ == "__main__":
    main()
