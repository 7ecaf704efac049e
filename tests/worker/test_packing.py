"""Worker-side packing (worker/packing.py) without a worker process: which jobs can be packed and with which, the
packer thread's runs (packed, alone, the fallback), stops, and the gpu queue's pool."""
from __future__ import annotations

import io
import secrets
import threading
import time

import numpy as np
import pytest
import skimage.data
from PIL import Image

import sr
from worker import packing
from worker.__main__ import celery_argv
from worker.packing import Packer, UpscaleRequest, group_requests, pack_key
from worker.runs import RunControl, upscale_job
from jobs.settings import Settings

TINY = {"max_iters": 6, "min_iters": 6, "crop_size": 16, "width": 8, "depth": 3, "run_test_every": 2,
        "back_projection_iters": [1], "output_flip": False, "threads": 1, "channels_last": False,
        "precision": "float32"}
PARAMS = {"method": "zssr", "preset": "fast", "scale": 2.0, "kernel": "bicubic", "denoise": "off",
          "output_format": "png"}


@pytest.fixture
def settings(redis_server) -> Settings:
    return Settings(redis_url=redis_server.url, device="cpu", zssr_overrides={"fast": TINY, "balanced": TINY},
                    lease_seconds=3600)


def photo(box=(200, 80, 232, 112), fmt: str = "PNG") -> Image.Image:
    buffer = io.BytesIO()
    Image.fromarray(skimage.data.astronaut()).crop(box).save(buffer, fmt)
    return Image.open(io.BytesIO(buffer.getvalue()))


def control_for(store, settings: Settings) -> RunControl:
    """A RunControl of a job that is not in the store: its progress writes change nothing."""
    return RunControl(store, "pack-" + secrets.token_hex(8), secrets.token_hex(8), settings,
                      leased_at=time.monotonic())


def request(store, settings, image=None, resume=None, **params) -> UpscaleRequest:
    return UpscaleRequest(image or photo(), {**PARAMS, **params}, control_for(store, settings), resume)


def test_zssr_jobs_with_the_bicubic_kernel_on_non_jpeg_inputs_are_packable(store, settings):
    key = pack_key(request(store, settings, seed=1), settings)
    assert key is not None
    assert pack_key(request(store, settings, photo((0, 0, 40, 48)), seed=2), settings) == key  # any seed and size
    assert pack_key(request(store, settings, preset="balanced"), settings) != key
    assert pack_key(request(store, settings, scale=3.0), settings) != key


@pytest.mark.parametrize("why", ["bicubic method", "estimated kernel", "denoise", "jpeg input", "resume",
                                 "sons compressed by the config"])
def test_jobs_the_packed_path_cannot_run_are_not_packable(store, settings, why):
    changes = {"bicubic method": {"params": {"method": "bicubic"}},
               "estimated kernel": {"params": {"kernel": "estimate"}},
               "denoise": {"params": {"denoise": "auto"}},
               "jpeg input": {"image": photo(fmt="JPEG")},
               "resume": {"resume": b"checkpoint"}}.get(why, {})
    if why == "sons compressed by the config":
        settings = settings.model_copy(update={"zssr_overrides": {"fast": {**TINY, "son_jpeg_quality": 90}}})
    job = request(store, settings, changes.get("image"), changes.get("resume"), **changes.get("params", {}))
    assert pack_key(job, settings) is None


def test_requests_are_grouped_by_key_in_order_of_arrival(store, settings):
    a, b = request(store, settings, seed=1), request(store, settings, preset="balanced", seed=2)
    lone = request(store, settings, method="bicubic")
    c, d = request(store, settings, seed=3), request(store, settings, preset="balanced", seed=4)
    assert group_requests([a, b, lone, c, d], settings) == [[a, c], [b, d], [lone]]


def run_in_threads(packer: Packer, requests: list[UpscaleRequest]) -> list:
    """Each request from its own thread, as Celery's task threads hand them over: the outputs or exceptions."""
    outcomes: list = [None] * len(requests)

    def run(index: int, job: UpscaleRequest) -> None:
        try:
            outcomes[index] = packer.upscale(job.image, job.params, job.control, job.resume)
        except BaseException as exc:  # noqa: BLE001 - the outcome under test
            outcomes[index] = exc

    threads = [threading.Thread(target=run, args=(i, r)) for i, r in enumerate(requests)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return outcomes


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_the_packer_trains_a_group_together_and_each_result_is_the_jobs_own(store, settings):
    jobs = [request(store, settings, photo((200, 80, 232, 112)), seed=5),
            request(store, settings, photo((100, 100, 140, 136)), seed=6)]
    outputs = run_in_threads(Packer(settings, 2), jobs)
    for job, output in zip(jobs, outputs):
        assert isinstance(output, Image.Image), output
        assert output.info["sr"]["packed"] is True and job.control.packed_with == 2
        alone = upscale_job(job.image, job.params, settings, control_for(store, settings), None)
        assert "packed" not in alone.info["sr"]
        assert output.size == alone.size and np.abs(pixels(output) - pixels(alone)).max() <= 1


def test_a_stopped_packed_job_raises_cancelled_and_the_other_finishes(store, settings):
    stopped, going = request(store, settings, seed=1), request(store, settings, seed=2)
    stopped.control.stop_reason = "canceled"  # what should_stop found: the task thread's _stop reads it
    outputs = run_in_threads(Packer(settings, 2), [stopped, going])
    assert isinstance(outputs[0], sr.Cancelled)
    assert isinstance(outputs[1], Image.Image) and going.control.packed_with == 2


def test_a_failed_pack_runs_each_job_again_alone(store, settings, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("pack failed")

    monkeypatch.setattr(packing, "upscale_many", broken)
    jobs = [request(store, settings, seed=1), request(store, settings, seed=2)]
    outputs = run_in_threads(Packer(settings, 2), jobs)
    for job, output in zip(jobs, outputs):
        assert isinstance(output, Image.Image) and "packed" not in output.info["sr"]
        assert job.control.packed_with is None


def test_a_lone_job_runs_through_upscale_job_and_its_errors_reach_its_thread(store, settings):
    job = request(store, settings, seed=1, scale=0.5)  # sr refuses a ZSSR scale below 1
    (outcome,) = run_in_threads(Packer(settings, 2), [job])
    assert isinstance(outcome, sr.InvalidInput)


def test_a_job_stopped_while_it_waits_for_the_device_is_withdrawn_unrun(store, settings, monkeypatch):
    started, release, ran = threading.Event(), threading.Event(), []

    def blocking(image, params, settings, control, resume):
        ran.append(control)
        started.set()
        release.wait(30)
        return image

    monkeypatch.setattr(packing, "upscale_job", blocking)
    packer = Packer(settings, 2)
    busy, waiting = request(store, settings, method="bicubic"), request(store, settings, method="bicubic")
    outcomes: list = []
    first = threading.Thread(target=lambda: outcomes.append(run_in_threads(packer, [busy])))
    first.start()
    assert started.wait(30)
    waiting.control.stop_reason = "canceled"
    (outcome,) = run_in_threads(packer, [waiting])  # returns while the device is still busy
    assert isinstance(outcome, sr.Cancelled)
    release.set()
    first.join(30)
    assert outcomes == [[busy.image]] and ran == [busy.control]


def test_the_gpu_queue_runs_solo_unless_jobs_are_packed():
    assert celery_argv("gpu", concurrency=4, loglevel="INFO")[3:5] == ["--pool", "solo"]
    argv = celery_argv("gpu", concurrency=4, loglevel="INFO", pack_jobs=3)
    assert argv[3:7] == ["--pool", "threads", "--concurrency", "3"]
    assert argv[argv.index("--prefetch-multiplier") + 1] == "1"
    assert celery_argv("light", concurrency=4, loglevel="INFO", pack_jobs=3)[3:7] == ["--pool", "threads",
                                                                                      "--concurrency", "4"]
    assert Settings().pack_jobs == 1
    with pytest.raises(ValueError):
        Settings(pack_jobs=0)
