"""The reaper against real Redis and real workers: jobs whose message never existed or was taken and lost."""
from __future__ import annotations

import time

from jobs.queue import run_job_message
from jobs.record import new_job_fields, new_job_id
from tests.e2e.helpers import png_bytes, submit, wait_for
from tests.reliability.cluster import wait_until
from worker.reaper import reap_once, waiting_job_ids


def record_without_message(store, queue: str = "light") -> str:
    """A queued job with no message anywhere (the API records and enqueues in one script, so only a lost
    message leaves this: here it is made directly)."""
    job_id = new_job_id()
    store.create(new_job_fields(job_id, "open", params={"scale": 2.0, "method": "bicubic", "preset": "fast",
                                                        "kernel": "bicubic", "output_format": "png", "seed": None},
                                input_info={"width": 40, "height": 30, "mode": "RGB", "bytes": 1},
                                output_info={"width": 80, "height": 60, "content_type": "image/png", "bytes": 0},
                                queue=queue, webhook_url=None, ttl=600, now=time.time()), png_bytes(40, 30))
    return job_id


def test_a_job_recorded_without_a_message_is_sent_by_the_reaper_and_runs(fresh):
    cluster = fresh
    job_id = record_without_message(cluster.store)
    assert waiting_job_ids(cluster.store, "light") == set()
    worker = cluster.start_worker("light")
    client = cluster.client()
    done = wait_for(client, job_id, timeout=cluster.settings.redispatch_after_seconds + 30)
    assert done["status"] == "succeeded"
    assert f"re-sent 1 lost message(s) ['{job_id}']" in worker.log()


def test_a_message_taken_by_a_worker_that_died_before_starting_the_job_is_sent_again(fresh):
    """A consumer pops the message and dies before `begin_run` (here: the test pops it, as a dying
    worker would); the job stays queued with no message anywhere, until the reaper sends one."""
    cluster = fresh
    client = cluster.client()
    job = submit(client, png_bytes(), method="bicubic")
    assert waiting_job_ids(cluster.store, "light") == {job["id"]}
    assert cluster.store.redis.rpop("light")  # taken, never acknowledged, never run
    cluster.start_worker("light")
    done = wait_for(client, job["id"], timeout=cluster.settings.redispatch_after_seconds + 30)
    assert done["status"] == "succeeded" and cluster.store.fields(job["id"])["runs"] == "1"


def test_a_queued_job_whose_message_waits_in_the_queue_is_left_alone(fresh):
    """No worker serves the gpu queue here: its job waits, with its message, past the grace period."""
    cluster = fresh
    client = cluster.client()
    job = submit(client, png_bytes(), method="zssr", preset="fast")
    sent = []
    time.sleep(cluster.settings.redispatch_after_seconds + 0.2)
    done = reap_once(cluster.store, cluster.settings, lambda job_id, queue: sent.append(job_id) or
                     run_job_message(job_id, queue))
    assert sent == [] and done.redispatched == []
    assert waiting_job_ids(cluster.store, "gpu") == {job["id"]}


def test_a_lapsed_job_whose_runs_keep_dying_fails_with_worker_lost(fresh):
    """A job that kills its worker every time is not retried forever."""
    cluster = fresh
    job_id = record_without_message(cluster.store)
    sent = []
    for run in range(3):
        assert cluster.store.begin_run(job_id, f"t{run}", worker="w", lease_seconds=0.05).outcome == "started"
        time.sleep(0.1)  # the worker "died": its lease lapsed
        reap_once(cluster.store, cluster.settings, lambda job_id, queue: sent.append((job_id, queue)) or
                  run_job_message(job_id, queue))
    assert sent == [(job_id, "light")] * 3  # a message is built for each lapse; the third ends the job
    assert cluster.store.redis.llen("light") == 2
    job = cluster.store.public(job_id)
    assert job["status"] == "failed" and job["error"]["code"] == "worker_lost"
    wait_until(lambda: cluster.store.redis.zscore("upscaler:running", job_id) is None)
