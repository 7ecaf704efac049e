"""The webhook outbox: events wait in Redis until delivered, so no worker death or restart loses one.

The scripts that start and end a job put its event in the `webhooks` sorted set (by due time) in the
same step, so a job cannot end without its event. Light-queue workers run a `WebhookSender`: it claims
due events (each claim pushes the event's due time past the delivery timeout, so no other sender takes
it meanwhile, and a sender that dies leaves it due again), makes one attempt each on a few threads,
and records the attempt together with the next due time (exponential backoff) or the event's removal.
A retry waits in Redis, not in a worker's memory. The body is fixed at the first attempt (the job as
it was then; for `job.started`, as the run began), the `webhook-id` is derived from the job id and the
event type: every retry, and every run of the job, sends the same id.
"""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from jobs import webhooks
from jobs.settings import Settings
from jobs.store import ClaimedEvent, JobStore

log = logging.getLogger(__name__)
IDLE_POLL_SECONDS = 0.2  # how often an idle sender looks for due events
CLAIM_MARGIN_SECONDS = 5  # a claim outlasts one attempt (the delivery timeout) by this much


def deliver_event(store: JobStore, settings: Settings, event: ClaimedEvent) -> str:
    """Make one attempt at a claimed event and record it; returns the attempt's outcome."""
    if event.url is None:  # the job expired meanwhile: nothing to send, nobody to tell
        store.record_delivery(event.job_id, event.event_type, {}, outcome="gave_up")
        return "gave_up"
    body = event.body
    if body is None:
        job = store.public(event.job_id)
        if job is None:
            store.record_delivery(event.job_id, event.event_type, {}, outcome="gave_up")
            return "gave_up"
        body = webhooks.event_body(event.event_type, job)
    number = event.attempts + 1
    message_id = webhooks.webhook_id(event.job_id, event.event_type)
    if settings.webhook_key is None:
        attempt = webhooks.Attempt(None, "no UPSCALER_WEBHOOK_SECRET on this worker: cannot sign", False, False)
    else:
        attempt = webhooks.deliver(event.url, message_id=message_id, body=body, key=settings.webhook_key,
                                   allow_private=settings.webhook_allow_private,
                                   timeout=settings.webhook_timeout_seconds)
    will_retry = attempt.retryable and not attempt.delivered and number < settings.webhook_max_attempts
    if attempt.delivered:
        outcome = "delivered"
    elif will_retry:
        outcome = "retrying"
    else:
        outcome = "refused" if not attempt.retryable else "gave_up"
    now = time.time()
    next_due = None
    record = {"event": event.event_type, "webhook_id": message_id, "attempt": number, "status": attempt.status,
              "error": attempt.error, "outcome": outcome, "at": round(now, 3)}
    if will_retry:
        next_due = now + webhooks.backoff_seconds(number, settings.webhook_backoff_seconds,
                                                  settings.webhook_backoff_max_seconds)
        record["next_attempt_at"] = round(next_due, 3)
    store.record_delivery(event.job_id, event.event_type, record, outcome=outcome, next_due=next_due,
                          body=body if event.body is None else "")
    return outcome


class WebhookSender:
    """Claims due events and delivers them on `settings.webhook_senders` threads (started by light workers)."""

    def __init__(self, store: JobStore, settings: Settings):
        self.store, self.settings = store, settings
        self.threads = settings.webhook_senders
        self._slots = threading.Semaphore(self.threads)
        self._done = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="webhook")
        self._thread = threading.Thread(target=self._run, name="webhook-claims", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _free_slots(self) -> int:
        free = 0
        while free < self.threads and self._slots.acquire(blocking=False):
            free += 1
        return free

    def _run(self) -> None:
        claim_seconds = self.settings.webhook_timeout_seconds + CLAIM_MARGIN_SECONDS
        while not self._done.is_set():
            free = self._free_slots()
            claimed: list[ClaimedEvent] = []
            try:
                if free:
                    claimed = self.store.claim_events(limit=free, claim_seconds=claim_seconds)
            except Exception:  # Redis away: try again in a second rather than five times a second
                log.warning("could not claim webhook events; retrying", exc_info=True)
                self._done.wait(1.0)
            for _ in range(free - len(claimed)):
                self._slots.release()
            for event in claimed:
                self._pool.submit(self._deliver, event)
            if not claimed:
                self._done.wait(IDLE_POLL_SECONDS)

    def _deliver(self, event: ClaimedEvent) -> None:
        try:
            deliver_event(self.store, self.settings, event)
        except Exception:  # the claim runs out and the event is due again
            log.warning("webhook %s of job %s: attempt not recorded", event.event_type, event.job_id, exc_info=True)
        finally:
            self._slots.release()

    def stop(self) -> None:
        self._done.set()
        self._thread.join(timeout=5)
        self._pool.shutdown(wait=True, cancel_futures=True)
