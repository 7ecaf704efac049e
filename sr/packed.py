"""Packing: several ZSSR jobs trained at once on one device, so small images do not leave a GPU idle.

The K nets of a pack share one shape (the config's width and depth, the image's channels, the crop side); their
weights are stacked per layer ([K, out, in, 3, 3]) and run as one grouped convolution (or one `torch.func.vmap`
of `functional_call`), and one Adam step updates them all, each job with its own learning rate and step count.
Everything else stays each job's own, built by the core exactly as `sr.upscale` builds it for that job alone:
its net's initial weights, father pool and generator (from its seed), its reconstruction test, learning-rate
policy and stop rule. A job whose training stopped (or that was canceled) leaves the pack: its weights no longer
change; it is inferred at once as the core does (`infer_stage`), its next gradual-SR stage joins the pack, and a
queued job of the same shape takes the free slot.

Same seed -> same output as `sr.upscale` alone, up to float rounding: the grouped convolution adds in another
order than K separate ones, so weights differ by float32 rounding after each step (see tests/sr/test_packed.py for
the tolerance). In bfloat16 the rounding is coarser and the trainings drift apart: on an H200, 16 fast-preset jobs
of 256x256 came out up to 30 levels from their lone runs on ~15% of the pixels. Checkpoint/resume is not supported
for packed jobs (a packed run is short or restarted whole).

Packing was built for GPUs, where one small net leaves most of the device idle, but its step runs eagerly, and on
CUDA `sr.upscale` replays its step from a CUDA graph: on an H200 those 16 jobs took 6.3 s one at a time and 20.9,
14.2, 9.5 s packed at K = 4, 8, 16 (bench/RESULTS.md). On this project's 2-core CPU it gains
nothing (bench/gpu_speed.py: 16 jobs at K = 4, 8, 16 took 0.98x, 0.93x, 0.74x the throughput of one at a time);
there the grouped convolution (the default) ran a K = 4 step of the fast preset's nets in 67 ms against 150 ms for
vmap, and 51 ms for the four nets one after another.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.func import functional_call, vmap

from sr.augment import FatherSource
from sr.config import PRESETS, ZSSRConfig, config_for, validate
from sr.errors import Cancelled, InvalidInput
from sr.images import MIN_SIDE, from_tensor, to_tensor
from sr.model import ZSSRNet, autocast_for, build_net
from sr.resize import Degradation, cubic_resize, degradation_for, output_size, son_of
from sr.train import ReconstructionTest, TrainingRun, after_step
from sr.zssr import (Callbacks, ProgressThrottle, build_run, check_zssr_scale, infer_stage, parse_scale,
                     resolve_device, stage_factors, summary_info, torch_threads)

log = logging.getLogger(__name__)

PACKINGS = ("grouped", "vmap")  # one grouped convolution per layer, or torch.func.vmap over functional_call
ADAM_BETAS = (0.9, 0.999)  # torch.optim.Adam's defaults, which the core's training uses
ADAM_EPS = 1e-8

PerJob = Sequence[Any] | Mapping[int, Any] | None


# --- the stacked nets and their optimizer ---

class StackedNets:
    """The weights of K nets of one shape stacked per layer ([K, out, in, 3, 3]), leaves of their own."""

    def __init__(self, template: ZSSRNet, packing: str):
        self.template = template  # the layer structure vmap's functional_call runs (its own weights are unused)
        self.names = [name for name, _ in template.named_parameters()]
        self.packing = packing
        self.weights: list[torch.Tensor] = []

    def regroup(self, order: list[int | None], nets: list[ZSSRNet]) -> None:
        """New slots: slot i keeps old slot order[i]'s weights, or takes nets[i]'s own when order[i] is None."""
        old = self.weights
        stacked = []
        for layer, name in enumerate(self.names):
            slices = [old[layer][source].detach() if source is not None else dict(net.named_parameters())[name].detach()
                      for source, net in zip(order, nets)]
            stacked.append(torch.stack(slices).contiguous().requires_grad_())
        self.weights = stacked

    @torch.no_grad()
    def write_back(self, slot: int, net: ZSSRNet) -> None:
        """The slot's current weights into the job's own net (for its reconstruction test and its inference)."""
        for weights, parameter in zip(self.weights, net.parameters()):
            parameter.copy_(weights[slot])

    def zero_grad(self) -> None:
        for weights in self.weights:
            weights.grad = None

    def forward(self, up_images: torch.Tensor, channels_last: bool) -> torch.Tensor:
        """[K,B,C,h,w] cubic pre-upsamples -> the K nets' predictions [K,B,C,h,w] in float32."""
        if self.packing == "vmap":
            params = dict(zip(self.names, self.weights))
            return vmap(lambda p, x: functional_call(self.template, p, (x,)))(params, up_images)
        return self._grouped(up_images, channels_last)

    def _grouped(self, up_images: torch.Tensor, channels_last: bool) -> torch.Tensor:
        count, batch, channels, height, width = up_images.shape
        # [K,B,C,h,w] -> [B, K*C, h, w]: job k's channels are group k of every convolution
        hidden = up_images.transpose(0, 1).reshape(batch, count * channels, height, width)
        if channels_last:
            hidden = hidden.contiguous(memory_format=torch.channels_last)
        last = len(self.weights) - 1
        for layer, weights in enumerate(self.weights):
            # [K, out, in, 3, 3] -> [K*out, in, 3, 3]: groups=K keeps each job's layer on its own channels
            hidden = F.conv2d(hidden, weights.reshape(-1, *weights.shape[2:]), padding=1, groups=count)
            if layer < last:
                hidden = F.relu(hidden)
        body = hidden.float().reshape(batch, count, channels, height, width).transpose(0, 1)
        return up_images + body  # the residual sum in float32, as ZSSRNet.forward


class StackedAdam:
    """torch.optim.Adam's update (its defaults, as the core uses it) over stacked weights, with one learning rate
    and one step count per slot: slot k changes as job k's own Adam would change its net.

    The per-slot step counts and learning rates live on the device (float64, as torch's Adam computes its bias
    corrections in Python floats), so a step copies nothing from the host; learning rates are sent only when one
    changes."""

    def __init__(self) -> None:
        self.exp_avg: list[torch.Tensor] = []
        self.exp_avg_sq: list[torch.Tensor] = []
        self.steps = torch.zeros(0, dtype=torch.float64)
        self._learning_rates: list[float] = []
        self._learning_rates_tensor = torch.zeros(0, dtype=torch.float64)

    def regroup(self, order: list[int | None], weights: list[torch.Tensor]) -> None:
        """Slot i keeps old slot order[i]'s moments and step count, or starts fresh when order[i] is None."""
        device = weights[0].device

        def moved(old: list[torch.Tensor]) -> list[torch.Tensor]:
            return [torch.stack([m[source] if source is not None else torch.zeros_like(m[0]) for source in order])
                    for m in old]

        if self.exp_avg:
            self.exp_avg, self.exp_avg_sq = moved(self.exp_avg), moved(self.exp_avg_sq)
            kept = self.steps.cpu().tolist()
            steps = [kept[source] if source is not None else 0.0 for source in order]
        else:
            self.exp_avg = [torch.zeros_like(w) for w in weights]
            self.exp_avg_sq = [torch.zeros_like(w) for w in weights]
            steps = [0.0] * len(order)
        self.steps = torch.tensor(steps, dtype=torch.float64, device=device)
        self._learning_rates = []  # sent again at the next step

    def _learning_rates_on(self, learning_rates: list[float], device: torch.device) -> torch.Tensor:
        if learning_rates != self._learning_rates:
            self._learning_rates = list(learning_rates)
            self._learning_rates_tensor = torch.tensor(learning_rates, dtype=torch.float64, device=device)
        return self._learning_rates_tensor

    @torch.no_grad()
    def step(self, weights: list[torch.Tensor], learning_rates: list[float]) -> None:
        beta1, beta2 = ADAM_BETAS
        self.steps += 1
        shape = (len(learning_rates), 1, 1, 1, 1)
        rates = self._learning_rates_on(learning_rates, weights[0].device)
        step_size = (-rates / (1 - beta1 ** self.steps)).float().reshape(shape)
        correction2_sqrt = ((1 - beta2 ** self.steps) ** 0.5).float().reshape(shape)
        for w, exp_avg, exp_avg_sq in zip(weights, self.exp_avg, self.exp_avg_sq):
            grad = w.grad
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = (exp_avg_sq.sqrt() / correction2_sqrt).add_(ADAM_EPS)
            w.add_(step_size * exp_avg / denom)  # addcdiv's order: value * exp_avg / denom


# --- one job ---

@dataclass(eq=False)
class PackedJob:
    """One image's ZSSR, stage by stage, as `sr.zssr.zssr` runs it (no resume)."""

    index: int  # its place in the caller's list
    lr_image: torch.Tensor  # [1,C,H,W] on the device
    sf: tuple[float, float]
    config: ZSSRConfig
    degradation: Degradation
    seed: int
    callbacks: Callbacks
    generator: torch.Generator = field(init=False)
    net: ZSSRNet = field(init=False)
    stages: list[tuple[float, float]] = field(init=False)
    throttle: ProgressThrottle = field(init=False)
    stage: int = 0
    run: TrainingRun | None = None
    test: ReconstructionTest | None = None
    stage_outputs: list[torch.Tensor] = field(default_factory=list)
    stage_infos: list[dict[str, Any]] = field(default_factory=list)
    steps_before: int = 0
    output: torch.Tensor | None = None  # [1,C,H',W'] on the CPU once the last stage is inferred
    finished_at: float | None = None  # time.monotonic() of that moment
    canceled: bool = False

    def __post_init__(self) -> None:
        # The same draws, in the same order, as zssr(): the net's weights first, then each stage's pool
        self.generator = torch.Generator().manual_seed(self.seed)
        self.net = build_net(self.lr_image.shape[1], self.config, self.lr_image.device, self.generator)
        self.stages = stage_factors(self.config, self.sf)
        self.throttle = ProgressThrottle(self.callbacks.progress)

    @property
    def crop_side(self) -> int:
        return min([self.config.crop_size] + list(self.lr_image.shape[-2:]))

    @property
    def shape_key(self) -> tuple[int, int]:
        """Jobs with the same key can share a pack (same net shape, same crop shape)."""
        return self.lr_image.shape[1], self.crop_side

    def start_stage(self) -> None:
        index, stage_sf = self.stage, self.stages[self.stage]
        if index > 0 and self.config.init_net_for_each_sf:
            self.net.reset_parameters(self.config.init_variance, self.generator)
        sources = [FatherSource(self.lr_image, 1.0)] + [FatherSource(out, min(s))
                                                        for out, s in zip(self.stage_outputs, self.stages)]
        self.run = build_run(self.net, self.lr_image, sources, stage_sf, self.degradation, self.config,
                             self.generator)
        self.test = ReconstructionTest(self.lr_image, stage_sf, self.degradation, self.config,
                                       torch.Generator().manual_seed(self.seed + index))

    @property
    def training_done(self) -> bool:
        return self.run.finished or self.run.iteration >= self.config.max_iters

    def after_packed_step(self, loss: torch.Tensor) -> None:
        """The core's bookkeeping of one step (test, policy, stop rule), then the throttled progress report."""
        run = self.run
        run.finished = after_step(run, self.test, self.config)
        run.iteration += 1
        remaining = self.config.max_iters * (len(self.stages) - self.stage)
        self.throttle.report("training", self.steps_before + run.iteration, self.steps_before + remaining, loss,
                             run.policy.learning_rate)

    def finish_stage(self) -> bool:
        """The stage's inference as the core does it; True when another stage follows."""
        run = self.run
        run.finished = True
        self.throttle.report("training", self.steps_before + run.iteration, self.steps_before + run.iteration, None,
                             run.policy.learning_rate, final=True)
        stage_sf = self.stages[self.stage]
        output, stage_info = infer_stage(run, self.test, self.lr_image, stage_sf, self.degradation, self.config,
                                         self.stage, self.callbacks, self.throttle, seed=self.seed + self.stage)
        stage_info.update(train_steps=run.iteration, learning_rate=run.policy.learning_rate,
                          learning_rate_changes=list(run.policy.change_steps[1:]))
        self.stage_infos.append(stage_info)
        self.steps_before += run.iteration
        self.run = self.test = None
        if self.stage == len(self.stages) - 1:
            self.output = output.cpu()  # off the device at once: the pack goes on with the other jobs
            self.finished_at = time.monotonic()
            return False
        self.stage_outputs.append(output)
        self.stage += 1
        return True

    def info(self) -> dict[str, Any]:
        return summary_info(self.stage_infos, self.steps_before, self.stages, self.seed)


# --- the pack ---

def packed_sons(hr_fathers: torch.Tensor, sfs: list[tuple[float, float]], degradation: Degradation,
                noise_std: float, generators: list[torch.Generator]) -> torch.Tensor:
    """Each job's lr_sons, upscaled back: [K,B,C,h,w] -> [K,B,C,h,w], job k's with its stage's sfs[k]. One batched
    resize when every job has the same sf and there is no noise; otherwise job by job, so that each job's noise
    comes from its own generator as when it runs alone."""
    count, batch = hr_fathers.shape[:2]
    if noise_std == 0 and len(set(sfs)) == 1:
        flat = hr_fathers.reshape(count * batch, *hr_fathers.shape[2:])
        return son_of(flat, sfs[0], degradation).reshape(hr_fathers.shape)
    return torch.stack([son_of(hr_fathers[k], sfs[k], degradation, noise_std, generators[k]) for k in range(count)])


class Pack:
    """Up to `size` jobs of one shape training together; finished jobs leave, queued ones take their place."""

    def __init__(self, queue: list[PackedJob], size: int, packing: str):
        self.queue = queue  # jobs of this shape not yet started
        self.size = size
        self.active: list[PackedJob] = []
        self.nets = StackedNets(queue[0].net, packing)
        self.adam = StackedAdam()
        self.config = queue[0].config

    def run(self) -> None:
        self._refill([])
        while self.active:
            # As the core's loop: each job's should_stop before each of its steps
            canceled = [job for job in self.active if job.callbacks.stop_requested()]
            for job in canceled:
                job.canceled = True
            if not canceled:
                self._step()
            leaving = [job for job in self.active if job.canceled or job.training_done]
            if leaving:
                self._refill(leaving)

    def _step(self) -> None:
        """One training step of every active job: each draws its own fathers, one forward/backward/Adam for all."""
        config, active = self.config, self.active
        hr_fathers = torch.stack([job.run.pool.sample(config.batch_size) for job in active])  # [K,B,C,h,w]
        with torch.no_grad():
            # Jobs of one pack may be in different gradual-SR stages: each son with its own job's stage sf
            lr_sons_up = packed_sons(hr_fathers, [job.stages[job.stage] for job in active], active[0].degradation,
                                     config.noise_std, [job.run.generator for job in active])
        with autocast_for(config, active[0].lr_image.device):
            predictions = self.nets.forward(lr_sons_up, config.channels_last)
        losses = (predictions - hr_fathers).abs().flatten(1).mean(dim=1)  # [K]: each job's L1, as F.l1_loss
        self.nets.zero_grad()
        losses.sum().backward()  # the jobs share no weight: each slot's gradient is its own loss's
        self.adam.step(self.nets.weights, [job.run.policy.learning_rate for job in active])
        losses = losses.detach()
        for slot, job in enumerate(active):
            if job.run.iteration % config.run_test_every == 0:
                self.nets.write_back(slot, job.net)  # the test runs the job's own net
            job.after_packed_step(losses[slot])

    def _refill(self, leaving: list[PackedJob]) -> None:
        """Leaving jobs get their weights back and are inferred (canceled ones dropped); the jobs that go on keep
        their slot's weights and moments; a next stage or a queued job starts fresh in a free slot."""
        order: list[int | None] = []  # per new slot: the old slot it continues, or None for a fresh start
        staying: list[PackedJob] = []
        for slot, job in enumerate(self.active):
            self.nets.write_back(slot, job.net)
            if job not in leaving:
                order.append(slot)
                staying.append(job)
            elif self._next_stage(job):
                order.append(None)
                staying.append(job)
        while len(staying) < self.size and self.queue:
            job = self.queue.pop(0)
            if job.callbacks.stop_requested():
                job.canceled = True
                continue
            job.start_stage()
            order.append(None)
            staying.append(job)
        if staying:
            self.nets.regroup(order, [job.net for job in staying])
            self.adam.regroup(order, self.nets.weights)
        self.active = staying

    @staticmethod
    def _next_stage(job: PackedJob) -> bool:
        """Infer the job's finished stage; True when it goes on training its next stage in the pack."""
        if job.canceled:
            return False
        try:
            if not job.finish_stage():
                return False
        except Cancelled:
            job.canceled = True
            return False
        job.start_stage()
        return True


def train_and_infer(jobs: list[PackedJob], pack_size: int, packing: str) -> None:
    """Every job to its output (job.output) or canceled (job.canceled), one pack per shape, one after another."""
    by_shape: dict[tuple[int, int], list[PackedJob]] = {}
    for job in jobs:
        by_shape.setdefault(job.shape_key, []).append(job)
    for (channels, crop), queue in by_shape.items():
        log.info("packing %d job(s) of %d channel(s), crop %d, at most %d at once", len(queue), channels, crop,
                 pack_size)
        Pack(queue, pack_size, packing).run()


# --- the public entry point ---

def upscale_many(images: Sequence[Image.Image], scale: float | tuple[float, float] = 2.0, *,
                 preset: str = "balanced", config: ZSSRConfig | None = None, kernel: str | np.ndarray = "bicubic",
                 seeds: Sequence[int | None] | None = None, device: str | None = None, progress: PerJob = None,
                 should_stop: PerJob = None, pack_size: int | None = None,
                 packing: str = "grouped") -> list[Image.Image | None]:
    """Each image upscaled by ZSSR as `sr.upscale(image, scale, preset=..., config=..., seed=seeds[i])` would,
    with up to `pack_size` (default: all) trained at once. `progress` and `should_stop` are per job: a list (one
    per image, None for none) or a dict keyed by the image's index. A job whose should_stop returns True drops
    out and its place in the result is None; the others go on."""
    started = time.monotonic()
    if isinstance(images, Image.Image) or not isinstance(images, Sequence) or not images:
        raise InvalidInput("images must be a non-empty list of PIL images")
    for index, image in enumerate(images):
        if not isinstance(image, Image.Image):
            raise InvalidInput(f"image {index} is not a PIL image but {type(image).__name__}")
    count = len(images)
    sf = parse_scale(scale)
    check_zssr_scale(sf)
    config = resolve_config(preset, config)
    if packing not in PACKINGS:
        raise InvalidInput(f"unknown packing {packing!r}; expected one of {', '.join(PACKINGS)}")
    if pack_size is not None and (isinstance(pack_size, bool) or not isinstance(pack_size, int) or pack_size < 1):
        raise InvalidInput(f"pack_size must be a positive integer, got {pack_size!r}")
    seeds = per_job(seeds, count, "seeds")
    progresses, stops = per_job(progress, count, "progress"), per_job(should_stop, count, "should_stop")
    degradation = degradation_for(kernel)
    target = resolve_device(device)
    with torch_threads(config.threads):
        jobs, inputs = [], []
        for index, image in enumerate(images):
            color, alpha, meta = to_tensor(image)
            if min(color.shape[-2:]) < MIN_SIDE:
                raise InvalidInput(f"image {index}: each side must be at least {MIN_SIDE} pixels")
            seed = int(seeds[index]) if seeds[index] is not None else int(torch.randint(2**31 - 1, ()).item())
            jobs.append(PackedJob(index, color.to(target), sf, config, degradation, seed,
                                  Callbacks(progresses[index], stops[index])))
            inputs.append((alpha, meta, output_size(color.shape[-2], color.shape[-1], sf)))
        train_and_infer(jobs, pack_size or count, packing)
        results: list[Image.Image | None] = []
        for job, (alpha, meta, size) in zip(jobs, inputs):
            if job.canceled:
                results.append(None)
                continue
            alpha_output = cubic_resize(alpha, size).clamp_(0.0, 1.0) if alpha is not None else None
            result = from_tensor(job.output.cpu(), alpha_output, meta)
            result.info["sr"] = {"method": "zssr", "preset": preset, "scale": list(sf), "device": str(target),
                                 **job.info(), "packed": True,
                                 "seconds": round(job.finished_at - started, 3)}  # from the call to its output
            results.append(result)
    return results


def resolve_config(preset: str, config: ZSSRConfig | None) -> ZSSRConfig:
    if preset not in PRESETS:
        raise InvalidInput(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)}")
    if config is None:
        return config_for(preset)
    if not isinstance(config, ZSSRConfig):
        raise InvalidInput(f"config must be an sr.ZSSRConfig, got {type(config).__name__}")
    validate(config)
    return config


def per_job(values: PerJob, count: int, name: str) -> list[Any]:
    """One value per job from None, a list of `count`, or a dict keyed by job index."""
    if values is None:
        return [None] * count
    if isinstance(values, Mapping):
        unknown = [key for key in values if not isinstance(key, int) or not 0 <= key < count]
        if unknown:
            raise InvalidInput(f"{name} names job {unknown[0]!r}, but there are {count} images")
        return [values.get(index) for index in range(count)]
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) != count:
        raise InvalidInput(f"{name} must be a list of {count} (one per image) or a dict keyed by image index")
    return list(values)
