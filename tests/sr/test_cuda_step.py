"""The CUDA-graph training step (sr.cuda_step): the core's training, replayed from a captured graph; what
sr.upscale trains a fresh stage with on CUDA, and the checkpoint it leaves."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import sr
from sr.augment import FatherSource
from sr.checkpoint import eager_optimizer_state
from sr.cuda_step import (WARMUP_STEPS, GraphedTrainingStep, GraphOptions, current_graph_options, graph_options,
                          steps_before_the_host_looks, train_stage_for, train_stage_graphed)
from sr.model import ZSSRNet, build_net
from sr.resize import Degradation
from sr.train import ReconstructionTest, StageHooks, train_stage
from sr.zssr import build_run
from tests.sr.conftest import as_array, tiny

SF = (2.0, 2.0)


def test_the_graphed_step_refuses_a_cpu_net(tiny_config):
    with pytest.raises(ValueError, match="CUDA"):
        GraphedTrainingStep(ZSSRNet(3, 8, 3), tiny_config, 1e-3, torch.Size((1, 3, 16, 16)))


def test_on_the_cpu_or_with_cuda_graph_off_a_stage_trains_on_the_eager_loop(tiny_config, photo_tensor):
    run, _ = cuda_run(tiny_config, photo_tensor)  # on the CPU
    assert train_stage_for(run, tiny_config) is train_stage
    assert train_stage_for(run, dataclasses.replace(tiny_config, cuda_graph=False)) is train_stage


def test_a_checkpoint_holds_adams_state_as_an_eager_adam_on_any_device_loads_it():
    net = ZSSRNet(3, 8, 3)
    learning_rate = torch.tensor(1e-3)
    graphed_adam = torch.optim.Adam(net.parameters(), lr=learning_rate, capturable=True)  # as the graphed step's
    for parameter in net.parameters():
        graphed_adam.state[parameter] = {"step": torch.tensor(7.0), "exp_avg": torch.zeros_like(parameter),
                                         "exp_avg_sq": torch.zeros_like(parameter)}
    state = eager_optimizer_state(graphed_adam)
    assert [(type(g["lr"]), g["lr"], g["capturable"]) for g in state["param_groups"]] == [(float, pytest.approx(1e-3),
                                                                                            False)]
    assert graphed_adam.param_groups[0]["lr"] is learning_rate and graphed_adam.param_groups[0]["capturable"]
    eager = torch.optim.Adam(net.parameters(), lr=1e-3)
    eager.load_state_dict(state)
    net(torch.rand(1, 3, 16, 16)).sum().backward()
    eager.step()  # a capturable group would refuse CPU parameters here
    assert float(eager.state[next(net.parameters())]["step"]) == 8


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


def stage_detail(result, key):
    return result.info["sr"]["stage_details"][0][key]


@pytest.mark.gpu
@pytest.mark.usefixtures("no_tf32")
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_upscale_on_cuda_trains_through_the_graph_as_the_eager_loop_does(photo):
    config = tiny(max_iters=60, min_iters=10, learning_rate_policy_check_every=10, learning_rate_slope_range=30,
                  run_test_every=3)
    graphed = sr.upscale(photo, 2, config=config, seed=0, device="cuda")
    eager = sr.upscale(photo, 2, config=dataclasses.replace(config, cuda_graph=False), seed=0, device="cuda")
    assert stage_detail(graphed, "cuda_graph") and not stage_detail(eager, "cuda_graph")
    assert stage_detail(graphed, "learning_rate_changes") == stage_detail(eager, "learning_rate_changes")
    assert graphed.info["sr"]["train_steps"] == eager.info["sr"]["train_steps"]
    assert np.abs(as_array(graphed) - as_array(eager)).max() <= 1


@pytest.mark.gpu
@pytest.mark.usefixtures("no_tf32")
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("device, tolerance", [("cuda", 1), ("cpu", 3)])
def test_a_graphed_runs_checkpoint_resumes_on_the_eager_loop(photo, device, tolerance):
    config = tiny(max_iters=30, min_iters=30, checkpoint_every=10, augment_pool_size=4)
    saved = []
    uninterrupted = sr.upscale(photo, 2, config=config, seed=5, device="cuda", checkpoint=saved.append)
    assert stage_detail(uninterrupted, "cuda_graph") and len(saved) == 3
    resumed = sr.upscale(photo, 2, config=config, seed=5, device=device, resume=saved[0])
    assert not stage_detail(resumed, "cuda_graph")  # a resumed stage runs the eager loop
    assert resumed.info["sr"]["train_steps"] == 30
    assert np.abs(as_array(resumed) - as_array(uninterrupted)).max() <= tolerance  # CPU and GPU round differently


@pytest.mark.parametrize("iteration, checkpoint_every, limit, expected", [
    (0, 0, 8, 1),  # the test after step 0
    (1, 0, 8, 8),  # nothing to look at within 8 steps
    (1, 0, 4, 4),
        (10, 0, 8, 6),  # the test after step 15 (run_test_every 15)
    (25, 0, 8, 5),  # the policy check after step 29 (check every 30)
    (1, 4, 8, 3),  # a checkpoint after step 3 (the 4th)
    (57, 0, 8, 3),  # the stage's last step, 59 (max_iters 60)
])
def test_steps_run_back_to_back_up_to_the_next_moment_the_host_looks(iteration, checkpoint_every, limit, expected):
    config = tiny(max_iters=60, run_test_every=15, learning_rate_policy_check_every=30)
    assert steps_before_the_host_looks(iteration, config, checkpoint_every, limit) == expected


def policy_config(**overrides):
    """Long enough for the policy to drop the learning rate (init_variance pinned at the reference's 0.1: the CPU
    presets' 1.0 moves the drops past the end here)."""
    return tiny(**{"init_variance": 0.1, "max_iters": 60, "min_iters": 10, "learning_rate_policy_check_every": 10,
                   "learning_rate_slope_range": 30, "run_test_every": 3, **overrides})


def train_uncaptured(config, image, **options):
    run, test = cuda_run(config, image)
    with graph_options(**options):
        train_stage_graphed(run, test, SF, Degradation(), config, StageHooks(), capture=False)
    return run


def test_several_steps_per_replay_train_as_one_step_per_replay(photo_tensor):
    config = policy_config(run_test_every=5, min_iters=6)  # tests at 0, 5, 10...; checks after 9, 19, 29...
    one = train_uncaptured(config, photo_tensor)
    several = train_uncaptured(config, photo_tensor, steps_per_replay=4)
    assert several.iteration == one.iteration == 60 and len(one.policy.change_steps) > 1
    assert several.policy == one.policy  # the same tests at the same steps, the same drops
    for mine, theirs in zip(several.net.parameters(), one.net.parameters()):
        assert torch.equal(mine, theirs)
    eager, eager_test = cuda_run(config, photo_tensor)  # and the loop is the core's, up to the lr's float32 rounding
    train_stage(eager, eager_test, SF, Degradation(), config, StageHooks())
    assert eager.policy.change_steps == one.policy.change_steps
    for mine, theirs in zip(one.net.parameters(), eager.net.parameters()):
        assert (mine - theirs).abs().max() <= 1e-5


def test_a_stop_asked_for_within_a_run_of_steps_stops_before_it(photo_tensor):
    config = policy_config()
    calls = []

    def should_stop() -> bool:
        calls.append(1)
        return len(calls) > 10

    run, test = cuda_run(config, photo_tensor)
    with graph_options(steps_per_replay=8), pytest.raises(sr.Cancelled):
        train_stage_graphed(run, test, SF, Degradation(), config, StageHooks(should_stop=should_stop),
                            capture=False)
    assert run.iteration <= 10


def test_graph_options_are_checked_and_restored():
    with pytest.raises(ValueError, match="steps_per_replay"):
        with graph_options(steps_per_replay=0):
            pass
    with graph_options(steps_per_replay=3, cudnn_benchmark=True) as options:
        assert current_graph_options() == options == GraphOptions(3, True)
    assert current_graph_options() == GraphOptions()


@pytest.mark.gpu
@pytest.mark.usefixtures("no_tf32")
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("options", [{"steps_per_replay": 4}, {"cudnn_benchmark": True},
                                     {"steps_per_replay": 8, "cudnn_benchmark": True}])
def test_graph_options_on_cuda_train_as_the_plain_graph(photo_tensor, options):
    config = policy_config(run_test_every=5, min_iters=6)
    image = photo_tensor.cuda()
    plain, plain_test = cuda_run(config, image)
    train_stage_graphed(plain, plain_test, SF, Degradation(), config, StageHooks())
    run, test = cuda_run(config, image)
    with graph_options(**options):
        train_stage_graphed(run, test, SF, Degradation(), config, StageHooks())
    assert run.iteration == plain.iteration and run.policy.change_steps == plain.policy.change_steps
    for mine, theirs in zip(run.net.parameters(), plain.net.parameters()):
        assert (mine - theirs).abs().max() <= 1e-4
