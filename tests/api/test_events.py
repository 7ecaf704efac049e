"""GET /v1/jobs/{id}/events over a real socket (uvicorn), against a real Redis.

Most tests drive a job record through the store's own transitions (begin_run, set_progress, finish) on a job
no worker takes, so every change happens exactly when the test says; one test follows a real worker's job.
"""
from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field

import httpx
import pytest

from api.deps import OPEN_ACCESS_OWNER, owner_of
from api.main import create_app
from api.routes.events import StreamTiming
from tests.e2e.helpers import png_bytes
from tests.live import serve
from jobs.settings import Settings
from jobs.record import new_job_fields, new_job_id
from jobs.store import JobKeys

FAST = StreamTiming(poll_seconds=0.05, heartbeat_seconds=0.3)


@dataclass
class Event:
    type: str
    data: dict | None = None
    id: str | None = None
    comment: str | None = None


@dataclass
class Stream:
    """An open event stream, read one event (or comment) at a time."""
    response: httpx.Response
    lines: object = field(init=False)

    def __post_init__(self):
        self.lines = self.response.iter_lines()

    def next(self) -> Event | None:
        """The next event or comment; None when the server ended the stream."""
        kind, data, ident = "message", [], None
        for line in self.lines:
            if line.startswith(":"):
                return Event("comment", comment=line[1:].strip())
            if line == "":
                if data:
                    return Event(kind, json.loads("\n".join(data)), ident)
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "event":
                kind = value
            elif name == "data":
                data.append(value)
            elif name == "id":
                ident = value
        return None

    def next_event(self) -> Event | None:
        """The next event, skipping heartbeat comments."""
        while (event := self.next()) is not None and event.type == "comment":
            pass
        return event

    def rest(self) -> list[Event]:
        events = []
        while (event := self.next_event()) is not None:
            events.append(event)
        return events


@pytest.fixture
def live(settings):
    """Start the API (optionally with other settings) on a free port; yields a function returning its base URL."""
    servers = []

    def start(**changes) -> str:
        app = create_app(Settings(**{**settings.model_dump(), **changes}))
        app.state.event_timing = FAST
        context = serve(app)
        servers.append(context)
        return context.__enter__()

    yield start
    for context in servers:
        context.__exit__(None, None, None)


def open_stream(client: httpx.Client, base: str, job_id: str, headers: dict | None = None):
    return client.stream("GET", f"{base}/v1/jobs/{job_id}/events", headers=headers or {}, timeout=10)


def unqueued_job(store, owner: str = OPEN_ACCESS_OWNER) -> str:
    """A queued job record that no worker will take (it is never enqueued): the test moves it on itself."""
    job_id = new_job_id()
    fields = new_job_fields(job_id, owner, params={"scale": 2.0, "method": "zssr", "preset": "fast",
                                                   "kernel": "bicubic", "output_format": "png"},
                            input_info={"width": 8, "height": 8, "mode": "RGB", "bytes": 1, "format": "PNG"},
                            output_info={"width": 16, "height": 16, "content_type": "image/png", "bytes": 0},
                            queue="gpu", webhook_url=None, ttl=600, now=time.time())
    store.create(fields, b"x")
    return job_id


def start_run(store, job_id: str) -> str:
    token = secrets.token_hex(8)
    assert store.begin_run(job_id, token, worker="test", lease_seconds=60)[0] == "started"
    return token


def test_a_real_job_streams_from_its_first_status_to_its_terminal_event_then_the_stream_ends(live, worker_process):
    base = live()
    with httpx.Client() as client:
        job = client.post(f"{base}/v1/jobs", files={"image": ("a.png", png_bytes(40, 30), "image/png")},
                          data={"method": "bicubic", "scale": "2"}).json()
        with open_stream(client, base, job["id"]) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            assert response.headers["cache-control"] == "no-store"
            events = Stream(response).rest()  # returns only because the server ended the stream
    assert events and all(e.id for e in events)
    assert events[0].type == "status" and events[0].data["id"] == job["id"]
    last = events[-1]
    assert last.type == "status" and last.data["status"] == "succeeded"
    assert last.data["output"]["bytes"] > 0 and last.data["progress"] == {
        "phase": "done", "step": 0, "total_steps": 0, "fraction": 1.0}
    assert [e.data["status"] for e in events if e.type == "status"].count("succeeded") == 1


def test_status_changes_and_training_progress_arrive_as_they_happen(live, store):
    base, job_id = live(), unqueued_job(store)
    with httpx.Client() as client, open_stream(client, base, job_id) as response:
        stream = Stream(response)
        first = stream.next_event()
        assert (first.type, first.data["status"], first.data["progress"]["phase"]) == ("status", "queued", "queued")
        token = start_run(store, job_id)
        running = stream.next_event()
        assert (running.type, running.data["status"]) == ("status", "running")
        seen = []
        for step, loss in ((10, 0.08), (20, 0.05), (30, 0.031)):
            store.set_progress(job_id, token, {"phase": "training", "step": step, "total_steps": 40, "loss": loss})
            event = stream.next_event()
            assert event.type == "progress"
            seen.append(event.data)
        store.set_progress(job_id, token, {"phase": "inference", "step": 1, "total_steps": 8})
        inference = stream.next_event()
        assert store.finish(job_id, token, "succeeded", result=b"png")[0] == "succeeded"
        done = stream.next_event()
        assert stream.next() is None  # the stream ends after the terminal event
    assert seen == [{"status": "running", "phase": "training", "step": s, "total_steps": 40, "fraction": s / 40,
                     "loss": loss} for s, loss in ((10, 0.08), (20, 0.05), (30, 0.031))]
    assert (inference.type, inference.data["phase"], inference.data["step"]) == ("progress", "inference", 1)
    assert (done.type, done.data["status"], done.data["progress"]["phase"]) == ("status", "succeeded", "done")
    ids = [first.id, running.id, *(None for _ in seen), inference.id, done.id]
    assert len({i for i in ids if i}) == 4


def test_a_failed_job_ends_the_stream_with_its_error(live, store):
    base, job_id = live(), unqueued_job(store)
    token = start_run(store, job_id)
    store.finish(job_id, token, "failed", fields={"error": json.dumps({"code": "invalid_input", "message": "too small"})})
    with httpx.Client() as client, open_stream(client, base, job_id) as response:
        events = Stream(response).rest()
    assert [(e.type, e.data["status"]) for e in events] == [("status", "failed")]
    assert events[0].data["error"] == {"code": "invalid_input", "message": "too small"}


def test_a_reconnect_with_last_event_id_resumes_without_repeats_and_never_misses_the_end(live, store):
    base, job_id = live(), unqueued_job(store)
    with httpx.Client() as client:
        with open_stream(client, base, job_id) as response:
            queued = Stream(response).next_event()
        # Reconnecting with the state it already has: nothing is repeated; only heartbeats while idle.
        with open_stream(client, base, job_id, {"Last-Event-ID": queued.id}) as response:
            stream = Stream(response)
            assert [stream.next().type for _ in range(2)] == ["comment", "comment"]
        token = start_run(store, job_id)
        store.set_progress(job_id, token, {"phase": "training", "step": 5, "total_steps": 40, "loss": 0.1})
        store.finish(job_id, token, "canceled")  # it ends while the client is away
        with open_stream(client, base, job_id, {"Last-Event-ID": queued.id}) as response:
            resumed = Stream(response).rest()
        assert [(e.type, e.data["status"]) for e in resumed] == [("status", "canceled")]
        # A reconnect after the end (with the terminal event's id) gets the terminal event again, then the end.
        with open_stream(client, base, job_id, {"Last-Event-ID": resumed[0].id}) as response:
            again = Stream(response).rest()
        assert [(e.type, e.id) for e in again] == [("status", resumed[0].id)]


def test_a_stale_last_event_id_gets_the_current_state_at_once(live, store):
    base, job_id = live(), unqueued_job(store)
    token = start_run(store, job_id)
    store.set_progress(job_id, token, {"phase": "training", "step": 12, "total_steps": 40, "loss": 0.2})
    with httpx.Client() as client, open_stream(client, base, job_id, {"Last-Event-ID": "queued-0-000000000000"}) \
            as response:
        event = Stream(response).next()
    assert event.type == "status" and event.data["progress"]["step"] == 12 and event.data["progress"]["loss"] == 0.2


def test_a_job_that_disappears_while_watched_ends_the_stream_with_an_error_event(live, store):
    base, job_id = live(), unqueued_job(store)
    with httpx.Client() as client, open_stream(client, base, job_id) as response:
        stream = Stream(response)
        assert stream.next_event().data["status"] == "queued"
        store.redis.delete(JobKeys.of(job_id).job)
        assert stream.next_event() == Event("error", {"error": {"code": "job_expired", "message": "the job expired"}})
        assert stream.next() is None


def test_the_stream_has_the_same_auth_and_ownership_as_the_other_routes(live, store):
    mine, theirs = "events-key-" + "m" * 16, "events-key-" + "t" * 16
    base = live(api_keys=(mine, theirs))
    job_id = unqueued_job(store, owner=owner_of(mine))
    with httpx.Client() as client:
        for headers, status, code in (({}, 401, "unauthorized"),
                                      ({"Authorization": "Bearer wrong"}, 401, "unauthorized"),
                                      ({"Authorization": f"Bearer {theirs}"}, 404, "job_not_found")):
            response = client.get(f"{base}/v1/jobs/{job_id}/events", headers=headers)
            assert (response.status_code, response.json()["error"]["code"]) == (status, code)
        # A key in the URL is not a way in (URLs end up in access logs).
        assert client.get(f"{base}/v1/jobs/{job_id}/events", params={"api_key": mine}).status_code == 401
        assert client.get(f"{base}/v1/jobs/{new_job_id()}/events",
                          headers={"X-API-Key": mine}).json()["error"]["code"] == "job_not_found"
        with open_stream(client, base, job_id, {"X-API-Key": mine}) as response:
            assert response.status_code == 200 and Stream(response).next_event().data["id"] == job_id


def test_the_events_route_is_documented(live):
    schema = httpx.get(f"{live()}/openapi.json").json()
    operation = schema["paths"]["/v1/jobs/{job_id}/events"]["get"]
    assert "text/event-stream" in operation["responses"]["200"]["content"]
    assert {p["name"].lower() for p in operation["parameters"]} >= {"job_id", "last-event-id"}
