"""The one settings class shared by the API and the workers (environment variables; the README's Settings table).

Both `api` and `worker` import `jobs`, never the reverse. Every variable is read from the
environment with the `UPSCALER_` prefix, except `REDIS_URL`. Secrets are `SecretStr`, so they never
show up in a repr, a log line or an error message.
"""
from __future__ import annotations

import base64
import ipaddress
import json
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class UnsafeSettings(ValueError):
    """The settings are fine for a laptop but not for a service reachable from other machines."""


class SettingsError(ValueError):
    """A setting has a bad value; the message names the variable (never its value: it may be a secret)."""


class Settings(BaseSettings):
    # hide_input_in_errors: a bad secret must not be echoed into an error message or a log.
    model_config = SettingsConfigDict(env_prefix="UPSCALER_", extra="ignore", frozen=True, hide_input_in_errors=True)

    redis_url: str = Field("redis://127.0.0.1:6379/0", validation_alias=AliasChoices("REDIS_URL", "UPSCALER_REDIS_URL"))
    host: str = "127.0.0.1"  # where `python -m api` listens
    port: int = Field(8000, ge=0, le=65535)
    # Comma-separated; empty = open access, allowed only in local mode (see `check_deployable`).
    api_keys: Annotated[tuple[SecretStr, ...], NoDecode] = ()
    webhook_secret: SecretStr | None = None  # "whsec_" + base64 (Standard Webhooks)
    max_upload_bytes: int = Field(25 * 1024 * 1024, gt=0)  # of the image itself; JSON bodies may carry its base64
    max_input_pixels: int = Field(4096 * 4096, gt=0)  # checked on the declared size, before decoding
    max_output_pixels: int = Field(4096 * 4096, gt=0)  # width * height of the upscaled image
    job_ttl_seconds: int = Field(24 * 3600, gt=0)  # a job, its input and result live this long after the last change
    tombstone_seconds: int = Field(7 * 24 * 3600, ge=0)  # how long after expiry an id still answers 410, not 404
    webhook_allow_private: bool = False  # also the rule for image_url fetches
    image_url_timeout_seconds: float = Field(15.0, gt=0)  # the whole fetch of an image_url, redirects included
    # Where images live (docs/http-api.md, jobs/blobs.py): unset = Redis; file:///a/dir; s3://bucket/prefix
    # (with UPSCALER_S3_ENDPOINT_URL for a store other than AWS, and the standard AWS_* credentials).
    storage_url: str | None = None
    s3_endpoint_url: str | None = None
    result_redirect: bool = False  # S3: GET .../result answers 307 to a presigned URL instead of the bytes
    result_url_seconds: int = Field(900, ge=1, le=7 * 24 * 3600)  # how long that URL works
    # A blob put that nothing recorded this long after it began (its process died) is deleted by the sweeper: far
    # longer than any one put may take.
    blob_grace_seconds: float = Field(900, gt=0)
    device: str | None = None  # "cpu" | "cuda" | "cuda:1"; unset = CUDA when available
    # JSON object applied over every ZSSR preset (e.g. {"max_iters": 400}), or keyed by preset
    # ({"paper": {"max_iters": 1000}}): how tests and operators shrink training budgets (sr.config_for).
    zssr_overrides: Annotated[dict[str, Any], NoDecode] = {}
    job_time_limit_seconds: float = Field(3600, gt=0)  # a running job past this ends failed/timeout
    # A run still going this long after its time limit (stuck where sr does not ask should_stop) is failed
    # with `timeout` by its own watchdog, and its worker process exits to be restarted.
    job_stop_grace_seconds: float = Field(60, gt=0)
    # A running job's lease; its worker renews it every third of this. A job whose lease lapsed (its worker
    # died) is put back in the queue by the reaper, so it runs again within lease + reaper interval.
    lease_seconds: float = Field(30, ge=1)
    reaper_interval_seconds: float = Field(10, gt=0)  # how often one of the workers looks for lapsed leases
    # A queued job whose message is in no queue this long after it was sent (a worker killed holding the
    # message before it began the run) is sent again by the reaper.
    redispatch_after_seconds: float = Field(30, gt=0)
    max_active_jobs_per_key: int = Field(100, ge=0)  # unfinished (queued or running) jobs per key; 0 = no limit
    rate_limit_per_second: float = Field(50, ge=0)  # requests per second per key, sustained; 0 = no limit
    rate_limit_burst: int = Field(100, ge=1)  # requests a key may send at once above the sustained rate
    # Failed authentications (a missing or wrong key) per client address (an IPv6 client's /64) in a window that
    # starts at its first failure; past it, every request from that address is answered 429 until the window ends.
    # 0 = no limit.
    auth_failure_limit: int = Field(20, ge=0)
    auth_failure_window_seconds: int = Field(60, ge=1)
    # A connection whose request headers have not all arrived this long after it opened (or after the request's
    # first byte, on a kept-alive connection), or whose body stalls this long, is answered 408 and closed.
    client_timeout_seconds: float = Field(10.0, gt=0)
    # Comma-separated origins of browser apps allowed to call the API (CORS, preflight answered), e.g.
    # "https://app.example.com"; "*" for any; empty = none (browsers then refuse cross-origin calls).
    cors_origins: Annotated[tuple[str, ...], NoDecode] = ()
    # Addresses of the reverse proxies whose X-Forwarded-For / X-Forwarded-Proto are believed (uvicorn's
    # forwarded_allow_ips: comma-separated addresses or networks, "*" for any): the client address that failed
    # authentications are counted against comes from there.
    forwarded_allow_ips: str = "127.0.0.1"
    progress_interval_seconds: float = Field(0.5, ge=0)  # at most two progress writes a second
    webhook_max_attempts: int = Field(8, ge=1)
    webhook_backoff_seconds: float = Field(5.0, ge=0)  # first retry delay; doubles each attempt
    webhook_backoff_max_seconds: float = Field(900.0, ge=0)  # a delay cap, well under the visibility timeout
    webhook_timeout_seconds: float = Field(10.0, gt=0)
    webhook_senders: int = Field(4, ge=1)  # delivery threads of each light-queue worker
    light_concurrency: int = Field(4, ge=1)  # threads of a light-queue worker
    # Up to this many ZSSR jobs in flight in one gpu-queue process, trained together where they can be
    # (worker/packing.py); 1 = one job at a time (the solo pool).
    pack_jobs: int = Field(1, ge=1)
    # The CPU priority (nice value) worker processes run at. A worker sharing a host with the API (--dev, a small
    # single-host install) yields the CPU to request handling; on a host of its own it changes nothing. 0 = the
    # priority it was started with. 19 rather than 10: the lowest priority leaves the API more of a shared CPU
    # at no cost in jobs per second (bench/RESULTS.md, the API's submit path).
    worker_nice: int = Field(19, ge=0, le=19)
    # Test hooks for fault-injection tests, off by default and refused outside local mode: a run pauses
    # this long between computing its result and writing it; "pause" still answers stop requests (cancel,
    # shutdown, a lost lease) every 0.1 s, "hang" does not (a job stuck outside sr).
    test_pause_before_result_seconds: float = Field(0, ge=0)
    test_hang_before_result_seconds: float = Field(0, ge=0)
    test_hook_seed: int | None = None  # the hooks apply only to jobs submitted with this seed (unset: every job)
    dev: bool = False  # local mode: set by `python -m api --dev` for its worker

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(key.strip() for key in value.split(",") if key.strip())
        return value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = tuple(origin.strip() for origin in value.split(",") if origin.strip())
        for origin in value:
            parts = urlsplit(origin)
            if origin != "*" and (parts.scheme not in ("http", "https") or not parts.hostname
                                  or origin != f"{parts.scheme}://{parts.netloc}"):
                # a browser's Origin is scheme://host[:port], nothing after: anything else would never match
                raise ValueError(f"UPSCALER_CORS_ORIGINS: {origin!r} is not an origin (scheme://host[:port]) or *")
        return value

    @field_validator("zssr_overrides", mode="before")
    @classmethod
    def _parse_overrides(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = json.loads(value) if value.strip() else {}
        if not isinstance(value, dict):
            raise ValueError("UPSCALER_ZSSR_OVERRIDES must be a JSON object")
        return value

    @field_validator("webhook_secret", mode="after")
    @classmethod
    def _check_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            secret_key_bytes(value)  # raises ValueError with a message that does not echo the secret
        return value

    @field_validator("storage_url", "s3_endpoint_url", mode="before")
    @classmethod
    def _empty_url(cls, value: Any) -> Any:
        return value or None

    @field_validator("storage_url", mode="after")
    @classmethod
    def _check_storage(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("file:///", "s3://")):
            raise ValueError("must be unset, file:///a/dir or s3://bucket/prefix")
        return value

    @field_validator("device", mode="before")
    @classmethod
    def _empty_device(cls, value: Any) -> Any:
        return value or None

    @property
    def webhook_key(self) -> bytes | None:
        return None if self.webhook_secret is None else secret_key_bytes(self.webhook_secret)

    @property
    def visibility_timeout_seconds(self) -> int:
        # Celery's Redis transport redelivers an unacknowledged message after this: it must exceed the
        # longest job, or a healthy long job would be handed to a second worker. Lost work comes back
        # through the leases and the reaper long before this (see worker/reaper.py).
        return int(self.job_time_limit_seconds + self.job_stop_grace_seconds) + 900

    @property
    def test_hooks_enabled(self) -> bool:
        return bool(self.test_pause_before_result_seconds or self.test_hang_before_result_seconds)

    def is_local(self, *, bind_host: str | None = None) -> bool:
        """Local mode: `--dev`, or an API bound to loopback, or a worker whose Redis is on loopback."""
        if self.dev:
            return True
        host = bind_host if bind_host is not None else (urlsplit(self.redis_url).hostname or "localhost")
        return _is_loopback(host) or self.redis_url.startswith("unix:")

    def check_deployable(self, *, bind_host: str | None = None) -> None:
        """Refuse open access and unsigned webhooks outside local mode (raises UnsafeSettings)."""
        if self.is_local(bind_host=bind_host):
            return
        problems = []
        if not self.api_keys:
            problems.append("UPSCALER_API_KEYS is empty (open access)")
        if self.webhook_secret is None:
            problems.append("UPSCALER_WEBHOOK_SECRET is unset (webhooks could not be signed)")
        if self.test_hooks_enabled:
            problems.append("UPSCALER_TEST_*_BEFORE_RESULT_SECONDS is set (a fault-injection hook for tests)")
        if problems:
            raise UnsafeSettings("refusing to start outside local mode: " + "; ".join(problems)
                                 + ". Set them, or bind to 127.0.0.1, or use --dev.")


def load_settings() -> Settings:
    """Settings from the environment, with one readable line per bad variable instead of a traceback."""
    try:
        return Settings()
    except ValidationError as exc:
        lines = [f"{_variable(err['loc'])}: {err['msg']}" for err in exc.errors()]
        raise SettingsError("invalid settings: " + "; ".join(lines)) from None


def _variable(loc: tuple) -> str:
    name = str(loc[0]) if loc else "?"
    return "REDIS_URL" if name == "redis_url" else "UPSCALER_" + name.upper()


def secret_key_bytes(secret: SecretStr) -> bytes:
    """The HMAC key of a Standard Webhooks secret: the base64 part after `whsec_`."""
    text = secret.get_secret_value()
    if not text.startswith("whsec_"):
        raise ValueError("UPSCALER_WEBHOOK_SECRET must start with 'whsec_' followed by base64")
    try:
        key = base64.b64decode(text.removeprefix("whsec_"), validate=True)
    except ValueError:
        raise ValueError("UPSCALER_WEBHOOK_SECRET: the part after 'whsec_' is not valid base64") from None
    if len(key) < 16:
        raise ValueError("UPSCALER_WEBHOOK_SECRET: the key must be at least 16 bytes")
    return key


def _is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
