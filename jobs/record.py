"""The job as it is stored (a Redis hash of strings) and as clients and webhooks see it (docs/http-api.md).

The statuses, the job id, the fields a new job is recorded with, and `public_job`: the record without its
owner, run token or secrets.
"""
from __future__ import annotations

import json
import secrets
from datetime import datetime, timezone
from typing import Any

TERMINAL = ("succeeded", "failed", "canceled")
ACTIVE = ("queued", "running")
STATUSES = ACTIVE + TERMINAL


def new_job_id() -> str:
    """128 random bits as 32 hex digits: unguessable and safe in a URL path."""
    return secrets.token_hex(16)


def is_job_id(text: str) -> bool:
    return len(text) == 32 and all(c in "0123456789abcdef" for c in text)


def iso(epoch: str | float | None) -> str | None:
    if epoch in (None, ""):
        return None
    moment = datetime.fromtimestamp(float(epoch), tz=timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _loads(text: str | None, default: Any = None) -> Any:
    return json.loads(text) if text else default


def _seconds_between(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    return round(float(end) - float(start), 3)


def _progress(fields: dict[str, str]) -> dict[str, Any]:
    status = fields["status"]
    stored = _loads(fields.get("progress")) or {}
    if status in TERMINAL:
        phase = "done"
    elif status == "queued":
        phase = "queued"
    else:
        phase = stored.get("phase", "training")
    step, total = int(stored.get("step", 0)), int(stored.get("total_steps", 0))
    if status == "succeeded":
        fraction = 1.0
    elif total > 0 and status == "running":
        fraction = round(min(step / total, 1.0), 4)
    else:
        fraction = 0.0
    progress = {"phase": phase, "step": step, "total_steps": total, "fraction": fraction}
    if stored.get("loss") is not None:
        progress["loss"] = stored["loss"]
    return progress


def public_job(fields: dict[str, str], deliveries: list[str] | None = None) -> dict[str, Any]:
    """The job as clients and webhooks see it (docs/http-api.md, "The job"): no owner, no token, no secret."""
    job_id = fields["id"]
    created, started, finished = fields.get("created_at"), fields.get("started_at"), fields.get("finished_at")
    metrics = {
        "queue_seconds": _seconds_between(created, started),
        "run_seconds": _seconds_between(started, finished),
        "train_steps": int(fields["train_steps"]) if fields.get("train_steps") else None,
        "device": fields.get("device") or None,
        # UPSCALER_PACK_JOBS > 1: how many jobs trained together, this one included; null when it ran alone
        "packed_with": int(fields["packed_with"]) if fields.get("packed_with") else None,
        # ZSSR's self-check (docs/algorithm.md): "blend 0.41" (the output blended toward bicubic, that much of the
        # net kept) or "cubic"; null when the net's output stands
        "fallback": fields.get("fallback") or None,
    }
    last_status = fields.get("webhook_last_status")
    return {
        "id": job_id,
        "status": fields["status"],
        "created_at": iso(created),
        "started_at": iso(started),
        "finished_at": iso(finished),
        "params": _loads(fields.get("params"), {}),
        "input": _loads(fields.get("input"), {}),
        "output": _loads(fields.get("output")),
        "progress": _progress(fields),
        "error": _loads(fields.get("error")),
        "metrics": metrics,
        "kernel": _loads(fields.get("kernel")),  # the estimated blur kernel (worker/runs.py kernel_record), or null
        "webhook": {
            "url": fields.get("webhook_url") or None,
            "attempts": int(fields.get("webhook_attempts") or 0),
            "last_status": int(last_status) if last_status else None,
            "last_error": fields.get("webhook_last_error") or None,
            "delivered_at": iso(fields.get("webhook_delivered_at")),
            "deliveries": [json.loads(item) for item in deliveries or []],
        },
        "cancel_requested": fields.get("cancel_requested") == "1",
        "urls": {"self": f"/v1/jobs/{job_id}", "result": f"/v1/jobs/{job_id}/result",
                 "cancel": f"/v1/jobs/{job_id}/cancel"},
    }


def new_job_fields(job_id: str, owner: str, *, params: dict, input_info: dict, output_info: dict, queue: str,
                   webhook_url: str | None, ttl: int, now: float) -> dict[str, str]:
    fields = {"id": job_id, "owner": owner, "status": "queued", "created_at": f"{now:.6f}",
              "params": json.dumps(params), "input": json.dumps(input_info), "output": json.dumps(output_info),
              "queue": queue,
              "ttl": str(ttl), "runs": "0"}
    if webhook_url:
        fields["webhook_url"] = webhook_url
    return fields
