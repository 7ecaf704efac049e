"""The job routes (CONTRACT.md section 4): submit, read, fetch the result, cancel, list."""
from __future__ import annotations

import base64
import binascii
import json
import time
from dataclasses import dataclass
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from api.deps import Caller, CurrentKey, JobDep, StoreDep, SubmittingKey, refuse_if_limited
from api.errors import ApiError
from api.multipart import FileTooLarge, MultipartError, read_form
from api.schemas import Crop, ErrorBody, JobCreate, JobCreateJSON, JobList, JobPublic, ResultBase64, Status
from worker.celery_app import run_job_message
from worker.images import (MIN_SIDE, OUTPUT_FORMATS, ImageInfo, ImageRejected, check_pixels, open_image,
                           output_size)
from worker.settings import KERNEL_ESTIMATION_MIN_SIDE, KERNEL_ESTIMATION_SCALES, METHOD_QUEUE, Settings
from worker.store import TERMINAL, RateLimit, new_job_fields, new_job_id, public_job
from worker.webhooks import TargetRefused, check_url_syntax, resolve_target

# Every route here needs a valid key, and counts against its request rate (CurrentKey, api/deps.py; a submission
# counts itself: SubmissionCount).
router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
POLL_RETRY_AFTER_SECONDS = "1"
ACTIVE_JOBS_RETRY_AFTER_SECONDS = 5
# An upload at most this large, declaring at most this many pixels, is decoded on the event loop (under a
# millisecond: a flat 256x256 PNG of 760 bytes takes 0.56 ms here; a thread hop costs more); a larger one in a thread.
INLINE_DECODE_BYTES = 32 * 1024
INLINE_DECODE_PIXELS = 256 * 256
# A submission body at most this large is read before the request is counted against its key's rate, and read
# whole by the form reader (api/multipart.py).
SMALL_SUBMISSION_BYTES = 64 * 1024
_ERRORS = {code: {"model": ErrorBody} for code in (401, 404, 429)}


def _submission_openapi() -> dict[str, Any]:
    form = JobCreate.model_json_schema()
    form["properties"] = {"image": {"type": "string", "format": "binary", "description": "the image file"},
                          **form["properties"]}
    form["properties"]["crop"] = {"type": "string", "pattern": r"^\s*\d+\s*(,\s*\d+\s*){3}$", "example": "0,0,128,128",
                                  "description": "upscale only this region: x,y,w,h in input pixels"}
    form["required"] = ["image"]
    return {"requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": form},
        "application/json": {"schema": JobCreateJSON.model_json_schema()},
    }}}


def job_response(job: dict[str, Any], status_code: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    """The job as JSON; `Retry-After` tells pollers when to look again while it is not finished."""
    headers = dict(headers or {})
    if job["status"] not in TERMINAL:
        headers["Retry-After"] = POLL_RETRY_AFTER_SECONDS
    return JSONResponse(job, status_code=status_code, headers=headers)


async def read_submission(request: Request, settings: Settings) -> tuple[JobCreate, bytes]:
    """The parameters and image bytes of a submission, multipart or JSON (the body limit is already enforced)."""
    content_type = request.headers.get("content-type", "").lower()
    try:
        if content_type.startswith("multipart/form-data"):
            form = await read_form(request, max_files=1, max_fields=16, max_field_bytes=64 * 1024,
                                   max_file_bytes=settings.max_upload_bytes, small_body_bytes=SMALL_SUBMISSION_BYTES)
            image = form.get("image")
            if not isinstance(image, bytes):
                raise ApiError(422, "missing_image", "send the image as the multipart file field 'image'")
            params = JobCreate.model_validate({key: value for key, value in form.parts if key != "image"})
        elif content_type.startswith("application/json"):
            try:
                document = json.loads(await request.body())
            except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested thousands deep
                raise ApiError(422, "invalid_json", "the body is not valid JSON") from None
            if not isinstance(document, dict):
                raise ApiError(422, "invalid_json", "the body must be a JSON object")
            params = JobCreateJSON.model_validate(document)
            image = _decode_base64(params.image_base64)
            params = JobCreate.model_validate(params.model_dump(exclude={"image_base64"}))
        else:
            raise ApiError(415, "unsupported_media_type",
                           "send multipart/form-data (file field 'image') or application/json (image_base64)")
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None
    except MultipartError as exc:
        raise ApiError(400, "bad_request", str(exc)) from None
    except FileTooLarge:
        # refused mid-body: the connection closes rather than read the rest (as api/limits.py's refusal does)
        raise image_too_large(settings, {"Connection": "close"}) from None
    if len(image) > settings.max_upload_bytes:
        raise image_too_large(settings)
    return params, image


def image_too_large(settings: Settings, headers: dict[str, str] | None = None) -> ApiError:
    return ApiError(413, "payload_too_large", f"the image exceeds {settings.max_upload_bytes} bytes", headers)


def _decode_base64(text: str) -> bytes:
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(422, "invalid_base64", "image_base64 is not valid base64") from None


def check_crop(crop: Crop, width: int, height: int) -> None:
    """The region must lie inside the image (as oriented by its EXIF tag, the way viewers show it)."""
    if crop.x + crop.width > width or crop.y + crop.height > height:
        raise ApiError(422, "invalid_parameters",
                       f"crop: the region {crop.x},{crop.y},{crop.width},{crop.height} reaches past the "
                       f"{width}x{height} image (x + w must be <= {width} and y + h <= {height})")


def check_kernel_scale(params: JobCreate) -> None:
    """KernelGAN estimates a kernel for x2 or x4 only: refuse another scale now rather than fail the job later."""
    if params.method == "zssr" and params.kernel == "estimate" and params.scale not in KERNEL_ESTIMATION_SCALES:
        scales = " or ".join(f"{scale:g}" for scale in KERNEL_ESTIMATION_SCALES)
        raise ApiError(422, "invalid_parameters",
                       f"kernel: estimating the blur kernel (KernelGAN) works at scale {scales} only, got scale "
                       f"{params.scale:g}; use kernel=bicubic for this scale")


def check_kernel_image_size(params: JobCreate, width: int, height: int) -> None:
    """KernelGAN needs an image (or region) of at least KERNEL_ESTIMATION_MIN_SIDE a side: refused now, not failed
    in the worker."""
    if params.method == "zssr" and params.kernel == "estimate" and min(width, height) < KERNEL_ESTIMATION_MIN_SIDE:
        raise ApiError(422, "invalid_parameters",
                       f"kernel: estimating the blur kernel (KernelGAN) needs an image (or region) at least "
                       f"{KERNEL_ESTIMATION_MIN_SIDE} pixels a side, got {width}x{height}; use kernel=bicubic")


async def check_webhook_target(url: str, settings: Settings) -> None:
    if settings.webhook_key is None:
        raise ApiError(422, "webhooks_disabled", "this service has no UPSCALER_WEBHOOK_SECRET, so it sends no webhooks")
    try:
        check_url_syntax(url)
        if not settings.webhook_allow_private:  # checked again, and pinned, at every delivery
            await anyio.to_thread.run_sync(lambda: resolve_target(url, allow_private=False))
    except TargetRefused as exc:
        raise ApiError(422, "webhook_url_refused", str(exc)) from None


class SubmissionCount:
    """Counts a submission against its key's rate exactly once. A submission that is cheap to check (a small
    body, a small image) is counted in the round trip that records its job; any other is counted before the
    costly part (reading a large body, decoding a large image), so a caller over its rate cannot make the API
    do that work; a refused submission is counted before its refusal is answered."""

    def __init__(self, caller: Caller):
        self.caller, self.counted = caller, False

    async def now(self) -> None:
        if not self.counted:
            self.counted = True
            await self.caller.count_request()

    def with_create(self) -> RateLimit | None:
        """The rate for the create script to count against (None when the request was already counted)."""
        return None if self.counted else self.caller.rate


def small_body(request: Request) -> bool:
    length = request.headers.get("content-length", "")
    return length.isdigit() and int(length) <= SMALL_SUBMISSION_BYTES


async def inspect_upload(image: bytes, settings: Settings, count: SubmissionCount) -> ImageInfo:
    """Decode the whole upload: on the event loop when it is small (a thread hop costs more), else in a thread,
    after the request is counted."""
    try:
        header = open_image(image, settings.max_input_pixels)
        if len(image) <= INLINE_DECODE_BYTES and header.width * header.height <= INLINE_DECODE_PIXELS:
            return check_pixels(header)
        await count.now()
        return await anyio.to_thread.run_sync(check_pixels, header)
    except ImageRejected as exc:
        raise ApiError(exc.status, exc.code, exc.message) from None


@dataclass(frozen=True)
class Submission:
    params: JobCreate
    image: bytes
    info: ImageInfo
    output: tuple[int, int]  # width, height


async def checked_submission(request: Request, settings: Settings, count: SubmissionCount) -> Submission:
    """The submission, checked as far as it can be before its job is recorded; ApiError (4xx) if it is refused."""
    if not small_body(request):
        await count.now()
    params, image = await read_submission(request, settings)
    check_kernel_scale(params)
    info = await inspect_upload(image, settings, count)
    if params.crop:
        check_crop(params.crop, info.width, info.height)
    upscaled = (params.crop.width, params.crop.height) if params.crop else (info.width, info.height)
    if min(upscaled) < MIN_SIDE:
        raise ApiError(422, "image_too_small", f"the image (or region) is {upscaled[0]}x{upscaled[1]}; each side must "
                                               f"be at least {MIN_SIDE} pixels")
    check_kernel_image_size(params, *upscaled)
    width, height = output_size(*upscaled, params.scale)
    if width * height > settings.max_output_pixels:
        raise ApiError(422, "output_too_large", f"the output would be {width}x{height} = {width * height} pixels; "
                                                f"the limit is {settings.max_output_pixels}")
    if width < 1 or height < 1:
        raise ApiError(422, "output_too_small", "the output would have no pixels")
    if params.webhook_url:
        await count.now()  # resolving the target's name is a thread hop
        await check_webhook_target(params.webhook_url, settings)
    return Submission(params, image, info, (width, height))


@router.post("", status_code=202, response_model=JobPublic, openapi_extra=_submission_openapi(),
             responses={**_ERRORS, **{code: {"model": ErrorBody} for code in (413, 415, 422, 503)}})
async def create_job(request: Request, caller: SubmittingKey) -> JSONResponse:
    """Submit an image: multipart (`image` file + fields) or JSON (`image_base64` + fields). Answers 202 and the job."""
    settings, store = caller.settings, caller.store
    count = SubmissionCount(caller)
    try:
        submission = await checked_submission(request, settings, count)
    except Exception:
        await count.now()  # over the rate: 429 instead of the submission's own error
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
    # One script counts the request (if not yet), records the job and pushes its run_job message: accepted means
    # recorded and enqueued.
    message = run_job_message(request.app.state.celery, job_id, queue)
    creation = await store.create(fields, submission.image, max_active=settings.max_active_jobs_per_key,
                                  message=message, rate=count.with_create())
    if creation.outcome == "rate_limited":
        refuse_if_limited(creation.rate_wait, settings)
    if creation.outcome == "too_many_jobs":
        raise ApiError(429, "too_many_jobs", f"this key has {settings.max_active_jobs_per_key} unfinished jobs, "
                                             "the most allowed; wait for some to finish",
                       {"Retry-After": str(ACTIVE_JOBS_RETRY_AFTER_SECONDS)})
    return job_response(public_job(fields), 202, {"Location": f"/v1/jobs/{job_id}"})


@router.get("", response_model=JobList, responses=_ERRORS)
async def list_jobs(caller: CurrentKey, status: Status | None = None,
                    limit: Annotated[int, Query(ge=1, le=100)] = 20) -> JSONResponse:
    """The caller's jobs, newest first, optionally only those in one status."""
    jobs = await caller.store.list_for(caller.owner, status=status, limit=limit)
    return JSONResponse({"jobs": jobs, "count": len(jobs)})


@router.get("/{job_id}", response_model=JobPublic, responses={**_ERRORS, 410: {"model": ErrorBody}})
async def read_job(job: JobDep) -> JSONResponse:
    """The job; while it is not finished, `Retry-After` says when to poll again."""
    return job_response(public_job(job.fields, job.deliveries))


@router.get("/{job_id}/result", responses={
    200: {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}, "application/json":
                      {"schema": ResultBase64.model_json_schema()}}, "description": "the image"},
    **_ERRORS, 409: {"model": ErrorBody}, 410: {"model": ErrorBody}})
async def read_job_result(job: JobDep, store: StoreDep,
                          encoding: Annotated[str | None, Query(pattern="^(base64|binary)$")] = None) -> Response:
    """The output image (its own content type), or `?encoding=base64` for JSON. 409 until the job succeeded."""
    status = job.fields["status"]
    if status != "succeeded":
        reason = {"failed": "the job failed; it has no result", "canceled": "the job was canceled; it has no result"}
        raise ApiError(409, "job_not_succeeded" if status in TERMINAL else "job_not_finished",
                       reason.get(status, f"the job is {status}; poll it until it succeeds"),
                       {} if status in TERMINAL else {"Retry-After": POLL_RETRY_AFTER_SECONDS})
    data = await store.result(job.id)
    if data is None:
        raise ApiError(410, "job_expired", "the result expired")
    content_type = json.loads(job.fields["output"])["content_type"]
    if encoding == "base64":
        return JSONResponse(jsonable_encoder(ResultBase64(image_base64=base64.b64encode(data).decode(),
                                                          content_type=content_type)))
    extension = content_type.rpartition("/")[2]
    return Response(data, media_type=content_type,
                    headers={"Content-Disposition": f'inline; filename="{job.id}.{extension}"'})


@router.post("/{job_id}/cancel", status_code=202, response_model=JobPublic,
             responses={**_ERRORS, 409: {"model": ErrorBody}, 410: {"model": ErrorBody}})
async def cancel_job(job: JobDep, store: StoreDep) -> JSONResponse:
    """Cancel: a queued job never starts; a running job stops between training steps. 409 once finished."""
    outcome = await store.cancel(job.id)
    if outcome not in ("canceled_now", "requested"):
        raise ApiError(409, "job_finished", f"the job already {outcome}" if outcome != "missing"
                       else "the job expired")
    found = await store.lookup(job.id)
    if found.fields is None:
        raise ApiError(410, "job_expired", "the job expired")
    return job_response(public_job(found.fields, found.deliveries), 202)  # the store scheduled job.canceled
