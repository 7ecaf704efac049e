"""A submission's checks, before its job is recorded: the body read (multipart or JSON), the parameters, the
image's decode and size limits, the crop, the kernel estimation's limits and the webhook target.

Each refusal is an ApiError (4xx) with its code; the rate count (SubmissionCount) makes sure a caller over its
request rate is answered 429 before the API does costly work for it.
"""
from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

import anyio
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from api.deps import Caller
from api.errors import ApiError
from api.image_url import fetch_image
from api.multipart import FileTooLarge, MultipartError, read_form
from api.schemas import Crop, JobCreate, JobCreateJSON
from jobs.images import MIN_SIDE, ImageInfo, ImageRejected, check_pixels, open_image, output_size
from jobs.settings import Settings
from jobs.store import RateLimit
from jobs.webhooks import TargetRefused, check_url_syntax, resolve_target

# The scales KernelGAN estimates a kernel for (sr.kernelgan.SUPPORTED_SF, the same on both axes): repeated here so
# that the API refuses kernel=estimate at another scale without importing the core (tests/worker checks they agree).
KERNEL_ESTIMATION_SCALES = (2.0, 4.0)
# The smallest side (of the image, or of its crop region) KernelGAN can estimate a kernel on: its generator's 13x13
# kernel and its discriminator's 7x7 field, twice each (sr/kernelgan.py; tests/worker checks they agree).
KERNEL_ESTIMATION_MIN_SIDE = 40
# An upload at most this large, declaring at most this many pixels, is decoded on the event loop (well under a
# millisecond, less than a thread hop costs: bench/RESULTS.md); a larger one in a thread.
INLINE_DECODE_BYTES = 32 * 1024
INLINE_DECODE_PIXELS = 256 * 256
# A submission body at most this large is read before the request is counted against its key's rate, and read
# whole by the form reader (api/multipart.py).
SMALL_SUBMISSION_BYTES = 64 * 1024

@dataclass(frozen=True)
class Upload:
    """A submission as read from its body: the parameters, and the image's bytes or the URL to fetch it from."""
    params: JobCreate
    image: bytes | None
    image_url: str | None


async def read_submission(request: Request, settings: Settings) -> Upload:
    """The parameters and the image (bytes or URL) of a submission, multipart or JSON (the body limit is already
    enforced)."""
    content_type = request.headers.get("content-type", "").lower()
    try:
        if content_type.startswith("multipart/form-data"):
            form = await read_form(request, max_files=1, max_fields=16, max_field_bytes=64 * 1024,
                                   max_file_bytes=settings.max_upload_bytes, small_body_bytes=SMALL_SUBMISSION_BYTES)
            image, image_url = form.get("image"), form.get("image_url")
            if not isinstance(image, bytes):
                image = None
            if not isinstance(image_url, str) or not image_url.strip():
                image_url = None
            if (image is None) == (image_url is None):
                raise ApiError(422, "missing_image", "send the image as the multipart file field 'image', or its "
                                                     "address as the field 'image_url' (one of the two)")
            params = JobCreate.model_validate({key: value for key, value in form.parts
                                               if key not in ("image", "image_url")})
        elif content_type.startswith("application/json"):
            try:
                document = json.loads(await request.body())
            except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested thousands deep
                raise ApiError(422, "invalid_json", "the body is not valid JSON") from None
            if not isinstance(document, dict):
                raise ApiError(422, "invalid_json", "the body must be a JSON object")
            sent = JobCreateJSON.model_validate(document)
            image = _decode_base64(sent.image_base64) if sent.image_base64 is not None else None
            image_url = sent.image_url
            params = JobCreate.model_validate(sent.model_dump(exclude={"image_base64", "image_url"}))
        else:
            raise ApiError(415, "unsupported_media_type", "send multipart/form-data (file field 'image') or "
                                                          "application/json (image_base64 or image_url)")
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None
    except MultipartError as exc:
        raise ApiError(400, "bad_request", str(exc)) from None
    except FileTooLarge:
        # refused mid-body: the connection closes rather than read the rest (as api/limits.py's refusal does)
        raise image_too_large(settings, {"Connection": "close"}) from None
    if image is not None and len(image) > settings.max_upload_bytes:
        raise image_too_large(settings)
    return Upload(params, image, image_url)


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


async def checked_submission(upload: Upload, settings: Settings, count: SubmissionCount) -> Submission:
    """The submission, checked as far as it can be before its job is recorded (an image_url fetched first);
    ApiError (4xx) if it is refused."""
    params, image = upload.params, upload.image
    check_kernel_scale(params)
    if image is None:
        await count.now()  # a fetch is the costliest check of all
        image = await fetch_image(upload.image_url, settings)
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
