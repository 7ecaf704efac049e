"""The Celery application: Redis broker, explicit queues, one message per worker at a time, late acks.

The API imports this module to build run_job messages; it does not import `worker.tasks` (and so not torch).
"""
from __future__ import annotations

import base64
import functools
import json
import uuid

import kombu.serialization
from celery import Celery
from kombu import Exchange, Queue

from worker.settings import QUEUES, Settings

RUN_JOB = "upscaler.run_job"
# kombu's Redis transport keeps one list per queue and priority step, named "{queue}\x06\x16{step}" (step 0: "{queue}").
PRIORITY_STEPS = (0, 3, 6, 9)
PRIORITY_SEPARATOR = "\x06\x16"


def make_celery(settings: Settings) -> Celery:
    app = Celery("upscaler", broker=settings.redis_url, include=["worker.tasks"])
    app.conf.update(
        # One direct exchange per queue: a message routed to one queue can never land in another.
        task_queues=[Queue(name, Exchange(name, type="direct"), routing_key=name) for name in QUEUES],
        task_default_queue="light",
        task_create_missing_queues=False,
        task_ignore_result=True,  # job state lives in the job store, not in a Celery result backend
        task_acks_late=True,  # tasks are idempotent (the store's transitions), so redelivery is safe
        task_reject_on_worker_lost=True,  # a worker that dies mid-task leaves its message to be redelivered
        worker_prefetch_multiplier=1,  # a GPU worker holds one job; queued jobs stay available to the others
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout_seconds,
            "priority_steps": list(PRIORITY_STEPS),
            "sep": PRIORITY_SEPARATOR,
        },
        broker_pool_limit=32,
        task_serializer="json",
        accept_content=["json"],
    )
    return app


def run_job_message(app: Celery, job_id: str, queue: str) -> tuple[str, str]:
    """The Redis list and the message that `app.send_task(RUN_JOB, args=[job_id], queue=queue)` would push.

    Built here (Celery's own task message, in kombu's Redis envelope) so that the job store pushes it in
    the same script that queues the job: one round trip instead of a publish from a thread, and never a
    moment when a job is queued with no message. The list is the queue's priority-0 list.

    Filled in from a template Celery built once (`_message_template`): only the ids and the body differ from
    one job to the next, and building each message with Celery cost a submission 6% of the API's CPU."""
    task_id = str(uuid.uuid4())
    body = base64.b64encode(json.dumps([[job_id], {}, _BODY_EMBED]).encode()).decode()
    message = (_message_template(app, queue).replace(_TASK_ID, task_id).replace(_JOB_ID, job_id)
               .replace(_BODY, body).replace(_DELIVERY_TAG, str(uuid.uuid4())))
    return queue, message


# Stand-ins in the template, each replaced by one job's value. Job and task ids are hex and dashes, so no value
# can hold one.
_TASK_ID, _JOB_ID, _BODY, _DELIVERY_TAG = "@@task_id@@", "@@job_id@@", "@@body@@", "@@delivery_tag@@"
_BODY_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}  # no callbacks, chain or chord


@functools.lru_cache(maxsize=16)
def _message_template(app: Celery, queue: str) -> str:
    """A run_job message for `queue` as Celery builds it, with stand-ins for the task id, the job id, the
    body and the delivery tag."""
    message = app.amqp.as_task_v2(_TASK_ID, RUN_JOB, args=[_JOB_ID], kwargs={})
    content_type, encoding, body = kombu.serialization.dumps(message.body, serializer="json")
    if json.loads(body) != [[_JOB_ID], {}, _BODY_EMBED]:
        raise RuntimeError(f"Celery's run_job body changed shape: {body}")  # run_job_message writes it by hand
    properties = {**message.properties, "delivery_mode": 2, "priority": 0, "body_encoding": "base64",
                  "delivery_info": {"exchange": "", "routing_key": queue}, "delivery_tag": _DELIVERY_TAG}
    envelope = {"body": _BODY, "content-encoding": encoding, "content-type": content_type,
                "headers": message.headers, "properties": properties}
    return json.dumps(envelope)


app = make_celery(Settings())
