"""The CUDA-graph training step (sr.cuda_step): the core's training, replayed from a captured graph."""
from __future__ import annotations

import pytest
import torch

from sr.augment import FatherSource
from sr.cuda_step import WARMUP_STEPS, GraphedTrainingStep, train_stage_graphed
from sr.model import ZSSRNet, build_net
from sr.resize import Degradation
from sr.train import ReconstructionTest, StageHooks, train_stage
from sr.zssr import build_run
from tests.sr.conftest import tiny

SF = (2.0, 2.0)


def test_the_graphed_step_refuses_a_cpu_net(tiny_config):
    with pytest.raises(ValueError, match="CUDA"):
        GraphedTrainingStep(ZSSRNet(3, 8, 3), tiny_config, 1e-3, torch.Size((1, 3, 16, 16)))


def cuda_run(config, lr_image, seed=0):
    generator = torch.Generator().manual_seed(seed)
    net = build_net(lr_image.shape[1], config, lr_image.device, generator)
    run = build_run(net, lr_image, [FatherSource(lr_image, 1.0)], SF, Degradation(), config, generator)
    return run, ReconstructionTest(lr_image, SF, Degradation(), config, torch.Generator().manual_seed(seed))


@pytest.mark.gpu
@pytest.mark.usefixtures("no_tf32")
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_graphed_training_follows_the_eager_loop(photo_tensor, precision):
    config = tiny(max_iters=60, min_iters=10, learning_rate_policy_check_every=10, learning_rate_slope_range=30,
                  run_test_every=3, precision=precision)  # long enough for the policy to drop the rate
    image = photo_tensor.cuda()
    eager, eager_test = cuda_run(config, image)
    train_stage(eager, eager_test, SF, Degradation(), config, StageHooks())
    graphed, graphed_test = cuda_run(config, image)
    train_stage_graphed(graphed, graphed_test, SF, Degradation(), config, StageHooks())
    assert graphed.iteration == eager.iteration == 60
    assert graphed.policy.change_steps == eager.policy.change_steps  # the drops reached the graph
    tolerance = 1e-4 if precision == "float32" else 5e-3
    for mine, theirs in zip(graphed.net.parameters(), eager.net.parameters()):
        assert (mine - theirs).abs().max() <= tolerance


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_learning_rate_set_after_capture_reaches_the_replays(photo_tensor):
    config = tiny()
    net = build_net(3, config, torch.device("cuda"), torch.Generator().manual_seed(0))
    father = photo_tensor[:, :, :16, :16].cuda()
    step = GraphedTrainingStep(net, config, 1e-3, father.shape)
    for _ in range(WARMUP_STEPS + 1):  # the last one captures and replays
        step(father, father * 0.9)
    assert step.graph is not None
    step.set_learning_rate(0.0)
    before = [p.detach().clone() for p in net.parameters()]
    step(father, father * 0.9)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))
