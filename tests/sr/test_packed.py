"""Packing (sr.packed): several jobs trained at once give each job what it gives alone, a canceled job drops out."""
from __future__ import annotations

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

import sr
from sr.packed import PACKINGS, Pack, PackedJob, StackedAdam, StackedNets, train_and_infer, upscale_many
from sr.model import ZSSRNet
from sr.resize import Degradation
from sr.zssr import Callbacks, zssr
from tests.sr.conftest import as_array, tiny

SF = (2.0, 2.0)
FLOAT32_TOLERANCE = 1e-5  # measured: at most 2.4e-7 apart (the grouped convolution adds in another order)
BFLOAT16_TOLERANCE = 2e-3  # measured: up to 5e-4 apart with vmap (bfloat16 rounding of the same sums)


def policy_config(**overrides) -> sr.ZSSRConfig:
    """Tiny, but long enough for the learning-rate policy to act (tests every 3 steps, checks every 10).

    init_variance pinned at the reference 0.1: the CPU presets start wider (1.0), which moves the drops."""
    return tiny(**{"init_variance": 0.1, "max_iters": 40, "min_iters": 10, "learning_rate_policy_check_every": 10,
                   "learning_rate_slope_range": 30, "run_test_every": 3, **overrides})


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    """Three RGB photos of different sizes (one pack shape: crop 16)."""
    astronaut = Image.fromarray(skimage.data.astronaut())
    return [astronaut.crop((200, 80, 240, 112)), astronaut.crop((100, 100, 148, 136)),
            Image.fromarray(skimage.data.chelsea()).crop((0, 0, 44, 40))]


def alone(photos, config, seeds):
    return [sr.upscale(image, 2, config=config, seed=seed) for image, seed in zip(photos, seeds)]


def packed_tensors(tensors, config, pack_size, packing):
    jobs = [PackedJob(i, t, SF, config, Degradation(), seed=i, callbacks=Callbacks()) for i, t in enumerate(tensors)]
    train_and_infer(jobs, pack_size, packing)
    return jobs


@pytest.mark.parametrize("packing", ["grouped", "vmap"])
def test_each_packed_job_gives_what_it_gives_alone(photos, packing):
    config = policy_config()
    # pack_size 2 of 3 jobs: the third takes the slot of the first to finish
    packed = upscale_many(photos, 2, config=config, seeds=[0, 1, 2], pack_size=2, packing=packing)
    for result, expected in zip(packed, alone(photos, config, [0, 1, 2])):
        assert result.size == expected.size and result.mode == expected.mode
        assert np.abs(as_array(result) - as_array(expected)).max() <= 1  # 8-bit rounding of a 1e-7 difference
        for key in ("train_steps", "learning_rate", "learning_rate_changes", "seed"):
            assert result.info["sr"][key] == expected.info["sr"][key]
    assert any(r.info["sr"]["learning_rate_changes"] for r in packed)  # the policy did act


@pytest.mark.parametrize("packing, overrides, tolerance", [
    ("grouped", {}, FLOAT32_TOLERANCE),
    ("vmap", {}, FLOAT32_TOLERANCE),
    ("grouped", {"noise_std": 0.0125, "batch_size": 3}, FLOAT32_TOLERANCE),  # each job's noise: its own generator
    ("grouped", {"scale_factors": [1.5], "max_iters": 12}, FLOAT32_TOLERANCE),  # gradual SR: stage 2 re-enters
    # Each job stops at its own step: one job's stage 2 trains beside the others' stage 1 (another sf)
    ("grouped", {"scale_factors": [1.5], "max_iters": 60, "min_learning_rate": 5e-4}, FLOAT32_TOLERANCE),
    ("vmap", {"scale_factors": [1.5], "max_iters": 10, "init_net_for_each_sf": True}, FLOAT32_TOLERANCE),
    ("grouped", {"output_flip": True, "ensemble_size": 8, "back_projection_iters": [3]}, FLOAT32_TOLERANCE),
    ("grouped", {"precision": "bfloat16"}, BFLOAT16_TOLERANCE),
    ("grouped", {"precision": "bfloat16", "channels_last": True}, BFLOAT16_TOLERANCE),  # as balanced and paper
    ("vmap", {"precision": "bfloat16"}, BFLOAT16_TOLERANCE),
])
def test_packed_outputs_match_the_core_within_float_tolerance(photos, packing, overrides, tolerance):
    config = policy_config(**overrides)
    tensors = [sr.images.to_tensor(image)[0] for image in photos]
    for job, tensor in zip(packed_tensors(tensors, config, 2, packing), tensors):
        expected, info = zssr(tensor, SF, config, degradation=Degradation(), seed=job.index)
        assert job.output.shape == expected.shape
        assert (job.output - expected).abs().max() <= tolerance
        assert job.info()["train_steps"] == info["train_steps"]
        assert job.info()["learning_rate_changes"] == info["learning_rate_changes"]


def test_a_stopped_job_is_frozen_while_the_others_train_on(photos):
    # The first drop takes the learning rate below its minimum: each job stops at its own step
    config = policy_config(max_iters=60, min_learning_rate=5e-4)
    tensors = [sr.images.to_tensor(image)[0] for image in photos]
    jobs = packed_tensors(tensors, config, 3, "grouped")
    steps = [job.info()["train_steps"] for job in jobs]
    assert min(steps) < 60 and len(set(steps)) > 1
    for job, tensor in zip(jobs, tensors):
        expected, _ = zssr(tensor, SF, config, degradation=Degradation(), seed=job.index)
        assert (job.output - expected).abs().max() <= FLOAT32_TOLERANCE


def test_stacked_adam_is_torchs_adam_per_slot_with_its_own_rate_and_mask():
    generator = torch.Generator().manual_seed(0)
    shapes = [(4, 3, 3, 3), (3, 4, 3, 3)]
    weights = [torch.randn(3, *s, generator=generator).requires_grad_() for s in shapes]
    singles = [[w[k].detach().clone().requires_grad_() for w in weights] for k in range(2)]
    optimizers = [torch.optim.Adam(params, lr=lr) for params, lr in zip(singles, [1e-3, 1e-4])]
    adam = StackedAdam(weights)
    adam.reset(0, 1e-3)
    adam.reset(1, 1e-4)  # slot 2 stays empty: its mask is 0
    empty_before = [w[2].detach().clone() for w in weights]
    for step in range(8):
        if step == 4:  # a drop for job 1 alone, as the policy makes it
            adam.set_learning_rate(1, 1e-5)
            optimizers[1].param_groups[0]["lr"] = 1e-5
        grads = [torch.randn(w.shape, generator=generator) for w in weights]
        for w, g in zip(weights, grads):
            w.grad = g
        adam.step(weights)
        for k, (params, optimizer) in enumerate(zip(singles, optimizers)):
            for p, g in zip(params, grads):
                p.grad = g[k].clone()
            optimizer.step()
    for k, params in enumerate(singles):
        for w, p in zip(weights, params):
            assert torch.allclose(w[k], p, atol=1e-7, rtol=0)
    assert all(torch.equal(w[2], before) for w, before in zip(weights, empty_before))  # it had gradients
    assert adam.steps.tolist() == [8.0, 8.0, 0.0]
    # A job entering slot 0 starts a fresh Adam there; slot 1 keeps its moments and step count
    adam.reset(0, 1e-3)
    assert adam.steps.tolist() == [0.0, 8.0, 0.0] and not adam.exp_avg[0][0].any() and adam.exp_avg[0][1].any()


def test_a_vacated_slot_is_frozen_while_the_others_step():
    generator = torch.Generator().manual_seed(1)
    weights = [torch.randn(2, 4, 3, 3, 3, generator=generator).requires_grad_()]
    adam = StackedAdam(weights)
    adam.reset(0, 1e-3)
    adam.reset(1, 1e-3)
    for step in range(6):
        if step == 3:
            adam.vacate(1)
            frozen = weights[0][1].detach().clone()
        weights[0].grad = torch.randn(weights[0].shape, generator=generator)  # the moments still see gradients
        before = weights[0][0].detach().clone()
        adam.step(weights)
        assert not torch.equal(weights[0][0], before)
    assert torch.equal(weights[0][1], frozen) and adam.steps.tolist() == [6.0, 3.0]


@pytest.mark.parametrize("packing", PACKINGS)
def test_stacked_nets_run_each_net_on_its_own_input(packing):
    nets = [ZSSRNet(3, 8, 3, generator=torch.Generator().manual_seed(seed)) for seed in range(3)]
    stacked = StackedNets(nets[0], 3, packing)
    for slot, net in enumerate(nets):
        stacked.load(slot, net)
    inputs = torch.rand(3, 2, 3, 12, 10, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = torch.stack([net(x) for net, x in zip(nets, inputs)])
    assert torch.allclose(stacked.forward(inputs, channels_last=False), expected, atol=1e-6)


def storage(pack: Pack) -> list[int]:
    """The addresses a captured step reads: the slots' weights, moments, rates, mask and the static buffers."""
    tensors = [*pack.nets.weights, *pack.adam.exp_avg, *pack.adam.exp_avg_sq, pack.adam.steps,
               pack.adam.learning_rates, pack.adam.mask, pack.step.hr_fathers, pack.step.lr_sons_up]
    return [t.data_ptr() for t in tensors]


def test_a_refilled_slot_runs_like_a_fresh_lone_job_and_nothing_is_reallocated(photos):
    config = policy_config(max_iters=60, min_learning_rate=5e-4)  # each job stops at the step of its own drop
    tensors = [sr.images.to_tensor(image)[0] for image in [*photos, photos[0].transpose(Image.FLIP_LEFT_RIGHT)]]
    jobs = [PackedJob(i, t, SF, config, Degradation(), seed=i, callbacks=Callbacks()) for i, t in enumerate(tensors)]
    pack = Pack(list(jobs), 2, "grouped")
    addresses = storage(pack)
    entered: dict[int, list[int]] = {}  # job index -> the slots it trained in, in order
    enter = pack._enter

    def recording_enter(slot, job):
        entered.setdefault(job.index, []).append(slot)
        enter(slot, job)

    pack._enter = recording_enter
    pack.run()
    assert storage(pack) == addresses  # two slots for four jobs, and not one tensor of the step reallocated
    assert sorted(entered) == [0, 1, 2, 3] and entered[0] == [0] and entered[1] == [1]
    steps = [job.info()["train_steps"] for job in jobs]
    assert len(set(steps)) > 1 and min(steps) < 60  # the slots freed at different steps
    for job, tensor in zip(jobs, tensors):
        expected, info = zssr(tensor, SF, config, degradation=Degradation(), seed=job.index)
        assert (job.output - expected).abs().max() <= FLOAT32_TOLERANCE
        assert job.info()["learning_rate_changes"] == info["learning_rate_changes"]


def test_a_canceled_job_drops_out_and_the_others_go_on(photos):
    config = policy_config()
    calls = 0

    def stop_job_one() -> bool:
        nonlocal calls
        calls += 1
        return calls > 5  # canceled after 5 training steps

    reports = {0: [], 2: []}
    packed = upscale_many(photos, 2, config=config, seeds=[0, 1, 2], should_stop={1: stop_job_one},
                          progress={0: reports[0].append, 2: reports[2].append})
    assert packed[1] is None and calls == 6
    for index in (0, 2):
        expected = sr.upscale(photos[index], 2, config=config, seed=index)
        assert np.abs(as_array(packed[index]) - as_array(expected)).max() <= 1
        phases = [report.phase for report in reports[index]]
        assert phases[0] == "training" and phases[-1] == "inference"
        last_training = [r for r in reports[index] if r.phase == "training"][-1]
        assert last_training.step == packed[index].info["sr"]["train_steps"] == 40


def test_a_queued_job_canceled_before_it_starts_never_trains(photos):
    progress_calls = []
    packed = upscale_many(photos, 2, config=policy_config(), seeds=[0, 1, 2], pack_size=1,
                          should_stop=[None, None, lambda: True], progress=[None, None, progress_calls.append])
    assert packed[2] is None and progress_calls == [] and packed[0] is not None and packed[1] is not None


def test_jobs_of_other_shapes_run_in_packs_of_their_own(photos):
    config = policy_config()
    images = [photos[0], photos[1].convert("L"), Image.fromarray(skimage.data.astronaut()).crop((0, 0, 12, 10)),
              photos[2].convert("RGBA")]
    packed = upscale_many(images, 2, config=config, seeds=[0, 1, 2, 3])
    for index, (image, result) in enumerate(zip(images, packed)):
        expected = sr.upscale(image, 2, config=config, seed=index)
        assert result.mode == expected.mode and result.size == expected.size
        assert np.abs(as_array(result) - as_array(expected)).max() <= 1


@pytest.mark.parametrize("call, message", [
    (lambda p: upscale_many([], 2), "non-empty list"),
    (lambda p: upscale_many(p[0], 2), "non-empty list"),
    (lambda p: upscale_many([p[0], "x.png"], 2), "image 1 is not a PIL image"),
    (lambda p: upscale_many(p, 2, seeds=[1, 2]), "seeds must be a list of 3"),
    (lambda p: upscale_many(p, 2, should_stop={5: lambda: True}), "should_stop names job 5"),
    (lambda p: upscale_many(p, 2, pack_size=0), "pack_size"),
    (lambda p: upscale_many(p, 2, packing="threads"), "unknown packing"),
    (lambda p: upscale_many(p, 0.5), "ZSSR upscales"),
    (lambda p: upscale_many(p, 2, preset="huge"), "unknown preset"),
    (lambda p: upscale_many(p, 2, config=tiny(arch="post")), "reference net only"),
])
def test_bad_input_is_one_clear_invalid_input(photos, call, message):
    with pytest.raises(sr.InvalidInput, match=message):
        call(photos)


@pytest.mark.gpu
@pytest.mark.usefixtures("no_tf32")
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("packing", PACKINGS)
def test_packed_on_cuda_gives_what_each_job_gives_alone_on_cuda(photos, packing):
    config = policy_config()
    packed = upscale_many(photos, 2, config=config, seeds=[0, 1, 2], device="cuda", pack_size=2, packing=packing)
    for index, result in enumerate(packed):
        expected = sr.upscale(photos[index], 2, config=config, seed=index, device="cuda")
        assert result.info["sr"]["device"] == "cuda"
        # cuDNN may pick other algorithms for a grouped convolution: a level of 8-bit rounding at most
        assert np.abs(as_array(result) - as_array(expected)).max() <= 1
        assert result.info["sr"]["train_steps"] == expected.info["sr"]["train_steps"]


@pytest.mark.gpu
@pytest.mark.usefixtures("no_tf32")
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("packing", PACKINGS)
def test_a_pack_on_cuda_is_captured_once_however_its_slots_change(photos, packing):
    config = policy_config(max_iters=60, min_learning_rate=5e-4)  # each job stops at the step of its own drop
    tensors = [sr.images.to_tensor(image)[0].cuda() for image in [*photos, photos[0].transpose(Image.FLIP_LEFT_RIGHT)]]
    jobs = [PackedJob(i, t, SF, config, Degradation(), seed=i, callbacks=Callbacks()) for i, t in enumerate(tensors)]
    pack = Pack(list(jobs), 2, packing)
    addresses = storage(pack)
    pack.run()
    assert pack.step.captured.captures == 1 and storage(pack) == addresses
    for job, tensor in zip(jobs, tensors):
        expected, info = zssr(tensor, SF, config, degradation=Degradation(), seed=job.index)  # lone, graphed
        assert job.info()["stage_details"][0]["cuda_graph"] and info["stage_details"][0]["cuda_graph"]
        assert job.info()["train_steps"] == info["train_steps"]
        assert (job.output - expected.cpu()).abs().max() <= 1e-3  # cuDNN may pick other algorithms when packed
