"""Retries against the real API: an answer lost after the POST reached the API, 429 (the request rate and the
unfinished-jobs limit) and 503 (Redis stopped), each retried after what the API said."""
from __future__ import annotations

import re
import threading

import pytest

from api.main import create_app
from tests.client.proxy import AnswerCuttingProxy
from tests.e2e.helpers import png_bytes
from tests.live import serve
from jobs.redis_server import RedisServer
from jobs.settings import Settings
from zssr_client import ApiConnectionError, ApiError, Client

RETRY = re.compile(r"retrying (\S+) (\S+) in ([\d.]+) s after (\d+) (\w+), Retry-After (\d+)")


def test_no_retry_after_the_last_one(api_url, api_key):
    with AnswerCuttingProxy(api_url, lambda method, path: method == "POST", cuts=2) as proxy, \
            Client(proxy.url, api_key=api_key, max_retries=1, backoff_seconds=0.01) as client:
        with pytest.raises(ApiConnectionError) as raised:
            client.submit(png_bytes(), method="bicubic")
    assert "RemoteProtocolError" in str(raised.value)
    assert len(proxy.cut_requests) == 2


@pytest.fixture
def lost_answer(api_url, api_key):
    """A submission whose first answer is lost on the way back: (the job the client got, the submissions the API
    received, the jobs the key has)."""
    with AnswerCuttingProxy(api_url, lambda method, path: (method, path) == ("POST", "/v1/jobs")) as proxy, \
            Client(proxy.url, api_key=api_key, backoff_seconds=0.05) as client:
        job = client.submit(png_bytes(), method="bicubic")
    submissions = [r for r in proxy.requests if r[:2] == ("POST", "/v1/jobs")]
    with Client(api_url, api_key=api_key) as direct:
        return job, submissions, direct.list()


def test_a_lost_answer_is_retried_with_the_same_idempotency_key(lost_answer):
    job, submissions, jobs = lost_answer
    keys = [headers.get("idempotency-key") for _, _, headers in submissions]
    assert len(keys) == 2 and keys[0] and keys[0] == keys[1]  # the lost request and its retry
    assert job["id"] in [j["id"] for j in jobs]


def test_a_lost_answer_retried_makes_one_job(lost_answer):
    job, _, jobs = lost_answer
    assert [j["id"] for j in jobs] == [job["id"]]


def test_two_calls_send_two_idempotency_keys(api_url, api_key):
    with AnswerCuttingProxy(api_url, lambda method, path: False) as proxy, \
            Client(proxy.url, api_key=api_key) as client:
        first = client.submit(png_bytes(), method="bicubic")
        second = client.submit(png_bytes(), method="bicubic")
        try:
            client.cancel(second["id"])
        except ApiError as exc:  # a bicubic job may have ended already: the POST was sent all the same
            assert exc.code == "job_finished"
    keys = [headers.get("idempotency-key") for method, _, headers in proxy.requests if method == "POST"]
    assert len(set(keys)) == 3 and None not in keys and first["id"] != second["id"]


def test_429_over_the_request_rate_is_retried_after_its_retry_after(serve_api, api_key, on_retry):
    base = serve_api(api_keys=api_key, rate_limit_per_second=0.5, rate_limit_burst=1)
    retries = on_retry()
    with Client(base, api_key=api_key) as client:
        assert client.list() == []  # takes the one request the burst allows
        job = client.submit(png_bytes(), method="bicubic")
        assert client.wait(job["id"], timeout=60)["status"] == "succeeded"
    method, path, delay, status, code, after = RETRY.match(retries.messages[0]).groups()
    assert (method, path, status, code) == ("POST", "/v1/jobs", "429", "rate_limited")
    assert float(delay) == float(after) >= 1


@pytest.mark.slow
def test_429_too_many_unfinished_jobs_is_retried_after_its_retry_after(serve_api, api_key, on_retry):
    base = serve_api(api_keys=api_key, max_active_jobs_per_key=1)
    with Client(base, api_key=api_key) as client, Client(base, api_key=api_key) as other:
        blocking = client.submit(png_bytes(), preset="paper")
        retries = on_retry(lambda: other.cancel(blocking["id"]))  # frees the key's one slot while the client waits
        job = client.submit(png_bytes(), method="bicubic")
        assert client.wait(job["id"], timeout=60)["status"] == "succeeded"
        assert client.get(blocking["id"])["status"] == "canceled"
    method, path, delay, status, code, after = RETRY.match(retries.messages[0]).groups()
    assert (method, path, status, code) == ("POST", "/v1/jobs", "429", "too_many_jobs")
    assert float(delay) == float(after) == 5


def test_503_while_redis_is_down_is_retried_after_its_retry_after(settings, tmp_path, on_retry):
    redis_server = RedisServer(tmp_path / "redis").start()  # the API's own Redis, to stop without harm to others
    try:
        app = create_app(Settings(**{**settings.model_dump(), "redis_url": redis_server.url}))
        with serve(app) as base, Client(base) as client:
            assert client.list() == []
            redis_server.stop()
            restarted = threading.Event()

            def restart() -> None:
                redis_server.start()
                restarted.set()

            retries = on_retry(restart)  # Redis comes back while the client waits out the Retry-After
            job = client.submit(png_bytes(), method="bicubic")
            assert restarted.is_set() and client.get(job["id"])["status"] == "queued"  # no worker on this Redis
            assert [j["id"] for j in client.list()] == [job["id"]]
    finally:
        redis_server.stop()
    method, path, delay, status, code, after = RETRY.match(retries.messages[0]).groups()
    assert (method, path, status) == ("POST", "/v1/jobs", "503") and code.endswith("_unavailable")
    assert float(delay) == float(after) >= 1


def test_a_retry_after_beyond_the_clients_limit_is_raised_at_once(serve_api, api_key, on_retry):
    base = serve_api(api_keys=api_key, rate_limit_per_second=0.01, rate_limit_burst=1)  # Retry-After 100
    retries = on_retry()
    with Client(base, api_key=api_key, max_retry_after_seconds=10) as client:
        client.list()
        with pytest.raises(ApiError) as raised:
            client.list()
    assert (raised.value.status, raised.value.code) == (429, "rate_limited") and not retries.messages
