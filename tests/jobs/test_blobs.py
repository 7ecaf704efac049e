"""The blob stores (jobs/blobs.py) on a real directory and a real S3 server, and the store's bookkeeping of objects:
which object each transition records, and which it schedules for deletion (jobs/lua/)."""
from __future__ import annotations

import asyncio
import secrets
import time

import httpx
import pytest

from jobs.blobs import (DirectoryBlobs, StorageUnavailable, checkpoint_key, input_key, open_blob_store,
                        result_key)
from jobs.queue import run_job_message
from jobs.record import new_job_fields, new_job_id
from jobs.store import PENDING_BLOBS_KEY, TRASH_KEY, JobStore
from jobs.settings import Settings
from worker.reaper import sweep_blobs


@pytest.fixture(params=["file", "s3"])
def blobs(request, tmp_path):
    if request.param == "file":
        store = open_blob_store(f"file://{tmp_path}/blobs")
    else:
        server = request.getfixturevalue("s3_server")
        store = open_blob_store(f"s3://blob-tests/{secrets.token_hex(4)}", s3_endpoint_url=server.endpoint)
    store.ensure_ready()
    return store


def test_a_store_puts_gets_streams_lists_and_deletes(blobs):
    big = secrets.token_bytes(3 * 1024 * 1024 + 5)
    blobs.put("jobs/a/input", b"small")
    blobs.put("jobs/a/result/t1", big)
    assert blobs.get("jobs/a/input") == b"small" and blobs.get("jobs/a/missing") is None
    assert blobs.keys() == ["jobs/a/input", "jobs/a/result/t1"]

    async def read() -> tuple[int, bytes, object]:
        blob = await blobs.aopen("jobs/a/result/t1")
        return blob.size, b"".join([chunk async for chunk in blob.chunks]), await blobs.aopen("jobs/a/none")

    size, streamed, missing = asyncio.run(read())
    assert size == len(big) and streamed == big and missing is None
    blobs.delete(["jobs/a/input", "jobs/a/result/t1", "jobs/a/never-stored"])
    assert blobs.keys() == []


def test_s3_presigns_a_url_that_serves_the_object_and_creates_a_missing_bucket(s3_server):
    store = open_blob_store(f"s3://created-{secrets.token_hex(4)}/p", s3_endpoint_url=s3_server.endpoint)
    store.ensure_ready()
    store.put("jobs/b/result/t", b"image bytes")
    url = store.presign("jobs/b/result/t", 60)
    assert "X-Amz-Expires=60" in url
    assert httpx.get(url).content == b"image bytes"


def test_an_unreachable_store_raises_storage_unavailable(tmp_path):
    from jobs.redis_server import free_port  # noqa: PLC0415

    store = open_blob_store("s3://nobody-here/p", s3_endpoint_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(StorageUnavailable):
        store.put("k", b"x")
    (tmp_path / "file").write_text("a file where the directory should be")
    with pytest.raises(StorageUnavailable):
        DirectoryBlobs(tmp_path / "file").put("k", b"x")


def test_storage_urls_are_checked():
    assert open_blob_store(None) is None
    for bad in ("ftp://x/y", "s3://ab", "file://host/dir"):
        with pytest.raises(ValueError):
            open_blob_store(bad)


# --- the bookkeeping: every object is pending (a put under way) or in the trash with a due time


@pytest.fixture
def job_store(redis_server, tmp_path):
    store = JobStore(redis_server.url.rsplit("/", 1)[0] + "/5", blobs=DirectoryBlobs(tmp_path / "blobs"))
    store.redis.flushdb()
    yield store
    store.redis.flushdb()
    store.close()


def _create(store: JobStore, *, ttl: int = 600) -> str:
    job_id = new_job_id()
    fields = new_job_fields(job_id, "owner", params={"method": "bicubic"}, input_info={}, output_info={},
                            queue="light", webhook_url=None, ttl=ttl, now=time.time())
    fields["input_key"] = input_key(job_id)
    store._put(input_key(job_id), b"input", give_up=False)
    assert store.create(fields, b"", message=run_job_message(job_id, "light"))
    return job_id


def _due(store: JobStore, key: str) -> float | None:
    return store.redis.zscore(TRASH_KEY, key)


def test_each_transition_records_its_object_and_schedules_what_is_no_longer_needed(job_store):
    store = job_store
    job_id = _create(store)
    now = time.time()
    assert store.redis.zcard(PENDING_BLOBS_KEY) == 0
    assert _due(store, input_key(job_id)) == pytest.approx(now + 600, abs=5)  # deleted at expiry if never run
    assert store.load_input(job_id) == b"input"

    first, second = "aaaa", "bbbb"
    assert store.begin_run(job_id, first, worker="w", lease_seconds=30).outcome == "started"
    assert store.save_checkpoint(job_id, first, b"state 1")
    store.redis.delete(f"upscaler:job:{job_id}:lease")  # the first run's lease lapsed: the second takes over
    assert store.begin_run(job_id, second, worker="w", lease_seconds=30).outcome == "started"
    assert store.load_checkpoint(job_id) == b"state 1"
    assert store.save_checkpoint(job_id, second, b"state 2")
    assert _due(store, checkpoint_key(job_id, first)) <= time.time()  # superseded: due now
    # the fenced first run: its late checkpoint and its result are never recorded, and are due now
    assert not store.save_checkpoint(job_id, first, b"late state")
    fenced = store.put_result(job_id, first, b"fenced result")
    assert store.finish(job_id, first, "succeeded", stored_result=fenced) == ("running", False)
    assert _due(store, fenced) <= time.time()

    kept = store.put_result(job_id, second, b"the result")
    assert store.finish(job_id, second, "succeeded", stored_result=kept) == ("succeeded", True)
    fields = store.fields(job_id)
    assert fields["result_key"] == kept == result_key(job_id, second)
    assert "input_key" not in fields and "checkpoint_key" not in fields
    assert _due(store, kept) == pytest.approx(time.time() + 600, abs=5)  # with the record's expiry
    assert _due(store, input_key(job_id)) <= time.time() and _due(store, checkpoint_key(job_id, second)) <= time.time()
    assert store.redis.zcard(PENDING_BLOBS_KEY) == 0

    assert sweep_blobs(store, Settings()) == 4  # input, both checkpoints, the fenced result
    assert store.blobs.keys() == [kept]
    assert store.redis.zrange(TRASH_KEY, 0, -1) == [kept.encode()]


def _fields_with_stored_input() -> tuple[str, dict[str, str]]:
    """A new job's id and record, naming its input in the blob store (as the API records a job with one)."""
    job_id = new_job_id()
    fields = new_job_fields(job_id, "owner", params={}, input_info={}, output_info={}, queue="light", webhook_url=None,
                            ttl=600, now=time.time())
    fields["input_key"] = input_key(job_id)
    return job_id, fields


def test_a_refused_submission_and_an_abandoned_put_are_deleted(job_store):
    store = job_store
    job_id, fields = _fields_with_stored_input()
    _create(store)
    store._put(input_key(job_id), b"input", give_up=False)
    assert not store.create(fields, b"", max_active=1)  # too many jobs: refused, and its input due now
    assert _due(store, input_key(job_id)) <= time.time()
    orphan = store.put_result(new_job_id(), "cccc", b"a result whose worker died before recording it")
    assert sweep_blobs(store, Settings(blob_grace_seconds=60)) == 1  # the refused input; the orphan is in its grace
    assert orphan in store.blobs.keys()
    assert sweep_blobs(store, Settings(blob_grace_seconds=0.001)) == 1
    assert orphan not in store.blobs.keys() and store.redis.zcard(PENDING_BLOBS_KEY) == 0


def test_a_put_the_sweeper_gave_up_is_never_recorded(job_store):
    store = job_store
    job_id, fields = _fields_with_stored_input()
    store._put(input_key(job_id), b"input", give_up=False)
    store.claim_orphans(time.time() + 1)  # as if the put had taken longer than the grace
    assert store.create(fields, b"") is False and store.fields(job_id) is None
