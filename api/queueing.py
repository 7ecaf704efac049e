"""Enqueueing from the API: Celery publishes by task name (the API never imports the tasks, nor torch).

kombu's publish is blocking I/O, so it runs in a worker thread, off the event loop.
"""
from __future__ import annotations

from functools import partial

import anyio

from worker.celery_app import RUN_JOB, make_celery
from worker.settings import Settings


class Enqueuer:
    def __init__(self, settings: Settings):
        self.celery = make_celery(settings)

    async def run_job(self, job_id: str, queue: str) -> None:
        """Send the job's message (raises kombu's OperationalError, or a Redis error, when the broker is away)."""
        await anyio.to_thread.run_sync(partial(self.celery.send_task, RUN_JOB, args=[job_id], queue=queue))

    def close(self) -> None:
        self.celery.close()
