"""RNNoise (a small recurrent network over 22 bands, 48 kHz, 10 ms frames), the library that
``pyrnnoise`` ships, called through ctypes. Only the library is used: the package's Python side
(file readers, progress bars) is not imported."""

from __future__ import annotations

import ctypes
import importlib.util
from pathlib import Path

import numpy as np

from ai.engines.base import ModelError
from ai.engines.denoise import DenoiseEngine, FramedStream

FLOATS = ctypes.POINTER(ctypes.c_float)
# Samples the output lags the input (the analysis window's overlap and its pitch filter), measured
# on speech: the alignment of best SI-SDR.
DELAY = 960
SCALE = 32768.0  # RNNoise works on 16-bit sample values in floats


def library_path() -> Path | None:
    spec = importlib.util.find_spec("pyrnnoise")
    if spec is None or not spec.origin:
        return None
    path = Path(spec.origin).parent / "librnnoise.so"
    return path if path.is_file() else None


class _RnnoiseStream(FramedStream):
    def __init__(self, library: ctypes.CDLL) -> None:
        super().__init__(DELAY)
        self._library = library
        self._state = library.rnnoise_create(None)
        self._out = np.zeros(self.frame, np.float32)

    def process_frame(self, frame: np.ndarray) -> np.ndarray:
        source = np.ascontiguousarray(frame * SCALE, np.float32)
        self._library.rnnoise_process_frame(
            self._state, self._out.ctypes.data_as(FLOATS), source.ctypes.data_as(FLOATS)
        )
        return self._out / SCALE

    def close(self) -> None:
        if self._state:
            self._library.rnnoise_destroy(self._state)
            self._state = None


class RnnoiseEngine(DenoiseEngine):
    def load(self) -> None:
        path = self.spec.path if self.spec.path.is_file() else library_path()
        if path is None:
            raise ModelError("RNNoise is not installed: pip install 'huiyi[denoise]' (pyrnnoise)")
        try:
            library = ctypes.CDLL(str(path))
        except OSError as exc:
            raise ModelError(f"{self.spec.id}: {path.name} cannot be loaded ({exc})") from None
        library.rnnoise_create.restype = ctypes.c_void_p
        library.rnnoise_create.argtypes = [ctypes.c_void_p]
        library.rnnoise_destroy.restype = None
        library.rnnoise_destroy.argtypes = [ctypes.c_void_p]
        library.rnnoise_get_frame_size.restype = ctypes.c_int
        library.rnnoise_process_frame.restype = ctypes.c_float
        library.rnnoise_process_frame.argtypes = [ctypes.c_void_p, FLOATS, FLOATS]
        if library.rnnoise_get_frame_size() != FramedStream.frame:
            raise ModelError(f"{self.spec.id}: this RNNoise build does not work on 10 ms frames")
        self._library = library

    def unload(self) -> None:
        self.__dict__.pop("_library", None)

    def stream(self) -> _RnnoiseStream:
        return _RnnoiseStream(self._library)
