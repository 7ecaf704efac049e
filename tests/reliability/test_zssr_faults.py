"""ZSSR jobs under faults: a worker killed (SIGKILL) in training before and after a checkpoint, in inference,
and before its result write; a job past its time limit; a real out-of-memory inside sr.

Two `python -m worker --queues gpu` processes train on the CPU with a small config (below); the moment of
each kill is read from the job's progress and checkpoint in the store, or from the worker's log (the
result-write pause is the documented test hook, on for jobs with HOOK_SEED only).
"""
from __future__ import annotations

import json
import signal

import pytest

from tests.e2e.helpers import photo_bytes, submit, wait_for
from tests.reliability.cluster import Cluster, wait_until
from tests.reliability.receivers import Receiver
from tests.reliability.test_worker_faults import (HOOK_SEED, assert_one_terminal_webhook,
                                                  assert_served_result_is_the_stored_one, pausing)

# About 150 training steps with a checkpoint every 25, then an 8-pass ensemble: on the 2-core VM about 0.3 s of
# training and 0.1 s of inference. The self-check is off, so the inference always runs (a net this brief loses
# to cubic for some seeds, and the fallback skips it: a kill "in inference" then came after the job had ended).
# channels_last off: with crops this small, oneDNN's per-shape set-up costs more than the steps.
KILL_CONFIG = {"max_iters": 150, "min_iters": 150, "crop_size": 24, "width": 32, "depth": 4, "run_test_every": 10,
               "checkpoint_every": 25, "back_projection_iters": [8], "output_flip": True, "channels_last": False,
               "inference_memory_mb": 16, "precision": "float32", "batch_size": 1, "test_crop": 0,
               "self_check": False}
PAIR_ENV = {"UPSCALER_ZSSR_OVERRIDES": json.dumps({"balanced": KILL_CONFIG}),
            "UPSCALER_TEST_PAUSE_BEFORE_RESULT_SECONDS": "2", "UPSCALER_TEST_HOOK_SEED": str(HOOK_SEED)}
QUICK_CONFIG = {"max_iters": 10, "min_iters": 10, "crop_size": 16, "width": 8, "depth": 3, "run_test_every": 5,
                "back_projection_iters": [1], "output_flip": False, "channels_last": False, "precision": "float32",
                "batch_size": 1, "test_crop": 0}  # a run of about a second
SCALE = 3  # 64x48 -> 192x144
OUTPUT = (192, 144)


@pytest.fixture(scope="module")
def pair(cluster) -> Cluster:
    """Two GPU-queue workers (started once; each kill test starts a replacement for the one it killed), and
    a light-queue worker, which sends the webhooks."""
    cluster.stop_workers()
    cluster.flush()
    for _ in range(2):
        cluster.start_worker("gpu", wait=False, **PAIR_ENV)
    cluster.start_worker("light", concurrency=1, wait=False)
    for worker in cluster.workers:
        cluster.wait_until_serving(worker)
    return cluster


def progress_of(cluster: Cluster, job_id: str) -> tuple[str, dict]:
    fields = cluster.store.fields(job_id) or {}
    return fields.get("status", ""), json.loads(fields.get("progress") or "{}")


def has_checkpoint(cluster: Cluster, job_id: str) -> bool:
    return cluster.has_checkpoint(job_id)


MOMENTS = {
    # kill while training, before the first checkpoint (the re-run starts over) ...
    "training": lambda c, j: progress_of(c, j)[1].get("phase") == "training" and not has_checkpoint(c, j),
    # ... and after one (the re-run resumes from it)
    "training after a checkpoint": lambda c, j: progress_of(c, j)[1].get("phase") == "training"
    and has_checkpoint(c, j),
    "inference": lambda c, j: progress_of(c, j)[1].get("phase") == "inference",
    "result write": lambda c, j: any(pausing(w, j) for w in c.workers if w.alive()),
}


@pytest.mark.parametrize("moment", list(MOMENTS))
def test_a_worker_killed_mid_job_leaves_it_to_the_other_which_finishes_it(pair, moment):
    cluster = pair
    for worker in cluster.workers:
        cluster.wait_until_serving(worker)
    client = cluster.client()
    seed = HOOK_SEED if moment == "result write" else None
    with Receiver() as receiver:
        job = submit(client, photo_bytes(), method="zssr", preset="balanced", scale=SCALE, webhook_url=receiver.url,
                     **({"seed": seed} if seed is not None else {}))
        wait_until(lambda: MOMENTS[moment](cluster, job["id"]), timeout=60, interval=0.02,
                   message=f"the run never reached {moment!r}: {progress_of(cluster, job['id'])}")
        victim = cluster.worker_running(job["id"])
        victim_name = cluster.store.fields(job["id"])["worker"]
        cluster.kill(victim, signal.SIGKILL)
        checkpoint_at_kill = has_checkpoint(cluster, job["id"])
        cluster.workers.remove(victim)
        cluster.start_worker("gpu", wait=False, **PAIR_ENV)  # the replacement starts while the other runs the job
        done = wait_for(client, job["id"], timeout=120)
        assert done["status"] == "succeeded", done["error"]
        record = cluster.store.fields(job["id"])
        assert record["lapsed_runs"] == "1" and record["runs"] == "2" and record["worker"] != victim_name
        assert record.get("resumed") == ("1" if checkpoint_at_kill else None)
        if moment in ("training after a checkpoint", "inference", "result write"):
            assert checkpoint_at_kill  # so these runs did resume
        assert not has_checkpoint(cluster, job["id"])  # dropped once the job ended
        assert_served_result_is_the_stored_one(client, cluster, done, OUTPUT)
        assert_one_terminal_webhook(cluster, receiver, job["id"], "job.succeeded")
        if cluster.store.blobs is not None:  # the killed run's checkpoint and the input went; only the result stays
            cluster.wait_until_swept()
            left = [key for key in cluster.store.blobs.keys() if key.startswith(f"jobs/{job['id']}/")]
            assert left == [cluster.store.fields(job["id"])["result_key"]]


def test_a_zssr_job_past_its_time_limit_fails_with_timeout_and_the_worker_takes_the_next(cluster):
    cluster.stop_workers()
    overrides = {"paper": {"max_iters": 100000, "min_iters": 100000, "crop_size": 24, "width": 16, "depth": 4,
                           "channels_last": False, "precision": "float32"},
                 "fast": QUICK_CONFIG}
    worker = cluster.start_worker("gpu", UPSCALER_JOB_TIME_LIMIT_SECONDS="6",
                                  UPSCALER_ZSSR_OVERRIDES=json.dumps(overrides))
    client = cluster.client()
    endless = submit(client, photo_bytes(), method="zssr", preset="paper", scale=2)
    done = wait_for(client, endless["id"], timeout=60)
    assert done["status"] == "failed" and done["error"]["code"] == "timeout", done["error"]
    assert done["metrics"]["run_seconds"] >= 6  # it ran its full time limit
    nxt = wait_for(client, submit(client, photo_bytes(), method="zssr", preset="fast", scale=2)["id"], timeout=90)
    assert nxt["status"] == "succeeded" and worker.alive()
    cluster.stop_workers()


def test_zssr_out_of_memory_inside_sr_fails_the_job_and_the_worker_takes_the_next(cluster):
    """A net too wide to allocate (a real allocation failure inside torch, on the CPU: not retried)."""
    cluster.stop_workers()
    overrides = {"paper": {"width": 200_000, "depth": 4, "channels_last": False}, "fast": QUICK_CONFIG}
    worker = cluster.start_worker("gpu", UPSCALER_ZSSR_OVERRIDES=json.dumps(overrides))
    client = cluster.client()
    failed = wait_for(client, submit(client, photo_bytes(), method="zssr", preset="paper", scale=2)["id"], timeout=60)
    assert failed["status"] == "failed" and failed["error"]["code"] == "out_of_memory", failed["error"]
    nxt = wait_for(client, submit(client, photo_bytes(), method="zssr", preset="fast", scale=2)["id"], timeout=90)
    assert nxt["status"] == "succeeded" and worker.alive()
    cluster.stop_workers()
