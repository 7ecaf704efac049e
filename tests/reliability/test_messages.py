"""The run_job message the store pushes is the one Celery itself would publish (same envelope, same task)."""
from __future__ import annotations

import base64
import json

from jobs.queue import RUN_JOB, run_job_message
from worker.celery_app import make_celery


def test_run_job_message_matches_what_celery_publishes(fresh):
    cluster = fresh
    app = make_celery(cluster.settings)
    app.send_task(RUN_JOB, args=["a" * 32], queue="gpu")
    theirs = json.loads(cluster.store.redis.rpop("gpu"))
    queue, raw = run_job_message("a" * 32, "gpu")
    ours = json.loads(raw)
    assert queue == "gpu"
    assert set(ours) == set(theirs) and set(ours["headers"]) == set(theirs["headers"])
    assert set(ours["properties"]) == set(theirs["properties"])
    for field in ("content-type", "content-encoding"):
        assert ours[field] == theirs[field]
    for field in ("body_encoding", "delivery_mode", "priority", "delivery_info"):
        assert ours["properties"][field] == theirs["properties"][field]
    assert ours["headers"]["task"] == theirs["headers"]["task"] == RUN_JOB
    assert json.loads(base64.b64decode(ours["body"]))[0] == json.loads(base64.b64decode(theirs["body"]))[0]
    again = json.loads(run_job_message("a" * 32, "gpu")[1])
    assert again["headers"]["id"] != ours["headers"]["id"]  # a fresh task id and delivery tag each time
    assert again["properties"]["delivery_tag"] != ours["properties"]["delivery_tag"]
    app.close()
