"""Real ZSSR jobs through the service: a real photo, a real worker on the `gpu` queue (on the CPU here),
tiny training budgets from UPSCALER_ZSSR_OVERRIDES (tests/e2e/helpers.py)."""
from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from tests.e2e.helpers import QUIET_PHOTO_REGION, photo_bytes, submit, wait_for

ROOT = Path(__file__).resolve().parents[2]

def test_a_real_photo_goes_queued_running_succeeded_with_rising_progress(client, store):
    job = submit(client, photo_bytes(), method="zssr", preset="fast", scale=2)
    assert job["status"] == "queued" and job["progress"]["phase"] == "queued"
    seen = []
    done = wait_for(client, job["id"], timeout=120, on_poll=seen.append)
    assert done["status"] == "succeeded", done["error"]
    statuses = [s["status"] for s in seen]
    assert "running" in statuses
    steps = [s["progress"]["step"] for s in seen if s["status"] == "running" and s["progress"]["phase"] == "training"]
    assert steps == sorted(steps) and len(set(steps)) >= 2, steps  # polls see progress rise
    fractions = [s["progress"]["fraction"] for s in seen if s["status"] == "running"]
    assert all(0 <= f <= 1 for f in fractions)
    assert done["metrics"]["train_steps"] and done["metrics"]["device"] == "cpu"
    assert store.fields(job["id"])["worker"].startswith("gpu-")
    result = client.get(f"/v1/jobs/{job['id']}/result")
    with Image.open(io.BytesIO(result.content)) as image:
        assert image.format == "PNG" and image.size == (128, 96) and image.mode == "RGB"


def _until(client, job_id: str, predicate, timeout: float = 60, job: bool = True) -> dict | None:
    """Poll until `predicate(job)` holds (with job=False, until `predicate(None)` does)."""
    deadline = time.monotonic() + timeout
    while True:
        current = client.get(f"/v1/jobs/{job_id}").json() if job else None
        if predicate(current):
            return current
        assert time.monotonic() < deadline and (current is None or current["status"] in ("queued", "running")), current
        time.sleep(0.05)


def test_cancel_of_a_running_zssr_job_ends_canceled_within_5_seconds(client, store):
    job = submit(client, photo_bytes(), method="zssr", preset="paper", scale=2)  # trains far longer than the test
    _until(client, job["id"], lambda j: j["status"] == "running" and j["progress"]["step"] > 0)
    asked = time.monotonic()
    response = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert response.status_code == 202 and response.json()["cancel_requested"]
    done = wait_for(client, job["id"], timeout=5)
    assert done["status"] == "canceled" and time.monotonic() - asked < 5
    assert client.get(f"/v1/jobs/{job['id']}/result").status_code == 409
    assert store.fields(job["id"]).get("run_token")  # it did run, and was stopped between steps


def test_a_queued_zssr_job_that_is_canceled_never_starts(client, store):
    running = submit(client, photo_bytes(), method="zssr", preset="paper", scale=2)
    _until(client, running["id"], lambda j: j["status"] == "running")
    waiting = submit(client, photo_bytes(), method="zssr", preset="paper", scale=2)  # behind it on the gpu queue
    assert client.get(f"/v1/jobs/{waiting['id']}").json()["status"] == "queued"
    assert client.post(f"/v1/jobs/{waiting['id']}/cancel").json()["status"] == "canceled"
    client.post(f"/v1/jobs/{running['id']}/cancel")
    assert wait_for(client, running["id"], timeout=5)["status"] == "canceled"
    # The worker now takes the canceled job's message and must decline it.
    deadline = time.monotonic() + 10
    while store.redis.llen("gpu") and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    record = store.fields(waiting["id"])
    assert record["status"] == "canceled" and record["runs"] == "0" and "started_at" not in record


@pytest.mark.slow
def test_a_worker_stopped_with_sigterm_hands_its_running_job_back(client, store, service_env):
    """Two GPU workers each run a long job; SIGTERM one: its job goes back to the queue, not failed, and the
    other worker runs it once it is free."""
    extra = subprocess.Popen([sys.executable, "-m", "worker", "--queues", "gpu"], cwd=ROOT,
                             env={**os.environ, **service_env, "PYTHONPATH": str(ROOT)},
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _until(client, "", lambda _: sum("gpu" in q for _, q in store.live_workers(30)) >= 2, job=False)
        jobs = [submit(client, photo_bytes(), method="zssr", preset="paper", scale=2) for _ in range(2)]
        for job in jobs:
            _until(client, job["id"], lambda j: j["status"] == "running" and j["progress"]["step"] > 0)
        workers = {job["id"]: store.fields(job["id"])["worker"] for job in jobs}
        handed = next(job_id for job_id, name in workers.items() if name.startswith(f"gpu-{extra.pid}@"))
        other = next(job_id for job_id in workers if job_id != handed)
        extra.send_signal(signal.SIGTERM)
        assert extra.wait(timeout=30) == 0
        back = client.get(f"/v1/jobs/{handed}").json()
        assert back["status"] == "queued" and back["error"] is None
        client.post(f"/v1/jobs/{other}/cancel")  # free the remaining worker
        again = _until(client, handed, lambda j: j["status"] == "running" and j["progress"]["step"] > 0)
        assert store.fields(handed)["runs"] == "2" and store.fields(handed)["worker"] == workers[other]
        assert again["started_at"] == back["started_at"]
        client.post(f"/v1/jobs/{handed}/cancel")
        assert wait_for(client, handed, timeout=5)["status"] == "canceled"
    finally:
        if extra.poll() is None:
            extra.kill()
            extra.wait()


def test_a_kernel_estimate_job_reports_the_estimated_kernel_in_the_job(client):
    # kernel_estimation_iters is 10 in the tiny overrides: KernelGAN runs for real, briefly, on the photo
    job = submit(client, photo_bytes(QUIET_PHOTO_REGION), method="zssr", preset="fast", scale=2, kernel="estimate", seed=3)
    assert job["kernel"] is None
    done = wait_for(client, job["id"], timeout=120)
    assert done["status"] == "succeeded", done["error"]
    kernel = done["kernel"]
    rows, columns = kernel["size"]
    assert kernel["source"] == "estimated" and rows == len(kernel["values"]) and columns == len(kernel["values"][0])
    assert rows >= 3 and columns >= 3
    assert abs(sum(map(sum, kernel["values"])) - 1.0) < 1e-3 and min(map(min, kernel["values"])) >= -1e-6
    assert 1 / 16 <= kernel["factor"] <= 2 and kernel["shape"] and kernel["estimation_seconds"] > 0
    assert done["params"]["kernel"] == "estimate"
    assert kernel["estimator"] == "kernelgan"


def test_a_kernel_estimate_job_with_the_default_estimator_says_it_used_the_prior(client):
    job = submit(client, photo_bytes(QUIET_PHOTO_REGION), method="zssr", preset="balanced", scale=2, kernel="estimate",
                 seed=3)
    done = wait_for(client, job["id"], timeout=120)
    assert done["status"] == "succeeded", done["error"]
    kernel = done["kernel"]
    assert kernel["source"] == "estimated" and kernel["estimator"] == "prior" and kernel["estimation_seconds"] > 0
    assert abs(sum(map(sum, kernel["values"])) - 1.0) < 1e-3
    assert 0 < kernel["factor"] <= 1 and kernel["shape"] == "estimate"  # the prior's guess is only ever narrowed
