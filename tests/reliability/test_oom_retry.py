"""CUDA out of memory: a ZSSR run is retried with smaller inference tiles before the job fails.

The real thing needs a GPU (the second test, marked `gpu`): the process's CUDA memory is capped so the
first inference tiles cannot fit, and `upscale_job` (the worker's call of sr) must get through by halving
`inference_memory_mb`. On the CPU, the step from one config to the next is checked on its own.
"""
from __future__ import annotations

import logging
import secrets
import time

import pytest
from PIL import Image

import sr
from worker.runs import MIN_INFERENCE_MEMORY_MB, RunControl, is_cuda_out_of_memory, smaller_tiles, upscale_job
from jobs.settings import Settings



def test_each_retry_halves_the_inference_tile_memory_down_to_srs_minimum():
    settings = Settings(zssr_overrides={"fast": {"max_iters": 10}})
    config = sr.config_for("fast", {"max_iters": 10, "inference_memory_mb": 100})
    seen = []
    while config is not None:
        seen.append(config.inference_memory_mb)
        assert config.max_iters == 10  # the operator's overrides are kept
        config = smaller_tiles(config, settings, "fast")
    assert seen == [100, 50, 25, MIN_INFERENCE_MEMORY_MB]


def test_only_cuda_out_of_memory_is_retried():
    assert is_cuda_out_of_memory(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert not is_cuda_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory"))
    assert not is_cuda_out_of_memory(MemoryError())


@pytest.mark.gpu
def test_a_cuda_out_of_memory_in_inference_is_retried_with_smaller_tiles(store, redis_server, caplog):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    torch.cuda.empty_cache()  # what earlier tests of this process left cached would count against the cap
    total = torch.cuda.get_device_properties(0).total_memory
    # 768 MiB for this process. The fast preset's activations are bfloat16: the first tile (the whole 2048x2048
    # output, sized from sr's float32 estimate) needs about 1 GiB, so it fails; the third retry's (512 MB by
    # the estimate, about 840x840 pixels) needs a quarter of that. An H200 ran the first tile within 1.5 GiB.
    torch.cuda.set_per_process_memory_fraction(min(1.0, 0.75 * 2**30 / total))
    try:
        overrides = {"fast": {"max_iters": 20, "inference_memory_mb": 4096, "output_flip": False}}
        settings = Settings(redis_url=redis_server.url, device="cuda", zssr_overrides=overrides,
                            lease_seconds=3600)  # no lease thread here: the run must not stop itself
        image = Image.effect_noise((1024, 1024), 60).convert("RGB")  # a 2048x2048 output, one tile at first
        job_id, token = "gpu-oom-" + secrets.token_hex(8), secrets.token_hex(8)
        control = RunControl(store, job_id, token, settings, leased_at=time.monotonic())
        params = {"method": "zssr", "preset": "fast", "scale": 2.0, "kernel": "bicubic", "seed": 1}
        with caplog.at_level(logging.WARNING):
            output = upscale_job(image, params, settings, control, resume=None)
        assert output.size == (2048, 2048)
        assert "CUDA out of memory; retrying with inference tiles" in caplog.text
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()
