"""The job store against a real redis-server: transitions that cannot race, first write wins, expiry."""
from __future__ import annotations

import asyncio
import json
import time

import pytest

from jobs.record import new_job_fields, new_job_id, public_job
from jobs.store import AsyncJobStore, BeginResult, JobKeys, JobStore, RateLimit

OWNER = "store-tests"


def make_job(store, *, ttl: int = 600, owner: str = OWNER, webhook_url: str | None = None) -> str:
    job_id = new_job_id()
    fields = new_job_fields(job_id, owner, params={"scale": 2.0, "method": "bicubic", "preset": "fast",
                                                   "kernel": "bicubic", "output_format": "png", "seed": None},
                            input_info={"width": 4, "height": 4, "mode": "RGB", "bytes": 3},
                            output_info={"width": 8, "height": 8, "content_type": "image/png", "bytes": 0},
                            queue="light", webhook_url=webhook_url, ttl=ttl, now=time.time())
    store.create(fields, b"img")
    return job_id


def status_of(store, job_id: str) -> str | None:
    fields = store.fields(job_id)
    return fields and fields["status"]


def test_the_record_is_stored_as_given_whatever_its_characters(store):
    # the create script takes the record as one JSON argument and writes it field by field
    job_id = new_job_id()
    fields = new_job_fields(job_id, "owner é 中文 🙂", params={"note": 'quotes " \\ \n and \u00e9 \U0001f642', "seed": None},
                            input_info={}, output_info={}, queue="light", webhook_url="https://example.com/é?a=1&b=2",
                            ttl=600, now=time.time())
    fields["empty"] = ""
    store.create(fields, b"img")
    assert store.fields(job_id) == fields


def test_a_job_runs_once_and_its_result_is_written_once(store):
    job_id = make_job(store)
    assert store.begin_run(job_id, "t1", worker="w1", lease_seconds=30) == BeginResult("started", "queued", True)
    assert store.begin_run(job_id, "t2", worker="w2", lease_seconds=30).outcome == "busy"  # a duplicate delivery
    assert store.finish(job_id, "t1", "succeeded", result=b"first") == ("succeeded", True)
    assert store.finish(job_id, "t1", "succeeded", result=b"second") == ("succeeded", False)
    assert store.redis.get(JobKeys.of(job_id).result) == b"first"
    assert store.load_input(job_id) is None  # the input goes once the job is done
    assert store.begin_run(job_id, "t3", worker="w3", lease_seconds=30).outcome == "succeeded"  # never back to running
    assert status_of(store, job_id) == "succeeded"


@pytest.fixture
def unserved_store(redis_server):
    """A store in a Redis database that no test worker serves: the session's workers run a reaper every few
    seconds, and a pass landing inside a deliberately lapsed lease would requeue or end the job under the test."""
    job_store = JobStore(redis_server.url.rsplit("/", 1)[0] + "/7")
    yield job_store
    job_store.redis.flushdb()
    job_store.close()


def test_a_lapsed_lease_lets_another_run_take_over_and_fences_the_old_one(unserved_store):
    store = unserved_store
    job_id = make_job(store)
    assert store.begin_run(job_id, "old", worker="w1", lease_seconds=0.2).outcome == "started"
    time.sleep(0.35)  # the first worker "died": its lease lapsed
    assert store.begin_run(job_id, "new", worker="w2", lease_seconds=30) == BeginResult("started", "running", False)
    assert not store.renew_lease(job_id, "old", 30)
    assert not store.set_progress(job_id, "old", {"phase": "training", "step": 9, "total_steps": 10})
    assert store.finish(job_id, "old", "succeeded", result=b"stale") == ("running", False)
    assert store.finish(job_id, "new", "succeeded", result=b"fresh") == ("succeeded", True)
    assert store.redis.get(JobKeys.of(job_id).result) == b"fresh"
    assert store.fields(job_id)["runs"] == "2"


def test_a_queued_job_that_is_canceled_never_starts(store):
    job_id = make_job(store)
    assert store.cancel(job_id) == "canceled_now"
    assert store.begin_run(job_id, "t", worker="w", lease_seconds=30).outcome == "canceled"
    assert status_of(store, job_id) == "canceled"
    assert store.cancel(job_id) == "canceled"  # the API answers 409: already finished


def test_a_canceled_running_job_never_turns_succeeded(store):
    job_id = make_job(store)
    store.begin_run(job_id, "t", worker="w", lease_seconds=30)
    assert store.cancel(job_id) == "requested"
    assert store.cancel_requested(job_id)
    assert store.finish(job_id, "t", "succeeded", result=b"late") == ("canceled", True)
    assert store.redis.get(JobKeys.of(job_id).result) is None
    assert not store.cancel_requested(job_id)


def test_a_handed_back_job_is_queued_again_unless_canceled(store):
    job_id = make_job(store)
    store.begin_run(job_id, "t", worker="w", lease_seconds=30)
    handback = ("test-handback:" + job_id, "the new message")  # (the queue's list, the message pushed with it)
    assert store.release(job_id, "t", handback) == "queued"
    assert status_of(store, job_id) == "queued" and store.redis.lrange(handback[0], 0, -1) == [b"the new message"]
    assert store.begin_run(job_id, "t2", worker="w", lease_seconds=30) == BeginResult("started", "queued", False)
    store.cancel(job_id)
    assert store.release(job_id, "t2", handback) == "cancel" and store.redis.llen(handback[0]) == 1


def test_progress_is_written_only_by_the_running_run(store):
    job_id = make_job(store)
    store.begin_run(job_id, "t", worker="w", lease_seconds=30)
    assert store.set_progress(job_id, "t", {"phase": "training", "step": 5, "total_steps": 10, "loss": 0.1})
    progress = public_job(store.fields(job_id))["progress"]
    assert progress == {"phase": "training", "step": 5, "total_steps": 10, "fraction": 0.5, "loss": 0.1}


def test_expired_jobs_leave_a_tombstone_for_their_owner(store, redis_server):
    job_id = make_job(store, ttl=1)
    time.sleep(1.3)
    assert store.fields(job_id) is None
    assert store.load_input(job_id) is None

    async def look():
        async_store = AsyncJobStore(redis_server.url)
        try:
            return await async_store.lookup(job_id)
        finally:
            await async_store.close()

    found = asyncio.run(look())
    assert found.expired_for(OWNER) and not found.expired_for("someone-else") and not found.visible_to(OWNER)


def test_finishing_keeps_everything_for_a_full_ttl(store):
    job_id = make_job(store, ttl=2)
    store.begin_run(job_id, "t", worker="w", lease_seconds=30)
    time.sleep(1.2)
    store.finish(job_id, "t", "succeeded", result=b"r")
    keys = JobKeys.of(job_id)
    assert store.redis.ttl(keys.job) == 2 and store.redis.ttl(keys.result) == 2


def test_deliveries_are_recorded_and_capped(store):
    job_id = make_job(store, webhook_url="http://example.invalid/hook")
    for attempt in range(1, 25):
        store.record_delivery(job_id, "job.started", {"event": "job.started", "webhook_id": "msg_x",
                                                      "attempt": attempt, "status": 500,
                                                      "error": "receiver answered 500", "outcome": "retrying",
                                                      "at": time.time()}, outcome="retrying", next_due=time.time() + 3600)
    store.record_delivery(job_id, "job.started", {"event": "job.started", "webhook_id": "msg_x", "attempt": 25,
                                                  "status": 204, "error": None, "outcome": "delivered",
                                                  "at": time.time()}, outcome="delivered")
    webhook = store.public(job_id)["webhook"]
    assert webhook["attempts"] == 25 and webhook["last_status"] == 204 and webhook["delivered_at"]
    assert len(webhook["deliveries"]) == 20 and webhook["deliveries"][0]["attempt"] == 25


def test_listing_is_newest_first_filters_by_status_and_drops_expired_ids(store, redis_server):
    owner = "lister-" + new_job_id()[:6]
    first, second, third = (make_job(store, owner=owner) for _ in range(3))
    gone = make_job(store, owner=owner, ttl=1)
    store.begin_run(second, "t", worker="w", lease_seconds=30)
    time.sleep(1.2)

    async def listing(**kwargs):
        async_store = AsyncJobStore(redis_server.url)
        try:
            return [job["id"] for job in await async_store.list_for(owner, **kwargs)]
        finally:
            await async_store.close()

    assert asyncio.run(listing(status=None, limit=10)) == [third, second, first]
    assert asyncio.run(listing(status="running", limit=10)) == [second]
    assert asyncio.run(listing(status=None, limit=2)) == [third, second]
    assert gone not in asyncio.run(listing(status=None, limit=10))


def test_status_counters_follow_the_transitions(store):
    before = {k: int(v) for k, v in store.redis.hgetall("upscaler:stats").items() if k.startswith(b"total:")}
    job_id = make_job(store)
    store.begin_run(job_id, "t", worker="w", lease_seconds=30)
    store.finish(job_id, "t", "failed", fields={"error": json.dumps({"code": "x", "message": "y"})})
    after = {k: int(v) for k, v in store.redis.hgetall("upscaler:stats").items() if k.startswith(b"total:")}
    for status in (b"total:queued", b"total:running", b"total:failed"):
        assert after[status] == before.get(status, 0) + 1
    assert public_job(store.fields(job_id))["error"] == {"code": "x", "message": "y"}


def test_a_rate_counted_lookup_survives_redis_losing_its_scripts(store, redis_server):
    """The poll path sends the rate script by its SHA (no SCRIPT EXISTS round trip): after a Redis restart or a
    SCRIPT FLUSH it must load the script again, not fail the poll."""
    job_id = make_job(store)
    rate = RateLimit(OWNER + "-flush", 1000.0, 10)

    async def look_twice():
        async_store = AsyncJobStore(redis_server.url)
        try:
            await async_store.warm_up(connections=1)
            first = await async_store.lookup(job_id, rate=rate)
            store.redis.script_flush()
            second = await async_store.lookup(job_id, rate=rate)
            return first, second
        finally:
            await async_store.close()

    first, second = asyncio.run(look_twice())
    assert first.visible_to(OWNER) and second.visible_to(OWNER)
    assert first.rate_wait == second.rate_wait == 0.0
    assert store.redis.exists(rate.key)  # the request really was counted after the reload
