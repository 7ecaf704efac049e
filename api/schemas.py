"""One pydantic schema per shape the API reads or writes (docs/http-api.md)."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Method = Literal["zssr", "bicubic"]
Preset = Literal["fast", "balanced", "paper"]
Kernel = Literal["bicubic", "estimate"]
Denoise = Literal["off", "auto"]
OutputFormat = Literal["png", "jpeg", "webp"]
Status = Literal["queued", "running", "succeeded", "failed", "canceled"]


class Crop(BaseModel):
    """A region of the input in pixels (after EXIF orientation): only this part is upscaled.

    Submitted as the text `x,y,w,h` (multipart or JSON), or in JSON as `[x, y, w, h]` or this object."""
    model_config = ConfigDict(extra="forbid")

    x: int = Field(ge=0, description="left edge")
    y: int = Field(ge=0, description="top edge")
    width: int = Field(ge=1)
    height: int = Field(ge=1)

    @model_validator(mode="before")
    @classmethod
    def _from_text_or_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.split(",")
            if not all(part.strip().isdigit() for part in value):
                raise ValueError("crop must be four whole numbers x,y,w,h (pixels), e.g. 0,0,128,128")
        if isinstance(value, (list, tuple)):
            if len(value) != 4:
                raise ValueError("crop must be four whole numbers x,y,w,h (pixels), e.g. 0,0,128,128")
            return dict(zip(("x", "y", "width", "height"), value))
        return value

    def box(self) -> tuple[int, int, int, int]:
        """Pillow's (left, upper, right, lower)."""
        return self.x, self.y, self.x + self.width, self.y + self.height


class JobCreate(BaseModel):
    """The parameters of a new job; the image comes as the multipart `image` file or as `image_base64`."""
    model_config = ConfigDict(extra="forbid")

    scale: float = Field(2.0, gt=1, le=8, allow_inf_nan=False, description="1 < scale <= 8")
    method: Method = "zssr"
    preset: Preset = "balanced"
    kernel: Kernel = "bicubic"
    denoise: Denoise = Field("off", description="ZSSR: auto = estimate the photo's noise and train to remove it")
    output_format: OutputFormat = "png"
    webhook_url: str | None = Field(None, max_length=2048)
    seed: int | None = Field(None, ge=0, le=2**32 - 1)
    crop: Crop | None = Field(None, description="upscale only this region: x,y,w,h in input pixels")

    @field_validator("crop", mode="before")
    @classmethod
    def _empty_crop_is_none(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value  # an empty HTML form field


class JobCreateJSON(JobCreate):
    """`POST /v1/jobs` with `Content-Type: application/json`: the image as `image_base64` or `image_url`."""
    image_base64: str | None = Field(None, description="the image file, base64-encoded (a data: URL prefix is "
                                                       "accepted)")
    image_url: str | None = Field(None, max_length=2048, description="an http(s) address the service fetches the "
                                                                     "image from, instead of image_base64")

    @model_validator(mode="after")
    def _one_image(self) -> JobCreateJSON:
        if (self.image_base64 is None) == (self.image_url is None):
            raise ValueError("send the image as image_base64 or its address as image_url (one of the two)")
        return self


class JobParams(BaseModel):
    scale: float
    method: Method
    preset: Preset
    kernel: Kernel = "bicubic"
    denoise: Denoise = "off"
    output_format: OutputFormat
    seed: int | None = None
    crop: Crop | None = None


class ImageInput(BaseModel):
    width: int
    height: int
    mode: str
    bytes: int
    format: str | None = None


class ImageOutput(BaseModel):
    width: int
    height: int
    content_type: str
    bytes: int


class JobProgress(BaseModel):
    phase: Literal["queued", "training", "inference", "done"]
    step: int
    total_steps: int
    fraction: float
    loss: float | None = None


class JobError(BaseModel):
    code: str
    message: str


class JobMetrics(BaseModel):
    queue_seconds: float | None
    run_seconds: float | None
    train_steps: int | None
    device: str | None
    fallback: str | None = Field(None, description="ZSSR's self-check, measured on held-out data: 'blend W' (the "
                                                  "output blended toward bicubic, W of the net kept) or 'cubic'; "
                                                  "null when the net's output stands")
    packed_with: int | None = Field(None, description="jobs trained together with UPSCALER_PACK_JOBS > 1, this "
                                                      "one included; null when it ran alone")


class JobKernel(BaseModel):
    """The blur kernel the ZSSR run made its lr_sons with, when it was estimated (kernel=estimate)."""
    size: list[int] = Field(description="[rows, columns]")
    values: list[list[float]] = Field(description="the kernel's rows; the values sum to 1")
    source: str = Field(description="estimated (from the image itself)")
    factor: float | None = Field(None, description="the factor the estimate's covariance was scaled by: the widest "
                                                   "blur that explains the input (below 1 narrowed, above 1 widened)")
    shape: str | None = Field(None, description="the estimate's shape as used: estimate, turned 45/90/135, isotropic")
    estimator: str | None = Field(None, description="which estimator ran: prior (the learnt kernel prior) or kernelgan")
    estimation_seconds: float | None = None


class WebhookDelivery(BaseModel):
    event: str
    webhook_id: str
    attempt: int
    status: int | None
    error: str | None
    outcome: Literal["delivered", "retrying", "gave_up", "refused"]
    at: float
    next_attempt_at: float | None = None  # when a `retrying` attempt's event is due again


class JobWebhook(BaseModel):
    url: str | None
    attempts: int
    last_status: int | None
    last_error: str | None = None
    delivered_at: str | None
    deliveries: list[WebhookDelivery] = []


class JobUrls(BaseModel):
    self: str
    result: str
    cancel: str


class JobPublic(BaseModel):
    """The job as every route and every webhook shows it."""
    id: str
    status: Status
    created_at: str
    started_at: str | None
    finished_at: str | None
    params: JobParams
    input: ImageInput
    output: ImageOutput  # the size to expect until the job succeeds; bytes is 0 until then
    progress: JobProgress
    error: JobError | None
    metrics: JobMetrics
    kernel: JobKernel | None = None  # null unless the job estimated its blur kernel
    webhook: JobWebhook
    cancel_requested: bool = False
    urls: JobUrls


class JobList(BaseModel):
    jobs: list[JobPublic]
    count: int


class ResultBase64(BaseModel):
    image_base64: str
    content_type: str


class ErrorBody(BaseModel):
    error: JobError


class Readiness(BaseModel):
    status: Literal["ready", "not_ready"]
    redis: bool
    workers: int
    queues: dict[str, int]
