"""Object storage under faults, on a real S3 server (SeaweedFS, tests/s3_server.py) whatever TEST_STORAGE says:
its S3 endpoint stopped during a submission and during a result write, and every way a stored object stops being
needed (a job ended, refused, canceled or expired, a put that nothing recorded) ending with the object deleted.

This module runs its own SeaweedFS, so that stopping it disturbs no other module.
"""
from __future__ import annotations

import io
import os
import time

import pytest
from PIL import Image

from tests.e2e.helpers import png_bytes, submit, wait_for
from tests.reliability.cluster import Cluster, start_cluster, wait_until
from tests.reliability.test_worker_faults import HOOK_SEED, PAUSE, pausing
from tests.s3_server import SeaweedS3
from jobs.blobs import checkpoint_key, input_key, result_key
from jobs.store import PENDING_BLOBS_KEY, TRASH_KEY


@pytest.fixture(scope="module")
def s3(tmp_path_factory) -> SeaweedS3:
    server = SeaweedS3(tmp_path_factory.mktemp("seaweedfs")).start()
    os.environ.update({k: v for k, v in server.env("faults").items() if k.startswith("AWS_")})
    yield server
    server.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, s3) -> Cluster:
    """This module's cluster, on its own S3 server (overrides the conftest's, which follows TEST_STORAGE)."""
    stack = start_cluster(tmp_path_factory.mktemp("cluster"), s3.env("upscaler-faults"))
    yield stack
    stack.shut_down()


@pytest.fixture
def fresh(cluster, s3) -> Cluster:
    cluster.stop_workers()
    if s3.process.poll() is not None:
        s3.start_gateway()
    cluster.flush()
    yield cluster
    cluster.close_clients()
    if s3.process.poll() is not None:
        s3.start_gateway()


def job_records(cluster: Cluster) -> list[bytes]:
    return list(cluster.store.redis.scan_iter(match="upscaler:job:*"))


def test_a_submission_while_the_store_is_down_answers_503_and_records_nothing(fresh, s3):
    cluster = fresh
    client = cluster.client()
    s3.stop_gateway()
    refused = client.post("/v1/jobs", files={"image": ("a.png", png_bytes(40, 30), "image/png")},
                          data={"method": "bicubic"})
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["code"] == "storage_unavailable" and int(refused.headers["Retry-After"]) > 0
    assert job_records(cluster) == [] and not cluster.store.redis.exists("upscaler:queued")
    assert client.get("/v1/jobs").json()["count"] == 0
    assert cluster.store.redis.zcard(PENDING_BLOBS_KEY) == 0  # the failed put is due for deletion, in case it landed
    s3.start_gateway()
    cluster.start_worker("light")
    done = wait_for(client, submit(client, png_bytes(40, 30), method="bicubic")["id"], timeout=30)
    assert done["status"] == "succeeded"
    cluster.wait_until_swept()
    assert cluster.store.redis.zrangebyscore(TRASH_KEY, "-inf", time.time()) == []


def test_a_result_write_during_an_outage_is_retried_until_the_store_is_back(fresh, s3):
    cluster = fresh
    worker = cluster.start_worker("light", UPSCALER_TEST_HOOK_SEED=str(HOOK_SEED), **PAUSE)
    client = cluster.client()
    job = submit(client, png_bytes(40, 30), method="bicubic", seed=HOOK_SEED)
    wait_until(lambda: pausing(worker, job["id"]), message="the run never reached its pause")
    s3.stop_gateway()
    wait_until(lambda: f"job {job['id']}: could not store its result" in worker.log(), timeout=30,
               message="the result write never failed")
    time.sleep(cluster.settings.lease_seconds * 1.5)  # longer than a lease: the run keeps its job while it retries
    assert cluster.store.fields(job["id"])["status"] == "running"
    s3.start_gateway()
    done = wait_for(client, job["id"], timeout=60)
    assert done["status"] == "succeeded" and cluster.store.fields(job["id"])["runs"] == "1"
    served = client.get(f"/v1/jobs/{job['id']}/result")
    assert served.status_code == 200 and served.content == cluster.stored_result(job["id"])
    with Image.open(io.BytesIO(served.content)) as image:
        assert image.size == (80, 60)
    cluster.wait_until_swept()


def test_every_object_is_deleted_once_its_job_ends_is_refused_is_canceled_or_expires(fresh):
    cluster = fresh
    worker = cluster.start_worker("light", UPSCALER_TEST_HOOK_SEED=str(HOOK_SEED), **PAUSE)
    client = cluster.client(job_ttl_seconds=8, max_active_jobs_per_key=1)
    canceled = submit(client, png_bytes(40, 30), method="bicubic")
    assert client.post(f"/v1/jobs/{canceled['id']}/cancel").status_code in (202, 409)  # 409: it finished first
    wait_for(client, canceled["id"], timeout=30)
    kept = submit(client, png_bytes(40, 30), method="bicubic", seed=HOOK_SEED)
    wait_until(lambda: pausing(worker, kept["id"]), message="the run never reached its pause")
    over = client.post("/v1/jobs", files={"image": ("a.png", png_bytes(40, 30), "image/png")},
                       data={"method": "bicubic"})
    assert over.status_code == 429 and over.json()["error"]["code"] == "too_many_jobs"
    # an input, a result and a checkpoint stored by processes that died before recording them
    cluster.store._put(input_key("0" * 32), png_bytes(), give_up=False)
    cluster.store.put_result("1" * 32, "deadbeef", png_bytes())
    cluster.store._put(checkpoint_key("2" * 32, "deadbeef"), b"state", give_up=False)
    done = wait_for(client, kept["id"], timeout=30)
    assert done["status"] == "succeeded"
    token = cluster.store.fields(kept["id"])["run_token"]
    wait_until(lambda: [k for k in cluster.store.blobs.keys() if k.startswith(f"jobs/{kept['id']}/")]
               == [result_key(kept["id"], token)], timeout=30, message="the input outlived its job")
    # the record expires (its TTL is 8 s here), and its result goes with it: nothing is left
    wait_until(lambda: cluster.store.fields(kept["id"]) is None, timeout=30)
    wait_until(lambda: cluster.store.blobs.keys() == [], timeout=30,
               message=f"left behind: {cluster.store.blobs.keys()}")
    assert client.get(f"/v1/jobs/{kept['id']}/result").status_code == 410
    assert cluster.store.redis.zcard(PENDING_BLOBS_KEY) == 0 and cluster.store.redis.zcard(TRASH_KEY) == 0
