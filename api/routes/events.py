"""`GET /v1/jobs/{id}/events`: the job's status and progress as Server-Sent Events.

Each event is a snapshot of the job's state, never a delta, so a client that missed events loses nothing it
needs: the next event it gets says where the job is now.
  event: status    data: the job (as `GET /v1/jobs/{id}` shows it): the first event, and every status change
  event: progress  data: {"status", "phase", "step", "total_steps", "fraction", "loss"} while the status stays
The stream ends right after the `status` event of a terminal status (succeeded, failed, canceled).

Event ids name the state they describe. A client that reconnects with `Last-Event-ID` gets the current state at
once unless it already has exactly that state, and always gets the terminal event (a reconnect after the end
gets it again, then the stream ends), so no client misses the end. While nothing changes, a comment line
(`: ping`) goes out every `heartbeat_seconds` to keep proxies from closing the connection.

The stream reads the job record every `poll_seconds` (the worker writes progress at most every
UPSCALER_PROGRESS_INTERVAL_SECONDS), so it needs no change to how workers write jobs; a status that lasts
less than one poll (a bicubic job is `running` for milliseconds) may be skipped, never the terminal one.

Auth and ownership are those of every job route (the `JobDep` dependency). EventSource cannot send headers,
so a browser reads the stream with `fetch()` and `Authorization: Bearer KEY` (the demo page does); keys are
never accepted in the URL, where access logs would keep them.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Annotated, Any, AsyncIterator

import anyio
from fastapi import APIRouter, Header, Request
from sse_starlette import EventSourceResponse, ServerSentEvent

from api.deps import JobDep, StoreDep
from api.schemas import ErrorBody
from jobs.record import TERMINAL, public_job
from jobs.store import AsyncJobStore

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
RECONNECT_MILLISECONDS = 1000  # the `retry:` hint to EventSource clients


@dataclass(frozen=True)
class StreamTiming:
    poll_seconds: float = 0.2  # how often an open stream reads the job record
    heartbeat_seconds: float = 15.0  # a comment line while idle, well under common proxy idle timeouts


def state_id(job: dict[str, Any]) -> str:
    """An id for the job's observable state: equal ids mean the same status, progress and error."""
    state = [job["status"], job["progress"], job["error"]]
    digest = hashlib.blake2b(json.dumps(state, sort_keys=True).encode(), digest_size=6).hexdigest()
    return f"{job['status']}-{job['progress']['step']}-{digest}"


def progress_data(job: dict[str, Any]) -> dict[str, Any]:
    return {"status": job["status"], **job["progress"]}


def _event(kind: str, data: dict[str, Any], event_id: str | None = None, *, first: bool = False) -> ServerSentEvent:
    return ServerSentEvent(json.dumps(data, separators=(",", ":")), event=kind, id=event_id,
                           retry=RECONNECT_MILLISECONDS if first else None)


async def job_events(store: AsyncJobStore, job: dict[str, Any], *, last_event_id: str | None,
                     poll_seconds: float) -> AsyncIterator[ServerSentEvent]:
    """The events of one job, from its state `job` at connection time until (and including) its terminal one."""
    sent_status = sent_id = None
    first = True
    while True:
        ident = state_id(job)
        terminal = job["status"] in TERMINAL
        already_has_it = first and ident == last_event_id and not terminal  # a reconnect that missed nothing
        if ident != sent_id and not already_has_it:
            if job["status"] != sent_status:
                yield _event("status", job, ident, first=first)
            else:
                yield _event("progress", progress_data(job), ident)
        sent_status, sent_id, first = job["status"], ident, False
        if terminal:
            return
        await anyio.sleep(poll_seconds)
        found = await store.lookup(job["id"])
        if found.fields is None:  # expired or deleted while watched (a TTL shorter than the job's run)
            yield _event("error", {"error": {"code": "job_expired", "message": "the job expired"}})
            return
        job = public_job(found.fields, found.deliveries)


@router.get("/{job_id}/events", response_class=EventSourceResponse, responses={
    200: {"description": "Server-Sent Events: `status` (the job) and `progress` events until the terminal status",
          "content": {"text/event-stream": {"schema": {"type": "string"}}}},
    **{code: {"model": ErrorBody} for code in (401, 404, 410)}})
async def stream_job_events(job: JobDep, store: StoreDep, request: Request,
                            last_event_id: Annotated[str | None, Header(max_length=200)] = None) -> EventSourceResponse:
    """The job's status changes and training progress as they happen (Server-Sent Events); ends after the
    terminal event. Send `Last-Event-ID` when reconnecting: the current state comes at once and the end is
    never missed."""
    timing: StreamTiming = getattr(request.app.state, "event_timing", None) or StreamTiming()
    events = job_events(store, public_job(job.fields, job.deliveries), last_event_id=last_event_id,
                        poll_seconds=timing.poll_seconds)
    return EventSourceResponse(events, ping=timing.heartbeat_seconds)  # sends Cache-Control: no-store
