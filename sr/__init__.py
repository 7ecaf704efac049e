"""ZSSR core: per-image training and patch-wise inference, pure PyTorch + Pillow + NumPy.

`sr.upscale(image, scale, method="zssr" | "bicubic", preset=..., config=...)`; presets and config in sr.config,
the algorithm in sr.train / sr.inference / sr.zssr (docs/algorithm.md); image I/O in sr.images; metrics in sr.metrics.
"""
from __future__ import annotations

from sr.config import BALANCED, FAST, PAPER, PRESETS, ZSSRConfig, config_for
from sr.errors import Cancelled, InvalidInput
from sr.metrics import psnr, ssim
from sr.progress import Progress
from sr.warmup import warm_up
from sr.zssr import upscale

__all__ = ["upscale", "warm_up", "ZSSRConfig", "config_for", "PRESETS", "PAPER", "BALANCED", "FAST", "Progress",
           "Cancelled", "InvalidInput", "psnr", "ssim"]
