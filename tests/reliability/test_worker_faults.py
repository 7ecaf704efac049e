"""Workers that die, freeze, stop, run out of memory, get a corrupt input or run past their time limit.

Real redis-server, real `python -m worker` processes, the API in-process (tests/reliability/cluster.py).
The moment of a kill is found from the worker's own log (the test hook `UPSCALER_TEST_PAUSE_BEFORE_RESULT_
SECONDS` pauses a run between computing and writing its result, and logs that it does) or from the job's
progress in the store; the ZSSR kills (training, inference, resume) are in test_zssr_faults.py.
"""
from __future__ import annotations

import io
import resource
import signal

import pytest
from PIL import Image

from tests.e2e.helpers import png_bytes, submit, wait_for
from tests.reliability.cluster import Cluster, wait_until
from tests.reliability.receivers import Receiver
from jobs.webhooks import webhook_id

PAUSE = {"UPSCALER_TEST_PAUSE_BEFORE_RESULT_SECONDS": "1.5"}
HOOK_SEED = 7  # jobs submitted with this seed get the test hook; the others run normally


def pausing(worker, job_id: str) -> bool:
    return f"job {job_id}: test hook: pausing" in worker.log()


def assert_one_terminal_webhook(cluster: Cluster, receiver: Receiver, job_id: str, event: str) -> None:
    """Exactly one terminal event id reached the receiver (retries of it may repeat; the id may not differ)."""
    wait_until(lambda: receiver.terminal_ids(job_id), timeout=30, message="no terminal webhook arrived")
    wait_until(lambda: cluster.store.pending_events() == 0, timeout=30, message="webhook events still pending")
    assert receiver.terminal_ids(job_id) == {(event, webhook_id(job_id, event))}
    assert all(r["verified"] for r in receiver.events(job_id=job_id))


def assert_served_result_is_the_stored_one(client, cluster: Cluster, job: dict, size: tuple[int, int]) -> bytes:
    served = client.get(f"/v1/jobs/{job['id']}/result")
    assert served.status_code == 200
    assert served.content == cluster.stored_result(job["id"])
    assert job["output"]["bytes"] == len(served.content)
    with Image.open(io.BytesIO(served.content)) as image:
        assert image.size == size
    return served.content


def test_a_worker_killed_before_its_result_write_leaves_the_job_to_another_worker(fresh):
    cluster = fresh
    workers = [cluster.start_worker("light", **PAUSE) for _ in range(2)]
    client = cluster.client()
    with Receiver() as receiver:
        job = submit(client, png_bytes(40, 30), method="bicubic", webhook_url=receiver.url)
        wait_until(lambda: any(pausing(w, job["id"]) for w in workers), message="the run never reached its pause")
        victim = cluster.worker_running(job["id"])
        victim_name = cluster.store.fields(job["id"])["worker"]
        cluster.kill(victim, signal.SIGKILL)
        done = wait_for(client, job["id"], timeout=60)
        assert done["status"] == "succeeded" and done["error"] is None
        record = cluster.store.fields(job["id"])
        assert record["runs"] == "2" and record["lapsed_runs"] == "1" and record["worker"] != victim_name
        assert_served_result_is_the_stored_one(client, cluster, done, (80, 60))
        assert_one_terminal_webhook(cluster, receiver, job["id"], "job.succeeded")
        started = {r["headers"]["webhook-id"] for r in receiver.events("job.started", job["id"])}
        assert started == {webhook_id(job["id"], "job.started")}  # the re-run did not announce a second start


def test_a_frozen_worker_never_runs_on_beside_the_worker_that_took_its_job_over(fresh):
    """SIGSTOP a worker mid-run until its lease lapsed and another worker took the job; SIGCONT it: it must
    stop at once, without writing anything, while the new owner finishes the job."""
    cluster = fresh
    workers = [cluster.start_worker("light", **PAUSE) for _ in range(2)]
    client = cluster.client()
    with Receiver() as receiver:
        job = submit(client, png_bytes(40, 30), method="bicubic", webhook_url=receiver.url)
        wait_until(lambda: any(pausing(w, job["id"]) for w in workers))
        frozen = cluster.worker_running(job["id"])
        frozen_name = cluster.store.fields(job["id"])["worker"]
        frozen.process.send_signal(signal.SIGSTOP)
        try:
            taken = wait_until(lambda: (f := cluster.store.fields(job["id"]))["runs"] == "2" and f, timeout=30)
            assert taken["worker"] != frozen_name
        finally:
            frozen.process.send_signal(signal.SIGCONT)
        done = wait_for(client, job["id"], timeout=60)
        assert done["status"] == "succeeded"
        wait_until(lambda: f"job {job['id']}: stopped (lease_lost); another run owns it" in frozen.log()
                   or f"job {job['id']}: lease lost to another run" in frozen.log(), timeout=20)
        # It never tried to write its own result: the store would have refused it, but it must not get that far.
        assert f"job {job['id']}: this run no longer owns it" not in frozen.log()
        assert cluster.store.fields(job["id"])["worker"] != frozen_name
        assert_served_result_is_the_stored_one(client, cluster, done, (80, 60))
        assert_one_terminal_webhook(cluster, receiver, job["id"], "job.succeeded")
        assert frozen.alive()
        if cluster.store.blobs is not None:  # nothing of the frozen run's is stored: the input went, the result stays
            cluster.wait_until_swept()
            assert cluster.store.blobs.keys() == [cluster.store.fields(job["id"])["result_key"]]


def test_a_worker_stopped_with_sigterm_hands_its_running_job_back(fresh):
    cluster = fresh
    workers = [cluster.start_worker("light", UPSCALER_TEST_PAUSE_BEFORE_RESULT_SECONDS="3") for _ in range(2)]
    client = cluster.client()
    job = submit(client, png_bytes(40, 30), method="bicubic")
    wait_until(lambda: any(pausing(w, job["id"]) for w in workers))
    stopped = cluster.worker_running(job["id"])
    stopped_name = cluster.store.fields(job["id"])["worker"]
    stopped.process.send_signal(signal.SIGTERM)
    assert stopped.process.wait(timeout=30) == 0
    seen = []
    done = wait_for(client, job["id"], timeout=60, on_poll=lambda j: seen.append(j["status"]))
    assert done["status"] == "succeeded" and done["error"] is None and "failed" not in seen
    record = cluster.store.fields(job["id"])
    assert record["runs"] == "2" and "lapsed_runs" not in record and record["worker"] != stopped_name
    assert f"job {job['id']} handed back to the queue (shutdown)" in stopped.log()


def test_a_job_that_runs_out_of_memory_inside_sr_fails_and_the_worker_takes_the_next(fresh):
    """A real memory limit (RLIMIT_AS) on a running worker; a job whose upscale needs more than is left."""
    cluster = fresh
    limit = 8192 * 8192
    worker = cluster.start_worker("light", concurrency=1, UPSCALER_MAX_OUTPUT_PIXELS=str(limit))
    client = cluster.client(max_output_pixels=limit)
    address_space = next(int(line.split()[1]) * 1024 for line in open(f"/proc/{worker.pid}/status")
                         if line.startswith("VmSize"))
    # 120 MiB more than it uses now: enough to decode a 1000x1000 input (3 MB), not for its 8000x8000 output (192 MB).
    resource.prlimit(worker.pid, resource.RLIMIT_AS, (address_space + 120 * 2**20, resource.RLIM_INFINITY))
    big = io.BytesIO()
    Image.linear_gradient("L").resize((1000, 1000)).convert("RGB").save(big, "PNG")
    failed = wait_for(client, submit(client, big.getvalue(), method="bicubic", scale=8)["id"], timeout=60)
    assert failed["status"] == "failed" and failed["error"]["code"] == "out_of_memory", failed["error"]
    assert "/sr/" in worker.log().split(f"job {failed['id']} failed", 1)[1]  # it was raised inside sr
    nxt = wait_for(client, submit(client, png_bytes(), method="bicubic")["id"], timeout=30)
    assert nxt["status"] == "succeeded" and worker.alive()
    assert cluster.store.fields(nxt["id"])["worker"] == cluster.store.fields(failed["id"])["worker"]


def test_a_corrupt_input_written_after_acceptance_fails_the_job_with_a_reason(fresh):
    cluster = fresh
    client = cluster.client()
    job = submit(client, png_bytes(40, 30), method="bicubic")  # accepted while no worker runs
    after = submit(client, png_bytes(40, 30), method="bicubic")
    cluster.replace_input(job["id"], png_bytes(40, 30)[:60])  # truncated
    worker = cluster.start_worker("light", concurrency=1)
    failed = wait_for(client, job["id"], timeout=30)
    assert failed["status"] == "failed" and failed["error"]["code"] == "invalid_input"
    assert failed["error"]["message"] and "Traceback" not in failed["error"]["message"]
    assert wait_for(client, after["id"], timeout=30)["status"] == "succeeded" and worker.alive()


def test_a_job_past_its_time_limit_fails_with_timeout_and_the_worker_takes_the_next(fresh):
    cluster = fresh
    worker = cluster.start_worker("light", concurrency=1, UPSCALER_JOB_TIME_LIMIT_SECONDS="1.5",
                                  UPSCALER_TEST_PAUSE_BEFORE_RESULT_SECONDS="30",
                                  UPSCALER_TEST_HOOK_SEED=str(HOOK_SEED))
    client = cluster.client()
    slow = submit(client, png_bytes(), method="bicubic", seed=HOOK_SEED)
    done = wait_for(client, slow["id"], timeout=30)
    assert done["status"] == "failed" and done["error"]["code"] == "timeout", done["error"]
    nxt = wait_for(client, submit(client, png_bytes(), method="bicubic")["id"], timeout=30)
    assert nxt["status"] == "succeeded" and worker.alive()


@pytest.mark.slow
def test_a_run_stuck_past_its_time_limit_is_failed_by_its_watchdog_and_its_worker_restarted(fresh):
    """The run hangs where nothing asks should_stop: the watchdog fails it with `timeout` and exits; the
    `python -m worker` supervisor starts a fresh worker process, which takes the next job."""
    cluster = fresh
    supervisor = cluster.start_worker("light,gpu", concurrency=1, UPSCALER_JOB_TIME_LIMIT_SECONDS="1",
                                      UPSCALER_JOB_STOP_GRACE_SECONDS="1",
                                      UPSCALER_TEST_HANG_BEFORE_RESULT_SECONDS="60",
                                      UPSCALER_TEST_HOOK_SEED=str(HOOK_SEED))
    client = cluster.client()
    before = set(supervisor.celery_pids())
    stuck = wait_for(client, submit(client, png_bytes(), method="bicubic", seed=HOOK_SEED)["id"], timeout=30)
    assert stuck["status"] == "failed" and stuck["error"]["code"] == "timeout", stuck["error"]
    wait_until(lambda: len(set(supervisor.celery_pids()) - before) == 1, timeout=30,
               message="the supervisor did not restart the worker")
    cluster.wait_until_serving(supervisor)
    nxt = wait_for(client, submit(client, png_bytes(), method="bicubic")["id"], timeout=60)
    assert nxt["status"] == "succeeded" and supervisor.alive()
