"""KernelGAN: estimate an image's own downscaling kernel with a small internal GAN.

Bell-Kligler, Shocher, Irani, "Blind Super-Resolution Kernel Estimation using an Internal-GAN" (NeurIPS 2019).
The low-resolution image's patches recur across its scales; the right downscaling kernel is the one that,
applied to the image, gives crops whose patch distribution cannot be told from the image's own. So:

- a generator G downscales 64x64 crops of the image by 2. G is a deep *linear* network (6 convolutions of
  sides 7, 5, 3, 1, 1, 1, 64 channels, no activations, no biases, the last layer strided): a single kernel,
  over-parametrised so that it trains well;
- a fully convolutional patch discriminator D (a 7x7 first layer, then 1x1 layers with batch norm and ReLU,
  spectral norm on every convolution, a sigmoid map) tells G's outputs from real crops of the image;
- the kernel regularisers pull G toward a plausible kernel: close to bicubic early on, sums to one, zero at its
  boundaries, centred, sparse. Their weights follow the published schedule (`RegularizerSchedule`);
- the explicit kernel is what G does to a delta. The x4 kernel is the x2 kernel convolved with itself
  dilated by 2 (the image downscaled by 2 twice).
- post-processing as the reference (negligible taps zeroed, centred), then, beyond it, the anisotropic Gaussian
  of the kernel's moments (`KernelGANConfig.fit_gaussian`).

Speed: G is linear, so G(x) equals one strided correlation of x with G's explicit kernel. Each step composes
that 13x13 kernel from the layers (a delta through G, about 30 M multiply-adds) and applies it to the crop,
instead of running 64-channel convolutions over the whole crop (about 1.3 G). The function and the gradients
are the same; `KernelGenerator.forward_layers` is the layer-by-layer form, kept to check that equality.

`DEFAULT_ITERS`: the published 3000 iterations were a GPU budget for the layer-by-layer generator; see the
note at the constant for the CPU figures behind the default.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image, ImageOps

from sr.degradations import center_kernel, kernel_center_of_mass
from sr.errors import Cancelled, InvalidInput
from sr.progress import Progress

log = logging.getLogger(__name__)

PUBLISHED_ITERS = 3000
# Fewer than the reference's steps: the kernel error stops falling once the regulariser schedule has run its course
# (the bicubic weight decays every 200 steps, the constraints join by step ~400-600); the step-count sweep that
# showed it (`bench/blind.py --parts kernel --kernel-sweep ...`) is in bench/RESULTS.md.
DEFAULT_ITERS = 600

SUPPORTED_SF = (2, 4)

# The x2 bicubic kernel the early "similar to bicubic" loss compares with: MATLAB's antialiased cubic at
# scale 1/2, 8 taps per axis at offsets +-0.25, +-0.75, +-1.25, +-1.75 (in low-resolution pixels).
_CUBIC_A = -0.5


@dataclass(frozen=True)
class KernelGANConfig:
    iters: int = DEFAULT_ITERS  # training steps (published: 3000)
    crop_size: int = 64  # side of G's input crop; D sees real crops of G's output side
    g_channels: int = 64  # hidden channels of the generator
    g_layer_sides: tuple[int, ...] = (7, 5, 3, 1, 1, 1)  # the generator's kernel sides: 13x13 in all
    d_channels: int = 64  # hidden channels of the discriminator
    d_layers: int = 7  # discriminator depth: the 7x7 layer, five 1x1 blocks, the 1x1 output
    d_kernel_side: int = 7  # the discriminator's receptive field (its first layer)
    g_learning_rate: float = 2e-4
    d_learning_rate: float = 2e-4
    beta1: float = 0.5  # Adam's first moment, as in the reference
    learning_rate_drop_every: int = 750  # both learning rates divided by 10 this often
    n_filtering: int = 40  # post-processing: taps below 0.75 x the (n+1)-th largest are zeroed
    # Post-processing beyond the reference: replace the (noisy, spiky) kernel by the anisotropic Gaussian with its
    # centre and second moments. ZSSR inverts the kernel, so the spikes' notches cost far more than the shape
    # detail they carry (bench/RESULTS.md, blind SR). False = the reference's kernel.
    fit_gaussian: bool = True

    @property
    def kernel_side(self) -> int:
        return sum(self.g_layer_sides) - len(self.g_layer_sides) + 1


# ---------------------------------------------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------------------------------------------

class KernelGenerator(nn.Module):
    """The deep linear generator: downscales every channel of [N,C,H,W] by 2 with one learnt kernel."""

    def __init__(self, config: KernelGANConfig):
        super().__init__()
        sides = config.g_layer_sides
        channels = [1] + [config.g_channels] * (len(sides) - 1) + [1]
        self.layers = nn.ModuleList(
            nn.Conv2d(channels[index], channels[index + 1], side, bias=False) for index, side in enumerate(sides))
        self.kernel_side = config.kernel_side
        self.stride = 2
        for layer in self.layers:
            nn.init.xavier_normal_(layer.weight, gain=0.1)

    def explicit_kernel(self) -> torch.Tensor:
        """The [side, side] correlation kernel G applies (differentiable in G's weights): G's response to a delta."""
        weight = self.layers[0].weight
        delta = torch.zeros(1, 1, 2 * self.kernel_side - 1, 2 * self.kernel_side - 1, dtype=weight.dtype,
                            device=weight.device)
        delta[..., self.kernel_side - 1, self.kernel_side - 1] = 1.0
        response = delta
        for layer in self.layers:
            response = F.conv2d(response, layer.weight)
        # A correlation with a delta gives the filter back mirrored: flip to get the correlation kernel.
        return response[0, 0].flip(0, 1)

    def forward(self, image: torch.Tensor, kernel: torch.Tensor | None = None) -> torch.Tensor:
        """G(image) as one strided correlation with the explicit kernel (pass it when already computed)."""
        kernel = self.explicit_kernel() if kernel is None else kernel
        planes = image.reshape(-1, 1, *image.shape[-2:])  # every channel is its own plane: [N*C,1,H,W]
        downscaled = F.conv2d(planes, kernel[None, None], stride=self.stride)
        return downscaled.reshape(*image.shape[:2], *downscaled.shape[-2:])

    def forward_layers(self, image: torch.Tensor) -> torch.Tensor:
        """G(image) layer by layer, the last layer strided, as the reference runs it (the same function)."""
        planes = image.reshape(-1, 1, *image.shape[-2:])
        for index, layer in enumerate(self.layers):
            stride = self.stride if index == len(self.layers) - 1 else 1
            planes = F.conv2d(planes, layer.weight, stride=stride)
        return planes.reshape(*image.shape[:2], *planes.shape[-2:])


class PatchDiscriminator(nn.Module):
    """A fully convolutional discriminator: a map of per-patch probabilities that its input is a real crop."""

    def __init__(self, config: KernelGANConfig, channels: int):
        super().__init__()
        spectral_norm = nn.utils.parametrizations.spectral_norm
        width = config.d_channels
        first = nn.Conv2d(channels, width, config.d_kernel_side, bias=True)
        blocks: list[nn.Module] = []
        hidden = [nn.Conv2d(width, width, 1, bias=True) for _ in range(config.d_layers - 2)]
        last = nn.Conv2d(width, 1, 1, bias=True)
        for conv in [first, *hidden, last]:
            nn.init.xavier_normal_(conv.weight, gain=0.1)
            nn.init.zeros_(conv.bias)
        for conv in hidden:
            norm = nn.BatchNorm2d(width)
            nn.init.normal_(norm.weight, 1.0, 0.02)
            nn.init.zeros_(norm.bias)
            blocks += [spectral_norm(conv), norm, nn.ReLU(inplace=True)]
        self.first_layer = spectral_norm(first)  # no activation after it: the patch features stay linear
        self.body = nn.Sequential(*blocks)
        self.final_layer = nn.Sequential(spectral_norm(last), nn.Sigmoid())
        self.shave = config.d_kernel_side - 1

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.final_layer(self.body(self.first_layer(image)))


# ---------------------------------------------------------------------------------------------------------------
# Losses on the kernel and on G's output
# ---------------------------------------------------------------------------------------------------------------

def cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB's imresize)."""
    x = np.abs(x)
    near = (1.5 * x**3 - 2.5 * x**2 + 1) * (x <= 1)
    far = (_CUBIC_A * x**3 - 5 * _CUBIC_A * x**2 + 8 * _CUBIC_A * x - 4 * _CUBIC_A) * ((x > 1) & (x <= 2))
    return near + far


def bicubic_x2_kernel() -> np.ndarray:
    """The 8x8 antialiased bicubic kernel for downscaling by 2 (sums to 1)."""
    taps = cubic((np.arange(8) - 3.5) / 2)
    taps = taps / taps.sum()
    return np.outer(taps, taps)


def boundary_penalty_mask(side: int, scale: float = 30.0) -> np.ndarray:
    """Weights that grow toward the kernel's edges and are zero on its central part.

    1 - a wide Gaussian (sigma = side) normalised to 1 at the centre, times `scale`; the inner square that
    leaves a margin of (side - ceil(side / 2)) // 2 - 1 taps is zeroed (the reference's mask).
    """
    offsets = np.arange(side) - (side - 1) / 2
    gaussian = np.exp(-offsets**2 / (2.0 * side**2))
    mask = 1.0 - np.outer(gaussian, gaussian)
    margin = (side - (side // 2 + side % 2)) // 2 - 1
    mask[margin:side - margin, margin:side - margin] = 0.0
    return scale * mask


@dataclass
class KernelLosses:
    """The regularisers, built once for a kernel side (tensors on the training device)."""
    bicubic_kernel: torch.Tensor  # [8, 8]
    boundary_mask: torch.Tensor  # [side, side]
    indices: torch.Tensor  # [side]: 0..side-1
    wanted_center: float  # the aligned centre of mass for x2

    @classmethod
    def build(cls, side: int, device: torch.device) -> "KernelLosses":
        return cls(bicubic_kernel=torch.tensor(bicubic_x2_kernel(), dtype=torch.float32, device=device),
                   boundary_mask=torch.tensor(boundary_penalty_mask(side), dtype=torch.float32, device=device),
                   indices=torch.arange(side, dtype=torch.float32, device=device),
                   wanted_center=(side - 1) / 2 + 0.5)

    def bicubic(self, g_input: torch.Tensor, g_output: torch.Tensor) -> torch.Tensor:
        """MSE between G's output and the bicubic x2 downscale of its input (centre-cropped to G's output)."""
        planes = g_input.reshape(-1, 1, *g_input.shape[-2:])
        reference = F.conv2d(planes, self.bicubic_kernel[None, None], stride=2, padding=3)
        reference = reference.reshape(*g_input.shape[:2], *reference.shape[-2:])
        return F.mse_loss(g_output, shave_to(reference, g_output.shape[-2:]))

    @staticmethod
    def sum_to_one(kernel: torch.Tensor) -> torch.Tensor:
        return (kernel.sum() - 1.0).abs()

    def boundaries(self, kernel: torch.Tensor) -> torch.Tensor:
        return (kernel * self.boundary_mask).abs().mean()

    def centralized(self, kernel: torch.Tensor) -> torch.Tensor:
        total = kernel.sum()
        center_row = kernel.sum(dim=1) @ self.indices / total
        center_col = kernel.sum(dim=0) @ self.indices / total
        return ((center_row - self.wanted_center) ** 2 + (center_col - self.wanted_center) ** 2) / 2

    @staticmethod
    def sparse(kernel: torch.Tensor) -> torch.Tensor:
        return kernel.abs().pow(0.2).mean()


def shave_to(tensor: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The centre of `tensor` [...,H,W] cut to `size` (an odd excess leaves the extra pixel at the bottom/right)."""
    top = (tensor.shape[-2] - size[0]) // 2
    left = (tensor.shape[-1] - size[1]) // 2
    return tensor[..., top:top + size[0], left:left + size[1]]


@dataclass
class RegularizerSchedule:
    """The regulariser weights and the published schedule that moves them.

    Until G's output is close to bicubic (bicubic loss below 0.4 on three consecutive steps) only the weights
    below hold. Then every 200 steps lambda_bicubic is divided by 100 (down to 5e-6); once it is under 5e-3 the
    centralised (1) and sparse (5) losses join.
    """
    bicubic: float = 5.0
    sum_to_one: float = 0.5
    boundaries: float = 0.5
    centralized: float = 0.0
    sparse: float = 0.0
    close_to_bicubic: bool = False
    close_steps: int = 0
    constraints_added: bool = False

    UPDATE_EVERY = 200
    CLOSE_TO_BICUBIC = 0.4
    BICUBIC_DECAY = 100.0
    BICUBIC_MIN = 5e-6
    ADD_CONSTRAINTS_BELOW = 5e-3
    CENTRALIZED_END = 1.0
    SPARSE_END = 5.0

    def update(self, step: int, bicubic_loss: float) -> None:
        """Called after training step `step` (1-based) with that step's bicubic loss."""
        if not self.close_to_bicubic:
            if bicubic_loss < self.CLOSE_TO_BICUBIC:
                self.close_steps += 1
                self.close_to_bicubic = self.close_steps >= 3
            else:
                self.close_steps = 0
        elif step % self.UPDATE_EVERY == 0 and self.bicubic > self.BICUBIC_MIN:
            self.bicubic = max(self.bicubic / self.BICUBIC_DECAY, self.BICUBIC_MIN)
            if not self.constraints_added and self.bicubic < self.ADD_CONSTRAINTS_BELOW:
                self.centralized, self.sparse = self.CENTRALIZED_END, self.SPARSE_END
                self.constraints_added = True


# ---------------------------------------------------------------------------------------------------------------
# Crops: where the image has structure (flat crops say nothing about the kernel)
# ---------------------------------------------------------------------------------------------------------------

def _box_filter(array: np.ndarray, side: int) -> np.ndarray:
    """Mean over a side x side window around every pixel ('same' size, zeros outside), via integral images."""
    before, after = (side - 1) // 2, side // 2
    padded = np.pad(array, ((before + 1, after), (before + 1, after)))
    integral = padded.cumsum(0).cumsum(1)
    total = (integral[side:, side:] - integral[:-side, side:] - integral[side:, :-side] + integral[:-side, :-side])
    return np.clip(total, 0.0, None) / (side * side)  # integral-image sums can come out a hair below zero


def _zero_border(array: np.ndarray, width: int) -> np.ndarray:
    result = np.zeros_like(array)
    if 2 * width < min(array.shape):
        result[width:array.shape[0] - width, width:array.shape[1] - width] = \
            array[width:array.shape[0] - width, width:array.shape[1] - width]
    return result


def gradient_map(gray: np.ndarray, window: int = 5, percent: float = 0.97) -> np.ndarray:
    """Where the strongest gradients are: the top 3 % of |dx|, |dy| and |grad|, box-blurred, mean 1."""
    grad_rows, grad_cols = np.gradient(gray)
    maps = []
    for component in (np.abs(grad_cols), np.abs(grad_rows), np.hypot(grad_rows, grad_cols)):
        component = _zero_border(component, window)
        ordered = np.sort(component, axis=None)
        low = ordered[int(percent * (ordered.size - 1))]
        high = ordered[min(int(percent * (ordered.size - 1)) + 1, ordered.size - 1)]
        high = high if high > low else low + 1e-5
        clipped = np.clip(component, low, high) - low
        maps.append(clipped / clipped.sum() if clipped.sum() > 0 else np.zeros_like(clipped))
    blurred = _box_filter(sum(maps), window)
    mean = blurred.mean()
    return blurred / mean if mean > 0 else np.ones_like(blurred)


def crop_probabilities(loss_map: np.ndarray, crop: int) -> np.ndarray:
    """A probability per crop centre: the map's mean over the crop, zero where the crop would leave the image."""
    blurred = _zero_border(_box_filter(loss_map, max(1, crop // 2)), crop // 2)
    total = blurred.sum()
    flat = blurred.ravel()
    return flat / total if total > 0 else np.full(flat.size, 1.0 / flat.size)


def crop_corners(probabilities: np.ndarray, shape: tuple[int, int], crop: int, count: int,
                 rng: np.random.Generator) -> np.ndarray:
    """`count` (top, left) corners of crop x crop windows, centres drawn from `probabilities`, even, in bounds."""
    centers = rng.choice(probabilities.size, size=count, p=probabilities)
    rows, cols = centers // shape[1], centers % shape[1]
    tops = np.clip(rows - crop // 2, 0, shape[0] - crop)
    lefts = np.clip(cols - crop // 2, 0, shape[1] - crop)
    # Even corners keep the crops on the grid of the downscaled map the G crops were chosen from.
    return np.stack([tops - tops % 2, lefts - lefts % 2], axis=1)


# ---------------------------------------------------------------------------------------------------------------
# Kernel post-processing and x4
# ---------------------------------------------------------------------------------------------------------------

def zero_negligible_taps(kernel: np.ndarray, n: int) -> np.ndarray:
    """Subtract 0.75 x the (n+1)-th largest tap, clip at zero, renormalise: removes G's low-level haze."""
    threshold = 0.75 * np.sort(kernel, axis=None)[-n - 1]
    kept = np.clip(kernel - threshold, 0.0, None)
    return kept / kept.sum()


def kernel_covariance(kernel: np.ndarray) -> np.ndarray:
    """The 2x2 covariance (row, col) of a kernel seen as a distribution around its centre of mass."""
    center_row, center_col = kernel_center_of_mass(kernel)
    rows, cols = np.meshgrid(np.arange(kernel.shape[0]) - center_row, np.arange(kernel.shape[1]) - center_col,
                             indexing="ij")
    total = kernel.sum()
    return np.array([[np.sum(kernel * rows * rows), np.sum(kernel * rows * cols)],
                     [np.sum(kernel * rows * cols), np.sum(kernel * cols * cols)]]) / total


# The widest grid a Gaussian is drawn on: sr.resize.degradation_for takes kernels of at most 64x64. A covariance
# wider than it fits (a standard deviation over about 8 px) is cut at the grid's edge; the width fit can try such
# factors of a wild estimate (KernelGAN after a few iterations), and must get a kernel it can use, not an error.
MAX_KERNEL_SIDE = 63


def gaussian_kernel(covariance: np.ndarray, sf: int, min_side: int = 1) -> np.ndarray:
    """The anisotropic Gaussian of `covariance`, drawn at the aligned centre for `sf` (no resampling blur), on an
    odd grid of at least +-3.5 standard deviations along its widest axis and at least `min_side`, at most
    MAX_KERNEL_SIDE."""
    covariance = covariance + np.eye(2) * 1e-3  # a delta-like kernel stays invertible
    radius = int(math.ceil(3.5 * math.sqrt(float(np.linalg.eigvalsh(covariance)[-1]))))
    # center_kernel pads the grid by its shift + 1 on each side: up to (sf - 1) / 2 for a Gaussian cut by its grid
    widest = MAX_KERNEL_SIDE - 2 * (math.ceil((sf - 1) / 2) + 1)
    side = min(max(min_side, 2 * radius + 3), widest)
    side += 1 - side % 2
    offsets = np.arange(side) - ((side - 1) / 2 + (sf - 1) / 2)
    rows, cols = np.meshgrid(offsets, offsets, indexing="ij")
    precision = np.linalg.inv(covariance)
    gaussian = np.exp(-0.5 * (precision[0, 0] * rows**2 + 2 * precision[0, 1] * rows * cols
                              + precision[1, 1] * cols**2))
    return center_kernel(gaussian / gaussian.sum(), sf)


def gaussian_of_moments(kernel: np.ndarray, sf: int) -> np.ndarray:
    """The anisotropic Gaussian with `kernel`'s second moments, centred for `sf`."""
    return gaussian_kernel(kernel_covariance(kernel), sf, min_side=kernel.shape[0])


def x4_kernel_from_x2(kernel_x2: np.ndarray) -> np.ndarray:
    """The x4 kernel: downscaling by 2 twice is one blur by k2 * (k2 dilated by 2), then a subsample by 4.

    The full result (3 side - 2) is cropped by side // 2 at every edge (its tails are negligible) and normalised.
    """
    side = kernel_x2.shape[0]
    big = np.zeros((3 * side - 2, 3 * side - 2))
    for row in range(side):
        for col in range(side):
            big[2 * row:2 * row + side, 2 * col:2 * col + side] += kernel_x2[row, col] * kernel_x2
    crop = side // 2
    cropped = big[crop:-crop, crop:-crop]
    return cropped / cropped.sum()


# ---------------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------------

def _to_planes(image: torch.Tensor | Image.Image) -> torch.Tensor:
    """[1,C,H,W] float in [0,1] from a tensor or a PIL image (EXIF orientation applied, alpha dropped)."""
    if isinstance(image, Image.Image):
        image = ImageOps.exif_transpose(image)
        grey = image.mode in ("1", "L", "LA", "I", "I;16", "F")
        array = np.asarray(image.convert("F" if grey and image.mode in ("I", "I;16", "F") else
                                         ("L" if grey else "RGB")), dtype=np.float32)
        scale = 65535.0 if image.mode in ("I", "I;16") else 255.0
        array = array / scale
        tensor = torch.from_numpy(array[None] if array.ndim == 2 else array.transpose(2, 0, 1).copy())
        return tensor[None].clamp(0, 1)
    if not torch.is_tensor(image) or image.ndim != 4 or image.shape[0] != 1:
        raise InvalidInput("kernel estimation needs a PIL image or a tensor [1,C,H,W] in [0,1]")
    return image.detach().float().cpu()


def _grey(planes: np.ndarray) -> np.ndarray:
    """[C,H,W] -> [H,W] luma (BT.601 weights) or the single channel."""
    if planes.shape[0] == 3:
        return np.tensordot(np.array([0.299, 0.587, 0.114]), planes, axes=1)
    return planes.mean(axis=0)


@dataclass
class _Crops:
    g_corners: np.ndarray  # [iters, 2]
    d_corners: np.ndarray  # [iters, 2]


def _plan_crops(image: np.ndarray, g_crop: int, d_crop: int, iters: int, rng: np.random.Generator) -> _Crops:
    """Crop corners for every step: D's real crops where the image has structure; G's where its x2 downscale does."""
    grey = _grey(image)
    d_probabilities = crop_probabilities(gradient_map(grey), d_crop)
    small = F.interpolate(torch.from_numpy(grey)[None, None], scale_factor=0.5, mode="bicubic",
                          antialias=True, align_corners=False)[0, 0].numpy()
    small_map = gradient_map(small).repeat(2, axis=0).repeat(2, axis=1)
    small_map = np.pad(small_map, ((0, grey.shape[0] - small_map.shape[0]), (0, grey.shape[1] - small_map.shape[1])))
    g_probabilities = crop_probabilities(small_map, g_crop)
    return _Crops(g_corners=crop_corners(g_probabilities, grey.shape, g_crop, iters, rng),
                  d_corners=crop_corners(d_probabilities, grey.shape, d_crop, iters, rng))


def _real_crop_noise(rng: np.random.Generator, channels: int, side: int, device: torch.device) -> torch.Tensor:
    """Gaussian noise of 1/255 (in [0,1] units, so 2/255 on the [-1,1] scale) for one real crop."""
    noise = rng.standard_normal((1, channels, side, side)) * 2.0 / 255.0
    return torch.from_numpy(noise).float().to(device)


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def estimate_kernel(image: torch.Tensor | Image.Image, sf: int = 2, *, iters: int = DEFAULT_ITERS,
                    seed: int | None = None, progress: Callable[[Progress], None] | None = None,
                    should_stop: Callable[[], bool] | None = None, device: str | None = None,
                    config: KernelGANConfig | None = None) -> np.ndarray:
    """The downscaling kernel of `image` for scale factor `sf` (2 or 4): a centred 2-D float64 array summing to 1.

    `image`: [1,C,H,W] in [0,1] (C = 1 or 3) or a PIL image, at least `crop_size` / 2 + 13 pixels a side.
    Deterministic for a given seed on the CPU. `progress` gets Progress(phase="kernel", ...) a few times per
    second; `should_stop()` is checked every step and raises sr.Cancelled.
    """
    if sf not in SUPPORTED_SF:
        raise InvalidInput(f"kernel estimation supports scale factors 2 and 4, got {sf}")
    config = replace(config or KernelGANConfig(), iters=iters)
    if config.iters < 1:
        raise InvalidInput(f"kernel estimation needs at least one iteration, got {config.iters}")
    planes = _to_planes(image)
    if planes.shape[1] not in (1, 3):
        raise InvalidInput(f"kernel estimation needs 1 or 3 colour channels, got {planes.shape[1]}")
    min_side = 2 * config.kernel_side + 2 * config.d_kernel_side
    if min(planes.shape[-2:]) < min_side:
        raise InvalidInput(f"kernel estimation needs an image at least {min_side} pixels a side")
    # Small images: the largest even crop that fits (the reference's 64 where it can).
    crop = min(config.crop_size, min(planes.shape[-2:]) // 2 * 2)
    config = replace(config, crop_size=crop)

    torch_seed = int(np.random.SeedSequence(seed).generate_state(1)[0]) if seed is not None else None
    with torch.random.fork_rng(devices=[]):
        if torch_seed is not None:
            torch.manual_seed(torch_seed)
        kernel_x2 = _train(planes, config, np.random.default_rng(seed), _resolve_device(device), progress,
                           should_stop)
    kernel = center_kernel(zero_negligible_taps(kernel_x2, config.n_filtering), sf=2)
    if config.fit_gaussian:
        kernel = gaussian_of_moments(kernel, sf=2)
    if sf == 4:
        kernel = x4_kernel_from_x2(kernel)
    return kernel


def _train(planes: torch.Tensor, config: KernelGANConfig, rng: np.random.Generator, device: torch.device,
           progress: Callable[[Progress], None] | None, should_stop: Callable[[], bool] | None) -> np.ndarray:
    """Train G against D on crops of the image; return G's explicit kernel (float64, before post-processing)."""
    channels = planes.shape[1]
    generator = KernelGenerator(config).to(device)
    discriminator = PatchDiscriminator(config, channels).to(device)
    losses = KernelLosses.build(config.kernel_side, device)
    schedule = RegularizerSchedule()
    g_optimizer = torch.optim.Adam(generator.parameters(), lr=config.g_learning_rate, betas=(config.beta1, 0.999))
    d_optimizer = torch.optim.Adam(discriminator.parameters(), lr=config.d_learning_rate,
                                   betas=(config.beta1, 0.999))

    image = planes[0].numpy().astype(np.float64)
    g_crop = config.crop_size
    d_crop = (g_crop - config.kernel_side) // 2 + 1  # G's output side: D compares like with like
    crops = _plan_crops(image, g_crop, d_crop, config.iters, rng)
    # The reference trains on [-1, 1] images; D's real crops carry a little noise, as G's outputs do below.
    signed = torch.from_numpy(image * 2.0 - 1.0).float().to(device)[None]  # [1,C,H,W]
    real_label = torch.ones(1, device=device)
    fake_label = torch.zeros(1, device=device)

    last_report = 0.0
    for step in range(1, config.iters + 1):
        if should_stop is not None and should_stop():
            raise Cancelled("kernel estimation was stopped")
        top, left = crops.g_corners[step - 1]
        g_input = signed[..., top:top + g_crop, left:left + g_crop]
        top, left = crops.d_corners[step - 1]
        d_input = signed[..., top:top + d_crop, left:left + d_crop] + _real_crop_noise(rng, channels, d_crop, device)

        # Generator step: fool D, and keep the kernel plausible.
        g_optimizer.zero_grad(set_to_none=True)
        kernel = generator.explicit_kernel()
        g_output = generator(g_input, kernel)
        d_on_fake = discriminator(g_output)
        bicubic_loss = losses.bicubic(g_input, g_output)
        g_loss = ((d_on_fake - real_label).abs().mean()
                  + schedule.bicubic * bicubic_loss
                  + schedule.sum_to_one * losses.sum_to_one(kernel)
                  + schedule.boundaries * losses.boundaries(kernel)
                  + schedule.centralized * losses.centralized(kernel)
                  + schedule.sparse * losses.sparse(kernel))
        g_loss.backward()
        g_optimizer.step()

        # Discriminator step: real crops -> 1, G's (updated) outputs plus a little noise -> 0.
        d_optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            fake = generator(g_input)
            fake = fake + torch.randn_like(fake) / 255.0
        d_loss = 0.5 * ((discriminator(fake) - fake_label).abs().mean()
                        + (discriminator(d_input) - real_label).abs().mean())
        d_loss.backward()
        d_optimizer.step()

        # This .item() is a host sync; the schedule needs the value every step (cheap on the CPU).
        schedule.update(step, float(bicubic_loss.item()))
        if step % 100 == 0 and log.isEnabledFor(logging.DEBUG):
            log.debug("KernelGAN step %d: D loss %.4f, G's GAN loss %.4f, bicubic loss %.4f (weight %.2g), "
                      "kernel sum %.4f", step, float(d_loss), float((d_on_fake - real_label).abs().mean()),
                      float(bicubic_loss), schedule.bicubic, float(kernel.sum()))
        if step % config.learning_rate_drop_every == 0:
            for optimizer in (g_optimizer, d_optimizer):
                for group in optimizer.param_groups:
                    group["lr"] /= 10.0

        now = time.monotonic()
        if progress is not None and (now - last_report >= 0.25 or step == config.iters):
            last_report = now
            progress(Progress(phase="kernel", step=step, total_steps=config.iters, loss=float(g_loss.item()),
                              learning_rate=g_optimizer.param_groups[0]["lr"]))

    with torch.no_grad():
        return generator.explicit_kernel().double().cpu().numpy()
