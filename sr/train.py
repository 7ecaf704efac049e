"""Training one stage of ZSSR on one image: draw hr_fathers, make their lr_sons, one L1 + Adam step each, test the
reconstruction every `run_test_every` steps, apply the learning-rate policy, stop.

Host syncs: the loss stays on the device; `.item()` happens only in the reconstruction test (the policy needs
its value) and when a progress report is due (a few times per second at most).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from sr.augment import FatherPool
from sr.config import ZSSRConfig
from sr.errors import Cancelled
from sr.inference import plan_tiles, run_net_tiled, tile_side
from sr.model import ZSSRNet, autocast_for, prepare_input
from sr.policy import PolicyState, apply_policy, should_stop
from sr.resize import Degradation, son_of


@dataclass
class TrainingRun:
    """The mutable state of one stage's training: what a checkpoint saves and a resume restores."""

    net: ZSSRNet
    optimizer: torch.optim.Optimizer
    policy: PolicyState
    pool: FatherPool
    generator: torch.Generator  # per-step randomness (father choices, son noise)
    iteration: int = 0  # steps done in this stage
    finished: bool = False


@dataclass(frozen=True)
class StageHooks:
    """What the loop calls out to: the stop check, the throttled progress report, the checkpoint."""

    should_stop: Callable[[], bool] = lambda: False
    on_step: Callable[[int, torch.Tensor, float], None] = lambda step, loss, learning_rate: None
    on_checkpoint: Callable[[TrainingRun], None] | None = None
    checkpoint_every: int = 0


class ReconstructionTest:
    """The reference's quick test: MSE between the lr image (or a fixed central crop of it) and the net's
    rebuild of it from its own lr_son; beside it, the same error for plain cubic (the self-check's baseline)."""

    def __init__(self, lr_image: torch.Tensor, sf: tuple[float, float], degradation: Degradation,
                 config: ZSSRConfig, generator: torch.Generator):
        self.target = central_crop(lr_image, config.test_crop)
        # The son's noise (noise_std) is drawn once: every test measures the same thing.
        self.son_up = son_of(self.target, sf, degradation, config.noise_std, generator)
        self.config = config
        self.cubic_error = float(F.mse_loss(self.son_up, self.target))

    @torch.no_grad()
    def rebuild(self, net: ZSSRNet) -> torch.Tensor:
        # In tiles, as inference: the whole of a large image in one pass would not fit the memory budget.
        height, width = self.son_up.shape[-2:]
        tiles = plan_tiles(height, width, tile_side(self.config, self.son_up.shape[1]), net.receptive_radius,
                           net.tile_multiple)
        return run_net_tiled(net, self.son_up, 0, tiles, self.config)

    def error(self, net: ZSSRNet) -> float:
        was_training = net.training
        net.eval()
        try:
            return float(F.mse_loss(self.rebuild(net), self.target))  # a host sync, every run_test_every steps only
        finally:
            net.train(was_training)


def central_crop(image: torch.Tensor, side: int) -> torch.Tensor:
    """The central side x side crop of [N,C,H,W] (the whole image when side is 0 or larger than it)."""
    height, width = image.shape[-2:]
    if side <= 0 or (side >= height and side >= width):
        return image
    crop_h, crop_w = min(side, height), min(side, width)
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    return image[:, :, top:top + crop_h, left:left + crop_w]


def next_sample(run: TrainingRun, sf: tuple[float, float], degradation: Degradation, config: ZSSRConfig,
                hooks: StageHooks) -> tuple[torch.Tensor, torch.Tensor]:
    """One step's (hr_father, lr_son_up) from the run's pool; Cancelled first when a stop was asked for."""
    if hooks.should_stop():
        raise Cancelled()
    hr_father = run.pool.sample(config.batch_size)
    with torch.no_grad():
        lr_son_up = son_of(hr_father, sf, degradation, config.noise_std, run.generator)
    return hr_father, lr_son_up


def train_stage(run: TrainingRun, test: ReconstructionTest, sf: tuple[float, float], degradation: Degradation,
                config: ZSSRConfig, hooks: StageHooks) -> TrainingRun:
    """Train until the learning rate falls below its minimum or max_iters steps; resumes at run.iteration."""
    net, optimizer = run.net, run.optimizer
    net.train()
    set_learning_rate(optimizer, run.policy.learning_rate)
    device = next(net.parameters()).device
    while run.iteration < config.max_iters and not run.finished:
        hr_father, lr_son_up = next_sample(run, sf, degradation, config, hooks)
        with autocast_for(config, device):
            prediction = net(prepare_input(lr_son_up, config))
        loss = F.l1_loss(prediction, hr_father)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        run.finished = after_step(run, test, config)
        run.iteration += 1
        hooks.on_step(run.iteration, loss.detach(), run.policy.learning_rate)
        checkpoint_when_due(run, hooks)
    run.finished = True
    return run


def checkpoint_when_due(run: TrainingRun, hooks: StageHooks) -> None:
    if hooks.on_checkpoint and hooks.checkpoint_every and run.iteration % hooks.checkpoint_every == 0:
        hooks.on_checkpoint(run)


def after_step(run: TrainingRun, test: ReconstructionTest, config: ZSSRConfig) -> bool:
    """The reference's bookkeeping after step `run.iteration`: test, policy, stop rule. True = stop."""
    iteration = run.iteration
    if iteration % config.run_test_every == 0:
        run.policy = run.policy.with_test(iteration, test.error(run.net), test.cubic_error)
    policy = apply_policy(iteration, run.policy, config)
    if policy.learning_rate != run.policy.learning_rate:
        set_learning_rate(run.optimizer, policy.learning_rate)  # the drop must reach the optimizer itself
    run.policy = policy
    return should_stop(policy, config)


def set_learning_rate(optimizer: torch.optim.Optimizer, learning_rate: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = learning_rate


def new_run(net: ZSSRNet, pool: FatherPool, config: ZSSRConfig, generator: torch.Generator) -> TrainingRun:
    optimizer = torch.optim.Adam(net.parameters(), lr=config.learning_rate)
    return TrainingRun(net, optimizer, PolicyState(config.learning_rate), pool, generator)
