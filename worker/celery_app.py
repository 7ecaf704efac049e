"""The Celery application: Redis broker, explicit queues, one message per worker at a time, late acks.

Only workers build it: the API and the store push run_job messages built by jobs/queue.py.
"""
from __future__ import annotations

from celery import Celery
from kombu import Exchange, Queue

from jobs.queue import PRIORITY_SEPARATOR, PRIORITY_STEPS, QUEUES
from jobs.settings import Settings


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


app = make_celery(Settings())
