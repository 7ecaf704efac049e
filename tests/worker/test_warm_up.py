"""A gpu-queue worker warms its CUDA device up before it takes a job, and does not start on a device that fails."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import sr
from jobs.settings import Settings
from worker import runs
from worker.exits import EXIT_DEVICE_FAILED

ROOT = Path(__file__).resolve().parents[2]


def test_on_cuda_the_warm_up_runs_every_preset_with_the_workers_overrides(monkeypatch):
    asked = {}
    monkeypatch.setattr(sr, "warm_up", lambda device, configs: asked.update(device=device, configs=configs) or {})
    settings = Settings(device="cuda:1", zssr_overrides={"fast": {"width": 16}, "paper": {"inference_memory_mb": 64}})
    runs.warm_up_device(settings)
    assert asked["device"] == "cuda:1"
    assert asked["configs"] == {"paper": sr.config_for("paper", {"inference_memory_mb": 64}),
                                "balanced": sr.config_for("balanced"), "fast": sr.config_for("fast", {"width": 16})}


def test_on_the_cpu_there_is_no_warm_up(monkeypatch):
    def never(*_args):
        raise AssertionError("warmed up on the CPU")

    monkeypatch.setattr(sr, "warm_up", never)
    assert runs.warm_up_device(Settings(device="cpu")) is None


def test_a_gpu_worker_whose_device_cannot_run_a_job_exits_with_one_line_and_registers_nothing(service_env, store):
    # cuda:99 exists on no machine: with CUDA, an invalid device ordinal; without, CUDA is not available
    import_path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, **service_env, "PYTHONPATH": import_path, "UPSCALER_DEVICE": "cuda:99"}
    worker = subprocess.Popen([sys.executable, "-m", "worker", "--queues", "gpu"], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, stderr = worker.communicate(timeout=120)
    assert worker.returncode == EXIT_DEVICE_FAILED
    # one line, also where CUDA's own error runs on for several (with CUDA: "invalid device ordinal", then advice)
    assert stderr.startswith("worker: a warm-up ZSSR job failed") and len(stderr.splitlines()) == 1, stderr
    assert not any(name.startswith(f"gpu-{worker.pid}@") for name, _ in store.live_workers(60))
