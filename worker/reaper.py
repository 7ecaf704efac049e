"""The reaper: puts back in the queue the jobs whose worker died, and re-sends lost messages.

Celery's Redis transport gives an unacknowledged message back only after its visibility timeout,
which must outlast the longest job (an hour or more). The reaper does not wait for it:

- A running job holds a lease its worker renews every third of `UPSCALER_LEASE_SECONDS`. When the
  lease lapsed (the worker was killed, lost its host, or froze), the job goes back to `queued` and a
  new message is sent: it runs again within lease + `UPSCALER_REAPER_INTERVAL_SECONDS` of the death,
  resuming from its last training checkpoint. A job whose runs lapse `MAX_LAPSED_RUNS` times (one
  that kills its worker) fails with `worker_lost` instead of being retried forever.
- A queued job whose message is in no queue `UPSCALER_REDISPATCH_AFTER_SECONDS` after it was sent
  (a worker took the message and was killed before it began the run; the message was lost with a
  Redis restored from an older file) is sent again.

With a blob store (jobs/blobs.py), each pass also sweeps it: puts that nothing recorded within
`UPSCALER_BLOB_GRACE_SECONDS` (their process died mid-put) and objects whose job ended, whose run was fenced or
whose record expired are deleted.

Both push the job's new message in the same script that changes the job, so a job is never queued
without a message for long. A duplicate message is harmless: `begin_run` lets one run own a job, and a
finished job never runs again. Every worker runs a reaper thread; one pass per interval happens, on whichever worker takes
the turn first, so the reaper lives as long as any worker does.
"""
from __future__ import annotations

import base64
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from jobs.blobs import StorageUnavailable
from jobs.queue import RUN_JOB, Message, queue_lists
from jobs.settings import Settings
from jobs.store import JobStore

log = logging.getLogger(__name__)
MAX_LAPSED_RUNS = 3
SCAN_PAGE = 500
SWEEP_PAGE = 500
SWEEP_PAGES_PER_PASS = 20  # the rest waits for the next pass

MessageFor = Callable[[str, str], Message]  # (job id, queue) -> a run_job message (jobs.queue.run_job_message)


@dataclass
class Pass:
    """What one reaper pass did (logged, counted, and read by the tests)."""
    requeued: list[str] = field(default_factory=list)  # running jobs whose lease lapsed, queued again
    ended: list[str] = field(default_factory=list)  # lapsed jobs that were canceled or ran out of runs
    redispatched: list[str] = field(default_factory=list)  # queued jobs whose message was missing


def reap_once(store: JobStore, settings: Settings, message_for: MessageFor) -> Pass:
    done = Pass()
    for job_id, queue in store.lapsed_runs():
        outcome = store.requeue_if_lapsed(job_id, max_lapsed_runs=MAX_LAPSED_RUNS, message=message_for(job_id, queue))
        if outcome == "requeued":
            done.requeued.append(job_id)
        elif outcome in ("canceled", "failed"):
            done.ended.append(job_id)
    stale = store.queued_since(time.time() - settings.redispatch_after_seconds)
    if stale:
        waiting = {queue: waiting_job_ids(store, queue) for queue in {queue for _, queue in stale}}
        for job_id, queue in stale:
            # resend checks the job is still queued: a worker may have taken its message and begun it since.
            if job_id not in waiting[queue] and store.resend(job_id, message_for(job_id, queue)):
                done.redispatched.append(job_id)
    if done.requeued or done.ended or done.redispatched:
        log.warning("reaper: requeued %d job(s) whose lease lapsed %s, ended %d %s, re-sent %d lost message(s) %s",
                    len(done.requeued), done.requeued, len(done.ended), done.ended, len(done.redispatched),
                    done.redispatched)
        store.count("reaper:requeued", len(done.requeued))
        store.count("reaper:redispatched", len(done.redispatched))
    return done


def sweep_blobs(store: JobStore, settings: Settings) -> int:
    """Delete the blob store's objects that are due (and the puts nothing recorded in time); how many."""
    store.claim_orphans(time.time() - settings.blob_grace_seconds)
    deleted = 0
    for _ in range(SWEEP_PAGES_PER_PASS):
        listed_at = time.time()  # an object rescheduled after this (re-put, re-recorded) is not forgotten
        due = store.due_trash(SWEEP_PAGE)
        if not due:
            break
        store.blobs.delete(due)
        deleted += store.forget_trash(due, listed_at)
        if len(due) < SWEEP_PAGE:
            break
    if deleted:
        log.info("sweeper: deleted %d stored object(s)", deleted)
        store.count("blobs:deleted", deleted)
    return deleted


def waiting_job_ids(store: JobStore, queue: str) -> set[str]:
    """The job ids of the run_job messages waiting in a Celery queue (kombu: one Redis list per priority step)."""
    found: set[str] = set()
    for name in queue_lists(queue):
        start = 0
        while True:
            page = store.redis.lrange(name, start, start + SCAN_PAGE - 1)
            for raw in page:
                job_id = _job_id_of_message(raw)
                if job_id:
                    found.add(job_id)
            if len(page) < SCAN_PAGE:
                break
            start += SCAN_PAGE
    return found


def _job_id_of_message(raw: bytes) -> str | None:
    """The job id in a kombu message envelope of our run_job task (protocol 2: body = [args, kwargs, embed])."""
    try:
        message = json.loads(raw)
        if message.get("headers", {}).get("task") != RUN_JOB:
            return None
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        return str(args[0])
    except (ValueError, KeyError, IndexError, TypeError):
        return None


class Reaper:
    """A daemon thread that offers to run a reaper pass every interval."""

    def __init__(self, store: JobStore, settings: Settings, message_for: MessageFor):
        self.store, self.settings, self.message_for = store, settings, message_for
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reaper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        interval = self.settings.reaper_interval_seconds
        while not self._done.is_set():
            try:
                # Slightly shorter than the interval, so the next turn is free when any worker next asks.
                if self.store.take_turn("reaper", interval * 0.9):
                    reap_once(self.store, self.settings, self.message_for)
                    if self.store.blobs is not None:
                        sweep_blobs(self.store, self.settings)
            except StorageUnavailable as exc:  # the objects stay due: the next pass deletes them
                log.warning("sweeper: blob store unavailable (%s); trying again in %.1f s", exc, interval)
            except Exception:  # Redis away, a broker hiccup: the next pass tries again
                log.warning("reaper pass failed; trying again in %.1f s", interval, exc_info=True)
            self._done.wait(interval)

    def stop(self) -> None:
        self._done.set()
        self._thread.join(timeout=5)
