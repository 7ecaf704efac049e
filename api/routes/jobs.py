"""The job routes (docs/http-api.md): submit, read, fetch the result, cancel, list."""
from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from api import idempotency
from api.deps import Caller, CurrentKey, JobDep, StoreDep, SubmittingKey, refuse_if_limited
from api.errors import ApiError
from api.schemas import ErrorBody, JobCreate, JobCreateJSON, JobList, JobPublic, ResultBase64, Status
from api.storage import blob_store, result_response, storage_unavailable, store_input
from api.submission import SubmissionCount, checked_submission, read_submission, small_body
from jobs.images import OUTPUT_FORMATS
from jobs.queue import METHOD_QUEUE, run_job_message
from jobs.record import TERMINAL, new_job_fields, new_job_id, public_job

# Every route here needs a valid key, and counts against its request rate (CurrentKey, api/deps.py; a submission
# counts itself: SubmissionCount).
router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
POLL_RETRY_AFTER_SECONDS = "1"
ACTIVE_JOBS_RETRY_AFTER_SECONDS = 5
_ERRORS = {code: {"model": ErrorBody} for code in (401, 404, 429)}


def _submission_openapi() -> dict[str, Any]:
    form = JobCreate.model_json_schema()
    form["properties"] = {"image": {"type": "string", "format": "binary", "description": "the image file"},
                          "image_url": {"type": "string", "maxLength": 2048,
                                        "description": "instead of the file: an http(s) address to fetch it from"},
                          **form["properties"]}
    form["properties"]["crop"] = {"type": "string", "pattern": r"^\s*\d+\s*(,\s*\d+\s*){3}$", "example": "0,0,128,128",
                                  "description": "upscale only this region: x,y,w,h in input pixels"}
    return {"parameters": [{"name": "Idempotency-Key", "in": "header", "required": False, "schema": {
                "type": "string", "minLength": 1, "maxLength": 255},
                "description": "the same key and body within 24 h return the first job (Idempotent-Replayed: true)"}],
            "requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": form},
        "application/json": {"schema": JobCreateJSON.model_json_schema()},
    }}}


def answer_job(job: dict[str, Any], response: Response) -> dict[str, Any]:
    """The job, which FastAPI validates against the route's response_model (JobPublic) and renders; `Retry-After`
    tells pollers when to look again while it is not finished."""
    if job["status"] not in TERMINAL:
        response.headers["Retry-After"] = POLL_RETRY_AFTER_SECONDS
    return job


@router.post("", status_code=202, response_model=JobPublic, openapi_extra=_submission_openapi(),
             responses={**_ERRORS, **{code: {"model": ErrorBody} for code in (400, 409, 410, 413, 415, 422, 503)}})
async def create_job(request: Request, response: Response, caller: SubmittingKey) -> dict[str, Any]:
    """Submit an image: multipart (`image` file or `image_url` + fields) or JSON (`image_base64` or `image_url` +
    fields). Answers 202 and the job; with an `Idempotency-Key` already used for the same body, the first job."""
    settings, store = caller.settings, caller.store
    count = SubmissionCount(caller)
    claim = None
    try:
        key = idempotency.requested_key(request)
        if not small_body(request):
            await count.now()
        upload = await read_submission(request, settings)
        if key is not None:
            claim = idempotency.claim_for(caller, key, upload)
            if idempotency.worth_holding(upload, small_body(request), blob_store(request) is not None):
                await count.now()  # the hold is a round trip of its own: count the request before it
                claim, made = await idempotency.hold(caller, claim)
                if made is not None:
                    return await replay(made, caller, response)
        submission = await checked_submission(upload, settings, count)
    except Exception:
        await count.now()  # over the rate: 429 instead of the submission's own error
        if claim is not None and claim.token:
            await store.release_idempotency(claim)
        raise
    params, info, (width, height) = submission.params, submission.info, submission.output
    job_id, queue = new_job_id(), METHOD_QUEUE[params.method]
    fields = new_job_fields(
        job_id, caller.owner, params=params.model_dump(exclude={"webhook_url"}),
        input_info={"width": info.width, "height": info.height, "mode": info.mode, "bytes": len(submission.image),
                    "format": info.format},
        output_info={"width": width, "height": height, "content_type": OUTPUT_FORMATS[params.output_format][1],
                     "bytes": 0},
        queue=queue, webhook_url=params.webhook_url, ttl=settings.job_ttl_seconds, now=time.time())
    image, blobs = submission.image, blob_store(request)
    if blobs is not None:  # the input is stored first; the create script records it (or has it deleted)
        # A small submission is still counted by the create script (one round trip fewer): one over its key's rate
        # costs a small put, which that script schedules for deletion at once. A large one was counted already.
        fields["input_key"], image = await store_input(blobs, store, job_id, image), b""
    # One script counts the request (if not yet), records the job, names it in its Idempotency-Key's record and
    # pushes its run_job message: accepted means recorded and enqueued.
    message = run_job_message(job_id, queue)
    creation = await store.create(fields, image, max_active=settings.max_active_jobs_per_key,
                                  message=message, rate=count.with_create(), claim=claim)
    if creation.outcome == "replay":  # this request's claim lapsed and another made the job meanwhile
        return await replay(creation.replay_of, caller, response)
    if creation.outcome != "created" and claim is not None and claim.token:
        await store.release_idempotency(claim)
    if creation.outcome == "in_use":
        raise idempotency.in_use()
    if creation.outcome == "reused":
        raise idempotency.reused()
    if creation.outcome == "storage_lost":
        raise storage_unavailable()
    if creation.outcome == "rate_limited":
        refuse_if_limited(creation.rate_wait, settings)
    if creation.outcome == "too_many_jobs":
        raise ApiError(429, "too_many_jobs", f"this key has {settings.max_active_jobs_per_key} unfinished jobs, "
                                             "the most allowed; wait for some to finish",
                       {"Retry-After": str(ACTIVE_JOBS_RETRY_AFTER_SECONDS)})
    response.headers["Location"] = f"/v1/jobs/{job_id}"
    return answer_job(public_job(fields), response)


async def replay(job_id: str, caller: Caller, response: Response) -> dict[str, Any]:
    """The job an Idempotency-Key made, as it is now, marked as a replay."""
    found = await caller.store.lookup(job_id)
    if found.fields is None:
        raise ApiError(410, "job_expired", "the job this Idempotency-Key made has expired")
    response.headers["Location"] = f"/v1/jobs/{job_id}"
    response.headers["Idempotent-Replayed"] = "true"
    return answer_job(public_job(found.fields, found.deliveries), response)


@router.get("", response_model=JobList, responses=_ERRORS)
async def list_jobs(caller: CurrentKey, status: Status | None = None,
                    limit: Annotated[int, Query(ge=1, le=100)] = 20) -> dict[str, Any]:
    """The caller's jobs, newest first, optionally only those in one status."""
    jobs = await caller.store.list_for(caller.owner, status=status, limit=limit)
    return {"jobs": jobs, "count": len(jobs)}


@router.get("/{job_id}", response_model=JobPublic, responses={**_ERRORS, 410: {"model": ErrorBody}})
async def read_job(job: JobDep, response: Response) -> dict[str, Any]:
    """The job; while it is not finished, `Retry-After` says when to poll again."""
    return answer_job(public_job(job.fields, job.deliveries), response)


@router.get("/{job_id}/result", responses={
    200: {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}, "application/json":
                      {"schema": ResultBase64.model_json_schema()}}, "description": "the image"},
    307: {"description": "UPSCALER_RESULT_REDIRECT: the image at a presigned URL (Location)"},
    **_ERRORS, 409: {"model": ErrorBody}, 410: {"model": ErrorBody}, 503: {"model": ErrorBody}})
async def read_job_result(request: Request, job: JobDep, store: StoreDep,
                          encoding: Annotated[str | None, Query(pattern="^(base64|binary)$")] = None) -> Response:
    """The output image (its own content type), or `?encoding=base64` for JSON. 409 until the job succeeded.
    With UPSCALER_RESULT_REDIRECT (S3 storage): 307 to a presigned URL of the image."""
    status = job.fields["status"]
    if status != "succeeded":
        reason = {"failed": "the job failed; it has no result", "canceled": "the job was canceled; it has no result"}
        raise ApiError(409, "job_not_succeeded" if status in TERMINAL else "job_not_finished",
                       reason.get(status, f"the job is {status}; poll it until it succeeds"),
                       {} if status in TERMINAL else {"Retry-After": POLL_RETRY_AFTER_SECONDS})
    return await result_response(job.fields, store, blob_store(request), request.app.state.settings, encoding)


@router.post("/{job_id}/cancel", status_code=202, response_model=JobPublic,
             responses={**_ERRORS, 409: {"model": ErrorBody}, 410: {"model": ErrorBody}})
async def cancel_job(job: JobDep, store: StoreDep, response: Response) -> dict[str, Any]:
    """Cancel: a queued job never starts; a running job stops between training steps. 409 once finished."""
    outcome = await store.cancel(job.id)
    if outcome not in ("canceled_now", "requested"):
        raise ApiError(409, "job_finished", f"the job already {outcome}" if outcome != "missing"
                       else "the job expired")
    found = await store.lookup(job.id)
    if found.fields is None:
        raise ApiError(410, "job_expired", "the job expired")
    return answer_job(public_job(found.fields, found.deliveries), response)  # the store scheduled job.canceled
