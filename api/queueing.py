"""Enqueueing from the API: Celery publishes by task name (the API never imports the tasks, nor torch).

kombu's publish is blocking I/O, so it runs in a worker thread, off the event loop.
"""
from __future__ import annotations

from functools import partial

import anyio
import kombu.exceptions
import redis

from api.errors import ApiError
from worker.celery_app import DELIVER_WEBHOOK, RUN_JOB, make_celery
from worker.settings import Settings
from worker.webhooks import event_body


class Enqueuer:
    def __init__(self, settings: Settings):
        self.celery = make_celery(settings)

    async def _send(self, name: str, args: list, queue: str) -> None:
        try:
            await anyio.to_thread.run_sync(partial(self.celery.send_task, name, args=args, queue=queue))
        except (kombu.exceptions.OperationalError, redis.RedisError, OSError):
            raise ApiError(503, "queue_unavailable", "the job queue is unavailable; retry shortly",
                           {"Retry-After": "5"}) from None

    async def run_job(self, job_id: str, queue: str) -> None:
        await self._send(RUN_JOB, [job_id], queue)

    async def webhook(self, job: dict, event_type: str) -> None:
        """Queue one webhook event (the worker signs and delivers it) for a job that has a webhook_url."""
        if job["webhook"]["url"]:
            await self._send(DELIVER_WEBHOOK, [job["id"], job["webhook"]["url"], event_type,
                                               event_body(event_type, job)], "light")

    def close(self) -> None:
        self.celery.close()
