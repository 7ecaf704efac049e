"""Packing: several ZSSR jobs trained at once on one device, so small images do not leave a GPU idle.

The K nets of a pack share one shape (the config's width and depth, the image's channels, the crop side). A pack
has K fixed slots: each layer's weights stacked as [K, out, in, 3, 3], Adam's moments beside them, and per slot a
learning rate, a step count and a mask, all tensors on the device. One step trains every slot: the K nets run as
one grouped convolution per layer ("grouped", the default), one `torch.func.vmap` of `functional_call` ("vmap"),
or each slot with its own convolutions ("streams": the kernels of the job's lone run; on CUDA each slot on its own
stream, so the GPU runs the K nets side by side), then one backward and one Adam update of all slots. On CUDA
(config.cuda_graph, the default) that step is captured once as a CUDA graph and replayed (sr/cuda_step.py).

Everything else stays each job's own, built by the core exactly as `sr.upscale` builds it for that job alone:
its net's initial weights, father pool and generator (from its seed), its reconstruction test, learning-rate
policy and stop rule; a drop writes that slot's rate alone. A job whose training stopped (or that was canceled)
leaves its slot: its mask goes to 0, so the slot no longer changes while the others train on; it is inferred at
once as the core does (`infer_stage`); then its next gradual-SR stage, or else a queued job of the same shape,
enters the slot (weights copied in, a fresh Adam). Entering and leaving write into the slot in place, so the
captured graph is never captured again. The fathers and sons are drawn on each job's own generators outside the
graph and copied into the step's static buffers. A slot left empty at the end of the queue still computes.

Same seed -> same output as `sr.upscale` alone, up to float rounding: the grouped convolution adds in another
order than K separate ones, so weights differ by float32 rounding after each step (see tests/sr/test_packed.py for
the tolerance). In bfloat16 the rounding is coarser and the trainings can drift apart (bench/RESULTS.md).
Checkpoint/resume is not supported for packed jobs (a packed run is short or restarted whole), and only the
reference net (arch="pre") packs.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.func import functional_call, vmap

from sr.augment import FatherSource
from sr.config import PRESETS, ZSSRConfig, config_for, validate
from sr.cuda_step import CapturedStep, cudnn_benchmark, current_graph_options
from sr.errors import Cancelled, InvalidInput
from sr.images import MIN_SIDE, from_tensor, to_tensor
from sr.model import ZSSRNet, autocast_for, build_net
from sr.resize import Degradation, cubic_resize, degradation_for, output_size, son_of
from sr.train import ReconstructionTest, TrainingRun, after_step
from sr.zssr import (Callbacks, ProgressThrottle, build_run, check_zssr_scale, infer_stage, parse_scale,
                     resolve_device, stage_factors, summary_info, torch_threads)

log = logging.getLogger(__name__)

PACKINGS = ("grouped", "vmap", "streams")  # one grouped convolution per layer, torch.func.vmap over
# functional_call, or each slot's own convolutions (on CUDA each slot on its own stream)
ADAM_BETAS = (0.9, 0.999)  # torch.optim.Adam's defaults, which the core's training uses
ADAM_EPS = 1e-8

PerJob = Sequence[Any] | Mapping[int, Any] | None


# --- the K slots: stacked nets, their optimizer, the step ---

class StackedNets:
    """K slots of one net shape: each layer's weights stacked as [K, out, in, 3, 3], allocated once. A job enters a
    slot and leaves it by in-place copies (`load`, `store`), so a step captured as a CUDA graph stays valid."""

    def __init__(self, template: ZSSRNet, slots: int, packing: str):
        self.template = template  # the layer structure vmap's functional_call runs (its own weights are unused)
        self.names = [name for name, _ in template.named_parameters()]
        self.packing = packing
        self.weights = [torch.zeros((slots, *p.shape), dtype=p.dtype, device=p.device).requires_grad_()
                        for p in template.parameters()]
        self._streams: list[torch.cuda.Stream] | None = None

    @property
    def slots(self) -> int:
        return self.weights[0].shape[0]

    @torch.no_grad()
    def load(self, slot: int, net: ZSSRNet) -> None:
        """The job's net's weights into the slot."""
        for weights, parameter in zip(self.weights, net.parameters()):
            weights[slot].copy_(parameter)

    @torch.no_grad()
    def store(self, slot: int, net: ZSSRNet) -> None:
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
        if self.packing == "streams":
            return self._per_slot(up_images, channels_last)
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

    def _per_slot(self, up_images: torch.Tensor, channels_last: bool) -> torch.Tensor:
        """Each slot's net on its own input with the very kernels of its lone run; on CUDA each slot on a stream of
        its own, so a captured graph holds K independent branches that the GPU runs side by side."""
        layers = [weights.unbind(0) for weights in self.weights]  # one node: its backward stacks the K gradients
        streams = self._side_streams(up_images.device)
        main = torch.cuda.current_stream(up_images.device) if streams else None
        predictions = []
        for slot in range(self.slots):
            if streams:
                streams[slot].wait_stream(main)
            with torch.cuda.stream(streams[slot]) if streams else nullcontext():
                up_image = up_images[slot]
                hidden = up_image.contiguous(memory_format=torch.channels_last) if channels_last else up_image
                for layer, weights in enumerate(layers):
                    hidden = F.conv2d(hidden, weights[slot], padding=1)
                    if layer < len(layers) - 1:
                        hidden = F.relu(hidden)
                predictions.append(up_image + hidden.float())
        if streams:
            for stream in streams:
                main.wait_stream(stream)
        return torch.stack(predictions)

    def _side_streams(self, device: torch.device) -> list[torch.cuda.Stream] | None:
        if device.type != "cuda":
            return None
        if self._streams is None:
            self._streams = [torch.cuda.Stream(device) for _ in range(self.slots)]
        return self._streams


class StackedAdam:
    """torch.optim.Adam's update (its defaults, as the core uses it) over the stacked weights, with one learning rate,
    one step count and one mask value per slot, all tensors on the device that the step reads in place: slot k
    changes as job k's own Adam would change its net, and a slot whose mask is 0 does not change at all.

    The step counts and learning rates are float64, as torch's Adam computes its bias corrections in Python floats;
    setting a slot's rate or mask is a one-element write, never a host sync."""

    def __init__(self, weights: list[torch.Tensor]):
        slots, device = weights[0].shape[0], weights[0].device
        self.exp_avg = [torch.zeros_like(w) for w in weights]
        self.exp_avg_sq = [torch.zeros_like(w) for w in weights]
        self.steps = torch.zeros(slots, dtype=torch.float64, device=device)
        self.learning_rates = torch.zeros(slots, dtype=torch.float64, device=device)
        self.mask = torch.zeros(slots, dtype=torch.float64, device=device)  # 1.0 where a job trains

    @torch.no_grad()
    def reset(self, slot: int, learning_rate: float) -> None:
        """A fresh Adam for a job entering the slot."""
        for moments in (*self.exp_avg, *self.exp_avg_sq):
            moments[slot].zero_()
        self.steps[slot] = 0.0
        self.learning_rates[slot] = learning_rate
        self.mask[slot] = 1.0

    @torch.no_grad()
    def set_learning_rate(self, slot: int, learning_rate: float) -> None:
        self.learning_rates[slot] = learning_rate

    @torch.no_grad()
    def vacate(self, slot: int) -> None:
        self.mask[slot] = 0.0

    @torch.no_grad()
    def step(self, weights: list[torch.Tensor]) -> None:
        beta1, beta2 = ADAM_BETAS
        self.steps.add_(self.mask)
        steps = self.steps.clamp(min=1.0)  # a slot that never stepped: any finite correction, its step size is 0
        shape = (-1, 1, 1, 1, 1)
        step_size = (-self.learning_rates * self.mask / (1 - beta1 ** steps)).float().reshape(shape)
        correction2_sqrt = ((1 - beta2 ** steps) ** 0.5).float().reshape(shape)
        for w, exp_avg, exp_avg_sq in zip(weights, self.exp_avg, self.exp_avg_sq):
            # An empty slot still has a gradient (from its last job's weights and buffers): it moves only that slot's
            # moments, which the next job to enter resets
            grad = w.grad
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = (exp_avg_sq.sqrt() / correction2_sqrt).add_(ADAM_EPS)
            w.add_(step_size * exp_avg / denom)  # addcdiv's order: value * exp_avg / denom


class PackStep:
    """One training step of all K slots on static buffers (hr_fathers and upscaled lr_sons, [K,B,C,h,w]): the K
    nets' forward, each slot's L1 loss, one backward, the masked Adam (an empty slot computes, but does not change). On CUDA with
    config.cuda_graph it is captured once as a CUDA graph (sr.cuda_step.CapturedStep) and replayed for every step of
    the pack, whichever jobs come and go: they change only the slots' weights, moments, rates and masks in place."""

    def __init__(self, nets: StackedNets, adam: StackedAdam, config: ZSSRConfig, sample_shape: tuple[int, ...]):
        device = nets.weights[0].device
        self.nets, self.adam, self.config, self.device = nets, adam, config, device
        self.hr_fathers = torch.zeros(sample_shape, device=device)
        self.lr_sons_up = torch.zeros(sample_shape, device=device)
        self.captured = CapturedStep(self._forward_backward_update, nets.zero_grad, device) \
            if config.cuda_graph and device.type == "cuda" else None

    @property
    def graphed(self) -> bool:
        return self.captured is not None

    def __call__(self) -> torch.Tensor:
        """One step -> the K losses [K] (a device tensor; when graphed, overwritten by the next replay)."""
        if self.captured is not None:
            return self.captured()
        self.nets.zero_grad()
        return self._forward_backward_update()

    def _forward_backward_update(self) -> torch.Tensor:
        with autocast_for(self.config, self.device):
            predictions = self.nets.forward(self.lr_sons_up, self.config.channels_last)
        losses = (predictions - self.hr_fathers).abs().flatten(1).mean(dim=1)  # [K]: each job's L1, as F.l1_loss
        losses.sum().backward()  # the slots share no weight: each slot's gradient is its own loss's
        self.adam.step(self.nets.weights)
        return losses.detach()


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

    def finish_stage(self, graphed: bool = False) -> bool:
        """The stage's inference as the core does it; True when another stage follows."""
        run = self.run
        run.finished = True
        self.throttle.report("training", self.steps_before + run.iteration, self.steps_before + run.iteration, None,
                             run.policy.learning_rate, final=True)
        stage_sf = self.stages[self.stage]
        output, stage_info = infer_stage(run, self.test, self.lr_image, stage_sf, self.degradation, self.config,
                                         self.stage, self.callbacks, self.throttle, seed=self.seed + self.stage)
        stage_info.update(train_steps=run.iteration, learning_rate=run.policy.learning_rate,
                          learning_rate_changes=list(run.policy.change_steps[1:]), cuda_graph=graphed)
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
    """Jobs of one shape trained in K fixed slots (K = size, or fewer when fewer jobs are queued): a job that stops
    leaves its slot (its mask set to 0) and the next queued job, or its own next gradual-SR stage, takes it; the
    other slots go on untouched, and a captured step is never captured again."""

    def __init__(self, queue: list[PackedJob], size: int, packing: str):
        self.queue = queue  # jobs of this shape not yet started
        first = queue[0]
        self.config = config = first.config
        slots = min(size, len(queue))
        self.jobs: list[PackedJob | None] = [None] * slots
        self.nets = StackedNets(first.net, slots, packing)
        self.adam = StackedAdam(self.nets.weights)
        channels, crop = first.shape_key
        self.step = PackStep(self.nets, self.adam, config, (slots, config.batch_size, channels, crop, crop))
        self._learning_rates: list[float | None] = [None] * slots  # what each slot's rate on the device holds
        self._active_index: tuple[list[int], torch.Tensor] | None = None  # the occupied slots, as a device index

    def run(self) -> None:
        with cudnn_benchmark(current_graph_options().cudnn_benchmark):
            self._run()

    def _run(self) -> None:
        for slot in range(len(self.jobs)):
            self._fill(slot)
        while any(self.jobs):
            # As the core's loop: each job's should_stop before each of its steps
            canceled = [job for job in self.jobs if job is not None and job.callbacks.stop_requested()]
            for job in canceled:
                job.canceled = True
            if not canceled:
                self._step()
            for slot, job in enumerate(self.jobs):
                if job is not None and (job.canceled or job.training_done):
                    self._leave(slot)

    def _step(self) -> None:
        """One training step of every occupied slot: each job draws its own fathers, then one step for all."""
        config = self.config
        occupied = [(slot, job) for slot, job in enumerate(self.jobs) if job is not None]
        jobs = [job for _, job in occupied]
        hr_fathers = torch.stack([job.run.pool.sample(config.batch_size) for job in jobs])  # [A,B,C,h,w]
        with torch.no_grad():
            # Jobs of one pack may be in different gradual-SR stages: each son with its own job's stage sf
            lr_sons_up = packed_sons(hr_fathers, [job.stages[job.stage] for job in jobs], jobs[0].degradation,
                                     config.noise_std, [job.run.generator for job in jobs])
            self._into_slots(self.step.hr_fathers, hr_fathers, occupied)
            self._into_slots(self.step.lr_sons_up, lr_sons_up, occupied)
        for slot, job in occupied:
            if job.run.policy.learning_rate != self._learning_rates[slot]:  # a drop reaches this slot alone
                self._learning_rates[slot] = job.run.policy.learning_rate
                self.adam.set_learning_rate(slot, job.run.policy.learning_rate)
        losses = self.step()
        for slot, job in occupied:
            if job.run.iteration % config.run_test_every == 0:
                self.nets.store(slot, job.net)  # the test runs the job's own net
            job.after_packed_step(losses[slot])

    def _into_slots(self, buffer: torch.Tensor, values: torch.Tensor, occupied: list[tuple[int, PackedJob]]) -> None:
        """values [A,...] of the A occupied slots into the static buffer [K,...], in place."""
        if len(occupied) == len(self.jobs):
            buffer.copy_(values)
            return
        slots = [slot for slot, _ in occupied]
        if self._active_index is None or self._active_index[0] != slots:
            # Built once per change of the occupied slots: a list -> device copy waits for the device
            self._active_index = slots, torch.tensor(slots, device=buffer.device)
        buffer.index_copy_(0, self._active_index[1], values)

    def _fill(self, slot: int) -> None:
        """The next queued job (one whose stop was asked for before it started is dropped) into the empty slot."""
        while self.queue:
            job = self.queue.pop(0)
            if job.callbacks.stop_requested():
                job.canceled = True
                continue
            job.start_stage()
            self._enter(slot, job)
            return

    def _enter(self, slot: int, job: PackedJob) -> None:
        self.nets.load(slot, job.net)
        self.adam.reset(slot, job.run.policy.learning_rate)
        self._learning_rates[slot] = job.run.policy.learning_rate
        self.jobs[slot] = job

    def _leave(self, slot: int) -> None:
        """The slot's job gets its weights back and is inferred (a canceled one is dropped); its next stage, or
        else a queued job, starts fresh in the slot."""
        job = self.jobs[slot]
        self.nets.store(slot, job.net)
        self.adam.vacate(slot)
        self._learning_rates[slot] = None
        self.jobs[slot] = None
        if self._next_stage(job, self.step.graphed):
            self._enter(slot, job)
        else:
            self._fill(slot)

    @staticmethod
    def _next_stage(job: PackedJob, graphed: bool) -> bool:
        """Infer the job's finished stage; True when it goes on training its next stage in the pack."""
        if job.canceled:
            return False
        try:
            if not job.finish_stage(graphed):
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
        log.info("packing %d job(s) of %d channel(s), crop %d, in %d slot(s)", len(queue), channels, crop,
                 min(pack_size, len(queue)))
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
    if config.arch != "pre":
        raise InvalidInput("packing runs the reference net only (config arch 'pre')")
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
