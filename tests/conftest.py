"""Service fixtures: a real redis-server on a free port, a real `python -m worker`, the API in-process.

No eager mode and no fake Redis. Nothing here touches 127.0.0.1:6379.

TEST_STORAGE picks where the service keeps images (docs/http-api.md, where images live): `redis` (the default), `s3` (a real
SeaweedFS on free ports, tests/s3_server.py) or `file` (a directory). scripts/test runs the service suites
(e2e, reliability, hostile) a second time with TEST_STORAGE=s3.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from tests.e2e.helpers import TINY_ZSSR_OVERRIDES, WEBHOOK_SECRET
from jobs.blobs import open_blob_store
from jobs.redis_server import RedisServer
from jobs.settings import Settings
from jobs.store import JobStore

ROOT = Path(__file__).resolve().parents[1]
TEST_STORAGE = os.environ.get("TEST_STORAGE", "redis")
BUCKET = "upscaler-tests"


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A SeaweedFS for the session; its credentials are in this process's environment too (the in-process API's S3
    client reads AWS_* from it, as a deployed one does)."""
    from tests.s3_server import SeaweedS3  # noqa: PLC0415

    server = SeaweedS3(tmp_path_factory.mktemp("seaweedfs")).start()
    os.environ.update({k: v for k, v in server.env(BUCKET).items() if k.startswith("AWS_")})
    yield server
    server.stop()


@pytest.fixture(scope="session")
def storage_env(request, tmp_path_factory) -> dict[str, str]:
    """The storage settings of the service under test ({} = images in Redis), for its prefix `session`; a cluster
    of the fault tests adds a prefix of its own (tests/reliability/cluster.py)."""
    if TEST_STORAGE == "redis":
        return {}
    if TEST_STORAGE == "file":
        return {"UPSCALER_STORAGE_URL": f"file://{tmp_path_factory.mktemp('blobs')}"}
    if TEST_STORAGE == "s3":
        return request.getfixturevalue("s3_server").env(BUCKET, "session")
    raise pytest.UsageError(f"TEST_STORAGE={TEST_STORAGE!r}: use redis, s3 or file")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def service_env(redis_server, storage_env) -> dict[str, str]:
    """The environment the worker runs with; the in-process API gets the same values as Settings."""
    return {
        **storage_env,
        "REDIS_URL": redis_server.url,
        "UPSCALER_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "UPSCALER_WEBHOOK_ALLOW_PRIVATE": "true",  # the test receiver listens on 127.0.0.1
        "UPSCALER_WEBHOOK_BACKOFF_SECONDS": "0.2",
        "UPSCALER_WEBHOOK_MAX_ATTEMPTS": "5",
        "UPSCALER_WEBHOOK_TIMEOUT_SECONDS": "3",
        "UPSCALER_ZSSR_OVERRIDES": TINY_ZSSR_OVERRIDES,
        "UPSCALER_DEVICE": "cpu",
        "UPSCALER_LEASE_SECONDS": "6",
        "UPSCALER_PROGRESS_INTERVAL_SECONDS": "0.2",
        # Every test shares the one open-access key: no request-rate limit here (tests/hostile/test_access.py
        # turns it on where it is the subject).
        "UPSCALER_RATE_LIMIT_PER_SECOND": "0",
        # Every in-process client has one address ("testclient"), whatever test it serves: no limit on failed
        # authentications here either (tests/hostile/test_http.py turns it on).
        "UPSCALER_AUTH_FAILURE_LIMIT": "0",
    }


@pytest.fixture(scope="session")
def settings(service_env) -> Settings:
    return Settings(**{("redis_url" if k == "REDIS_URL" else k.removeprefix("UPSCALER_").lower()): v
                       for k, v in service_env.items() if not k.startswith("AWS_")})


@pytest.fixture(scope="session")
def store(redis_server, storage_env) -> JobStore:
    blobs = open_blob_store(storage_env.get("UPSCALER_STORAGE_URL"),
                            s3_endpoint_url=storage_env.get("UPSCALER_S3_ENDPOINT_URL"))
    job_store = JobStore(redis_server.url, blobs=blobs)
    yield job_store
    job_store.close()


def _clean_environment(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UPSCALER_", "AWS_")) and k != "REDIS_URL"}
    env.update(extra, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    return env


@pytest.fixture(scope="session")
def worker_process(service_env, store, tmp_path_factory):
    """`python -m worker` (every queue) as a subprocess; ready once both queues have a heartbeat."""
    log_path = tmp_path_factory.mktemp("worker") / "worker.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "worker", "--concurrency", "4"], cwd=ROOT,
                                   env=_clean_environment(service_env), stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while True:
        queues = {q for _, qs in store.live_workers(30) for q in qs}
        if {"gpu", "light"} <= queues:
            break
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail("the worker did not start:\n" + log_path.read_text()[-3000:])
        time.sleep(0.1)
    process.log_path = log_path
    yield process
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture
def make_client(settings, worker_process):
    """Build an in-process API client (TestClient runs the app's lifespan), optionally with other settings."""
    clients = []

    def build(**changes) -> TestClient:
        client = TestClient(create_app(Settings(**{**settings.model_dump(), **changes})))
        client.__enter__()
        clients.append(client)
        return client

    yield build
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client):
    return make_client()
