"""sr.warm_up: one tiny job per config, through training and inference, on the device a worker will use."""
from __future__ import annotations

import dataclasses

import pytest
import torch

import sr
import sr.warmup
from sr.warmup import WARM_UP_SIDE, WARM_UP_STEPS, warm_up_image
from tests.sr.conftest import tiny


@pytest.fixture
def jobs_run(monkeypatch) -> list[dict]:
    """What each warm-up job did: its device, steps, loops and output size (sr.upscale's info, recorded)."""
    runs = []

    def recording_upscale(image, scale, **kwargs):
        result = sr.upscale(image, scale, **kwargs)
        runs.append({**result.info["sr"], "size": result.size, "config": kwargs["config"]})
        return result

    monkeypatch.setattr(sr.warmup, "upscale", recording_upscale)
    return runs


def test_warm_up_trains_and_infers_once_per_config_with_each_configs_own_net(jobs_run):
    configs = {"narrow": tiny(width=8, max_iters=200), "wide": tiny(width=16, max_iters=200)}
    seconds = sr.warm_up("cpu", configs)
    assert list(seconds) == ["narrow", "wide"] and all(s > 0 for s in seconds.values())
    assert [run["config"].width for run in jobs_run] == [8, 16]  # the config's own net, not a stand-in
    for run in jobs_run:
        assert run["train_steps"] == WARM_UP_STEPS  # capped; past the graph's capture on CUDA
        assert not run["fallback"]  # the inference ran (the self-check is off), not a cubic fallback
        assert run["size"] == (2 * WARM_UP_SIDE, 2 * WARM_UP_SIDE)
        assert run["device"] == "cpu"


def test_by_default_warm_up_runs_each_preset_with_only_its_steps_capped(jobs_run):
    assert list(sr.warm_up("cpu")) == list(sr.PRESETS)
    for run, preset in zip(jobs_run, sr.PRESETS.values()):
        assert run["config"] == dataclasses.replace(preset, max_iters=WARM_UP_STEPS, self_check=False)


def test_the_warm_up_image_has_texture_in_every_channel():
    pixels = torch.tensor(list(warm_up_image(32).getdata()), dtype=torch.float32)
    assert pixels.shape == (32 * 32, 3)
    assert (pixels.std(dim=0) > 20).all()


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_warm_up_runs_the_graphed_step_on_the_device(jobs_run):
    sr.warm_up("cuda", {"fast": sr.FAST})
    (run,) = jobs_run
    assert run["device"].startswith("cuda")
    assert all(stage["cuda_graph"] for stage in run["stage_details"])
