"""PSNR and SSIM on the luma (Y) channel, as super-resolution papers report them (docs/algorithm.md, the evaluation protocol).

Y is ITU-R BT.601 on the 8-bit scale (16..235), as MATLAB's `rgb2ycbcr` computes it, kept in floating point
(not rounded to 8 bits); a grey image uses its one channel as it is. `shave` pixels are cut from every border
before measuring (papers shave `scale` pixels). SSIM is Wang et al. 2004: an 11x11 Gaussian window with
sigma 1.5, K1 = 0.01, K2 = 0.03, L = 255, averaged over the positions where the window fits inside the image
(the same figure as scikit-image's `structural_similarity(..., gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=255)`).

Inputs: PIL images (RGB, RGBA, L, LA, P, I;16, ...; alpha is ignored), NumPy arrays [H,W] or [H,W,C] and torch
tensors [C,H,W] or [1,C,H,W]. The value range comes from the type: uint8 is 0..255, uint16 is 0..65535, and
floating point is 0..1 (the range of the core's tensors).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

from sr.errors import InvalidInput

_PEAK = 255.0
# MATLAB rgb2ycbcr's luma row on 0..255 inputs: Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255
_LUMA_OFFSET = 16.0
_LUMA_WEIGHTS = np.array([65.481, 128.553, 24.966]) / 255.0
_SSIM_WINDOW = 11
_SSIM_SIGMA = 1.5
_SSIM_K1, _SSIM_K2 = 0.01, 0.03


def psnr(a, b, shave: int = 0) -> float:
    """Peak signal-to-noise ratio in dB of the Y channels (peak 255); infinity for identical images."""
    luma_a, luma_b = _paired_luma(a, b, shave)
    mse = float(np.mean((luma_a - luma_b) ** 2))
    return math.inf if mse == 0.0 else 10.0 * math.log10(_PEAK ** 2 / mse)


def ssim(a, b, shave: int = 0) -> float:
    """Mean structural similarity of the Y channels (Gaussian 11x11 window, sigma 1.5)."""
    luma_a, luma_b = _paired_luma(a, b, shave)
    if min(luma_a.shape) < _SSIM_WINDOW:
        raise InvalidInput(f"SSIM needs at least {_SSIM_WINDOW}x{_SSIM_WINDOW} pixels after the shave; "
                           f"got {luma_a.shape[1]}x{luma_a.shape[0]}")
    c1, c2 = (_SSIM_K1 * _PEAK) ** 2, (_SSIM_K2 * _PEAK) ** 2
    mean_a, mean_b = _gaussian_valid(luma_a), _gaussian_valid(luma_b)
    # Population (not sample) moments under the window: E[x^2] - E[x]^2, as Wang et al. define them.
    var_a = _gaussian_valid(luma_a * luma_a) - mean_a ** 2
    var_b = _gaussian_valid(luma_b * luma_b) - mean_b ** 2
    covariance = _gaussian_valid(luma_a * luma_b) - mean_a * mean_b
    similarity = ((2 * mean_a * mean_b + c1) * (2 * covariance + c2)) / (
        (mean_a ** 2 + mean_b ** 2 + c1) * (var_a + var_b + c2))
    return float(similarity.mean())


def luma(image) -> np.ndarray:
    """The Y channel of `image` as float64 [H,W] on the 0..255 scale (a grey image: its one channel)."""
    samples = _as_float_255(image)  # [H,W,C]
    if samples.shape[2] in (1, 2):  # grey, grey + alpha
        return samples[:, :, 0]
    if samples.shape[2] in (3, 4):  # colour, colour + alpha
        return _LUMA_OFFSET + samples[:, :, :3] @ _LUMA_WEIGHTS
    raise InvalidInput(f"an image with {samples.shape[2]} channels has no luma; expected 1 to 4")


def _paired_luma(a, b, shave: int) -> tuple[np.ndarray, np.ndarray]:
    luma_a, luma_b = luma(a), luma(b)
    if luma_a.shape != luma_b.shape:
        raise InvalidInput(f"the images differ in size: {luma_a.shape[1]}x{luma_a.shape[0]} and "
                           f"{luma_b.shape[1]}x{luma_b.shape[0]}")
    if shave < 0 or 2 * shave >= min(luma_a.shape):
        raise InvalidInput(f"a shave of {shave} pixels leaves nothing of a {luma_a.shape[1]}x{luma_a.shape[0]} image")
    if shave:
        luma_a, luma_b = luma_a[shave:-shave, shave:-shave], luma_b[shave:-shave, shave:-shave]
    return luma_a, luma_b


def _as_float_255(image) -> np.ndarray:
    """Any accepted input as float64 [H,W,C] on the 0..255 scale."""
    if isinstance(image, Image.Image):
        image = _pil_to_array(image)
    elif isinstance(image, torch.Tensor):
        image = _tensor_to_array(image)
    samples = np.asarray(image)
    if samples.ndim == 2:
        samples = samples[:, :, None]
    if samples.ndim != 3:
        raise InvalidInput(f"an image array must be [H,W] or [H,W,C], got shape {samples.shape}")
    if samples.dtype == np.uint8:
        return samples.astype(np.float64)
    if samples.dtype == np.uint16:
        return samples.astype(np.float64) * (_PEAK / 65535.0)
    if samples.dtype.kind == "f":
        return samples.astype(np.float64) * _PEAK
    raise InvalidInput(f"image arrays must be uint8, uint16 or floating point in [0, 1], got {samples.dtype}")


def _pil_to_array(image: Image.Image) -> np.ndarray:
    if image.mode in ("RGB", "RGBA", "L", "LA"):
        return np.asarray(image)
    if image.mode.startswith("I;16") or image.mode == "I":  # 16-bit grey (32-bit "I" clipped to it), native order
        return np.clip(np.asarray(image), 0, 65535).astype(np.uint16)
    return np.asarray(image.convert("RGBA" if "transparency" in image.info or image.mode == "PA" else "RGB"))


def _tensor_to_array(tensor: torch.Tensor) -> np.ndarray:
    """[C,H,W] or [1,C,H,W] -> [H,W,C] (floating point tensors are in [0, 1], as the core's are)."""
    if tensor.dim() == 4 and tensor.shape[0] == 1:
        tensor = tensor[0]
    if tensor.dim() != 3:
        raise InvalidInput(f"an image tensor must be [C,H,W] or [1,C,H,W], got {list(tensor.shape)}")
    return tensor.detach().cpu().permute(1, 2, 0).numpy()


def _gaussian_window() -> np.ndarray:
    """The normalised 1-D Gaussian (the 2-D window is its outer product: the filter is separable)."""
    offsets = np.arange(_SSIM_WINDOW) - _SSIM_WINDOW // 2
    weights = np.exp(-(offsets ** 2) / (2 * _SSIM_SIGMA ** 2))
    return weights / weights.sum()


def _gaussian_valid(plane: np.ndarray) -> np.ndarray:
    """The Gaussian-weighted local mean at every position where the whole window fits ('valid' filtering)."""
    window = _gaussian_window()
    rows = np.lib.stride_tricks.sliding_window_view(plane, _SSIM_WINDOW, axis=0) @ window  # [H-10, W]
    return np.lib.stride_tricks.sliding_window_view(rows, _SSIM_WINDOW, axis=1) @ window  # [H-10, W-10]
