from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import sr
from sr.augment import FatherPool, FatherSource
from sr.model import build_net
from sr.resize import Degradation
from sr.train import ReconstructionTest, StageHooks, central_crop, new_run, train_stage
from tests.sr.conftest import tiny

SF = (2.0, 2.0)


def run_for(config, lr_image, seed=0):
    generator = torch.Generator().manual_seed(seed)
    net = build_net(lr_image.shape[1], config, torch.device("cpu"), generator)
    pool = FatherPool([FatherSource(lr_image, 1.0)], config, crop_size=min(config.crop_size, *lr_image.shape[-2:]),
                      max_scale=1.0, rotations=True, axes_may_swap=True, generator=generator)
    test = ReconstructionTest(lr_image, SF, Degradation(), config, torch.Generator().manual_seed(seed))
    return new_run(net, pool, config, generator), test


def test_training_lowers_the_reconstruction_error(photo_tensor):
    config = tiny(max_iters=60, min_iters=60, learning_rate=3e-3)
    run, test = run_for(config, photo_tensor)
    before = test.error(run.net)
    train_stage(run, test, SF, Degradation(), config, StageHooks())
    assert run.iteration == 60 and test.error(run.net) < before
    assert run.policy.test_steps == tuple(range(0, 60, 5))


class FlatNoisyTest:
    """A reconstruction test whose error is flat with noise: the policy must drop the learning rate."""

    cubic_error = 1.0

    def __init__(self):
        self.noise = iter(np.random.default_rng(0).normal(0.01, 1e-4, 10_000))

    def error(self, net) -> float:
        return float(next(self.noise))


def test_learning_rate_drops_reach_the_optimizer_and_three_of_them_stop_training(photo_tensor):
    config = tiny(max_iters=200, min_iters=9, min_learning_rate=9e-6, learning_rate_policy_check_every=10,
                  learning_rate_slope_range=20, run_test_every=2)
    run, _ = run_for(config, photo_tensor)
    train_stage(run, FlatNoisyTest(), SF, Degradation(), config, StageHooks())
    changes = run.policy.change_steps
    assert len(changes) == 4 and all((1 + step) % 10 == 0 for step in changes[1:])  # at check steps only
    assert all(later - earlier > 9 for earlier, later in zip(changes, changes[1:]))  # min_iters apart
    assert run.iteration == changes[-1] + 1 < 200  # 1e-3 -> 1e-6 < 9e-6: stopped right after the third drop
    assert run.optimizer.param_groups[0]["lr"] == pytest.approx(run.policy.learning_rate) == pytest.approx(1e-6)


def test_a_stop_request_cancels_within_one_step(photo_tensor):
    config = tiny(max_iters=100)
    run, test = run_for(config, photo_tensor)
    steps = []
    hooks = StageHooks(should_stop=lambda: len(steps) >= 7, on_step=lambda step, loss, lr: steps.append(step))
    with pytest.raises(sr.Cancelled):
        train_stage(run, test, SF, Degradation(), config, hooks)
    assert run.iteration == 7


def test_the_loss_reaches_the_hook_as_a_device_tensor(photo_tensor):
    config = tiny(max_iters=3)
    run, test = run_for(config, photo_tensor)
    losses = []
    train_stage(run, test, SF, Degradation(), config, StageHooks(on_step=lambda s, loss, lr: losses.append(loss)))
    assert len(losses) == 3 and all(isinstance(loss, torch.Tensor) and loss.dim() == 0 for loss in losses)


def test_checkpoints_are_taken_every_n_steps(photo_tensor):
    config = tiny(max_iters=20, checkpoint_every=6)
    run, test = run_for(config, photo_tensor)
    taken = []
    train_stage(run, test, SF, Degradation(), config, StageHooks(on_checkpoint=lambda r: taken.append(r.iteration),
                                                                 checkpoint_every=6))
    assert taken == [6, 12, 18]


def test_the_test_crop_is_central():
    image = torch.arange(100.0).reshape(1, 1, 10, 10)
    assert torch.equal(central_crop(image, 4), image[:, :, 3:7, 3:7])
    assert central_crop(image, 0) is image and central_crop(image, 12) is image


def test_batches_and_bfloat16_train_too(photo_tensor):
    config = dataclasses.replace(tiny(max_iters=4), batch_size=3, precision="bfloat16")
    run, test = run_for(config, photo_tensor)
    train_stage(run, test, SF, Degradation(), config, StageHooks())
    assert run.iteration == 4 and all(torch.isfinite(p).all() for p in run.net.parameters())
