"""The queue message that runs a job: what the store pushes, in the same script that queues the job.

The workers consume these with Celery (worker/celery_app.py), but the API builds them here without a Celery
app: a run_job message is Celery's task protocol 2 message in kombu's Redis envelope, and only its ids and body
differ from one job to the next. tests/jobs/test_run_job_message.py holds every message built here equal to
the one Celery itself builds for the same ids, so a Celery upgrade that changes the shape fails there first.
"""
from __future__ import annotations

import base64
import functools
import json
import os
import socket
import uuid

QUEUES = ("gpu", "light")  # gpu: ZSSR training; light: bicubic jobs and webhook deliveries
METHOD_QUEUE = {"zssr": "gpu", "bicubic": "light"}
RUN_JOB = "upscaler.run_job"
# kombu's Redis transport keeps one list per queue and priority step, named "{queue}\x06\x16{step}" (step 0: "{queue}").
PRIORITY_STEPS = (0, 3, 6, 9)
PRIORITY_SEPARATOR = "\x06\x16"

Message = tuple[str, str]  # (the queue's Redis list, a run_job message)


def queue_lists(queue: str) -> list[str]:
    """The Redis lists kombu keeps for `queue`, one per priority step."""
    return [f"{queue}{PRIORITY_SEPARATOR}{step}" if step else queue for step in PRIORITY_STEPS]


def run_job_message(job_id: str, queue: str) -> Message:
    """The Redis list and the message that Celery's `send_task(RUN_JOB, args=[job_id], queue=queue)` would push.

    The list is the queue's priority-0 list. Filled in from a template built once: building each message with
    Celery was a measurable share of a submission's CPU (bench/RESULTS.md), and the API need not build a Celery
    app at all."""
    task_id = str(uuid.uuid4())
    body = base64.b64encode(json.dumps([[job_id], {}, _BODY_EMBED]).encode()).decode()
    message = (_message_template(queue).replace(_TASK_ID, task_id).replace(_JOB_ID, job_id)
               .replace(_BODY, body).replace(_DELIVERY_TAG, str(uuid.uuid4())))
    return queue, message


# Stand-ins in the template, each replaced by one job's value. Job and task ids are hex and dashes, so no value
# can hold one.
_TASK_ID, _JOB_ID, _BODY, _DELIVERY_TAG = "@@task_id@@", "@@job_id@@", "@@body@@", "@@delivery_tag@@"
_BODY_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}  # no callbacks, chain or chord


@functools.lru_cache(maxsize=16)
def _message_template(queue: str) -> str:
    """A run_job message for `queue` with stand-ins for the task id, the job id, the body and the delivery tag.

    The headers are task protocol 2's (Celery's "Message Protocol" documentation); `origin` names the sending
    process as Celery names one that is not a worker ("gen<pid>@<host>"), for the workers' logs only."""
    headers = {
        "lang": "py", "task": RUN_JOB, "id": _TASK_ID, "shadow": None, "eta": None, "expires": None,
        "group": None, "group_index": None, "retries": 0, "timelimit": [None, None], "root_id": _TASK_ID,
        "parent_id": None, "argsrepr": repr([_JOB_ID]), "kwargsrepr": "{}",
        "origin": f"gen{os.getpid()}@{socket.gethostname()}", "ignore_result": False,
        "replaced_task_nesting": 0, "stamped_headers": None, "stamps": {},
    }
    properties = {"correlation_id": _TASK_ID, "reply_to": "", "delivery_mode": 2, "priority": 0,
                  "body_encoding": "base64", "delivery_info": {"exchange": "", "routing_key": queue},
                  "delivery_tag": _DELIVERY_TAG}
    envelope = {"body": _BODY, "content-encoding": "utf-8", "content-type": "application/json",
                "headers": headers, "properties": properties}
    return json.dumps(envelope)
