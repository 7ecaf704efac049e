"""The Redis job store shared by the API (asyncio client) and the workers (blocking client).

Keys, all under `upscaler:` (one Redis, not Redis Cluster: the scripts derive keys from a job id):
  job:{id}               hash: the job record (status, timestamps, params, progress, ...)
  job:{id}:input         the uploaded image bytes (deleted when the job ends: nothing needs them after)
  job:{id}:result        the output image bytes (written once, by the transition to `succeeded`)
  job:{id}:checkpoint    the last training checkpoint of a running job (a re-run resumes from it)
                         (these three only without a blob store; with one, the record names the objects:
                         `input_key`, `result_key`, `checkpoint_key`, jobs/blobs.py)
  blobs:pending          sorted set of the blob puts under way, by the time each began (jobs/blobs.py)
  blobs:trash            sorted set of the stored objects, by the time each is to be deleted
  job:{id}:cancel        the cancel flag a running job's `should_stop` polls
  job:{id}:lease         the run token of the worker running the job, renewed every few seconds
  job:{id}:deliveries    the last webhook delivery attempts (a capped list)
  job:{id}:event:{type}  one webhook event: its attempts so far and its body (fixed at the first attempt)
  tomb:{id}              the owner of a job id; outlives the job so an expired id answers 410, not 404
  owner:{owner}:jobs     sorted set of the owner's job ids by creation time, for listing newest first
  owner:{owner}:active   set of the owner's unfinished job ids (the per-key limit of queued jobs)
  rate:{owner}           the owner's request-rate bucket (GCRA: the theoretical arrival time)
  queued                 sorted set of queued job ids by the time their message was last sent (the reaper)
  running                sorted set of running job ids (the reaper looks for lapsed leases among them)
  webhooks               sorted set of webhook events ("{id}|{type}") by the time they are due (the outbox)
  stats                  counters shared by every process (jobs by status, histograms, webhook outcomes)
  workers                sorted set of live workers by last heartbeat

Every status change is one Lua script, so the transitions cannot race: only `queued -> running`,
`running -> succeeded|failed|canceled|queued` and `queued -> canceled` exist; a finished job never
changes again, and a running job whose cancel flag is set can only end `canceled`. Each run holds a
token (`run_token`); writes from a run whose token is no longer the job's (a slow worker whose lease
lapsed and whose job another worker took over) are ignored. The result is written by the same script
that marks the job succeeded, with SET NX: first write wins. The scripts that start or end a job also
schedule its webhook event in the `webhooks` outbox, so an event is never lost between the two.
"""
from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, NamedTuple

import redis
import redis.asyncio as aioredis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from jobs import scripts
from jobs.blobs import BlobStore, StorageUnavailable, checkpoint_key, input_key, result_key
from jobs.queue import Message
from jobs.record import TERMINAL, public_job

log = logging.getLogger(__name__)
PREFIX = "upscaler:"
PENDING_BLOBS_KEY = PREFIX + "blobs:pending"
TRASH_KEY = PREFIX + "blobs:trash"
STATS_KEY = PREFIX + "stats"
WORKERS_KEY = PREFIX + "workers"
QUEUED_KEY = PREFIX + "queued"
RUNNING_KEY = PREFIX + "running"
OUTBOX_KEY = PREFIX + "webhooks"
MAX_DELIVERIES_KEPT = 20
DEFAULT_TTL_SECONDS = 24 * 3600  # only for a record without its own `ttl` field
IDEMPOTENCY_TTL_SECONDS = 24 * 3600  # an Idempotency-Key names its job this long (docs/http-api.md)
# Histogram buckets (seconds) of job queue and run time; bicubic jobs take milliseconds, ZSSR minutes.
SECONDS_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


@dataclass(frozen=True)
class JobKeys:
    job: str
    input: str
    result: str
    cancel: str
    lease: str
    deliveries: str
    tomb: str
    checkpoint: str

    @classmethod
    def of(cls, job_id: str) -> JobKeys:
        base = f"{PREFIX}job:{job_id}"
        return cls(base, base + ":input", base + ":result", base + ":cancel", base + ":lease",
                   base + ":deliveries", f"{PREFIX}tomb:{job_id}", base + ":checkpoint")


def owner_index_key(owner: str) -> str:
    return f"{PREFIX}owner:{owner}:jobs"


def owner_active_key(owner: str) -> str:
    return f"{PREFIX}owner:{owner}:active"


def event_member(job_id: str, event_type: str) -> str:
    return f"{job_id}|{event_type}"


@dataclass(frozen=True)
class Lookup:
    """What a read of one job found: the record, or a tombstone (expired), or nothing."""
    fields: dict[str, str] | None
    deliveries: list[str]
    tomb_owner: str | None
    rate_wait: float = 0.0  # when the read also counted a request: seconds to wait, 0.0 if it was allowed

    def visible_to(self, owner: str) -> bool:
        return self.fields is not None and self.fields.get("owner") == owner

    def expired_for(self, owner: str) -> bool:
        return self.fields is None and self.tomb_owner == owner


def seconds_bucket(seconds: float) -> str:
    """The `le` label of the first histogram bucket that holds `seconds`."""
    for bound in SECONDS_BUCKETS:
        if seconds <= bound:
            return repr(float(bound))
    return "+Inf"




@dataclass(frozen=True)
class IdempotencyClaim:
    """A submission's hold on its Idempotency-Key (jobs/lua/idempotency_claim.lua): the key's record, this
    request's token, and the fingerprint of its body."""
    record: str
    token: str
    fingerprint: str


def idempotency_record_key(owner: str, key_digest: str) -> str:
    return f"{PREFIX}idem:{owner}:{key_digest}"


def _create_call(fields: dict[str, str], input_bytes: bytes, tombstone_seconds: int, max_active: int,
                 message: Message | None, rate: RateLimit | None = None,
                 claim: IdempotencyClaim | None = None) -> list:
    """The arguments of the create script (shared by both stores)."""
    created_us = int(float(fields["created_at"]) * 1_000_000)  # exact in a double; orders same-ms submissions
    return [PREFIX, fields["id"], int(fields["ttl"]), tombstone_seconds, fields["owner"], created_us, input_bytes,
            max_active, fields["created_at"], *(message or ("", "")), *([rate.key, *rate.args] if rate else ("", 0, 0)),
            json.dumps(fields),
            *((claim.record, claim.token, claim.fingerprint, IDEMPOTENCY_TTL_SECONDS) if claim else ("", "", "", 0))]


def _register(client: redis.Redis | aioredis.Redis, name: str):
    return client.register_script(scripts.source(name))


class Creation(NamedTuple):
    outcome: str  # 'created', or why nothing was written: 'rate_limited', 'too_many_jobs', 'storage_lost', 'replay',
    # 'reused', 'in_use'
    rate_wait: float  # with 'rate_limited': the seconds before the key's next request is allowed
    replay_of: str | None = None  # with 'replay': the job its Idempotency-Key made


def _creation(reply: list) -> Creation:
    outcome, detail = _text(reply[0]), reply[1]
    if outcome == "replay":
        return Creation(outcome, 0.0, _text(detail))
    return Creation(outcome, int(detail) / 1000)


def _decode(mapping: dict) -> dict[str, str]:
    return {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in mapping.items()}


def _text(value: Any) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def _now() -> str:
    return f"{time.time():.6f}"


def _connection_retry() -> dict[str, Any]:
    # Ride out a Redis restart of a few seconds instead of failing a job over it.
    return {"retry": Retry(ExponentialBackoff(cap=2.0, base=0.05), 8),
            "retry_on_error": [redis.ConnectionError, redis.TimeoutError]}


@dataclass(frozen=True)
class RateLimit:
    """One key's request-rate limit (GCRA, jobs/lua/gcra.lua)."""
    owner: str
    per_second: float
    burst: int

    @property
    def key(self) -> str:
        return f"{PREFIX}rate:{self.owner}"

    @property
    def args(self) -> list:
        return [1000.0 / self.per_second, self.burst]


class BeginResult(NamedTuple):
    outcome: str  # 'started', or why not: 'missing', 'busy', or the job's status
    previous: str  # the status before: 'queued' (first start, hand-back, requeue) or 'running' (take-over)
    first_start: bool  # the job never started before (its queue time is observed, job.started is sent)


@dataclass(frozen=True)
class ClaimedEvent:
    job_id: str
    event_type: str
    attempts: int  # attempts made before this one
    body: str | None  # the body of the first attempt, kept for the retries
    url: str | None  # None when the job expired meanwhile


def _pending(key: str) -> dict[str, float]:
    return {key: time.time()}


def _give_up(pipe, key: str) -> None:
    """A put that failed (it may have written the object anyway): due for deletion now."""
    pipe.zrem(PENDING_BLOBS_KEY, key)
    pipe.zadd(TRASH_KEY, {key: time.time()})


# --- the blocking store, used by workers --------------------------------------------------------------

class JobStore:
    """`blobs`: where images live (jobs/blobs.py); None: in Redis beside the records."""

    def __init__(self, url: str, *, tombstone_seconds: int = 7 * 24 * 3600, blobs: BlobStore | None = None):
        self.blobs = blobs
        self.redis = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5, health_check_interval=30,
                                          **_connection_retry())
        self.tombstone_seconds = tombstone_seconds
        script = functools.partial(_register, self.redis)
        self._create, self._begin, self._renew = script("create"), script("begin_run"), script("renew_lease")
        self._set_field, self._save_checkpoint = script("set_run_field"), script("save_checkpoint")
        self._finish, self._release, self._requeue = script("finish"), script("release"), script("requeue_lapsed")
        self._cancel, self._record, self._claim = script("cancel"), script("record_delivery"), script("claim_events")
        self._keep_body, self._resend = script("keep_event_body"), script("resend")
        self._claim_orphans, self._forget_trash = script("claim_orphans"), script("forget_trash")

    def close(self) -> None:
        self.redis.close()

    def create(self, fields: dict[str, str], input_bytes: bytes, *, max_active: int = 0,
               message: Message | None = None) -> bool:
        """Record a queued job and push its message (none: record only); False (nothing written) when its
        owner has `max_active` unfinished jobs. With a blob store the input is stored there first."""
        if self.blobs is not None and input_bytes:
            fields = {**fields, "input_key": input_key(fields["id"])}
            self._put(fields["input_key"], input_bytes, give_up=False)
            input_bytes = b""
        reply = self._create(args=_create_call(fields, input_bytes, self.tombstone_seconds, max_active, message))
        return _creation(reply).outcome == "created"

    def fields(self, job_id: str) -> dict[str, str] | None:
        found = _decode(self.redis.hgetall(JobKeys.of(job_id).job))
        return found or None

    def public(self, job_id: str) -> dict[str, Any] | None:
        keys = JobKeys.of(job_id)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(keys.job).lrange(keys.deliveries, 0, -1)
        fields, deliveries = pipe.execute()
        return public_job(_decode(fields), [_text(d) for d in deliveries]) if fields else None

    # --- one run of a job: begin, keep the lease, report, checkpoint, end or hand back

    def begin_run(self, job_id: str, token: str, *, worker: str, lease_seconds: float) -> BeginResult:
        outcome, previous, first = self._begin(args=[PREFIX, job_id, token, _now(), int(lease_seconds * 1000),
                                                     worker])
        return BeginResult(_text(outcome), _text(previous), bool(first))

    def load_input(self, job_id: str) -> bytes | None:
        """The job's input (raises StorageUnavailable when its blob store does not answer)."""
        if self.blobs is None:
            return self.redis.get(JobKeys.of(job_id).input)
        key = _text(self.redis.hget(JobKeys.of(job_id).job, "input_key"))
        return self.blobs.get(key) if key else None

    def renew_lease(self, job_id: str, token: str, lease_seconds: float) -> bool:
        return bool(self._renew(args=[PREFIX, job_id, token, int(lease_seconds * 1000)]))

    def cancel_requested(self, job_id: str) -> bool:
        return bool(self.redis.exists(JobKeys.of(job_id).cancel))

    def set_run_field(self, job_id: str, token: str, field: str, value: str) -> bool:
        """Write one field of the record, only while this run owns the job."""
        return bool(self._set_field(args=[PREFIX, job_id, token, field, value]))

    def set_progress(self, job_id: str, token: str, progress: dict[str, Any]) -> bool:
        return bool(self._set_field(args=[PREFIX, job_id, token, "progress", json.dumps(progress)]))

    def save_checkpoint(self, job_id: str, token: str, data: bytes) -> bool:
        """Keep the run's latest training checkpoint (only while this run owns the job). With a blob store, a
        checkpoint that cannot be stored is skipped (False): the run goes on, and a re-run resumes from an older one."""
        if self.blobs is None:
            return bool(self._save_checkpoint(args=[PREFIX, job_id, token, data, DEFAULT_TTL_SECONDS, "", _now()]))
        key = checkpoint_key(job_id, token)
        if not self._put(key, data, give_up=True):
            return False
        return bool(self._save_checkpoint(args=[PREFIX, job_id, token, "", DEFAULT_TTL_SECONDS, key, _now()]))

    def load_checkpoint(self, job_id: str) -> bytes | None:
        if self.blobs is None:
            return self.redis.get(JobKeys.of(job_id).checkpoint)
        key = _text(self.redis.hget(JobKeys.of(job_id).job, "checkpoint_key"))
        try:
            return self.blobs.get(key) if key else None
        except StorageUnavailable:
            return None  # the run starts over rather than wait for the store

    def put_result(self, job_id: str, token: str, data: bytes) -> str:
        """Store a run's result under a key of its own, to be recorded by `finish` (raises StorageUnavailable)."""
        key = result_key(job_id, token)
        self._put(key, data, give_up=False)
        return key

    def give_up_put(self, key: str) -> None:
        """A stored object that will not be recorded (its run stopped): due for deletion now."""
        pipe = self.redis.pipeline(transaction=True)
        _give_up(pipe, key)
        pipe.execute()

    def _put(self, key: str, data: bytes, *, give_up: bool) -> bool:
        """Put an object, its intent in `blobs:pending` first (so a crash mid-put orphans nothing). On failure:
        `give_up` schedules its deletion and answers False; else raises StorageUnavailable and leaves the intent,
        for a retry to renew."""
        self.redis.zadd(PENDING_BLOBS_KEY, _pending(key))
        try:
            self.blobs.put(key, data)
        except StorageUnavailable:
            if not give_up:
                raise
            log.warning("could not store %s; skipped", key, exc_info=True)
            self.give_up_put(key)
            return False
        return True

    def finish(self, job_id: str, token: str, outcome: str, *, fields: dict[str, str] | None = None,
               result: bytes = b"", stored_result: str = "") -> tuple[str, bool]:
        """End a run: `succeeded` (with the result: its bytes, or the key `put_result` stored it under), `failed`
        (with an error) or `canceled`.

        Returns the job's final status and whether this call made the change; a stale run changes nothing."""
        assert outcome in TERMINAL
        final, changed = self._finish(args=[PREFIX, job_id, token, outcome, _now(), DEFAULT_TTL_SECONDS,
                                            self.tombstone_seconds, json.dumps(fields or {}), result,
                                            stored_result])
        return _text(final), bool(changed)

    def release(self, job_id: str, token: str, message: Message) -> str:
        """Hand a running job back to the queue, with `message`; see jobs/lua/release.lua."""
        return _text(self._release(args=[PREFIX, job_id, token, _now(), *message])) or ""

    def cancel(self, job_id: str) -> str:
        return _text(self._cancel(args=[PREFIX, job_id, _now(), DEFAULT_TTL_SECONDS, self.tombstone_seconds]))

    # --- the reaper: lapsed leases and queued jobs whose message went missing

    def running_ids(self) -> list[str]:
        return [_text(i) for i in self.redis.zrange(RUNNING_KEY, 0, -1)]

    def lapsed_runs(self) -> list[tuple[str, str]]:
        """(id, queue) of the running jobs whose lease is gone (their worker stopped renewing it)."""
        ids = self.running_ids()
        if not ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.exists(JobKeys.of(job_id).lease).hget(JobKeys.of(job_id).job, "queue")
        found = pipe.execute()
        return [(job_id, _text(found[2 * i + 1]) or "") for i, job_id in enumerate(ids) if not found[2 * i]]

    def requeue_if_lapsed(self, job_id: str, *, max_lapsed_runs: int, message: Message) -> str:
        """Put a running job whose lease lapsed back in the queue with `message` (see jobs/lua/requeue_lapsed.lua)."""
        error = json.dumps({"code": "worker_lost", "message": f"the worker running the job stopped answering "
                                                              f"{max_lapsed_runs} times; it is not retried again"})
        outcome, _ = self._requeue(args=[PREFIX, job_id, _now(), DEFAULT_TTL_SECONDS, self.tombstone_seconds,
                                         max_lapsed_runs, error, *message])
        return _text(outcome)

    def resend(self, job_id: str, message: Message) -> bool:
        """Push another message for a job that is still queued (see jobs/lua/resend.lua)."""
        return bool(self._resend(args=[PREFIX, job_id, _now(), *message]))

    def queued_since(self, before: float, limit: int = 1000) -> list[tuple[str, str]]:
        """(id, queue) of queued jobs whose message was last sent before `before` (epoch seconds)."""
        ids = [_text(i) for i in self.redis.zrangebyscore(QUEUED_KEY, "-inf", before, start=0, num=limit)]
        if not ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(JobKeys.of(job_id).job, "status", "queue")
        found, gone = [], []
        for job_id, (status, queue) in zip(ids, pipe.execute()):
            if _text(status) == "queued":
                found.append((job_id, _text(queue)))
            elif status is None:
                gone.append(job_id)  # expired while queued: nothing left to run
        if gone:
            self.redis.zrem(QUEUED_KEY, *gone)
        return found

    # --- the blob sweeper (jobs/blobs.py)

    def claim_orphans(self, older_than: float, limit: int = 1000) -> int:
        """Puts begun before `older_than` (epoch seconds) that nothing recorded: due for deletion now."""
        return int(self._claim_orphans(args=[PREFIX, f"{older_than:.6f}", _now(), limit]))

    def due_trash(self, limit: int = 1000) -> list[str]:
        return [_text(k) for k in self.redis.zrangebyscore(TRASH_KEY, "-inf", time.time(), start=0, num=limit)]

    def forget_trash(self, keys: list[str], deleted_at: float) -> int:
        """Forget deleted objects (those still due by `deleted_at`: one rescheduled since stays)."""
        return int(self._forget_trash(args=[PREFIX, f"{deleted_at:.6f}", *keys])) if keys else 0

    def take_turn(self, name: str, seconds: float) -> bool:
        """True for one caller per `seconds` across every process (a lock that simply expires)."""
        return bool(self.redis.set(f"{PREFIX}turn:{name}", "1", nx=True, px=max(1, int(seconds * 1000))))

    # --- the webhook outbox

    def claim_events(self, *, limit: int, claim_seconds: float) -> list[ClaimedEvent]:
        now = time.time()
        flat = self._claim(args=[PREFIX, f"{now:.6f}", f"{now + claim_seconds:.6f}", limit])
        claimed = []
        for i in range(0, len(flat), 4):
            member, attempts, body, url = (_text(v) for v in flat[i:i + 4])
            job_id, _, event_type = member.partition("|")
            claimed.append(ClaimedEvent(job_id, event_type, int(attempts), body or None, url or None))
        return claimed

    def keep_event_body(self, job_id: str, event_type: str, body: str) -> None:
        self._keep_body(args=[PREFIX, job_id, event_type, body])

    def record_delivery(self, job_id: str, event_type: str, attempt: dict[str, Any], *, outcome: str,
                        next_due: float | None = None, body: str = "") -> None:
        """Record one attempt; `next_due` schedules the next one (None: the event is done)."""
        status = attempt.get("status")
        delivered_at = _now() if outcome == "delivered" else ""
        self._record(args=[PREFIX, job_id, event_type, json.dumps(attempt), outcome,
                           "" if status is None else str(status), delivered_at, attempt.get("error") or "",
                           MAX_DELIVERIES_KEPT, "" if next_due is None else f"{next_due:.6f}", body])

    def pending_events(self) -> int:
        return self.redis.zcard(OUTBOX_KEY)

    # --- counters and workers

    def observe_seconds(self, metric: str, label: str, seconds: float) -> None:
        """Add one sample to a histogram kept in the stats hash (shared by every worker)."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.hincrby(STATS_KEY, f"hist:{metric}:{label}:{seconds_bucket(seconds)}", 1)
        pipe.hincrbyfloat(STATS_KEY, f"hist:{metric}:{label}:sum", seconds)
        pipe.execute()

    def count(self, field: str, by: int = 1) -> None:
        self.redis.hincrby(STATS_KEY, field, by)

    def heartbeat(self, worker: str, queues: list[str]) -> None:
        self.redis.zadd(WORKERS_KEY, {f"{worker}|{','.join(queues)}": time.time()})

    def forget_worker(self, worker: str, queues: list[str]) -> None:
        self.redis.zrem(WORKERS_KEY, f"{worker}|{','.join(queues)}")

    def live_workers(self, within_seconds: float) -> list[tuple[str, list[str]]]:
        return _parse_workers(self.redis.zrangebyscore(WORKERS_KEY, time.time() - within_seconds, "+inf"))


def _parse_workers(members: list) -> list[tuple[str, list[str]]]:
    found = []
    for member in members:
        name, _, queues = _text(member).rpartition("|")
        found.append((name, [q for q in queues.split(",") if q]))
    return found


# --- the asyncio store, used by the API ---------------------------------------------------------------

class AsyncJobStore:
    def __init__(self, url: str, *, tombstone_seconds: int = 7 * 24 * 3600):
        # No retry here: the API answers 503 with Retry-After at once rather than hold a request open.
        self.redis = aioredis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2, health_check_interval=30,
                                             max_connections=256)
        self.tombstone_seconds = tombstone_seconds
        self._create, self._cancel, self._rate = (_register(self.redis, name) for name in ("create", "cancel", "rate_limit"))
        self._claim, self._release_claim = (_register(self.redis, name)
                                            for name in ("idempotency_claim", "idempotency_release"))

    async def close(self) -> None:
        await self.redis.aclose()

    async def ping(self) -> bool:
        return bool(await self.redis.ping())

    async def warm_up(self, connections: int) -> None:
        """Load the scripts and open a few pooled connections before the first requests need them."""
        for script in (self._create, self._cancel, self._rate, self._claim, self._release_claim):
            await self.redis.script_load(script.script)
        await asyncio.gather(*(self.redis.ping() for _ in range(connections)))

    async def create(self, fields: dict[str, str], input_bytes: bytes, *, max_active: int = 0,
                     message: Message | None = None, rate: RateLimit | None = None,
                     claim: IdempotencyClaim | None = None) -> Creation:
        """Record a queued job and push its message, in one script. Nothing is written when its owner has
        `max_active` unfinished jobs, or when `rate` is given and the request is over it (the request is counted
        against `rate` in the same round trip). With `claim`, the job becomes its Idempotency-Key's, or, if the
        key made a job meanwhile, nothing is written and the outcome is 'replay'."""
        return _creation(await self._create(args=_create_call(fields, input_bytes, self.tombstone_seconds, max_active,
                                                              message, rate, claim)))

    async def claim_idempotency(self, claim: IdempotencyClaim, *, pending_seconds: float) -> tuple[str, str | None]:
        """Hold an Idempotency-Key while its submission is checked: ('claimed', None), ('replay', job id),
        ('reused', None) or ('in_use', None) (jobs/lua/idempotency_claim.lua)."""
        outcome, job_id = await self._claim(keys=[claim.record], args=[claim.fingerprint, claim.token,
                                                                       int(pending_seconds * 1000)])
        return _text(outcome), _text(job_id) or None

    async def release_idempotency(self, claim: IdempotencyClaim) -> None:
        """Give the key back after the submission was refused (a corrected retry may use it)."""
        await self._release_claim(keys=[claim.record], args=[claim.token])

    async def take_request(self, rate: RateLimit) -> float:
        """Count one request of `rate.owner`: 0.0 if allowed, else the seconds to wait before the next one."""
        allowed, wait_ms = await self._rate(keys=[rate.key], args=rate.args)
        return 0.0 if allowed else int(wait_ms) / 1000

    async def count_auth_failure(self, client: str, window_seconds: int) -> tuple[int, int]:
        """Count a failed authentication of `client` in its window (which starts at its first failure); returns
        the failures counted in the window and the seconds left of it."""
        key = f"{PREFIX}auth-failures:{client}"
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(key, 0, ex=window_seconds, nx=True)
        pipe.incr(key)
        pipe.ttl(key)
        _, failures, seconds_left = await pipe.execute()
        return int(failures), max(1, int(seconds_left))

    async def lookup(self, job_id: str, *, rate: RateLimit | None = None) -> Lookup:
        """The job, its deliveries and its tombstone; with `rate`, the request is counted in the same round trip."""
        try:
            replies = await self._lookup_replies(job_id, rate)
        except redis.exceptions.NoScriptError:  # Redis restarted or flushed its script cache since warm_up
            await self.redis.script_load(self._rate.script)
            replies = await self._lookup_replies(job_id, rate)
        wait = 0.0
        if rate is not None:
            (allowed, wait_ms), replies = replies[0], replies[1:]
            wait = 0.0 if allowed else int(wait_ms) / 1000
        fields, deliveries, tomb = replies
        return Lookup(_decode(fields) or None, [_text(d) for d in deliveries], _text(tomb), wait)

    async def _lookup_replies(self, job_id: str, rate: RateLimit | None) -> list:
        keys = JobKeys.of(job_id)
        pipe = self.redis.pipeline(transaction=False)
        if rate is not None:
            # EVALSHA queued by hand: a Script queued on a pipeline makes redis-py ask SCRIPT EXISTS first, one
            # more round trip on every poll.
            pipe.evalsha(self._rate.sha, 1, rate.key, *rate.args)
        pipe.hgetall(keys.job).lrange(keys.deliveries, 0, -1).get(keys.tomb)
        return await pipe.execute()

    async def result(self, job_id: str) -> bytes | None:
        return await self.redis.get(JobKeys.of(job_id).result)

    async def note_pending(self, key: str) -> None:
        """The intent of a blob put, before it begins (see JobStore._put)."""
        await self.redis.zadd(PENDING_BLOBS_KEY, _pending(key))

    async def give_up_put(self, key: str) -> None:
        pipe = self.redis.pipeline(transaction=True)
        _give_up(pipe, key)
        await pipe.execute()

    async def cancel(self, job_id: str) -> str:
        return _text(await self._cancel(args=[PREFIX, job_id, _now(), DEFAULT_TTL_SECONDS, self.tombstone_seconds]))

    async def list_for(self, owner: str, *, status: str | None, limit: int) -> list[dict[str, Any]]:
        """The owner's jobs, newest first; ids whose job expired are dropped from the index on the way."""
        index = owner_index_key(owner)
        found: list[dict[str, Any]] = []
        start, page = 0, max(limit, 50)
        while len(found) < limit and start < 2000:  # bound the scan when filtering by a rare status
            ids = [_text(i) for i in await self.redis.zrevrange(index, start, start + page - 1)]
            if not ids:
                break
            pipe = self.redis.pipeline(transaction=False)
            for job_id in ids:
                pipe.hgetall(JobKeys.of(job_id).job)
            gone = []
            for job_id, fields in zip(ids, await pipe.execute()):
                if not fields:
                    gone.append(job_id)
                    continue
                fields = _decode(fields)
                if (status is None or fields["status"] == status) and len(found) < limit:
                    found.append(public_job(fields))
            if gone:
                await self.redis.zrem(index, *gone)
            start += page - len(gone)
        return found

    async def stats(self) -> dict[str, str]:
        return _decode(await self.redis.hgetall(STATS_KEY))

    async def queue_depths(self, queues: tuple[str, ...], priority_steps: tuple[int, ...],
                           separator: str) -> dict[str, int]:
        """Messages waiting in each Celery queue (kombu keeps one Redis list per queue and priority step)."""
        pipe = self.redis.pipeline(transaction=False)
        for queue in queues:
            for step in priority_steps:
                pipe.llen(f"{queue}{separator}{step}" if step else queue)
        lengths = await pipe.execute()
        per = len(priority_steps)
        return {queue: sum(lengths[i * per:(i + 1) * per]) for i, queue in enumerate(queues)}

    async def pending_events(self) -> int:
        return await self.redis.zcard(OUTBOX_KEY)

    async def live_workers(self, within_seconds: float) -> list[tuple[str, list[str]]]:
        return _parse_workers(await self.redis.zrangebyscore(WORKERS_KEY, time.time() - within_seconds, "+inf"))


def histogram_from_stats(stats: dict[str, str], metric: str) -> dict[str, tuple[list[tuple[str, int]], float]]:
    """Per label: cumulative (le, count) pairs and the sum, from the non-cumulative counts in the stats hash."""
    per_label: dict[str, dict[str, float]] = {}
    prefix = f"hist:{metric}:"
    for field, value in stats.items():
        if field.startswith(prefix):
            label, _, bucket = field[len(prefix):].rpartition(":")
            per_label.setdefault(label, {})[bucket] = float(value)
    result = {}
    for label, counts in per_label.items():
        running, buckets = 0, []
        for bound in [repr(float(b)) for b in SECONDS_BUCKETS] + ["+Inf"]:
            running += int(counts.get(bound, 0))
            buckets.append((bound, running))
        result[label] = (buckets, counts.get("sum", 0.0))
    return result


__all__ = ["JobStore", "AsyncJobStore", "JobKeys", "Lookup", "RateLimit", "BeginResult", "ClaimedEvent", "Creation",
           "IdempotencyClaim", "idempotency_record_key",
           "histogram_from_stats"]
