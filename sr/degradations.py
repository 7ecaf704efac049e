"""How real low-resolution images were made: blur kernels, JPEG compression and sensor noise.

Three families of helpers, used by blind ZSSR (sons made the way the input was made) and by the benchmark
(test images made with a known degradation):

- Blur kernels. `random_anisotropic_gaussian_kernel` follows the recipe that built the DIV2KRK benchmark
  (KernelGAN, Bell-Kligler et al. 2019; Shocher's BlindSR dataset generator): a Gaussian with a random
  orientation and random covariance eigenvalues in [0.175 sf, 2.5 sf], multiplied by uniform noise, centred
  and normalised. `degrade_with_kernel` correlates with a kernel and subsamples by an integer `sf`.
- JPEG. `jpeg_settings` reads the quality an image was saved at from its quantisation tables (the IJG
  scaling, inverted by matching against the tables Pillow's encoder writes for every quality);
  `jpeg_round_trip` compresses a batch of son tensors at a quality and decodes them again.
- Noise. `estimate_noise_std` estimates the standard deviation of white Gaussian noise in an image
  (Immerkaer's Laplacian-difference operator with a median instead of a mean, so that edges and texture
  bias it less).

The kernel convention (shared with the ZSSR sons): a kernel of odd side k has its origin at index (k - 1) / 2;
the low-resolution pixel j is the kernel-weighted sum of the high-resolution pixels around sf * j. A kernel
whose centre of mass sits at (k - 1) / 2 + (sf - 1) / 2 therefore centres the low-resolution pixel j on the
middle of the sf x sf block it comes from, which is where bicubic downscaling puts it too, so that a cubic
upscale of the result lines up with the original.
"""
from __future__ import annotations

import functools
import io
import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, JpegImagePlugin

from sr.errors import InvalidInput

log = logging.getLogger(__name__)

# DIV2KRK's recipe: covariance eigenvalues uniform in [0.175 sf, 2.5 sf] (0.35..5 at x2, 0.7..10 at x4),
# multiplicative noise uniform in [1 - 0.4, 1 + 0.4] on every kernel tap.
KERNEL_MIN_VARIANCE_PER_SF = 0.175
KERNEL_MAX_VARIANCE_PER_SF = 2.5
KERNEL_NOISE_LEVEL = 0.4
# Kernel sides as the DIV2KRK files have them: 11 x 11 at x2, 31 x 31 at x4 (room for the widest Gaussian).
KERNEL_SIZE_FOR_SF = {2: 11, 4: 31}


# ---------------------------------------------------------------------------------------------------------------
# Blur kernels
# ---------------------------------------------------------------------------------------------------------------

def default_kernel_size(sf: int) -> int:
    """The DIV2KRK kernel side for x2 and x4; other integer factors get an odd side with the same room."""
    return KERNEL_SIZE_FOR_SF.get(sf, 2 * math.ceil(4 * math.sqrt(KERNEL_MAX_VARIANCE_PER_SF * sf)) + 1)


def random_anisotropic_gaussian_kernel(sf: int, rng: np.random.Generator, size: int | None = None,
                                       noise_level: float = KERNEL_NOISE_LEVEL) -> np.ndarray:
    """A DIV2KRK-style random blur kernel for downscaling by the integer `sf`: float64, sums to 1, centred."""
    size = default_kernel_size(sf) if size is None else size
    if size % 2 == 0:
        raise InvalidInput(f"a kernel side must be odd, got {size}")
    lambda_1, lambda_2 = rng.uniform(KERNEL_MIN_VARIANCE_PER_SF * sf, KERNEL_MAX_VARIANCE_PER_SF * sf, size=2)
    theta = rng.uniform(0.0, np.pi)
    rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    covariance = rotation @ np.diag([lambda_1, lambda_2]) @ rotation.T
    precision = np.linalg.inv(covariance)
    noise = rng.uniform(-noise_level, noise_level, size=(size, size))

    # The mean is put at the aligned centre already; the noise moves the centre of mass a little, so re-centre.
    mean = (size - 1) / 2 + (sf - 1) / 2
    rows, cols = np.meshgrid(np.arange(size) - mean, np.arange(size) - mean, indexing="ij")
    offsets = np.stack([cols, rows], axis=-1)  # [size, size, 2] as (x, y)
    mahalanobis = np.einsum("...i,ij,...j->...", offsets, precision, offsets)
    raw = np.exp(-0.5 * mahalanobis) * (1.0 + noise)
    return center_kernel(raw / raw.sum(), sf)


def kernel_center_of_mass(kernel: np.ndarray) -> tuple[float, float]:
    """(row, col) of the kernel's centre of mass, in index units."""
    total = kernel.sum()
    rows = np.arange(kernel.shape[0]) @ kernel.sum(axis=1) / total
    cols = np.arange(kernel.shape[1]) @ kernel.sum(axis=0) / total
    return float(rows), float(cols)


def aligned_center(size: int, sf: int) -> float:
    """Where the centre of mass of an odd-sided kernel for `sf` must be for the low-resolution grid to line up."""
    return (size - 1) / 2 + (sf - 1) / 2


def center_kernel(kernel: np.ndarray, sf: int) -> np.ndarray:
    """The kernel moved (sub-pixel, bilinear) so that its centre of mass is at the aligned centre for `sf`.

    The kernel is padded first so that nothing falls off its edge; the side stays odd. A shifted kernel only
    shifts the image, which no estimator can see, so every kernel is put in this one canonical place.
    """
    kernel = as_odd_kernel(np.asarray(kernel, dtype=np.float64))
    size = kernel.shape[0]
    center_row, center_col = kernel_center_of_mass(kernel)
    wanted = aligned_center(size, sf)
    shift_row, shift_col = wanted - center_row, wanted - center_col
    pad = int(math.ceil(max(abs(shift_row), abs(shift_col)))) + 1
    padded = np.pad(kernel, pad)
    shifted = _shift_bilinear(_shift_bilinear(padded, shift_row, axis=0), shift_col, axis=1)
    shifted = np.clip(shifted, 0.0, None)
    return shifted / shifted.sum()


def _shift_bilinear(array: np.ndarray, shift: float, axis: int) -> np.ndarray:
    """`array` moved by `shift` (may be fractional) along `axis`, zeros shifted in."""
    whole = math.floor(shift)
    fraction = shift - whole
    moved = _shift_whole(array, whole, axis)
    if fraction == 0.0:
        return moved
    return (1.0 - fraction) * moved + fraction * _shift_whole(array, whole + 1, axis)


def _shift_whole(array: np.ndarray, shift: int, axis: int) -> np.ndarray:
    result = np.zeros_like(array)
    length = array.shape[axis]
    if abs(shift) >= length:
        return result
    source = [slice(None)] * array.ndim
    target = [slice(None)] * array.ndim
    source[axis] = slice(max(0, -shift), length - max(0, shift))
    target[axis] = slice(max(0, shift), length - max(0, -shift))
    result[tuple(target)] = array[tuple(source)]
    return result


def as_odd_kernel(kernel: np.ndarray) -> np.ndarray:
    """A square kernel with odd sides; an even side gets a zero row/column in front (its origin stays put)."""
    if kernel.ndim != 2:
        raise InvalidInput(f"a blur kernel must be a 2-D array, got {kernel.ndim} dimensions")
    rows, cols = kernel.shape
    side = max(rows, cols)
    side += 1 - side % 2
    top, left = (side - rows + 1) // 2, (side - cols + 1) // 2
    return np.pad(kernel, ((top, side - rows - top), (left, side - cols - left)))


def pad_kernel_to(kernel: np.ndarray, side: int) -> np.ndarray:
    """An odd kernel zero-padded symmetrically to `side` (odd, >= its own side): the origin stays in the middle."""
    margin = (side - kernel.shape[0]) // 2
    return np.pad(kernel, margin)


def kernel_mse(estimated: np.ndarray, true: np.ndarray) -> float:
    """Mean squared difference of two centred odd kernels, both zero-padded to the larger side."""
    side = max(estimated.shape[0], true.shape[0])
    return float(np.mean((pad_kernel_to(estimated, side) - pad_kernel_to(true, side)) ** 2))


def degrade_with_kernel(image: torch.Tensor, kernel: np.ndarray | torch.Tensor, sf: int) -> torch.Tensor:
    """Correlate every channel of `image` [N,C,H,W] with `kernel` and keep every `sf`-th pixel from (0, 0).

    Edges are reflected. The result is [N, C, ceil(H / sf), ceil(W / sf)] on the image's device and dtype.
    """
    if image.ndim != 4:
        raise InvalidInput(f"an image batch must be [N,C,H,W], got shape {tuple(image.shape)}")
    if int(sf) != sf or sf < 1:
        raise InvalidInput(f"a kernel degradation needs an integer scale factor, got {sf}")
    kernel_np = as_odd_kernel(np.asarray(kernel.detach().cpu() if torch.is_tensor(kernel) else kernel,
                                         dtype=np.float64))
    channels = image.shape[1]
    weight = torch.as_tensor(kernel_np, dtype=image.dtype, device=image.device)
    weight = weight.expand(channels, 1, *kernel_np.shape)  # one copy per channel: groups=C below
    radius = kernel_np.shape[0] // 2
    mode = "reflect" if min(image.shape[-2:]) > radius else "replicate"
    padded = F.pad(image, (radius, radius, radius, radius), mode=mode)
    return F.conv2d(padded, weight, stride=int(sf), groups=channels)


# ---------------------------------------------------------------------------------------------------------------
# JPEG
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class JpegSettings:
    quality: int  # 1..100 on the IJG scale, the table set closest to the file's
    subsampling: int  # Pillow's code: 0 = 4:4:4, 1 = 4:2:2, 2 = 4:2:0, -1 unknown
    table_error: float  # mean absolute difference between the file's tables and the IJG ones at `quality`


def jpeg_settings(image: Image.Image) -> JpegSettings | None:
    """The quality and chroma subsampling a JPEG was saved with, from its quantisation tables; None if not a JPEG.

    Encoders that follow the IJG scaling (libjpeg, Pillow, most cameras' software) write
    table = clamp((base * s + 50) // 100, 1, 255) with s = 5000 / q below 50 and 200 - 2 q above; the quality
    whose tables are nearest to the file's is the estimate. A file with custom tables gets the nearest
    quality and a non-zero `table_error`.
    """
    tables = getattr(image, "quantization", None)
    if image.format != "JPEG" or not tables:
        return None
    file_tables = [np.asarray(tables[index], dtype=np.float64) for index in sorted(tables)[:2]]
    errors = []
    for quality, reference in enumerate(_ijg_tables(), start=1):
        compared = [np.abs(file_table - reference[min(index, len(reference) - 1)]).mean()
                    for index, file_table in enumerate(file_tables)]
        errors.append(float(np.mean(compared)))
    best = int(np.argmin(errors))
    try:
        subsampling = JpegImagePlugin.get_sampling(image)
    except Exception:  # an odd file: the quality is what matters, the subsampling falls back to Pillow's default
        subsampling = -1
    return JpegSettings(quality=best + 1, subsampling=subsampling, table_error=errors[best])


@functools.cache
def _ijg_tables() -> tuple[tuple[np.ndarray, ...], ...]:
    """The (luma, chroma) quantisation tables Pillow's encoder writes at every quality 1..100, in file order."""
    probe = Image.new("RGB", (8, 8), (128, 128, 128))
    result = []
    for quality in range(1, 101):
        buffer = io.BytesIO()
        probe.save(buffer, format="JPEG", quality=quality)
        buffer.seek(0)
        with Image.open(buffer) as decoded:
            tables = decoded.quantization
            result.append(tuple(np.asarray(tables[index], dtype=np.float64) for index in sorted(tables)))
    return tuple(result)


def jpeg_round_trip(batch: torch.Tensor, quality: int, subsampling: int = -1) -> torch.Tensor:
    """Every image of `batch` [N,C,H,W] in [0,1] (C = 1 or 3) JPEG-encoded at `quality` and decoded again.

    Runs on the CPU through Pillow (cheap on training crops); the result has the batch's device and dtype.
    """
    if not 1 <= quality <= 100:
        raise InvalidInput(f"a JPEG quality must be in 1..100, got {quality}")
    channels = batch.shape[1]
    if channels not in (1, 3):
        raise InvalidInput(f"JPEG compression needs 1 or 3 channels, got {channels}")
    pixels = (batch.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    decoded = [_jpeg_round_trip_one(one, quality, subsampling) for one in pixels]
    stacked = torch.from_numpy(np.stack(decoded)).permute(0, 3, 1, 2)  # [N,H,W,C] -> [N,C,H,W]
    return stacked.to(device=batch.device, dtype=batch.dtype) / 255.0


def _jpeg_round_trip_one(pixels: np.ndarray, quality: int, subsampling: int) -> np.ndarray:
    image = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=int(quality), subsampling=subsampling)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        array = np.asarray(decoded)
    return array[..., None] if array.ndim == 2 else array


# ---------------------------------------------------------------------------------------------------------------
# Noise
# ---------------------------------------------------------------------------------------------------------------

# Immerkaer (1996): this mask is the difference of two Laplacians; it cancels locally linear image structure,
# and white noise of standard deviation s comes out of it with standard deviation 6 s (its L2 norm is 6).
_IMMERKAER_MASK = torch.tensor([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]])
_MAD_TO_STD = 1.4826  # the median absolute value of N(0, s) is s / 1.4826


def estimate_noise_std(image: torch.Tensor) -> float:
    """The standard deviation of additive white Gaussian noise in `image` [1,C,H,W] (same units as the image).

    Each channel's Immerkaer residual is summarised by its median absolute value (robust to the edges and
    texture that leak through the mask); the channels' estimates are averaged.
    """
    if image.ndim != 4 or min(image.shape[-2:]) < 3:
        raise InvalidInput("noise estimation needs an image [1,C,H,W] at least 3 pixels a side")
    planes = image.detach().float().cpu().reshape(-1, 1, *image.shape[-2:])  # every channel its own plane
    residual = F.conv2d(planes, _IMMERKAER_MASK.view(1, 1, 3, 3)) / 6.0
    per_channel = residual.abs().flatten(1).median(dim=1).values * _MAD_TO_STD
    return float(per_channel.mean())
