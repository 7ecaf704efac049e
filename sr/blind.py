"""Blind and real-world ZSSR: make the lr_sons the way the input itself was made.

`upscale` calls `blind_setup` once per image, before training:
- kernel: "bicubic" (the reference's assumption), a 2-D array (an expert's kernel), or "estimate". The estimate
  (`estimate_kernel`; result.info["sr"]["kernel_estimator"] says which ran) comes from the learnt kernel prior
  (sr/kernelprior.py: a small CNN trained on synthetic blurs of photos no benchmark scores, an anisotropic Gaussian
  read off the input in one pass; x2 and x4 ship) narrowed to the widest scaling of itself that can explain the
  input (`fit_kernel`), else from KernelGAN on the image itself (sr/kernelgan.py, x2 or x4) fitted by an
  anisotropic Gaussian, then turned and scaled to the widest blur that can explain the input. A held-out check
  can keep the bicubic assumption instead, and so does an input too noisy for an estimate (ESTIMATE_NOISE_LIMIT).
  The sons are then made by correlating with the kernel and subsampling; a non-symmetric kernel turns rotations
  and the self-ensemble off (the core does that).
- The sampling convention, for estimated and given kernels alike (the reference ZSSR's numeric kernels): the son
  is the father correlated with the kernel (an odd side k has its origin at index (k - 1) / 2), then every sf-th
  pixel from (0, 0) is kept. An estimated kernel is centred for sf: its centre of mass sits at (k - 1) / 2 +
  (sf - 1) / 2, which puts each low-resolution pixel at the middle of its sf x sf block, as bicubic downscaling does
  (sr/degradations.py). A kernel given as an array is used exactly as given: one whose centre of mass sits
  elsewhere (say at (k - 1) / 2, a Gaussian drawn at the grid's centre) describes an input sampled at another
  phase, and ZSSR's output is shifted by as much as the kernel is.
- JPEG: with config.son_jpeg_quality = -1 (auto, the default) a JPEG input's quality is read from its
  quantisation tables and every son is JPEG-compressed at that quality (and the input's chroma subsampling), so
  the net learns to remove blocking instead of enlarging it; back-projection is then off (it would put the
  input's blocks back). 0 turns it off, 1..100 forces a quality.
- noise: denoise="auto" sets noise_std to the noise estimated in the image (sr.degradations.estimate_noise_std);
  "off" keeps the config's noise_std.
What was decided goes into result.info["sr"] (kernel as a small list of lists, its source and estimator, the son
JPEG quality, the noise_std).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from sr import kernelgan, kernelprior
from sr.config import KERNEL_ESTIMATORS, ZSSRConfig
from sr.degradations import center_kernel, estimate_noise_std, jpeg_settings
from sr.errors import InvalidInput
from sr.progress import Progress
from sr.resize import Degradation, cubic_resize, degradation_for

log = logging.getLogger(__name__)

DENOISE_MODES = ("off", "auto")
KERNEL_DECIMALS = 6  # the kernel in result.info: enough to rebuild it, small enough for a job record


@dataclass(frozen=True)
class BlindSetup:
    degradation: Degradation
    config: ZSSRConfig  # noise_std possibly set by denoise="auto"
    info: dict[str, Any]


def blind_setup(image: Image.Image, color: torch.Tensor, sf: tuple[float, float], kernel: str | np.ndarray,
                config: ZSSRConfig, *, denoise: str = "off", seed: int | None = None, device: torch.device | None = None,
                progress: Callable[[Progress], None] | None = None,
                should_stop: Callable[[], bool] | None = None) -> BlindSetup:
    """The degradation the sons are made with, and the config to train with, for `image` (colour tensor `color`)."""
    if denoise not in DENOISE_MODES:
        raise InvalidInput(f"unknown denoise {denoise!r}; expected 'off' or 'auto'")
    info: dict[str, Any] = {}
    if denoise == "auto":  # first: the kernel fit below allows for the input's noise (its noise_floor)
        noise_std = estimate_noise_std(color)
        config = dataclasses.replace(config, noise_std=round(noise_std, 5))
        log.info("denoise=auto: noise_std %.4f estimated from the image", noise_std)
    if isinstance(kernel, str) and kernel == "estimate":
        estimate = estimate_kernel(color, sf, config, seed=seed, device=device, progress=progress,
                                   should_stop=should_stop, estimator=config.kernel_estimator)
        info["kernel_source"] = "estimate"
        info.update(estimate.info)
        degradation = degradation_for("bicubic" if estimate.kernel is None else estimate.kernel)
    else:
        degradation = degradation_for(kernel)
        info["kernel_source"] = "bicubic" if isinstance(kernel, str) else "given"
    if degradation.kernel is not None:
        info["kernel"] = np.round(degradation.kernel.double().numpy(), KERNEL_DECIMALS).tolist()

    quality, subsampling = son_jpeg_quality(image, config)
    info["son_jpeg_quality"] = quality
    degradation = dataclasses.replace(degradation, jpeg_quality=quality, jpeg_subsampling=subsampling)
    if quality:
        # Back-projection makes down(output) equal the input, and a compressed input's blocks with it: it undoes
        # what the JPEG-aware net learnt (without it: no grid; with it: blocking; bench/RESULTS.md, blind SR).
        config = dataclasses.replace(config, back_projection_iters=(0,))

    info["noise_std"] = config.noise_std
    return BlindSetup(degradation, config, info)


def son_jpeg_quality(image: Image.Image, config: ZSSRConfig) -> tuple[int, int]:
    """(quality, subsampling) to JPEG-compress the sons with: 0 = no compression (see son_jpeg_quality)."""
    if config.son_jpeg_quality == 0:
        return 0, -1
    settings = jpeg_settings(image)
    subsampling = settings.subsampling if settings else -1
    if config.son_jpeg_quality > 0:
        return config.son_jpeg_quality, subsampling
    if settings is None:
        return 0, -1
    log.info("JPEG input: quality %d estimated from its tables (mean table error %.2f); sons compressed alike",
             settings.quality, settings.table_error)
    return settings.quality, subsampling


@dataclass(frozen=True)
class KernelEstimate:
    # centred for sf (sr.degradations' convention), sums to 1; None: the held-out check (or the noise check) kept the
    # bicubic assumption
    kernel: np.ndarray | None
    info: dict[str, Any]  # kernel_estimator ("prior" or "kernelgan"), kernel_estimation_seconds, and its details


# Above this much noise in the input (estimate_noise_std, per scale; 8-bit levels / 255) kernel="estimate" keeps the
# bicubic assumption without estimating: ZSSR trained on sons blurred by a kernel wider than bicubic learns to
# sharpen, and sharpens the noise with it. Measured at x2 on bench/blind.py's design images with noise added and
# denoise="auto": 2 levels cost chelsea 4.67 dB against the bicubic assumption (the other three gained 0.35-1.43),
# 3 levels cost chelsea 4.82 and astronaut and camera 0.3, 4 levels 1.4-5.9 dB on all four; the clean design inputs
# measure 0.25-1.24 levels (bench/RESULTS.md, blind SR, noisy inputs). x4 has no limit: its clean inputs already
# measure up to 14 levels (textures), and on 10 noisy x4 cases the estimate lost at most 0.38 dB.
ESTIMATE_NOISE_LIMIT = {2: 2.0 / 255}


# The prior's guess is narrowed (never widened) to the widest scaling of its own shape whose kernel explains the
# input to this many times the noise floor: the KernelGAN fit's limit, KERNEL_FIT_RESIDUAL. Chosen on bench/blind.py's
# design images (x2, 128 px: mean share of the gap 86% against 61% with fixed factors; bench/RESULTS.md, blind SR).
PRIOR_WIDTH_LIMIT = 1.0


def estimate_kernel(color: torch.Tensor, sf: tuple[float, float], config: ZSSRConfig, *, seed: int | None = None,
                    device: torch.device | None = None, progress: Callable[[Progress], None] | None = None,
                    should_stop: Callable[[], bool] | None = None, estimator: str = "auto") -> KernelEstimate:
    """The kernel="estimate" kernel for `color` [1,C,H,W] at x2 or x4 (the same on both axes).

    estimator "auto": the learnt kernel prior (sr/kernelprior.py) where its weights for the scale ship with the
    package and the input is big enough for it, otherwise KernelGAN with the width fit (`kernelgan_estimate`);
    "prior" or "kernelgan" force one."""
    if sf[0] != sf[1] or sf[0] not in kernelgan.SUPPORTED_SF:
        raise InvalidInput(f"kernel estimation works at x2 or x4 (the same on both axes), got {sf[0]:g}x{sf[1]:g}")
    if estimator not in KERNEL_ESTIMATORS:
        raise InvalidInput(f"unknown kernel estimator {estimator!r}; "
                           f"expected one of {', '.join(KERNEL_ESTIMATORS)}")
    scale = int(sf[0])
    started = time.monotonic()
    use_prior = estimator == "prior" or (estimator == "auto" and scale in kernelprior.available_scales()
                                         and min(color.shape[-2:]) >= kernelprior.MIN_INPUT_SIDE)
    noise_check = too_noisy_to_estimate(color, scale)
    if noise_check is not None:
        log.info("%.1f levels of noise in the input, over the limit of %.1f: kept the bicubic assumption without "
                 "estimating", noise_check["noise"], noise_check["limit"])
        return KernelEstimate(None, {"kernel_estimator": "prior" if use_prior else "kernelgan",
                                     "kernel_check": noise_check,
                                     "kernel_estimation_seconds": round(time.monotonic() - started, 3)})
    if use_prior:
        covariance = kernelprior.estimate_covariance(color, scale)
        kernel = kernelprior.kernel_from_covariance(covariance, scale)
        fit = fit_kernel(color, kernel, scale, noise_floor=config.noise_std, other_shapes=False,
                         max_log2_factor=0.0, residual_limit=PRIOR_WIDTH_LIMIT)
        kernel, covariance = fit.kernel, covariance * fit.factor
        info: dict[str, Any] = {"kernel_estimator": "prior", "kernel_factor": fit.factor, "kernel_shape": fit.shape,
                                "kernel_covariance": np.round(covariance, 4).tolist()}  # row, col; HR pixels
        log.info("estimated kernel (kernel prior): covariance %s HR px^2", info["kernel_covariance"])
        check = held_out_check(color, scale, prior_held_out_measure)
        if check is not None:
            info["kernel_check"] = check
            if check["kept"] == "bicubic":
                # sr's own cubic downscaling, exactly as kernel="bicubic": the bicubic kernel as an array is not the
                # same degradation (at x4 it is wider, and chelsea lost 2.2 dB to the bicubic assumption with it)
                kernel = None
                log.info("the bicubic kernel explains the held-out half better than the estimate: kept the bicubic "
                         "assumption")
    else:
        kernel, info = kernelgan_estimate(color, sf, config, seed=seed, device=device, progress=progress,
                                          should_stop=should_stop)
    info["kernel_estimation_seconds"] = round(time.monotonic() - started, 3)
    return KernelEstimate(kernel, info)


def too_noisy_to_estimate(color: torch.Tensor, scale: int) -> dict[str, Any] | None:
    """The noise check's record ({"measure", "noise", "limit" in 8-bit levels, "kept": "bicubic"}) when the input is
    noisier than ESTIMATE_NOISE_LIMIT allows at this scale; None when an estimate may be tried."""
    limit = ESTIMATE_NOISE_LIMIT.get(scale)
    if limit is None:
        return None
    noise = estimate_noise_std(color)
    if noise <= limit:
        return None
    return {"measure": "noise in the input, 8-bit levels", "noise": round(noise * 255, 2),
            "limit": round(limit * 255, 2), "kept": "bicubic"}


def kernelgan_estimate(color: torch.Tensor, sf: tuple[float, float], config: ZSSRConfig, *, seed: int | None,
                       device: torch.device | None, progress: Callable[[Progress], None] | None,
                       should_stop: Callable[[], bool] | None) -> tuple[np.ndarray, dict[str, Any]]:
    """KernelGAN's kernel for the scale, fitted by an anisotropic Gaussian and then by `fit_kernel`."""
    array = estimate_for_scale(color, sf, config, seed=seed, device=device, progress=progress,
                               should_stop=should_stop)
    fitting = time.monotonic()
    fit = fit_kernel(color, array, int(sf[0]), noise_floor=config.noise_std)
    return fit.kernel, {"kernel_estimator": "kernelgan",
                        "kernel_factor": fit.factor,  # the covariance factor applied: below 1 narrowed, above widened
                        "kernel_shape": fit.shape,  # "estimate", "turned 45" / "90" / "135" (degrees), "isotropic"
                        "kernel_fit_seconds": round(time.monotonic() - fitting, 3)}


def estimate_for_scale(color: torch.Tensor, sf: tuple[float, float], config: ZSSRConfig, *, seed: int | None,
                       device: torch.device | None, progress: Callable[[Progress], None] | None,
                       should_stop: Callable[[], bool] | None) -> np.ndarray:
    """KernelGAN's kernel for the target scale (x2 or x4, the same on both axes)."""
    if sf[0] != sf[1] or sf[0] not in kernelgan.SUPPORTED_SF:
        raise InvalidInput(f"kernel estimation works at x2 or x4 (the same on both axes), got {sf[0]:g}x{sf[1]:g}")

    def report(update: Progress) -> None:
        # The service knows the phases "training" and "inference": kernel estimation is reported as the start of
        # training (step 0) so that a job shows life without a phase its clients do not know.
        if progress is not None:
            progress(Progress("training", 0, config.max_iters, None, None))

    return kernelgan.estimate_kernel(color, int(sf[0]), iters=config.kernel_estimation_iters, seed=seed,
                                     progress=report, should_stop=should_stop,
                                     device=str(device) if device is not None else None)


# --- does the estimate beat the bicubic assumption on data it did not see? -------------------------------------
# The input is cut in two halves along its longer side. Each candidate kernel is judged on the half it was not
# estimated from by a held-out measure (lower is better): `prior_held_out_measure` is the log-Euclidean distance
# between the candidate's covariance and the kernel prior's own reading of that half (the covariance of a kernel
# that is not a Gaussian, such as bicubic, is its second moments). The estimate from half A competes with the
# bicubic kernel on half B and the other way round; the estimate (from the whole input) is kept unless the bicubic
# kernel does better on the mean of the two. A measure built on ZSSR's own held-out error (the self-check) has the
# same signature: `measure(half, sf, kernel) -> float`, lower is better.
HELD_OUT_MIN_SIDE = 32  # both halves at least this big (LR pixels), or no check is made


def bicubic_kernel(sf: int) -> np.ndarray:
    """The kernel plain ZSSR assumes, as an array: the antialiased cubic for x2, composed twice for x4."""
    kernel = center_kernel(kernelgan.bicubic_x2_kernel(), 2)
    return kernel if sf == 2 else kernelgan.x4_kernel_from_x2(kernel)


def log_euclidean_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||log(a) - log(b)||_F for 2x2 SPD matrices: errors in width count relative to the width."""
    difference = kernelprior.log_covariance(a) - kernelprior.log_covariance(b)
    return float(math.sqrt(difference[0] ** 2 + 2 * difference[1] ** 2 + difference[2] ** 2))


def prior_held_out_measure(half: torch.Tensor, sf: int, kernel: np.ndarray) -> float:
    covariance = kernelgan.kernel_covariance(kernel)
    values, vectors = np.linalg.eigh(covariance)
    covariance = vectors @ np.diag(np.clip(values, 1e-3, None)) @ vectors.T
    return log_euclidean_distance(covariance, kernelprior.estimate_covariance(half, sf))


def halves(color: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    height, width = color.shape[-2:]
    if height >= width:
        first, second = color[..., :height // 2, :], color[..., height // 2:, :]
    else:
        first, second = color[..., :width // 2], color[..., width // 2:]
    if min(*first.shape[-2:], *second.shape[-2:]) < HELD_OUT_MIN_SIDE:
        return None
    return first, second


def held_out_check(color: torch.Tensor, sf: int,
                   measure: Callable[[torch.Tensor, int, np.ndarray], float]) -> dict[str, Any] | None:
    """{"estimate": mean held-out score of the halves' estimates, "bicubic": the bicubic kernel's, "kept": the
    better}; None when the input is too small to cut in two."""
    parts = halves(color)
    if parts is None:
        return None
    bicubic = bicubic_kernel(sf)
    estimate_scores, bicubic_scores = [], []
    for seen, held_out in (parts, parts[::-1]):
        estimate = kernelprior.kernel_from_covariance(kernelprior.estimate_covariance(seen, sf), sf)
        estimate_scores.append(measure(held_out, sf, estimate))
        bicubic_scores.append(measure(held_out, sf, bicubic))
    estimate_score, bicubic_score = float(np.mean(estimate_scores)), float(np.mean(bicubic_scores))
    return {"measure": "kernel prior on the held-out half", "estimate": round(estimate_score, 4),
            "bicubic": round(bicubic_score, 4), "kept": "estimate" if estimate_score <= bicubic_score else "bicubic"}


# --- how wide a kernel can the input take? ---------------------------------------------------------------------
# KernelGAN's width and orientation are unreliable: it over-estimates the blur of images that were soft to begin
# with (it sees the photo's own softness as kernel; chelsea's narrow axis came out 2x too wide), under-estimates
# wide blurs (camera) and can put the long axis across the true one (coffee). ZSSR with a kernel too wide inverts a
# blur the image never had: over-sharpening that costs far more than a kernel too narrow (bench/RESULTS.md, blind
# SR, the kernel fit). Patch statistics
# cannot tell a soft photo from a wide kernel (the cross-scale patch-recurrence score and the gradients' L1/L2 of
# the deconvolved image both preferred every widening on the bench's tuned-on images). What can: a kernel too
# wide, or wide across the image's sharp edges, cannot explain the input. Back-projection from the cubic upsample,
# kept in [0, 1], leaves a residual that grows with the kernel's width and with the image's contrast across it.
# So the candidates are Gaussians of the estimate's covariance, turned by 0/45/90/135 degrees or made isotropic
# (the same determinant), each scaled by 2^-4 .. 2; the kernel used is the WIDEST (largest determinant, the first
# shape on ties) whose residual after CONSISTENCY_ITERS steps is within KERNEL_FIT_RESIDUAL times the noise floor
# (8-bit quantisation, or the config's noise_std when higher). The factor is found by bisection on its log2, the
# residual being monotone in it; a later shape is tried only if it explains the input a step wider than the best
# so far (one residual otherwise). The limit (1.0) and the shapes were chosen on the tuned-on images of
# bench/blind.py (astronaut, chelsea, coffee, camera); the figures that chose them: bench/RESULTS.md, "Blind SR".
# The residual is not converged after 10 steps (a converged projected-gradient solver explains chelsea's 2x-too-wide
# kernel far below the floor): it is a width prior tied to the image's contrast, not a proof of impossibility.
# It narrows some true kernels (their residuals sit above the floor) and lets a smooth,
# low-contrast image take a kernel wider than its own (measured: 1.8x on a smooth synthetic texture).
KERNEL_FIT_RESIDUAL = 1.0
CONSISTENCY_ITERS = 10
CONSISTENCY_MAX_SIDE = 192  # the check runs on a central crop of the input at most this big
QUANTISATION_RMS = 1.0 / 255.0 / math.sqrt(12.0)
MIN_LOG2_FACTOR, MAX_LOG2_FACTOR = -4.0, 1.0  # the covariance factors tried: 1/16 .. 2
FIT_STEPS = 7  # bisection steps on log2 of the factor
FIT_RESOLUTION = (MAX_LOG2_FACTOR - MIN_LOG2_FACTOR) / 2 ** FIT_STEPS  # 5/128 in log2: 2.7 % in the factor
TURNS_DEGREES = (0, 45, 90, 135)


@dataclass(frozen=True)
class KernelFit:
    kernel: np.ndarray  # the Gaussian used, centred for sf, sums to 1
    factor: float  # its covariance over the shape's (the estimate's, turned or made isotropic)
    shape: str  # "estimate", "turned 45" / "turned 90" / "turned 135", "isotropic"


def consistency_residual(lr_image: torch.Tensor, kernel: np.ndarray, sf: int) -> float:
    """RMS of lr - down_k(sr) after CONSISTENCY_ITERS back-projection steps from the cubic upsample of lr."""
    degradation = degradation_for(kernel)
    size = (lr_image.shape[-2] * sf, lr_image.shape[-1] * sf)
    estimate = cubic_resize(lr_image, size).clamp(0.0, 1.0)
    for _ in range(CONSISTENCY_ITERS):
        residual = lr_image - degradation.downscale(estimate, tuple(lr_image.shape[-2:]), (sf, sf))
        estimate = (estimate + cubic_resize(residual, size)).clamp_(0.0, 1.0)
    residual = lr_image - degradation.downscale(estimate, tuple(lr_image.shape[-2:]), (sf, sf))
    return float(residual.pow(2).mean().sqrt())


def kernel_shapes(covariance: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """The candidate shapes: the covariance turned by TURNS_DEGREES, and the isotropic one of its determinant."""
    shapes = []
    for degrees in TURNS_DEGREES:
        angle = math.radians(degrees)
        rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        shapes.append(("estimate" if degrees == 0 else f"turned {degrees}", rotation @ covariance @ rotation.T))
    determinant = max(float(np.linalg.det(covariance)), 0.0)
    shapes.append(("isotropic", np.eye(2) * math.sqrt(determinant)))
    distinct: list[tuple[str, np.ndarray]] = []
    for name, shape in shapes:  # an isotropic estimate is one shape, not five
        if not any(np.allclose(shape, kept, atol=1e-3) for _, kept in distinct):
            distinct.append((name, shape))
    return distinct


def fit_kernel(color: torch.Tensor, kernel: np.ndarray, sf: int, noise_floor: float = 0.0, *,
               other_shapes: bool = True, max_log2_factor: float = MAX_LOG2_FACTOR,
               residual_limit: float = KERNEL_FIT_RESIDUAL) -> KernelFit:
    """The widest Gaussian among `kernel_shapes` (only the estimate's own without `other_shapes`) x factors 1/16 ..
    2^max_log2_factor that explains the input (`residual_limit` x the noise floor).

    Deterministic: no randomness, a fixed search. `color` [1,C,H,W] in [0,1]; `kernel` the estimate for `sf`."""
    lr_image = central_crop(color.detach().float().cpu(), CONSISTENCY_MAX_SIDE)
    limit = residual_limit * max(QUANTISATION_RMS, noise_floor)
    min_side = kernel.shape[0]

    def candidate(shape: np.ndarray, log2_factor: float) -> np.ndarray:
        return kernelgan.gaussian_kernel(shape * 2.0 ** log2_factor, sf, min_side=min_side)

    def explains(shape: np.ndarray, log2_factor: float) -> bool:
        return consistency_residual(lr_image, candidate(shape, log2_factor), sf) <= limit

    best: tuple[float, str, np.ndarray] | None = None
    shapes = kernel_shapes(kernelgan.kernel_covariance(kernel))
    for name, shape in shapes if other_shapes else shapes[:1]:
        low = MIN_LOG2_FACTOR  # taken to pass: nearly a delta
        if best is not None:
            low = best[0] + FIT_RESOLUTION
            if low > max_log2_factor or not explains(shape, low):
                continue  # not wider than the best so far
        high = max_log2_factor
        if explains(shape, high):
            low = high
        else:
            while high - low > FIT_RESOLUTION:
                middle = (low + high) / 2
                if explains(shape, middle):
                    low = middle
                else:
                    high = middle
        best = (low, name, shape)
    assert best is not None
    log2_factor, name, shape = best
    fit = KernelFit(candidate(shape, log2_factor), round(2.0 ** log2_factor, 4), name)
    log.info("estimated kernel: %s, covariance x %.3f, the widest that explains the input to %.2f x the noise floor",
             fit.shape, fit.factor, residual_limit)
    return fit


def central_crop(image: torch.Tensor, side: int) -> torch.Tensor:
    height, width = image.shape[-2:]
    top, left = max(0, (height - side) // 2), max(0, (width - side) // 2)
    return image[..., top:top + side, left:left + side]
