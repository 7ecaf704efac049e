"""run_job messages are built without Celery (jobs/queue.py): each must equal the message Celery itself builds for
that job."""
from __future__ import annotations

import base64
import json

import kombu.serialization

from jobs.queue import RUN_JOB, run_job_message
from jobs.record import new_job_id
from jobs.settings import Settings
from worker.celery_app import make_celery


def built_by_celery(app, job_id: str, queue: str, task_id: str, delivery_tag: str) -> dict:
    """The message as Celery and kombu build it, for one job (the way run_job_message built every message before)."""
    message = app.amqp.as_task_v2(task_id, RUN_JOB, args=[job_id], kwargs={})
    content_type, encoding, body = kombu.serialization.dumps(message.body, serializer="json")
    properties = {**message.properties, "delivery_mode": 2, "priority": 0, "body_encoding": "base64",
                  "delivery_info": {"exchange": "", "routing_key": queue}, "delivery_tag": delivery_tag}
    return {"body": base64.b64encode(body.encode()).decode(), "content-encoding": encoding,
            "content-type": content_type, "headers": message.headers, "properties": properties}


def test_each_message_is_the_one_celery_builds():
    app = make_celery(Settings())
    try:
        for queue in ("light", "gpu"):
            for _ in range(3):
                job_id = new_job_id()
                listed, raw = run_job_message(job_id, queue)
                ours = json.loads(raw)
                theirs = built_by_celery(app, job_id, queue, ours["headers"]["id"],
                                         ours["properties"]["delivery_tag"])
                assert listed == queue
                assert ours == theirs
                assert json.loads(base64.b64decode(ours["body"]))[0] == [job_id]
    finally:
        app.close()


def test_every_message_has_its_own_task_id_and_delivery_tag():
    app = make_celery(Settings())
    try:
        first, second = (json.loads(run_job_message("a" * 32, "gpu")[1]) for _ in range(2))
        assert first["headers"]["id"] != second["headers"]["id"]
        assert first["headers"]["root_id"] == first["headers"]["id"] == first["properties"]["correlation_id"]
        assert first["properties"]["delivery_tag"] != second["properties"]["delivery_tag"]
    finally:
        app.close()
