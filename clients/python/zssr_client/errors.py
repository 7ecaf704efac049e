"""The exceptions the client raises: every one is a `ClientError`."""
from __future__ import annotations

from typing import Any


class ClientError(Exception):
    """Base of every error this package raises."""


class ApiError(ClientError):
    """The API answered with an error: `{"error": {"code", "message"}}` and an HTTP status."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


class JobFailed(ApiError):
    """`upscale()` waited for a job that ended failed or canceled. `status` is 409, what the API answers for
    the result of such a job; `code` and `message` are the job's own error (`job_canceled` for a canceled
    job); `job` is the job as it ended."""

    def __init__(self, job: dict[str, Any]):
        error = job.get("error") or {}
        code = error.get("code") or ("job_canceled" if job.get("status") == "canceled" else "job_failed")
        super().__init__(409, code, error.get("message") or f"the job {job.get('id')} ended {job.get('status')}")
        self.job = job


class ApiConnectionError(ClientError):
    """The API could not be reached (connection refused or cut, a timeout) after every retry."""


class WaitTimeout(ClientError, TimeoutError):
    """`wait()` ran out of time before the job finished; `job` is its last known state (None if never read)."""

    def __init__(self, job_id: str, timeout: float, job: dict[str, Any] | None):
        status = job["status"] if job else "unknown"
        super().__init__(f"the job {job_id} was still {status} after {timeout:g} s")
        self.job = job
