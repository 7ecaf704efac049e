"""`upscale`: one image through ZSSR (train on the image itself, then infer) or plain bicubic.

Reads top to bottom: check the arguments, image -> tensors, then for each gradual-SR stage train the net
(or resume it), super-resolve, run the self-check against cubic, and add the stage's output to the fathers'
sources; tensors -> image, with what happened in `result.info["sr"]`.
"""
from __future__ import annotations

import logging
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import torch
from PIL import Image

from sr.augment import FatherPool, FatherSource, ensemble_transforms
from sr.blind import DENOISE_MODES, blind_setup
from sr.checkpoint import fingerprint, load_state, restore_run, save_state
from sr.config import PRESETS, ZSSRConfig, config_for, scale_pair, validate
from sr.cuda_step import train_stage_for, train_stage_graphed
from sr.errors import Cancelled, InvalidInput
from sr.holdout import PROBE_SEED_OFFSET, HeldOutFigures, held_out_data, held_out_figures, net_rebuild, probe_config
from sr.images import MIN_SIDE, from_tensor, to_tensor
from sr.inference import super_resolve
from sr.model import build_net
from sr.progress import Progress
from sr.resize import Degradation, cubic_resize, degradation_for, output_size
from sr.train import ReconstructionTest, StageHooks, TrainingRun, new_run

log = logging.getLogger(__name__)

METHODS = ("zssr", "bicubic")
PROGRESS_INTERVAL_SECONDS = 0.25  # at most 4 progress calls a second (plus the last of each phase)
MAX_SCALE = 64.0
SELF_CHECK_KEYS = ("data", "net_mse", "cubic_mse", "gain_db", "weight", "probe_steps", "blend", "decision")


@dataclass(frozen=True)
class Callbacks:
    progress: Callable[[Progress], None] | None = None
    should_stop: Callable[[], bool] | None = None
    checkpoint: Callable[[bytes], None] | None = None

    def stop_requested(self) -> bool:
        return bool(self.should_stop and self.should_stop())


class ProgressThrottle:
    """Forwards at most one progress report per interval, and the first of each phase at once (a poll sees
    inference begin, not a quarter of a second later); the loss (a device tensor) is read only when sent."""

    def __init__(self, progress: Callable[[Progress], None] | None, interval: float = PROGRESS_INTERVAL_SECONDS):
        self.progress = progress
        self.interval = interval
        self._last_sent = -math.inf
        self._last_phase = ""

    def report(self, phase: str, step: int, total_steps: int, loss: torch.Tensor | float | None = None,
               learning_rate: float | None = None, *, final: bool = False) -> None:
        if self.progress is None:
            return
        now = time.monotonic()
        if not final and phase == self._last_phase and now - self._last_sent < self.interval:
            return
        self._last_sent, self._last_phase = now, phase
        value = float(loss) if loss is not None else None  # a host sync, a few times a second at most
        self.progress(Progress(phase, step, total_steps, value, learning_rate))


def upscale(image: Image.Image, scale: float | tuple[float, float] = 2.0, *, method: str = "zssr",
            preset: str = "balanced", kernel: str | np.ndarray = "bicubic", config: ZSSRConfig | None = None,
            device: str | None = None, seed: int | None = None, progress: Callable[[Progress], None] | None = None,
            should_stop: Callable[[], bool] | None = None, checkpoint: Callable[[bytes], None] | None = None,
            resume: bytes | None = None, denoise: str = "off") -> Image.Image:
    """`image` upscaled to (round(w * sx), round(h * sy)) in its own mode; what happened in result.info["sr"].

    Blind SR (sr/blind.py): kernel="estimate" runs KernelGAN for the sons' kernel; a JPEG input's sons are
    JPEG-compressed at its own quality (config.son_jpeg_quality); denoise="auto" estimates noise_std."""
    started = time.monotonic()
    sf = parse_scale(scale)
    if method not in METHODS:
        raise InvalidInput(f"unknown method {method!r}; expected 'zssr' or 'bicubic'")
    if preset not in PRESETS:
        raise InvalidInput(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)}")
    if not isinstance(image, Image.Image):
        raise InvalidInput(f"expected a PIL image, got {type(image).__name__}")
    if config is None:
        config = config_for(preset)
    elif not isinstance(config, ZSSRConfig):
        raise InvalidInput(f"config must be an sr.ZSSRConfig, got {type(config).__name__}")
    else:
        validate(config)
    if method == "zssr" and not (isinstance(kernel, str) and kernel == "estimate"):
        degradation_for(kernel)  # a bad kernel is refused before any work
    if denoise not in DENOISE_MODES:
        raise InvalidInput(f"unknown denoise {denoise!r}; expected 'off' or 'auto'")
    target = resolve_device(device)
    color, alpha, meta = to_tensor(image)
    size = output_size(color.shape[-2], color.shape[-1], sf)
    with torch_threads(config.threads):
        if method == "bicubic":
            output, info = cubic_resize(color, size).clamp_(0.0, 1.0), {"train_steps": 0}
        else:
            check_zssr_scale(sf)
            blind = blind_setup(image, color, sf, kernel, config, denoise=denoise, seed=seed, device=target,
                                progress=progress, should_stop=should_stop)
            callbacks = Callbacks(progress, should_stop, checkpoint)
            output, info = zssr(color.to(target), sf, blind.config, degradation=blind.degradation, seed=seed,
                                callbacks=callbacks, resume=resume)
            info = {**info, **blind.info}
        alpha_output = cubic_resize(alpha, size).clamp_(0.0, 1.0) if alpha is not None else None
    result = from_tensor(output.cpu(), alpha_output, meta)
    result.info["sr"] = {"method": method, "preset": preset if method == "zssr" else None, "scale": list(sf),
                         "device": str(target) if method == "zssr" else "cpu", **info,
                         "seconds": round(time.monotonic() - started, 3)}
    return result


def parse_scale(scale: Any) -> tuple[float, float]:
    """(sx, sy) from a number or a pair; InvalidInput for anything else or a factor out of (0, MAX_SCALE]."""
    try:
        sf = scale_pair(scale)
    except (TypeError, ValueError, IndexError):
        raise InvalidInput(f"scale must be a number or an (sx, sy) pair, got {scale!r}") from None
    if isinstance(scale, (tuple, list)) and len(scale) != 2:
        raise InvalidInput(f"scale must be a number or an (sx, sy) pair, got {scale!r}")
    if not all(math.isfinite(s) and 0 < s <= MAX_SCALE for s in sf):
        raise InvalidInput(f"scale factors must be in (0, {MAX_SCALE:g}], got {scale!r}")
    return sf


def check_zssr_scale(sf: tuple[float, float]) -> None:
    if min(sf) < 1 or max(sf) <= 1:
        raise InvalidInput(f"ZSSR upscales: each scale factor must be at least 1 and one above 1, got {sf}")


def resolve_device(device: str | None) -> torch.device:
    """None -> "cuda" when available, else "cpu"; InvalidInput for a device torch does not know or lack."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        target = torch.device(device)
    except (RuntimeError, TypeError):
        raise InvalidInput(f"unknown device {device!r}") from None
    if target.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInput("device 'cuda' was asked for but CUDA is not available")
    if target.type not in ("cpu", "cuda"):
        raise InvalidInput(f"device {device!r} is not supported; use 'cpu' or 'cuda'")
    return target


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch.set_num_threads(threads) for the call (0 = leave it), restored after."""
    if not threads:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def stage_factors(config: ZSSRConfig, sf: tuple[float, float]) -> list[tuple[float, float]]:
    """The gradual-SR stages: the config's intermediate factors below the target, then the target itself."""
    stages = []
    for factor in config.scale_factors:
        pair = scale_pair(factor)
        if pair[0] <= sf[0] and pair[1] <= sf[1] and pair != sf and max(pair) > 1:
            stages.append(pair)
        else:
            log.info("gradual SR: skipping the intermediate factor %s (not below the target %s)", pair, sf)
    return stages + [sf]


def zssr(lr_image: torch.Tensor, sf: tuple[float, float], config: ZSSRConfig, *, degradation: Degradation,
         seed: int | None = None, callbacks: Callbacks = Callbacks(),
         resume: bytes | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """ZSSR of lr_image [1,C,H,W] in [0, 1] (on its device) by sf = (sx, sy) -> ([1,C,H',W'], info)."""
    device = lr_image.device
    if min(lr_image.shape[-2:]) < MIN_SIDE:
        raise InvalidInput(f"each side of the image must be at least {MIN_SIDE} pixels")
    seed = int(seed) if seed is not None else int(torch.randint(2**31 - 1, ()).item())
    stages = stage_factors(config, sf)
    fingerprint_hex = fingerprint(config, lr_image, sf, degradation.kernel, seed)
    saved = load_state(resume, fingerprint_hex) if resume is not None else None
    generator = torch.Generator().manual_seed(seed)
    net = build_net(lr_image.shape[1], config, device, generator, sf=sf)
    stage_outputs = [t.to(device) for t in saved["stage_outputs"]] if saved else []
    steps_before = int(saved["steps_before"]) if saved else 0
    first_stage = int(saved["stage"]) if saved else 0
    throttle = ProgressThrottle(callbacks.progress)
    stage_infos = []
    output = None
    for index, stage_sf in enumerate(stages):
        if index < first_stage:
            output = stage_outputs[index]
            continue
        if index > 0 and config.init_net_for_each_sf:
            net.reset_parameters(config.init_variance, generator)
        sources = [FatherSource(lr_image, 1.0)] + [FatherSource(out, min(s)) for out, s in zip(stage_outputs, stages)]
        run = build_run(net, lr_image, sources, stage_sf, degradation, config, generator)
        if saved is not None and index == first_stage:
            restore_run(run, saved)
            log.info("resumed ZSSR training at stage %d, step %d", index, run.iteration)
        test = ReconstructionTest(lr_image, stage_sf, degradation, config, torch.Generator().manual_seed(seed + index))
        remaining = (config.max_iters + probe_steps(config)) * (len(stages) - index)
        hooks = StageHooks(
            should_stop=callbacks.stop_requested,
            on_step=lambda step, loss, lr: throttle.report("training", steps_before + step, steps_before + remaining,
                                                           loss, lr),
            on_checkpoint=(lambda r: callbacks.checkpoint(save_state(
                r, fingerprint_hex=fingerprint_hex, stage=index, stage_outputs=stage_outputs,
                steps_before=steps_before))) if callbacks.checkpoint else None,
            checkpoint_every=config.checkpoint_every)
        was_finished = run.finished
        train = train_stage_for(run, config)
        train(run, test, stage_sf, degradation, config, hooks)
        if hooks.on_checkpoint and not was_finished and run.iteration % max(1, config.checkpoint_every):
            hooks.on_checkpoint(run)  # the stage's last state, so a run killed in inference resumes here
        throttle.report("training", steps_before + run.iteration, steps_before + run.iteration, None,
                        run.policy.learning_rate, final=True)
        probe_progress = (lambda step, loss, lr, done=run.iteration: throttle.report(
            "training", steps_before + done + step, steps_before + remaining, loss, lr))
        output, stage_info = infer_stage(run, test, lr_image, stage_sf, degradation, config, index, callbacks,
                                         throttle, seed=seed + index, probe_progress=probe_progress)
        stage_info.update(train_steps=run.iteration, learning_rate=run.policy.learning_rate,
                          learning_rate_changes=list(run.policy.change_steps[1:]),
                          cuda_graph=train is train_stage_graphed)
        stage_infos.append(stage_info)
        steps_before += run.iteration
        if index < len(stages) - 1:
            stage_outputs.append(output)
    assert output is not None
    return output, summary_info(stage_infos, steps_before, stages, seed)


def build_run(net, lr_image: torch.Tensor, sources: list[FatherSource], sf: tuple[float, float],
              degradation: Degradation, config: ZSSRConfig, generator: torch.Generator,
              max_scale: float | None = None) -> TrainingRun:
    """A fresh stage's run; its fathers reach up to `max_scale` (default: the latest source's scale)."""
    crop = min([config.crop_size] + list(lr_image.shape[-2:]))
    rotations = config.allow_rotation and degradation.is_symmetric
    pool = FatherPool(sources, config, crop_size=crop, max_scale=max_scale or sources[-1].base_scale,
                      rotations=rotations, axes_may_swap=sf[0] == sf[1], generator=generator)
    return new_run(net, pool, config, generator)


def probe_steps(config: ZSSRConfig) -> int:
    """The self-check probe's training steps per stage (0 when the check reads the training data)."""
    return config.self_check_probe_steps if config.self_check else 0


def scale_held_out_check(lr_image: torch.Tensor, sf: tuple[float, float], degradation: Degradation,
                         config: ZSSRConfig, seed: int, hooks: StageHooks = StageHooks()) -> HeldOutFigures:
    """The self-check on a held-out scale (sr/holdout.py): a probe net of the config's shape trains on fathers
    downscaled to at most config.self_check_probe_scale, then rebuilds lr_image (a scale it never trained on) from
    its lr_son; the figures of that rebuild against cubic's. Deterministic in `seed`; `hooks` as for training."""
    probe = probe_config(config)
    generator = torch.Generator().manual_seed(seed + PROBE_SEED_OFFSET)
    net = build_net(lr_image.shape[1], probe, lr_image.device, generator, sf=sf)
    run = build_run(net, lr_image, [FatherSource(lr_image, 1.0)], sf, degradation, probe, generator,
                    max_scale=config.self_check_probe_scale)
    data = held_out_data(lr_image, sf, degradation, config.noise_std, torch.Generator().manual_seed(seed))
    test = ReconstructionTest(lr_image, sf, degradation, probe, torch.Generator().manual_seed(seed))
    train_stage_for(run, probe)(run, test, sf, degradation, probe, hooks)
    return held_out_figures(lambda son_up: net_rebuild(run.net, son_up, probe), data)


def infer_stage(run: TrainingRun, test: ReconstructionTest, lr_image: torch.Tensor, sf: tuple[float, float],
                degradation: Degradation, config: ZSSRConfig, index: int, callbacks: Callbacks,
                throttle: ProgressThrottle, *, seed: int = 0,
                probe_progress: Callable[[int, torch.Tensor, float], None] | None = None
                ) -> tuple[torch.Tensor, dict[str, Any]]:
    """The stage's super-resolved image, blended toward cubic by the weight the self-check measures."""
    hooks = StageHooks(should_stop=callbacks.stop_requested, on_step=probe_progress or StageHooks().on_step)
    info = {"sf": list(sf), **self_check(run, test, lr_image, sf, degradation, config, seed, hooks)}
    blend, net_error = info["blend"], info["net_mse"]
    size = output_size(lr_image.shape[-2], lr_image.shape[-1], sf)
    if blend <= 0.0:
        log.info("self-check on the %s data: the net rebuilds it no better than cubic (%.3g vs %.3g); using cubic",
                 info["data"], net_error, info["cubic_mse"])
        throttle.report("inference", 1, 1, final=True)
        return cubic_resize(lr_image, size).clamp_(0.0, 1.0), {**info, "fallback": "cubic"}
    transforms = ensemble_transforms(config.ensemble_size, sf[0] == sf[1]) if config.output_flip else [0]
    if not degradation.is_symmetric:
        transforms = [0]  # a transformed image was degraded by a transformed kernel: the net never saw that
    iterations = config.back_projection_iters[min(index, len(config.back_projection_iters) - 1)]
    output = super_resolve(run.net, lr_image, sf, size, degradation, config, transforms=transforms,
                           back_projection_iters=iterations, should_stop=callbacks.stop_requested,
                           on_tile=lambda done, total: throttle.report("inference", done, total,
                                                                       final=done == total))
    if blend < 1.0:
        log.info("self-check on the %s data: net %.3g, cubic %.3g; blending %.2f of the net with cubic",
                 info["data"], net_error, info["cubic_mse"], blend)
        output = blend * output + (1.0 - blend) * cubic_resize(lr_image, size).clamp_(0.0, 1.0)
        return output, {**info, "fallback": f"blend {blend:.2f}"}
    return output, {**info, "fallback": None}


def self_check(run: TrainingRun, test: ReconstructionTest, lr_image: torch.Tensor, sf: tuple[float, float],
               degradation: Degradation, config: ZSSRConfig, seed: int, hooks: StageHooks) -> dict[str, Any]:
    """What the self-check measured and decided (info["sr"]["self_check"], see SELF_CHECK_KEYS): on a held-out
    scale when config.self_check_probe_steps > 0, else on the training data (the reference's test)."""
    if probe_steps(config):
        figures = scale_held_out_check(lr_image, sf, degradation, config, seed, hooks)
        info = {"data": "held_out", "net_mse": figures.net_mse, "cubic_mse": figures.cubic_mse,
                "gain_db": round(figures.gain_db, 3), "weight": round(figures.weight, 4),
                "probe_steps": config.self_check_probe_steps, "blend": figures.blend}
    else:
        net_error = test.error(run.net)
        blend = self_check_blend(test.rebuild(run.net), test.son_up, test.target) if config.self_check else 1.0
        info = {"data": "training", "net_mse": net_error, "cubic_mse": test.cubic_error, "blend": blend}
    info["decision"] = "net" if info["blend"] >= 1.0 else "cubic" if info["blend"] <= 0.0 else "blend"
    return info


def self_check_blend(net_rebuild: torch.Tensor, cubic_rebuild: torch.Tensor, target: torch.Tensor) -> float:
    """1.0 when the net rebuilds `target` better than cubic; otherwise the weight w in [0, 1) of the net in
    w * net + (1 - w) * cubic that rebuilds it best (least squares), 0.0 = plain cubic."""
    net_error = float(torch.mean((net_rebuild - target) ** 2))
    cubic_error = float(torch.mean((cubic_rebuild - target) ** 2))
    if net_error < cubic_error:
        return 1.0
    difference = (net_rebuild - cubic_rebuild).double()
    energy = float((difference ** 2).sum())
    if energy == 0.0:
        return 0.0
    weight = float(((target - cubic_rebuild).double() * difference).sum()) / energy
    weight = min(max(weight, 0.0), 1.0)
    return 0.0 if weight < 0.05 else min(weight, 0.99)


def summary_info(stage_infos: list[dict[str, Any]], train_steps: int, stages: list[tuple[float, float]],
                 seed: int) -> dict[str, Any]:
    last = stage_infos[-1]
    fallbacks = [info["fallback"] for info in stage_infos if info["fallback"]]
    return {"train_steps": train_steps, "seed": seed, "stages": [list(s) for s in stages],
            "fallback": fallbacks[-1] if fallbacks else None,
            "self_check": {key: last[key] for key in SELF_CHECK_KEYS if key in last},
            "learning_rate": last["learning_rate"], "learning_rate_changes": last["learning_rate_changes"],
            "stage_details": stage_infos}
