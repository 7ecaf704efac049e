"""The worker's call of sr for one job (worker/runs.py upscale_job): the job's parameters reach the core."""
from __future__ import annotations

import logging
import secrets
import time

import numpy as np
import pytest
from PIL import Image

import sr
from worker.runs import RunControl, upscale_job
from jobs.settings import Settings

TINY = {"fast": {"max_iters": 4, "min_iters": 4, "crop_size": 16, "width": 8, "depth": 3, "run_test_every": 2,
                 "back_projection_iters": [1], "output_flip": False, "threads": 1}}


def _noisy_image() -> Image.Image:
    rng = np.random.default_rng(0)
    ramp = np.linspace(60, 190, 32)[None, :, None] + np.zeros((32, 1, 3))
    return Image.fromarray(np.clip(ramp + rng.normal(0, 12, ramp.shape), 0, 255).astype(np.uint8), "RGB")


@pytest.mark.parametrize("denoise", ["off", "auto"])
def test_the_jobs_denoise_reaches_the_core(store, redis_server, denoise):
    settings = Settings(redis_url=redis_server.url, device="cpu", zssr_overrides=TINY, lease_seconds=3600)
    control = RunControl(store, "denoise-" + secrets.token_hex(8), secrets.token_hex(8), settings,
                         leased_at=time.monotonic())
    params = {"method": "zssr", "preset": "fast", "scale": 2.0, "kernel": "bicubic", "denoise": denoise, "seed": 1}
    output = upscale_job(_noisy_image(), params, settings, control, resume=None)
    assert output.size == (64, 64)
    noise_std = output.info["sr"]["noise_std"]
    assert (noise_std > 0.01) if denoise == "auto" else noise_std == 0.0, noise_std  # about 12/255 was added


def test_progress_is_written_at_most_once_per_interval_and_at_once_on_a_phase_change(store, redis_server):
    settings = Settings(redis_url=redis_server.url, progress_interval_seconds=3600, lease_seconds=3600)
    control = RunControl(store, "progress-" + secrets.token_hex(8), secrets.token_hex(8), settings,
                         leased_at=time.monotonic())
    written = []
    control.report = lambda phase, step=0, total_steps=0, loss=None: written.append((phase, step))
    for step in range(1, 50):
        control.progress(sr.Progress("training", step, 100, 0.5, None))
    control.progress(sr.Progress("inference", 0, 8, None, None))
    control.progress(sr.Progress("inference", 1, 8, None, None))
    control.progress(sr.Progress("inference", 8, 8, None, None))  # a phase's last report always goes
    assert written == [("training", 1), ("inference", 0), ("inference", 8)]


def test_a_job_without_a_seed_resumes_from_the_checkpoint_of_its_earlier_run(store, redis_server, caplog):
    settings = Settings(redis_url=redis_server.url, device="cpu", lease_seconds=3600,
                        zssr_overrides={"fast": {**TINY["fast"], "max_iters": 8, "min_iters": 8, "checkpoint_every": 2}})
    params = {"method": "zssr", "preset": "fast", "scale": 2.0, "kernel": "bicubic", "seed": None}
    job_id, saved = secrets.token_hex(16), []
    first = RunControl(store, job_id, secrets.token_hex(8), settings, leased_at=time.monotonic())
    first.save_checkpoint = saved.append
    upscale_job(_noisy_image(), params, settings, first, resume=None)
    assert saved
    second = RunControl(store, job_id, secrets.token_hex(8), settings, leased_at=time.monotonic())
    with caplog.at_level(logging.INFO):
        upscale_job(_noisy_image(), params, settings, second, resume=saved[0])
    messages = [record.getMessage() for record in caplog.records]
    assert any(m.startswith("resumed ZSSR training") for m in messages), messages
    assert not any("starting over" in m for m in messages)
