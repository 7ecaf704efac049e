"""ZSSRConfig: the reference defaults (Shocher et al., configs.py) and the presets built on them.

`paper` is the reference as it runs (docs/algorithm.md); `balanced` and `fast` trade steps, width and ensemble passes
for time on a CPU. `config_for(preset, overrides)` applies a JSON-like dict of field overrides and rejects unknown
fields and wrong types with `InvalidInput`, naming the field.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, fields
from typing import Any

from sr.errors import InvalidInput
from sr.kernelgan import DEFAULT_ITERS as KERNEL_ESTIMATION_ITERS

ScaleFactor = typing.Union[float, tuple[float, float]]


@dataclass(frozen=True)
class ZSSRConfig:
    # Gradual SR: intermediate scale factors (each a float or (sx, sy), relative to the input), trained one after
    # the other with the same net; the target scale is always the last stage. Empty = straight to the target.
    scale_factors: tuple[ScaleFactor, ...] = ()
    max_iters: int = 3000  # training steps per stage at most
    min_iters: int = 256  # steps after a learning-rate change before the policy may act again
    min_learning_rate: float = 9e-6  # training stops once the learning rate falls below this (three drops)
    learning_rate: float = 1e-3  # Adam's initial learning rate
    learning_rate_change_ratio: float = 1.5  # drop when -ratio * slope < std of the slope (the curve is flat)
    learning_rate_policy_check_every: int = 60  # steps between policy checks
    learning_rate_slope_range: int = 256  # the fit uses the reconstruction tests of this many last steps
    run_test_every: int = 50  # steps between reconstruction tests (MSE of lr vs net(up(down(lr))))
    crop_size: int = 128  # side of the hr_father crop of one training sample
    batch_size: int = 1  # crops per step (the reference: 1)
    width: int = 64  # channels of the hidden conv layers
    depth: int = 8  # conv layers (3x3), ReLU after all but the last
    init_variance: float = 0.1  # weights ~ N(0, sqrt(init_variance / fan_in))
    noise_std: float = 0.0  # Gaussian noise added to each lr_son: 0.0125 for real, noisy or JPEG inputs
    back_projection_iters: tuple[int, ...] = (10,)  # per stage (the last value repeats for later stages)
    output_flip: bool = True  # geometric self-ensemble (dihedral transforms, per-pixel median)
    ensemble_size: int = 8  # passes of the self-ensemble when output_flip (1, 2, 4 or 8; fewer = faster)
    allow_rotation: bool = True  # dihedral and rotated fathers (off automatically for a non-symmetric kernel)
    augment_leave_as_is_probability: float = 0.05  # a crop of the image as it is
    augment_no_interpolate_probability: float = 0.45  # a crop under one of the 8 dihedral transforms
    augment_min_scale: float = 0.5  # affine fathers: random downscale in [min_scale, 1]
    augment_scale_diff_sigma: float = 0.25  # affine fathers: sigma of the x/y scale difference
    augment_shear_sigma: float = 0.1  # affine fathers: sigma of the shear
    augment_pool_size: int = 128  # affine fathers warped at once (one batched warp), renewed when used up
    init_net_for_each_sf: bool = False  # gradual SR: a fresh net per stage (the reference keeps training one)
    self_check: bool = True  # blend the output toward cubic by the weight the self-check measures (sr/holdout.py)
    # The self-check's held-out data: a probe net trained this many steps on fathers downscaled to at most
    # self_check_probe_scale of the image (never the image at its own scale) rebuilds the lr image from its lr_son, a
    # transfer across scales like the real one; the output's blend weight is measured there. 0 = the reference's
    # test on the training data (the lr image rebuilt from its lr_son by the net that trained on it).
    self_check_probe_steps: int = 0
    self_check_probe_scale: float = 0.6  # the largest father scale of the probe (below 1: the held-out scale)
    self_check_probe_crop: int = 0  # the probe's father crop side (0 = crop_size): smaller crops, cheaper steps
    channels_last: bool = False  # memory format of the net: faster for wide nets on large crops, slow for tiny ones
    precision: str = "float32"  # "float32" | "bfloat16" (autocast for the net's convolutions)
    test_crop: int = 0  # reconstruction test on the whole image (0) or a central crop of this side (cheaper)
    checkpoint_every: int = 0  # steps between training-state checkpoints (0 = never)
    inference_memory_mb: int = 512  # memory budget of one inference tile (the net's activations)
    threads: int = 0  # torch.set_num_threads for the call (0 = leave torch's setting)
    # On a CUDA device, a fresh stage's training step is captured once as a CUDA graph and replayed (sr/cuda_step.py):
    # the step is launch-bound there (bench/RESULTS.md, GPU). No effect on the CPU or a resume.
    cuda_graph: bool = True
    # Blind SR (sr/kernelgan.py, sr/degradations.py):
    # "pre": the reference net, run on the cubic pre-upsample; "post": the same width and depth run at the lr_son's
    # size (pixel-unshuffled pre-upsample in, pixel shuffle out, integer factor floor(min sf)): r^2 fewer pixels.
    arch: str = "pre"
    # JPEG-compress every lr_son at this quality so the net learns to undo blocking: -1 = auto (the input's own
    # quality, estimated from its quantisation tables, when the input is a JPEG; off otherwise), 0 = off, 1..100.
    # While it is on, back-projection is off (it would copy the input's blocks into the output).
    son_jpeg_quality: int = -1
    kernel_estimation_iters: int = KERNEL_ESTIMATION_ITERS  # KernelGAN steps for kernel="estimate"
    # kernel="estimate": "auto" = the learnt kernel prior where its weights ship (x2), else KernelGAN; "prior" or
    # "kernelgan" force one (bench/RESULTS.md, blind SR, compares them)
    kernel_estimator: str = "auto"


PRECISIONS = ("float32", "bfloat16")
ARCHS = ("pre", "post")
KERNEL_ESTIMATORS = ("auto", "prior", "kernelgan")
MIN_INFERENCE_MEMORY_MB = 16

PAPER = ZSSRConfig(channels_last=True)  # the reference; channels_last changes no result, only the speed
# CPU budgets. Both differ from the reference in the same ways: a narrower net; bfloat16 convolutions (AMX/AVX512
# on recent CPUs); a policy that checks more often, over a shorter window, so drops can happen within the budget;
# the reconstruction test on a central crop; and init_variance 1.0 instead of 0.1: with 0.1 the residual of an
# 8-layer net starts some 1e-4 times smaller than its input and short runs can stall at the cubic baseline
# (seen on scikit-image's coffee), while 1.0 trains from the first steps. Their self-check reads held-out data (a
# probe on a held-out scale, sr/holdout.py) on small crops, so it adds a small share of the training's cost
# (bench/RESULTS.md, quality); `paper` keeps the reference's test.
# Minutes, not tens of minutes, per 512x512 output at x2 on a 2-core CPU: the reference's 8x64 net on 96-pixel
# crops (its seconds and gain: bench/RESULTS.md, quality).
BALANCED = ZSSRConfig(
    max_iters=1200, min_iters=160, learning_rate_policy_check_every=40, learning_rate_slope_range=160,
    run_test_every=20, crop_size=96, width=64, depth=8, init_variance=1.0, channels_last=True,
    precision="bfloat16", test_crop=160, ensemble_size=8, self_check_probe_steps=400, self_check_probe_crop=56,
)
# Seconds per 512x512 output at x2 on a 2-core CPU (bench/RESULTS.md, quality): an 8x48 net, 80-pixel crops.
FAST = ZSSRConfig(
    max_iters=700, min_iters=100, learning_rate_policy_check_every=30, learning_rate_slope_range=120,
    run_test_every=15, crop_size=80, width=48, depth=8, init_variance=1.0, channels_last=True,
    precision="bfloat16", test_crop=128, ensemble_size=8, self_check_probe_steps=200, self_check_probe_crop=48,
)
PRESETS: dict[str, ZSSRConfig] = {"paper": PAPER, "balanced": BALANCED, "fast": FAST}


def config_for(preset: str, overrides: dict[str, Any] | None = None) -> ZSSRConfig:
    """The preset's config with `overrides` applied; InvalidInput for an unknown preset, field or wrong type."""
    if preset not in PRESETS:
        raise InvalidInput(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)}")
    return with_overrides(PRESETS[preset], overrides or {})


def with_overrides(config: ZSSRConfig, overrides: dict[str, Any]) -> ZSSRConfig:
    if not isinstance(overrides, dict):
        raise InvalidInput(f"config overrides must be an object of field names, got {type(overrides).__name__}")
    known = {f.name: f for f in fields(ZSSRConfig)}
    changes = {}
    for name, value in overrides.items():
        if name not in known:
            raise InvalidInput(f"unknown config field {name!r}")
        changes[name] = _coerce(name, value)
    result = dataclasses.replace(config, **changes)
    validate(result)
    return result


def validate(config: ZSSRConfig) -> None:
    """InvalidInput naming the first field whose value cannot work."""
    positive = ("max_iters", "learning_rate_policy_check_every", "learning_rate_slope_range", "run_test_every",
                "crop_size", "batch_size", "width", "depth", "augment_pool_size")
    for name in positive:
        if getattr(config, name) < 1:
            raise InvalidInput(f"config field {name!r} must be at least 1")
    for name in ("min_iters", "checkpoint_every", "threads", "test_crop", "self_check_probe_crop"):
        if getattr(config, name) < 0:
            raise InvalidInput(f"config field {name!r} must not be negative")
    if config.learning_rate <= 0 or config.min_learning_rate < 0:
        raise InvalidInput("config fields 'learning_rate' (> 0) and 'min_learning_rate' (>= 0) are out of range")
    if config.precision not in PRECISIONS:
        raise InvalidInput(f"config field 'precision' must be one of {', '.join(PRECISIONS)}")
    if config.inference_memory_mb < MIN_INFERENCE_MEMORY_MB:
        raise InvalidInput(f"config field 'inference_memory_mb' must be at least {MIN_INFERENCE_MEMORY_MB}")
    if config.ensemble_size not in (1, 2, 4, 8):
        raise InvalidInput("config field 'ensemble_size' must be 1, 2, 4 or 8")
    if not config.back_projection_iters or any(n < 0 for n in config.back_projection_iters):
        raise InvalidInput("config field 'back_projection_iters' must list one count (>= 0) per stage")
    if not 0 < config.augment_min_scale <= 1:
        raise InvalidInput("config field 'augment_min_scale' must be in (0, 1]")
    probabilities = config.augment_leave_as_is_probability + config.augment_no_interpolate_probability
    if min(config.augment_leave_as_is_probability, config.augment_no_interpolate_probability) < 0 or probabilities > 1:
        raise InvalidInput("config fields 'augment_*_probability' must be >= 0 and sum to at most 1")
    if config.arch not in ARCHS:
        raise InvalidInput(f"config field 'arch' must be one of {', '.join(ARCHS)}")
    if not -1 <= config.son_jpeg_quality <= 100:
        raise InvalidInput("config field 'son_jpeg_quality' must be -1 (auto), 0 (off) or a quality 1..100")
    if config.kernel_estimation_iters < 1:
        raise InvalidInput("config field 'kernel_estimation_iters' must be at least 1")
    if config.kernel_estimator not in KERNEL_ESTIMATORS:
        raise InvalidInput(f"config field 'kernel_estimator' must be one of {', '.join(KERNEL_ESTIMATORS)}")
    if config.self_check_probe_steps < 0:
        raise InvalidInput("config field 'self_check_probe_steps' must not be negative")
    if not 0 < config.self_check_probe_scale < 1:
        raise InvalidInput("config field 'self_check_probe_scale' must be in (0, 1)")
    if config.noise_std < 0:
        raise InvalidInput("config field 'noise_std' must not be negative")
    for sf in config.scale_factors:
        if min(scale_pair(sf)) < 1:
            raise InvalidInput("config field 'scale_factors' holds a factor below 1")


def scale_pair(sf: ScaleFactor) -> tuple[float, float]:
    """(sx, sy) of a scale factor given as one number or a pair."""
    return (float(sf), float(sf)) if isinstance(sf, (int, float)) else (float(sf[0]), float(sf[1]))


def _coerce(name: str, value: Any) -> Any:
    """The override as the field's type (JSON lists become tuples); InvalidInput naming the field otherwise."""
    hint = typing.get_type_hints(ZSSRConfig)[name]
    wrong = InvalidInput(f"config field {name!r} has the wrong type: {value!r}")
    if hint is bool:
        if not isinstance(value, bool):
            raise wrong
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise wrong
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise wrong
        return value
    if name == "back_projection_iters":
        if isinstance(value, int) and not isinstance(value, bool):
            return (value,)
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool)
                                                           for v in value):
            raise wrong
        return tuple(value)
    if name == "scale_factors":
        if value is None:
            return ()
        if not isinstance(value, (list, tuple)):
            raise wrong
        return tuple(_scale_factor(v, wrong) for v in value)
    raise wrong  # a field type this function does not know: a bug here, named


def _scale_factor(value: Any, wrong: InvalidInput) -> ScaleFactor:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if (isinstance(value, (list, tuple)) and len(value) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        return (float(value[0]), float(value[1]))
    raise wrong


def fingerprint_fields(config: ZSSRConfig) -> dict[str, Any]:
    """The fields a checkpoint belongs to: all but those that change no result (the tile memory, threads, the
    CUDA graph)."""
    # The tile size only splits the same computation; the thread count changes nothing either; a graphed step runs
    # the same kernels as the eager one, and a checkpoint of either resumes on the eager loop.
    same_computation = {"inference_memory_mb", "threads", "cuda_graph"}
    return {f.name: getattr(config, f.name) for f in fields(config) if f.name not in same_computation}
