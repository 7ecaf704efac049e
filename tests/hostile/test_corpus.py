"""Every case of the hostile corpus (tests/hostile/cases.py) against the API, a real worker and Redis:
the documented status and error code, never a 5xx; every accepted job finishes; the worker survives."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.helpers import wait_for
from tests.hostile.cases import CASES, LIMITS, Case
from jobs.store import QUEUED_KEY, RUNNING_KEY

HERE = Path(__file__).resolve().parent
accepted: dict[str, str] = {}  # case id -> job id, checked by the last test of this module


@pytest.fixture(scope="module")
def worker_pid(worker_process) -> int:
    return worker_process.pid


@pytest.fixture
def hostile_client(make_client):
    return make_client(**LIMITS)


def test_the_corpus_is_large_and_up_to_date():
    assert len(CASES) >= 40 and len({case.id for case in CASES}) == len(CASES)
    assert len(list((HERE / "corpus").iterdir())) >= 40
    check = subprocess.run([sys.executable, str(HERE / "make_corpus.py"), "--check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_each_case_gets_its_documented_answer(hostile_client, worker_pid, case: Case):
    response = hostile_client.request(case.method, case.path, **case.request())
    assert response.status_code < 500, response.text
    assert response.status_code == case.status, response.text
    body = response.json()
    if case.status == 202:
        accepted[case.id] = body["id"]
        return
    assert body["error"]["code"] == case.code, body
    assert body["error"]["message"] and "Traceback" not in body["error"]["message"]


def test_every_accepted_case_finishes_and_the_worker_survived(client, store, worker_process, worker_pid):
    assert accepted, "no case was accepted"
    for case_id, job_id in accepted.items():
        final = next(case.final for case in CASES if case.id == case_id)
        done = wait_for(client, job_id, timeout=60)
        assert done["status"] == final, (case_id, done["error"])
        result = client.get(f"/v1/jobs/{job_id}/result").content
        if "polyglot" in case_id:  # the result is a fresh encode: nothing of the payload rides along
            assert b"<script" not in result and b"alert(" not in result and b"PK\x03\x04" not in result
    stuck = {job_id for job_id in accepted.values()
             if store.redis.zscore(QUEUED_KEY, job_id) is not None or store.redis.zscore(RUNNING_KEY, job_id)}
    assert not stuck
    assert worker_process.poll() is None and worker_process.pid == worker_pid
