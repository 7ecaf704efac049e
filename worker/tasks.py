"""The Celery task: run one job (load, call sr, save, report). Webhooks go through the outbox.

Messages carry job ids, never images. The task is safe to run twice: `begin_run` lets only one run own
a job, `finish` writes the result once and schedules the job's one terminal webhook event in the same
step. With UPSCALER_PACK_JOBS > 1 a gpu-queue process hands each upscale to its packer thread
(worker/packing.py), which trains jobs together; all else stays in the job's own task thread. Around the
tasks, every worker keeps a heartbeat and a reaper thread (worker/reaper.py), and light-queue workers a
webhook sender (worker/outbox.py).
"""
from __future__ import annotations

import itertools
import json
import logging
import secrets
import time

from celery import signals

import sr
from jobs import webhooks
from jobs.blobs import StorageUnavailable, open_blob_store
from jobs.heap import freeze_startup_objects
from jobs.images import OUTPUT_FORMATS, decode_for_sr, encode
from jobs.queue import RUN_JOB, run_job_message
from jobs.settings import Settings
from jobs.store import JobStore
from worker.celery_app import app
from worker.outbox import WebhookSender
from worker.packing import Packer
from worker.reaper import Reaper
from worker.runs import (Heartbeat, RunControl, failure_for, keep_lease, shutting_down, sr_metrics,
                         upscale_job)

log = logging.getLogger(__name__)
settings = Settings()
store = JobStore(settings.redis_url, tombstone_seconds=settings.tombstone_seconds,
                 blobs=open_blob_store(settings.storage_url, s3_endpoint_url=settings.s3_endpoint_url))
# A blob store that does not answer: the run tries again after these waits (the last one repeating) for as long as
# it holds the job (its lease renewed meanwhile), so a result is never lost to an outage; a stop request (cancel,
# shutdown, its time limit) ends the waiting.
STORAGE_RETRY_SECONDS = (0.2, 0.5, 1.0, 2.0, 5.0)


@app.task(name=RUN_JOB, bind=True)
def run_job(self, job_id: str) -> None:
    if shutting_down.is_set():
        # A stopping worker can still be handed a message, even the one its own hand-back just sent: it begins
        # no run, and sends the job's message again for another worker (resend does so only while it is queued).
        job = store.fields(job_id)
        if job is not None:
            store.resend(job_id, run_job_message(job_id, job["queue"]))
        return
    token = secrets.token_hex(8)
    leased_at = time.monotonic()
    begun = store.begin_run(job_id, token, worker=self.request.hostname or "worker",
                            lease_seconds=settings.lease_seconds)
    if begun.outcome != "started":
        log.info("job %s not run: %s", job_id, begun.outcome)  # canceled while queued, finished, or run elsewhere
        return
    job = store.fields(job_id)
    params = json.loads(job["params"])
    if begun.first_start:
        store.observe_seconds("queue", params["method"], max(0.0, time.time() - float(job["created_at"])))
        if job.get("webhook_url"):  # the job.started event was scheduled by begin_run; its body is the job now
            store.keep_event_body(job_id, "job.started", webhooks.event_body("job.started", store.public(job_id)))
    control = RunControl(store, job_id, token, settings, leased_at=leased_at)
    started = time.monotonic()
    with keep_lease(store, job_id, token, settings, control):
        try:
            loaded = _until_stored(lambda: store.load_input(job_id), control, job_id, "read its input")
            image = decode_for_sr(loaded or b"", settings.max_input_pixels, params.get("crop"))
            control.report("training" if params["method"] == "zssr" else "inference")
            resume = _checkpoint_to_resume(job_id, params, control)
            if _packer is None:
                output = upscale_job(image, params, settings, control, resume)
            else:
                output = _packer.upscale(image, params, control, resume)
            data = encode(output, params["output_format"])
            if settings.test_hooks_enabled and settings.test_hook_seed in (None, params.get("seed")):
                control.pause_before_result(settings.test_pause_before_result_seconds,
                                            settings.test_hang_before_result_seconds)
            stored = ""
            if store.blobs is not None and not control.lease_may_have_lapsed():
                # under this run's own key, recorded (or deleted) by finish
                stored = _until_stored(lambda: store.put_result(job_id, token, data), control, job_id,
                                       "store its result")
            if control.lease_may_have_lapsed():  # frozen past its lease: another run may own the job now
                if stored:
                    store.give_up_put(stored)
                raise sr.Cancelled()
        except sr.Cancelled:
            _stop(job_id, token, control, job, started)
            return
        except Exception as exc:  # every failure ends the job with a reason; the worker takes the next job
            log.warning("job %s failed", job_id, exc_info=True)
            _end(job_id, token, "failed", {"error": _json(failure_for(exc))}, params["method"], started)
            return
    content_type = OUTPUT_FORMATS[params["output_format"]][1]
    output_meta = {"width": output.width, "height": output.height, "content_type": content_type, "bytes": len(data)}
    fields = {"output": _json(output_meta), **sr_metrics(output)}
    if "train_steps" not in fields and control.train_steps is not None:
        fields["train_steps"] = str(control.train_steps)
    if control.packed_with is not None:
        fields["packed_with"] = str(control.packed_with)
    _end(job_id, token, "succeeded", fields, params["method"], started, result=b"" if stored else data,
         stored_result=stored)


def _until_stored(call, control: RunControl, job_id: str, what: str):
    """`call()`, tried again while the blob store does not answer and the run may go on (sr.Cancelled when it
    may not: control.stop_reason says why)."""
    for attempt in itertools.count():
        try:
            return call()
        except StorageUnavailable as exc:
            wait = STORAGE_RETRY_SECONDS[min(attempt, len(STORAGE_RETRY_SECONDS) - 1)]
            log.warning("job %s: could not %s (%s); trying again in %.1f s", job_id, what, exc, wait)
            until = time.monotonic() + wait
            while time.monotonic() < until:
                if control.should_stop():
                    raise sr.Cancelled() from None
                time.sleep(0.05)


def _checkpoint_to_resume(job_id: str, params: dict, control: RunControl) -> bytes | None:
    """The training state an earlier run of this job saved (a run killed, handed back or lapsed), if any."""
    if params["method"] != "zssr":
        return None
    resume = store.load_checkpoint(job_id)
    if resume is not None:
        log.info("job %s: resuming from a checkpoint of %d bytes", job_id, len(resume))
        control.note_resumed()
    return resume


def _stop(job_id: str, token: str, control: RunControl, job: dict[str, str], started: float) -> None:
    """sr stopped between steps; why decides where the job goes."""
    reason, method = control.stop_reason, json.loads(job["params"])["method"]
    if reason in ("shutdown", "lease_lost"):
        # Hand the job back (a lease lost only here, not yet in Redis, is still ours to hand back);
        # if another run owns it already, this changes nothing.
        handed_back = store.release(job_id, token, run_job_message(job_id, job["queue"]))
        if handed_back == "queued":
            log.info("job %s handed back to the queue (%s)", job_id, reason)
            return
        if handed_back != "cancel":
            log.info("job %s: stopped (%s); another run owns it", job_id, reason)
            return
        reason = "canceled"
    if reason == "timeout":
        error = {"code": "timeout", "message": f"the job ran longer than {settings.job_time_limit_seconds:g} s"}
        _end(job_id, token, "failed", {"error": _json(error)}, method, started)
    elif reason == "canceled":
        _end(job_id, token, "canceled", {}, method, started)


def _end(job_id: str, token: str, outcome: str, fields: dict[str, str], method: str, started: float,
         result: bytes = b"", stored_result: str = "") -> None:
    final, changed = store.finish(job_id, token, outcome, fields=fields, result=result, stored_result=stored_result)
    if not changed:
        log.info("job %s: this run no longer owns it (now %s); nothing written", job_id, final)
        return
    store.observe_seconds("run", method, time.monotonic() - started)


def _json(value) -> str:
    return json.dumps(value)


# --- worker lifecycle: a heartbeat, the reaper and (light queue) the webhook sender while the worker
# is up; a flag when it shuts down, so running jobs are handed back between two steps.

_background: list = []
_packer: Packer | None = None  # a gpu-queue process with UPSCALER_PACK_JOBS > 1: the one device owner


@signals.worker_ready.connect
def _start_background(sender=None, **_) -> None:
    global _packer
    queues = sorted(q.name for q in sender.app.amqp.queues.consume_from.values())
    if "gpu" in queues and settings.pack_jobs > 1:
        _packer = Packer(settings, settings.pack_jobs)
    _background.append(Heartbeat(store, sender.hostname, queues))
    if store.blobs is not None:
        try:
            store.blobs.ensure_ready()
        except StorageUnavailable:
            log.warning("blob store unreachable at start-up; runs retry their reads and writes", exc_info=True)
    _background.append(Reaper(store, settings, run_job_message))
    if "light" in queues:
        _background.append(WebhookSender(store, settings))
    for thread in _background:
        thread.start()
    freeze_startup_objects()  # torch and Celery: a full collection would stall a training step 100+ ms


@signals.worker_shutting_down.connect
def _flag_shutdown(**_) -> None:
    shutting_down.set()


@signals.worker_shutdown.connect
def _stop_background(**_) -> None:
    for thread in reversed(_background):
        thread.stop()
