"""ZSSR core: per-image training and patch-wise inference, pure PyTorch + Pillow + NumPy.

Interim surface: `method="bicubic"` works; `method="zssr"` lands with the core (issue 2).
"""
from __future__ import annotations

from typing import Callable

from PIL import Image

from sr.errors import Cancelled, InvalidInput
from sr.progress import Progress


def upscale(image: Image.Image, scale: float | tuple[float, float] = 2.0, *, method: str = "zssr",
            preset: str = "balanced", kernel="bicubic", config=None, device: str | None = None,
            seed: int | None = None, progress: Callable[[Progress], None] | None = None,
            should_stop: Callable[[], bool] | None = None) -> Image.Image:
    sx, sy = (scale, scale) if isinstance(scale, (int, float)) else scale
    if method not in ("zssr", "bicubic"):
        raise InvalidInput(f"unknown method {method!r}; expected 'zssr' or 'bicubic'")
    if method == "zssr":
        raise NotImplementedError("the ZSSR core lands with issue 2")
    size = (round(image.width * sx), round(image.height * sy))
    return image.resize(size, Image.Resampling.BICUBIC)
