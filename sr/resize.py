"""Cubic resizing of [N,C,H,W] tensors, and the degradation that makes an lr_son from an hr_father.

Cubic here is Keys' cubic (a = -0.5) with antialiasing when shrinking: torch's `antialias=True` bicubic, which
follows Pillow's BICUBIC (the evaluation protocol's bicubic) and MATLAB's imresize (the reference's) to within
rounding, on the CPU and on CUDA alike, without dense resize matrices (a 4096x4096 output stays cheap).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from sr.degradations import jpeg_round_trip
from sr.errors import InvalidInput


def output_size(height: int, width: int, sf: tuple[float, float]) -> tuple[int, int]:
    """(H, W) of an image of `height` x `width` scaled by sf = (sx, sy): the contract's round(w * sx), round(h * sy)."""
    sx, sy = sf
    return max(1, round(height * sy)), max(1, round(width * sx))


def cubic_resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[N,C,H,W] -> [N,C,*size], antialiased when shrinking; float32 whatever the input's floating type."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image.float()
    return F.interpolate(image.float(), size=size, mode="bicubic", align_corners=False, antialias=True)


@dataclass(frozen=True)
class Degradation:
    """How an hr_father becomes an lr_son: cubic downscaling, or correlation with a blur kernel and subsampling."""

    kernel: torch.Tensor | None = None  # [kh, kw], sums to 1; None = antialiased cubic
    jpeg_quality: int = 0  # lr_sons JPEG-compressed at this quality (1..100) after downscaling; 0 = not
    jpeg_subsampling: int = -1  # the JPEG chroma subsampling (Pillow's code; -1 = Pillow's default)

    @property
    def is_symmetric(self) -> bool:
        """True when every dihedral transform leaves the degradation unchanged (rotated fathers stay valid)."""
        if self.kernel is None:
            return True
        k = self.kernel
        return k.shape[0] == k.shape[1] and all(
            torch.allclose(k, t, atol=1e-6) for t in (k.flip(0), k.flip(1), k.transpose(0, 1)))

    def downscale(self, image: torch.Tensor, size: tuple[int, int], sf: tuple[float, float]) -> torch.Tensor:
        """[N,C,H,W] -> [N,C,*size]: the image as the camera would have seen it at 1/sf."""
        if self.kernel is None:
            return cubic_resize(image, size)
        return _kernel_downscale(image.float(), self.kernel.to(image.device), size, sf)


def degradation_for(kernel: str | np.ndarray) -> Degradation:
    """The Degradation for `upscale`'s kernel argument; InvalidInput for what it cannot use."""
    if isinstance(kernel, str):
        if kernel == "bicubic":
            return Degradation()
        if kernel == "estimate":
            raise InvalidInput("kernel estimation is not available")
        raise InvalidInput(f"unknown kernel {kernel!r}; expected 'bicubic' or a 2-D array")
    array = np.asarray(kernel, dtype=np.float64)
    if array.ndim != 2 or min(array.shape) < 1 or max(array.shape) > 64:
        raise InvalidInput("a blur kernel must be a 2-D array of at most 64x64")
    if not np.isfinite(array).all() or array.sum() <= 0:
        raise InvalidInput("a blur kernel must be finite with a positive sum")
    return Degradation(torch.from_numpy(array / array.sum()).float())


def _kernel_downscale(image: torch.Tensor, kernel: torch.Tensor, size: tuple[int, int],
                      sf: tuple[float, float]) -> torch.Tensor:
    """Correlate each channel with `kernel` (edges replicated), then keep the reference's subsampled rows/columns."""
    channels = image.shape[1]
    kh, kw = kernel.shape
    # "same" correlation: (k-1)//2 before, the rest after, as scipy.ndimage.correlate centres an even kernel
    padded = F.pad(image, ((kw - 1) // 2, kw // 2, (kh - 1) // 2, kh // 2), mode="replicate")
    weight = kernel.expand(channels, 1, kh, kw)  # depthwise: one copy of the kernel per channel
    blurred = F.conv2d(padded, weight, groups=channels)
    sx, sy = sf
    rows = _subsample_indices(image.shape[-2], size[0], sy, image.device)
    cols = _subsample_indices(image.shape[-1], size[1], sx, image.device)
    return blurred.index_select(-2, rows).index_select(-1, cols)


def _subsample_indices(length: int, out_length: int, scale: float, device: torch.device) -> torch.Tensor:
    # The reference's numeric_kernel: np.round(np.linspace(0, length - 1 / scale_factor, out_length)), where its
    # scale_factor is the downscale 1 / sf
    positions = np.round(np.linspace(0, length - scale, out_length)).astype(np.int64)
    return torch.from_numpy(np.clip(positions, 0, length - 1)).to(device)


def son_of(hr_father: torch.Tensor, sf: tuple[float, float], degradation: Degradation, noise_std: float = 0.0,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """lr_son, upscaled back to the father's size: up(clip(down(father) + noise)) -> [N,C,H,W] float32."""
    height, width = hr_father.shape[-2:]
    small = degradation.downscale(hr_father, son_size(height, width, sf), sf)
    if noise_std > 0:
        noise = torch.randn(small.shape, generator=generator, device=generator.device if generator else "cpu")
        small = (small + noise.to(small.device) * noise_std).clamp_(0.0, 1.0)
    if degradation.jpeg_quality:
        # As a camera does: noise first, then compression; the net learns to remove blocking, not enlarge it.
        small = jpeg_round_trip(small, degradation.jpeg_quality, degradation.jpeg_subsampling)
    return cubic_resize(small, (height, width))


def son_size(height: int, width: int, sf: tuple[float, float]) -> tuple[int, int]:
    """(H, W) of the lr_son of an hr_father of `height` x `width`: the reference's ceil(size / sf), at least 1."""
    sx, sy = sf
    return max(1, int(np.ceil(height / sy - 1e-9))), max(1, int(np.ceil(width / sx - 1e-9)))
