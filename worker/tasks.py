"""The Celery tasks: run one job (load, call sr, save, report) and deliver one webhook event.

Messages carry job ids, never images. Both tasks are safe to run twice: `begin_run` lets only one run
own a job, `finish` writes the result once, and a webhook event keeps its id across retries and re-runs.
"""
from __future__ import annotations

import json
import logging
import secrets
import time

from celery import signals

import sr
from worker import webhooks
from worker.celery_app import DELIVER_WEBHOOK, RUN_JOB, app
from worker.images import OUTPUT_FORMATS, decode_for_sr, encode
from worker.runs import Heartbeat, RunControl, failure_for, keep_lease, shutting_down, sr_metrics, zssr_config
from worker.settings import Settings
from worker.store import JobStore

log = logging.getLogger(__name__)
settings = Settings()
store = JobStore(settings.redis_url, tombstone_seconds=settings.tombstone_seconds)


@app.task(name=RUN_JOB, bind=True)
def run_job(self, job_id: str) -> None:
    token = secrets.token_hex(8)
    outcome, previous = store.begin_run(job_id, token, worker=self.request.hostname or "worker",
                                        lease_seconds=settings.lease_seconds)
    if outcome != "started":
        log.info("job %s not run: %s", job_id, outcome)  # canceled while queued, finished, or run elsewhere
        return
    job = store.fields(job_id)
    params = json.loads(job["params"])
    if previous == "queued":  # a first start, not a take-over
        store.observe_seconds("queue", params["method"], max(0.0, time.time() - float(job["created_at"])))
        if job.get("webhook_url"):
            notify(job_id, "job.started")
    control = RunControl(store, job_id, token, settings)
    started = time.monotonic()
    with keep_lease(store, job_id, token, settings.lease_seconds, control):
        try:
            image = decode_for_sr(store.load_input(job_id) or b"", settings.max_input_pixels, params.get("crop"))
            control.report("training" if params["method"] == "zssr" else "inference")
            output = sr.upscale(
                image, params["scale"], method=params["method"], preset=params["preset"], kernel=params["kernel"],
                config=zssr_config(settings, params["preset"]) if params["method"] == "zssr" else None,
                device=settings.device, seed=params.get("seed"),
                progress=control.progress, should_stop=control.should_stop)
            data = encode(output, params["output_format"])
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
    _end(job_id, token, "succeeded", fields, params["method"], started, result=data)


def _stop(job_id: str, token: str, control: RunControl, job: dict[str, str], started: float) -> None:
    """sr stopped between steps; why decides where the job goes."""
    reason, method = control.stop_reason, json.loads(job["params"])["method"]
    if reason == "shutdown":
        handed_back = store.release(job_id, token)
        if handed_back == "queued":
            app.send_task(RUN_JOB, args=[job_id], queue=job["queue"])
            log.info("job %s handed back to the queue (worker shutting down)", job_id)
            return
        if handed_back != "cancel":
            return
        reason = "canceled"
    if reason == "timeout":
        error = {"code": "timeout", "message": f"the job ran longer than {settings.job_time_limit_seconds} s"}
        _end(job_id, token, "failed", {"error": _json(error)}, method, started)
    elif reason == "canceled":
        _end(job_id, token, "canceled", {}, method, started)
    else:
        log.info("job %s: stopped (%s); another run owns it", job_id, reason)


def _end(job_id: str, token: str, outcome: str, fields: dict[str, str], method: str, started: float,
         result: bytes = b"") -> None:
    final, changed = store.finish(job_id, token, outcome, fields=fields, result=result)
    if not changed:
        log.info("job %s: this run no longer owns it (now %s); nothing written", job_id, final)
        return
    store.observe_seconds("run", method, time.monotonic() - started)
    notify(job_id, webhooks.TERMINAL_EVENT[final])


def notify(job_id: str, event_type: str) -> None:
    """Queue a webhook event for the job, if it has a webhook; the body is the job as it is now."""
    job = store.public(job_id)
    if job is None or not job["webhook"]["url"]:
        return
    body = webhooks.event_body(event_type, job)
    app.send_task(DELIVER_WEBHOOK, args=[job_id, job["webhook"]["url"], event_type, body], queue="light")


@app.task(name=DELIVER_WEBHOOK, bind=True, max_retries=None)
def deliver_webhook(self, job_id: str, url: str, event_type: str, body: str) -> None:
    attempt_number = self.request.retries + 1
    message_id = webhooks.webhook_id(job_id, event_type)
    if settings.webhook_key is None:
        attempt = webhooks.Attempt(None, "no UPSCALER_WEBHOOK_SECRET on this worker: cannot sign", False, False)
    else:
        attempt = webhooks.deliver(url, message_id=message_id, body=body, key=settings.webhook_key,
                                   allow_private=settings.webhook_allow_private,
                                   timeout=settings.webhook_timeout_seconds)
    will_retry = attempt.retryable and not attempt.delivered and attempt_number < settings.webhook_max_attempts
    if attempt.delivered:
        outcome = "delivered"
    elif will_retry:
        outcome = "retrying"
    else:
        outcome = "refused" if not attempt.retryable else "gave_up"
    store.record_delivery(job_id, {"event": event_type, "webhook_id": message_id, "attempt": attempt_number,
                                   "status": attempt.status, "error": attempt.error, "outcome": outcome,
                                   "at": round(time.time(), 3)}, outcome=outcome)
    if will_retry:
        delay = webhooks.backoff_seconds(attempt_number, settings.webhook_backoff_seconds,
                                         settings.webhook_backoff_max_seconds)
        raise self.retry(countdown=delay)


def _json(value) -> str:
    return json.dumps(value)


# --- worker lifecycle: a heartbeat while the worker is up, a flag when it shuts down -------------------

_heartbeat: Heartbeat | None = None


@signals.worker_ready.connect
def _start_heartbeat(sender=None, **_) -> None:
    global _heartbeat
    queues = sorted(q.name for q in sender.app.amqp.queues.consume_from.values())
    _heartbeat = Heartbeat(store, sender.hostname, queues)
    _heartbeat.start()


@signals.worker_shutting_down.connect
def _flag_shutdown(**_) -> None:
    shutting_down.set()


@signals.worker_shutdown.connect
def _stop_heartbeat(**_) -> None:
    if _heartbeat is not None:
        _heartbeat.stop()
