"""Real ZSSR jobs through the service: a real photo, a real worker on the `gpu` queue (on the CPU here),
tiny training budgets from UPSCALER_ZSSR_OVERRIDES (tests/e2e/helpers.py)."""
from __future__ import annotations

import io
import time

import pytest
from PIL import Image

import sr
from tests.e2e.helpers import photo_bytes, submit, wait_for

pytestmark = pytest.mark.skipif(not hasattr(sr, "config_for"),
                                reason="the ZSSR core (sr.config_for, sr.upscale(method='zssr')) has not landed yet")


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


def _until(client, job_id: str, predicate, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if predicate(job):
            return job
        assert job["status"] in ("queued", "running") and time.monotonic() < deadline, job
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
