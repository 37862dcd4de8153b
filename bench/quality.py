"""Material and measures for judging denoising and enhancement, shared by ``bench.denoise`` and
the tests: white noise mixed into a signal at a set SNR, SI-SDR against the clean signal, a
generated video clip with known noise, and PSNR/SSIM of a picture against the clean one."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

RATE = 48_000
WIDTH, HEIGHT, FPS = 320, 240, 25


def with_noise(clean: np.ndarray, snr_db: float, seed: int = 0) -> np.ndarray:
    """``clean`` plus white noise ``snr_db`` below it (by power over the whole clip)."""
    noise = np.random.default_rng(seed).normal(0, 1, clean.size)
    noise *= np.sqrt(np.mean(clean**2) / 10 ** (snr_db / 10) / np.mean(noise**2))
    return (clean + noise).astype(np.float32)


def si_sdr(reference: np.ndarray, estimate: np.ndarray) -> float:
    """Scale-invariant signal-to-distortion ratio (dB) of ``estimate`` against ``reference``."""
    count = min(reference.size, estimate.size)
    ref = reference[:count].astype(np.float64) - reference[:count].mean()
    est = estimate[:count].astype(np.float64) - estimate[:count].mean()
    target = np.dot(est, ref) / np.dot(ref, ref) * ref
    return float(10 * np.log10(np.dot(target, target) / np.dot(est - target, est - target)))


def clean_picture(index: int) -> np.ndarray:
    """Frame ``index`` of the clean clip: smooth colour fields, a moving disc, fine stripes."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    image = np.zeros((HEIGHT, WIDTH, 3), np.float32)
    image[..., 0] = 80 + 60 * np.sin(x / 23 + index * 0.1)
    image[..., 1] = 90 + 50 * np.cos(y / 17)
    image[..., 2] = 120 + 40 * np.sin((x + y) / 31)
    image[(x - 60 - index * 4) ** 2 + (y - 120) ** 2 < 40**2] = (220, 200, 60)
    image[40:60, 150:300:6] = 20
    return np.clip(image, 0, 255)


def noisy_clip(path: Path, frames: int, sigma: float, audio: bool = True, seed: int = 1, shrink: int = 1) -> Path:
    """The clean clip with Gaussian noise of ``sigma`` (8-bit levels) in H.264 at a quality that
    keeps the noise, with a 440 Hz tone as its sound when ``audio``, in MP4; ``shrink`` times
    smaller on each side (averaging blocks of pixels) for judging upscalers."""
    rng = np.random.default_rng(seed)
    width, height = WIDTH // shrink, HEIGHT // shrink
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=FPS, options={"crf": "8", "preset": "veryfast"})
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        sound = out.add_stream("aac", rate=RATE, layout="mono") if audio else None
        for index in range(frames):
            picture = clean_picture(index).reshape(height, shrink, width, shrink, 3).mean(axis=(1, 3))
            image = picture + rng.normal(0, sigma, (height, width, 3))
            frame = av.VideoFrame.from_ndarray(np.clip(image, 0, 255).astype(np.uint8), format="rgb24")
            frame.pts = index
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        if sound is not None:
            t = np.arange(RATE * frames // FPS) / RATE
            tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
            for start in range(0, tone.size, 1024):
                piece = tone[start : start + 1024].reshape(1, -1)
                block = av.AudioFrame.from_ndarray(piece, format="flt", layout="mono")
                block.sample_rate, block.pts = RATE, start
                out.mux(sound.encode(block))
            out.mux(sound.encode(None))
    return path


def _luma(rgb: np.ndarray) -> np.ndarray:
    return 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]


def psnr(clean: np.ndarray, picture: np.ndarray) -> float:
    """Peak signal-to-noise ratio of the luma, dB."""
    return float(10 * np.log10(255**2 / np.mean((_luma(clean) - _luma(picture)) ** 2)))


def _box(image: np.ndarray, size: int = 7) -> np.ndarray:
    total = np.cumsum(np.cumsum(np.pad(image, ((1, 0), (1, 0))), 0), 1)
    return (total[size:, size:] - total[:-size, size:] - total[size:, :-size] + total[:-size, :-size]) / size**2


def ssim(clean: np.ndarray, picture: np.ndarray) -> float:
    """Structural similarity of the luma (7x7 windows, the usual constants)."""
    x, y = _luma(clean), _luma(picture)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = _box(x), _box(y)
    vx, vy, cxy = _box(x * x) - mx * mx, _box(y * y) - my * my, _box(x * y) - mx * my
    return float(np.mean(((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))))


def frames_of(source: str | Path | object) -> list[np.ndarray]:
    """A clip's pictures (a path or a file object), RGB."""
    with av.open(source) as container:  # type: ignore[call-overload]
        return [frame.to_ndarray(format="rgb24").astype(np.float64) for frame in container.decode(video=0)]


def picture_scores(source: str | Path | object) -> tuple[float, float, int]:
    """Mean PSNR and SSIM of a clip's frames (a path or a file object) against the clean clip,
    and its frame count."""
    frames = frames_of(source)
    psnrs = [psnr(clean_picture(i), frame) for i, frame in enumerate(frames)]
    ssims = [ssim(clean_picture(i), frame) for i, frame in enumerate(frames)]
    return float(np.mean(psnrs)), float(np.mean(ssims)), len(frames)


def decode_mono(source: str | Path | object, rate: int = RATE) -> np.ndarray:
    """The first audio track of a file (a path or a file object), resampled to ``rate`` mono."""
    chunks = []
    with av.open(source) as container:  # type: ignore[call-overload]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        for frame in container.decode(audio=0):
            chunks += [out.to_ndarray().reshape(-1) for out in resampler.resample(frame)]
        chunks += [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]
    return np.concatenate(chunks)
