"""Idempotency-Key on POST /v1/jobs: one job per caller, key and body; replays, reuse with another body, keys of
two callers apart, and the race of one key through two API processes (real processes, real Redis)."""
from __future__ import annotations

import base64
import subprocess
import sys
import threading
import time
import uuid

import httpx
import pytest

from api.deps import OPEN_ACCESS_OWNER
from jobs.redis_server import free_port
from jobs.store import owner_index_key
from tests.conftest import ROOT, _clean_environment
from tests.e2e.helpers import png_bytes, wait_for

KEYS = "key-one,key-two"


def post(client, image: bytes, key: str | None, **fields):
    headers = {"Idempotency-Key": key} if key is not None else {}
    return client.post("/v1/jobs", files={"image": ("a.png", image, "image/png")},
                       data={"method": "bicubic", **{k: str(v) for k, v in fields.items()}}, headers=headers)


def test_a_retried_submission_gets_the_first_job_back(client):
    key, image = uuid.uuid4().hex, png_bytes(24, 16)
    first = post(client, image, key)
    assert first.status_code == 202 and "idempotent-replayed" not in first.headers
    again = post(client, image, key)
    assert again.status_code == 202 and again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"] and again.headers["location"] == first.headers["location"]


def test_a_replay_after_the_job_finished_shows_it_finished(client):
    key, image = uuid.uuid4().hex, png_bytes(24, 16)
    job = post(client, image, key).json()
    done = wait_for(client, job["id"])
    replayed = post(client, image, key)
    assert replayed.headers["idempotent-replayed"] == "true"
    assert replayed.json()["id"] == job["id"] and replayed.json()["status"] == done["status"] == "succeeded"


def test_the_same_body_as_json_is_the_same_request(client):
    key, image = uuid.uuid4().hex, png_bytes(24, 16)
    job = post(client, image, key, scale=3).json()
    as_json = client.post("/v1/jobs", json={"image_base64": base64.b64encode(image).decode(), "method": "bicubic",
                                            "scale": 3}, headers={"Idempotency-Key": key})
    assert as_json.json()["id"] == job["id"] and as_json.headers["idempotent-replayed"] == "true"


def test_the_same_key_with_another_body_is_422(client):
    key = uuid.uuid4().hex
    job = post(client, png_bytes(24, 16), key).json()
    other_image = post(client, png_bytes(24, 18), key)
    other_params = post(client, png_bytes(24, 16), key, scale=3)
    for response in (other_image, other_params):
        assert response.status_code == 422 and response.json()["error"]["code"] == "idempotency_key_reused"
    assert post(client, png_bytes(24, 16), key).json()["id"] == job["id"]


def test_a_refused_submission_leaves_its_key_free(client):
    key = uuid.uuid4().hex
    refused = post(client, b"not an image", key)
    assert refused.status_code == 415
    accepted = post(client, png_bytes(24, 16), key)
    assert accepted.status_code == 202 and "idempotent-replayed" not in accepted.headers


@pytest.mark.parametrize("key", [b"", b"x" * 256, "caf\u00e9".encode(), b"tab\there"])
def test_a_malformed_key_is_400(client, key):
    response = client.post("/v1/jobs", files={"image": ("a.png", png_bytes(), "image/png")},
                           headers={b"Idempotency-Key": key})
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_idempotency_key"


def test_keys_of_two_callers_do_not_collide(make_client):
    client = make_client(api_keys=KEYS)
    key, image = uuid.uuid4().hex, png_bytes(24, 16)
    ids = set()
    for api_key in KEYS.split(","):
        client.headers["Authorization"] = f"Bearer {api_key}"
        response = post(client, image, key)
        assert response.status_code == 202 and "idempotent-replayed" not in response.headers
        ids.add(response.json()["id"])
    assert len(ids) == 2


@pytest.fixture
def two_api_processes(service_env):
    ports, processes = [free_port(), free_port()], []
    for port in ports:
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "api", "--port", str(port), "--log-level", "warning"], cwd=ROOT,
            env=_clean_environment(service_env), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    deadline = time.monotonic() + 30
    for url in urls:
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the API processes did not start"
            time.sleep(0.1)
    yield urls
    for process in processes:
        process.terminate()
        process.wait(timeout=15)


def test_one_key_sent_at_once_through_two_api_processes_makes_one_job(two_api_processes, store):
    for _ in range(3):
        key, image = uuid.uuid4().hex, png_bytes(32, 24)
        answers, start = [], threading.Barrier(16)
        jobs_before = store.redis.zcard(owner_index_key(OPEN_ACCESS_OWNER))

        def send(url: str) -> None:
            start.wait()
            response = httpx.post(url + "/v1/jobs", files={"image": ("a.png", image, "image/png")},
                                  data={"method": "bicubic"}, headers={"Idempotency-Key": key}, timeout=30)
            answers.append(response)

        threads = [threading.Thread(target=send, args=(two_api_processes[i % 2],)) for i in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        accepted = [r for r in answers if r.status_code == 202]
        assert all(r.status_code in (202, 409) for r in answers), [r.text for r in answers]
        assert all(r.json()["error"]["code"] == "idempotency_key_in_use" and r.headers["retry-after"]
                   for r in answers if r.status_code == 409)
        assert len({r.json()["id"] for r in accepted}) == 1
        assert sum("idempotent-replayed" not in r.headers for r in accepted) <= 1
        job_id = accepted[0].json()["id"]
        retried = httpx.post(two_api_processes[0] + "/v1/jobs", files={"image": ("a.png", image, "image/png")},
                             data={"method": "bicubic"}, headers={"Idempotency-Key": key}, timeout=30)
        assert retried.status_code == 202 and retried.json()["id"] == job_id
        assert store.fields(job_id)["status"] in ("queued", "running", "succeeded")
        assert store.redis.zcard(owner_index_key(OPEN_ACCESS_OWNER)) == jobs_before + 1
