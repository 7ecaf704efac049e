"""What the client does, written once for `Client` and `AsyncClient`.

Each operation is a *plan*: a generator that yields the I/O it needs (`Send` a request, `Sleep`, `ReadLine` of a
streamed answer, `Close` it) and is sent back what happened (an `httpx.Response`, a line, or the
`httpx.HTTPError` raised). The sync client runs plans with blocking calls, the async client with awaits
(`zssr_client._clients`), so retries, Retry-After, idempotency keys, the event stream and the polling fallback
exist once, whichever client runs them (the "sans-I/O" layout h11 is built on).
"""
from __future__ import annotations

import email.utils
import json
import logging
import mimetypes
import os
import random
import time
import uuid
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any, Callable, Generator, TypeVar, Union
from urllib.parse import quote

import httpx

from zssr_client.errors import ApiConnectionError, ApiError, JobFailed, WaitTimeout

log = logging.getLogger("zssr_client")

T = TypeVar("T")
TERMINAL = ("succeeded", "failed", "canceled")
# Retried after Retry-After (or the backoff without one): too many requests or jobs, the store or a gateway
# briefly unavailable. A retried POST carries its first attempt's Idempotency-Key, so it never makes a second job.
RETRY_STATUSES = frozenset({429, 502, 503, 504})
# A retry that reached the API while the first request with its Idempotency-Key was still being accepted.
KEY_IN_USE = "idempotency_key_in_use"
DEFAULT_POLL_SECONDS = 1.0  # between polls when a job answer carries no Retry-After
JOBS = "/v1/jobs"

Image = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, Any]  # Any: a binary file object or PIL image
Progress = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class Options:
    timeout: float = 30.0  # seconds for connecting, and between two reads of an answer
    max_retries: int = 5  # retries after the first attempt; 0 = none
    backoff_seconds: float = 0.5  # the first wait when the answer names none (a dropped connection); doubles
    backoff_max_seconds: float = 20.0  # the cap of that doubling
    # A Retry-After longer than this is not slept through: the error is raised for the caller to decide.
    max_retry_after_seconds: float = 120.0


# The actions a plan yields.

@dataclass(frozen=True)
class Send:
    method: str
    path: str
    params: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    json: Any = None
    files: dict[str, tuple[str, bytes, str]] | None = None
    data: dict[str, str] | None = None
    follow_redirects: bool = False
    stream: bool = False  # answered with a `Stream` whose body is read by ReadLine
    read_timeout: float | None = None  # seconds between two reads of the answer; None = the client's timeout

    def request_args(self, options: Options) -> dict[str, Any]:
        """The arguments of `httpx.Client.build_request` (and the async one's)."""
        timeout = options.timeout
        read = timeout if self.read_timeout is None else self.read_timeout
        return {"method": self.method, "url": self.path, "params": self.params, "headers": self.headers,
                "json": self.json, "files": self.files, "data": self.data, "timeout": httpx.Timeout(timeout, read=read)}


@dataclass(frozen=True)
class Stream:
    response: httpx.Response  # its body not read yet
    lines: Any  # the iterator (sync) or async iterator over its lines


@dataclass(frozen=True)
class ReadLine:
    stream: Stream  # answered with the next line, None at the end, or the error that cut the stream


@dataclass(frozen=True)
class Close:
    stream: Stream


@dataclass(frozen=True)
class Sleep:
    seconds: float


Action = Union[Send, ReadLine, Close, Sleep]
Plan = Generator[Action, Any, T]


# Requests and answers.

def job_path(job_id: str, *rest: str) -> str:
    return "/".join((JOBS, quote(job_id, safe=""), *rest))


def new_idempotency_key() -> str:
    """One per call: its retries reuse it, so the API can tell a retry from a second submission."""
    return str(uuid.uuid4())


def image_part(image: Image) -> tuple[str, bytes, str]:
    """(file name, bytes, content type) of what `submit` was given, read once so that every retry sends the same."""
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        with open(path, "rb") as file:
            data = file.read()
        return os.path.basename(path), data, mimetypes.guess_type(path)[0] or "application/octet-stream"
    if isinstance(image, (bytes, bytearray, memoryview)):
        return "image", bytes(image), "application/octet-stream"
    if hasattr(image, "read"):
        data = image.read()
        if not isinstance(data, bytes):
            raise TypeError("open the image file in binary mode ('rb')")
        name = os.path.basename(str(getattr(image, "name", "") or "image"))
        return name, data, mimetypes.guess_type(name)[0] or "application/octet-stream"
    if all(hasattr(image, attribute) for attribute in ("save", "mode", "size")):  # a PIL image: no Pillow import
        buffer = BytesIO()
        image.save(buffer, format="PNG")  # lossless, and every mode the service takes (RGB(A), L, LA, 16-bit)
        return "image.png", buffer.getvalue(), "image/png"
    raise TypeError(f"submit() takes a path, bytes, a binary file object or a PIL image, not {type(image).__name__}")


def job_fields(params: dict[str, Any]) -> dict[str, Any]:
    """The job parameters the caller set (None = the API's default); a crop (x, y, w, h) as the API's text."""
    fields = {name: value for name, value in params.items() if value is not None}
    if "crop" in fields and not isinstance(fields["crop"], str):
        fields["crop"] = ",".join(str(int(part)) for part in fields["crop"])
    return fields


def submit_request(image: Image | None, image_url: str | None, params: dict[str, Any]) -> Send:
    """`POST /v1/jobs`: multipart with the image file, or JSON with `image_url`."""
    if (image is None) == (image_url is None):
        raise ValueError("submit() takes an image or image_url=, exactly one of them")
    headers = {"Idempotency-Key": new_idempotency_key()}
    fields = job_fields(params)
    if image_url is not None:
        return Send("POST", JOBS, headers=headers, json={"image_url": image_url, **fields})
    return Send("POST", JOBS, headers=headers, files={"image": image_part(image)},
                data={name: str(value) for name, value in fields.items()})


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as seconds: a number of seconds or an HTTP date (RFC 9110 10.2.3); None when absent or bad."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def error_of(response: httpx.Response) -> ApiError:
    """The API's `{"error": {"code", "message"}}` as an ApiError; a body of another shape (a proxy's page) keeps
    the status and says what it was."""
    try:
        error = response.json()["error"]
        return ApiError(response.status_code, str(error["code"]), str(error["message"]))
    except (ValueError, KeyError, TypeError):
        text = " ".join(response.text.split())[:200] or response.reason_phrase
        return ApiError(response.status_code, f"http_{response.status_code}", text)


def error_code(response: httpx.Response) -> str | None:
    try:
        return response.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None


def retry_delay(outcome: httpx.Response | httpx.HTTPError, attempt: int, options: Options) -> float | None:
    """Seconds to wait before retrying after `outcome` of attempt `attempt` (0 = the first), or None: do not retry."""
    if attempt >= options.max_retries:
        return None
    backoff = min(options.backoff_max_seconds, options.backoff_seconds * 2 ** attempt)
    if isinstance(outcome, httpx.HTTPError):
        # jitter: clients cut off together (an API restart) should not all come back in the same instant
        return backoff * random.uniform(0.5, 1.0) if isinstance(outcome, httpx.TransportError) else None
    if outcome.status_code not in RETRY_STATUSES and not (outcome.status_code == 409 and error_code(outcome) == KEY_IN_USE):
        return None
    after = retry_after_seconds(outcome.headers.get("retry-after"))
    if after is None:
        return backoff
    return after if after <= options.max_retry_after_seconds else None


def describe(outcome: httpx.Response | httpx.HTTPError) -> str:
    """For the log: what came back, e.g. `429 rate_limited, Retry-After 2` or `ConnectError`."""
    if isinstance(outcome, httpx.HTTPError):
        return type(outcome).__name__
    after = outcome.headers.get("retry-after")
    return f"{outcome.status_code} {error_code(outcome) or ''}".rstrip() + (f", Retry-After {after}" if after else "")


def checked(outcome: httpx.Response | httpx.HTTPError, send: Send) -> httpx.Response:
    if isinstance(outcome, httpx.HTTPError):
        raise ApiConnectionError(f"{send.method} {send.path}: {type(outcome).__name__}: {outcome}") from outcome
    if outcome.is_success:
        return outcome
    raise error_of(outcome)


# Plans.

def call(send: Send, options: Options) -> Plan[httpx.Response]:
    """One request, retried on a lost connection and on 429/503 (after their Retry-After); the answer if it is a
    2xx, else ApiError (ApiConnectionError when no answer came)."""
    attempt = 0
    while True:
        outcome = yield send
        delay = retry_delay(outcome, attempt, options)
        if delay is None:
            return checked(outcome, send)
        log.info("retrying %s %s in %.2f s after %s (retry %d of %d)", send.method, send.path, delay,
                 describe(outcome), attempt + 1, options.max_retries)
        yield Sleep(delay)
        attempt += 1


def json_of(send: Send, options: Options) -> Plan[Any]:
    response = yield from call(send, options)
    return response.json()


def submit(options: Options, image: Image | None, image_url: str | None, params: dict[str, Any]) -> Plan[dict]:
    return (yield from json_of(submit_request(image, image_url, params), options))


def get(options: Options, job_id: str) -> Plan[dict]:
    return (yield from json_of(Send("GET", job_path(job_id)), options))


def cancel(options: Options, job_id: str) -> Plan[dict]:
    send = Send("POST", job_path(job_id, "cancel"), headers={"Idempotency-Key": new_idempotency_key()})
    return (yield from json_of(send, options))


def list_jobs(options: Options, status: str | None, limit: int) -> Plan[list[dict]]:
    params = {"limit": limit, **({"status": status} if status else {})}
    return (yield from json_of(Send("GET", JOBS, params=params), options))["jobs"]


def result(options: Options, job_id: str) -> Plan[bytes]:
    """The output image's bytes. A 307 to object storage (UPSCALER_RESULT_REDIRECT) is followed; httpx drops the
    Authorization header when the redirect leaves the API's origin."""
    response = yield from call(Send("GET", job_path(job_id, "result"), follow_redirects=True), options)
    return response.content


class EventParser:
    """Server-Sent Events from lines (the WHATWG rules the API's stream uses: event, data, id, comments)."""

    def __init__(self) -> None:
        self._event, self._data, self.last_id = "message", [], None

    def feed(self, line: str) -> tuple[str, str] | None:
        """Take one line; (event name, data) when it ends an event."""
        if not line:
            event, data = self._event, self._data
            self._event, self._data = "message", []
            return (event, "\n".join(data)) if data else None
        if line.startswith(":"):
            return None  # a comment: the server's keep-alive ping
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            self.last_id = value
        return None


class Watch:
    """What `wait` knows while it follows a job: the deadline, and progress reported once per change."""

    def __init__(self, job_id: str, timeout: float | None, progress: Progress | None,
                 clock: Callable[[], float] = time.monotonic):
        self.job_id, self.timeout, self.progress, self.clock = job_id, timeout, progress, clock
        self.deadline = None if timeout is None else clock() + timeout
        self.job: dict[str, Any] | None = None
        self._reported: dict[str, Any] | None = None

    def report(self, progress: dict[str, Any]) -> None:
        if self.progress is not None and progress != self._reported:
            self._reported = progress
            self.progress(progress)

    def saw(self, job: dict[str, Any]) -> dict[str, Any] | None:
        """Record the job's state; the job if it is finished."""
        self.job = job
        self.report({"status": job["status"], **job.get("progress", {})})
        return job if job["status"] in TERMINAL else None

    def remaining(self) -> float | None:
        """Seconds left (None: no deadline); WaitTimeout once none are."""
        if self.deadline is None:
            return None
        left = self.deadline - self.clock()
        if left <= 0:
            raise WaitTimeout(self.job_id, self.timeout, self.job)
        return left

    def on_event(self, event: str, data: str) -> dict[str, Any] | None:
        """Take one event of the stream (api/routes/events.py); the job when it is the terminal one."""
        if event == "status":
            return self.saw(json.loads(data))
        if event == "progress":
            self.report(json.loads(data))
        elif event == "error":  # the job expired while watched
            error = json.loads(data)["error"]
            raise ApiError(410 if error["code"] == "job_expired" else 500, error["code"], error["message"])
        return None


def follow_events(watch: Watch, options: Options) -> Plan[dict | None]:
    """Follow `GET /v1/jobs/{id}/events` to the terminal status; None when the stream fails or ends early (the
    caller polls instead)."""
    left = watch.remaining()
    # The stream idles between heartbeats while the job is queued: a read gives up at the deadline, not after it.
    read_timeout = options.timeout if left is None else min(options.timeout, left + 0.5)
    opened = yield Send("GET", job_path(watch.job_id, "events"), headers={"Accept": "text/event-stream"},
                        stream=True, read_timeout=read_timeout)
    if isinstance(opened, httpx.HTTPError):
        log.info("the event stream of %s could not be opened (%s); polling", watch.job_id, type(opened).__name__)
        return None
    if opened.response.status_code != 200:
        log.info("the event stream of %s answered %d; polling", watch.job_id, opened.response.status_code)
        yield Close(opened)
        return None
    parser = EventParser()
    while True:
        line = yield ReadLine(opened)
        if line is None or isinstance(line, httpx.HTTPError):
            log.info("the event stream of %s ended before the job did (%s); polling", watch.job_id,
                     type(line).__name__ if line is not None else "closed")
            yield Close(opened)
            return None
        event = parser.feed(line)
        job = None if event is None else watch.on_event(*event)
        if job is not None:
            yield Close(opened)
            return job
        watch.remaining()


def poll(watch: Watch, options: Options) -> Plan[dict]:
    """`GET /v1/jobs/{id}` until the job is finished, pausing as its Retry-After says."""
    while True:
        response = yield from call(Send("GET", job_path(watch.job_id)), options)
        job = watch.saw(response.json())
        if job is not None:
            return job
        pause = retry_after_seconds(response.headers.get("retry-after")) or DEFAULT_POLL_SECONDS
        left = watch.remaining()
        yield Sleep(pause if left is None else min(pause, left))


def wait(options: Options, job_id: str, wait_timeout: float | None,
         progress: Progress | None) -> Plan[dict]:
    """The job once finished (any terminal status): from its event stream, or by polling if that fails."""
    watch = Watch(job_id, wait_timeout, progress)
    job = yield from follow_events(watch, options)
    if job is None:
        job = yield from poll(watch, options)
    return job


def upscale(options: Options, image: Image | None, image_url: str | None,
            params: dict[str, Any], wait_timeout: float | None, progress: Progress | None) -> Plan[bytes]:
    """Submit, wait, fetch: the output image's bytes; JobFailed if the job failed or was canceled."""
    job = yield from submit(options, image, image_url, params)
    job = yield from wait(options, job["id"], wait_timeout, progress)
    if job["status"] != "succeeded":
        raise JobFailed(job)
    return (yield from result(options, job["id"]))
