"""The Redis job store shared by the API (asyncio client) and the workers (blocking client).

Keys, all under `upscaler:` and all expiring:
  job:{id}             hash: the job record (status, timestamps, params, progress, ...)
  job:{id}:input       the uploaded image bytes (deleted when the job ends: nothing needs them after)
  job:{id}:result      the output image bytes (written once, by the transition to `succeeded`)
  job:{id}:cancel      the cancel flag a running job's `should_stop` polls
  job:{id}:lease       the run token of the worker running the job, renewed every few seconds
  job:{id}:deliveries  the last webhook delivery attempts (a capped list)
  tomb:{id}            the owner of a job id; outlives the job so an expired id answers 410, not 404
  owner:{owner}:jobs   sorted set of the owner's job ids by creation time, for listing newest first
  stats                counters shared by every process (jobs by status, histograms, webhook outcomes)
  workers              sorted set of live workers by last heartbeat

Every status change is one Lua script, so the transitions cannot race: only `queued -> running`,
`running -> succeeded|failed|canceled|queued` and `queued -> canceled` exist; a finished job never
changes again, and a running job whose cancel flag is set can only end `canceled`. Each run holds a
token (`run_token`); writes from a run whose token is no longer the job's (a slow worker whose lease
lapsed and whose job another worker took over) are ignored. The result is written by the same script
that marks the job succeeded, with SET NX: first write wins.
"""
from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

PREFIX = "upscaler:"
STATS_KEY = PREFIX + "stats"
WORKERS_KEY = PREFIX + "workers"
TERMINAL = ("succeeded", "failed", "canceled")
ACTIVE = ("queued", "running")
STATUSES = ACTIVE + TERMINAL
MAX_DELIVERIES_KEPT = 20
DEFAULT_TTL_SECONDS = 24 * 3600  # only for a record without its own `ttl` field
# Histogram buckets (seconds) of job queue and run time; bicubic jobs take milliseconds, ZSSR minutes.
SECONDS_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


def new_job_id() -> str:
    """128 random bits as 32 hex digits: unguessable and safe in a URL path."""
    return secrets.token_hex(16)


def is_job_id(text: str) -> bool:
    return len(text) == 32 and all(c in "0123456789abcdef" for c in text)


@dataclass(frozen=True)
class JobKeys:
    job: str
    input: str
    result: str
    cancel: str
    lease: str
    deliveries: str
    tomb: str

    @classmethod
    def of(cls, job_id: str) -> JobKeys:
        base = f"{PREFIX}job:{job_id}"
        return cls(base, base + ":input", base + ":result", base + ":cancel", base + ":lease",
                   base + ":deliveries", f"{PREFIX}tomb:{job_id}")


def owner_index_key(owner: str) -> str:
    return f"{PREFIX}owner:{owner}:jobs"


# --- Lua scripts: every status transition is one of these --------------------------------------------

# KEYS: job, input, tomb, owner index, stats. ARGV: id, ttl, tomb_ttl, owner, created_at (µs), fields json, input
_CREATE = """
local fields = cjson.decode(ARGV[6])
local flat = {}
for k, v in pairs(fields) do flat[#flat + 1] = k; flat[#flat + 1] = v end
redis.call('HSET', KEYS[1], unpack(flat))
local ttl = tonumber(ARGV[2])
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('SET', KEYS[2], ARGV[7], 'EX', ttl)
redis.call('SET', KEYS[3], ARGV[4], 'EX', ttl + tonumber(ARGV[3]))
redis.call('ZADD', KEYS[4], tonumber(ARGV[5]), ARGV[1])
if redis.call('TTL', KEYS[4]) < ttl then redis.call('EXPIRE', KEYS[4], ttl) end
redis.call('HINCRBY', KEYS[5], 'active:queued', 1)
redis.call('HINCRBY', KEYS[5], 'total:queued', 1)
return 1
"""

# KEYS: job, lease, cancel, stats. ARGV: token, now, lease_ms, worker name
# -> {outcome, previous status}; outcome 'started' or the reason not to run ('missing', 'busy', a status).
_BEGIN_RUN = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'missing', ''} end
if status == 'running' then
  if redis.call('EXISTS', KEYS[2]) == 1 then return {'busy', status} end
elseif status ~= 'queued' then
  return {status, status}
end
redis.call('HSET', KEYS[1], 'status', 'running', 'run_token', ARGV[1], 'worker', ARGV[4])
if not redis.call('HGET', KEYS[1], 'started_at') then redis.call('HSET', KEYS[1], 'started_at', ARGV[2]) end
redis.call('HINCRBY', KEYS[1], 'runs', 1)
redis.call('SET', KEYS[2], ARGV[1], 'PX', tonumber(ARGV[3]))
if status == 'queued' then
  redis.call('HINCRBY', KEYS[4], 'active:queued', -1)
  redis.call('HINCRBY', KEYS[4], 'active:running', 1)
  redis.call('HINCRBY', KEYS[4], 'total:running', 1)
end
return {'started', status}
"""

# KEYS: job, lease. ARGV: token, lease_ms -> 1 while this run still owns the job, else 0
_RENEW_LEASE = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
if redis.call('HGET', KEYS[1], 'run_token') ~= ARGV[1] then return 0 end
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[1], 'PX', tonumber(ARGV[2]))
return 1
"""

# KEYS: job. ARGV: token, field, value -> 1 if written (only by the run that owns the job)
_SET_RUN_FIELD = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
if redis.call('HGET', KEYS[1], 'run_token') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
return 1
"""

# The end of a run. KEYS: job, result, input, cancel, lease, deliveries, tomb, stats.
# ARGV: token, outcome, now, ttl, tomb_ttl, fields json (set only if the outcome stands), result bytes
# -> {final status, 1 if this call made the transition else 0}
_FINISH = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'missing', 0} end
if status ~= 'running' or redis.call('HGET', KEYS[1], 'run_token') ~= ARGV[1] then return {status, 0} end
local outcome = ARGV[2]
if outcome == 'succeeded' and redis.call('EXISTS', KEYS[4]) == 1 then outcome = 'canceled' end
local ttl = tonumber(redis.call('HGET', KEYS[1], 'ttl')) or tonumber(ARGV[4])  -- the TTL the job was accepted under
if outcome == ARGV[2] then
  local fields = cjson.decode(ARGV[6])
  for k, v in pairs(fields) do redis.call('HSET', KEYS[1], k, v) end
end
if outcome == 'succeeded' then redis.call('SET', KEYS[2], ARGV[7], 'EX', ttl, 'NX') end
redis.call('HSET', KEYS[1], 'status', outcome, 'finished_at', ARGV[3])
redis.call('DEL', KEYS[3], KEYS[4], KEYS[5])
redis.call('EXPIRE', KEYS[1], ttl)
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('EXPIRE', KEYS[2], ttl) end
if redis.call('EXISTS', KEYS[6]) == 1 then redis.call('EXPIRE', KEYS[6], ttl) end
redis.call('EXPIRE', KEYS[7], ttl + tonumber(ARGV[5]))
redis.call('HINCRBY', KEYS[8], 'active:running', -1)
redis.call('HINCRBY', KEYS[8], 'total:' .. outcome, 1)
return {outcome, 1}
"""

# A run hands its job back to the queue (worker shutting down). KEYS: job, lease, cancel, stats. ARGV: token
# -> 'queued' when handed back, 'cancel' when the cancel flag is set (the caller finishes it canceled), else ''
_RELEASE = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return '' end
if redis.call('HGET', KEYS[1], 'run_token') ~= ARGV[1] then return '' end
if redis.call('EXISTS', KEYS[3]) == 1 then return 'cancel' end
redis.call('HSET', KEYS[1], 'status', 'queued', 'progress', '')
redis.call('HDEL', KEYS[1], 'run_token', 'worker')
redis.call('DEL', KEYS[2])
redis.call('HINCRBY', KEYS[4], 'active:running', -1)
redis.call('HINCRBY', KEYS[4], 'active:queued', 1)
return 'queued'
"""

# KEYS: job, input, cancel, lease, deliveries, tomb, stats. ARGV: now, ttl, tomb_ttl
# -> 'canceled_now' (was queued), 'requested' (running: the worker stops between steps), a terminal status, 'missing'
_CANCEL = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'missing' end
local ttl = tonumber(redis.call('HGET', KEYS[1], 'ttl')) or tonumber(ARGV[2])
if status == 'queued' then
  redis.call('HSET', KEYS[1], 'status', 'canceled', 'finished_at', ARGV[1], 'cancel_requested', '1')
  redis.call('DEL', KEYS[2], KEYS[4])
  redis.call('EXPIRE', KEYS[1], ttl)
  if redis.call('EXISTS', KEYS[5]) == 1 then redis.call('EXPIRE', KEYS[5], ttl) end
  redis.call('EXPIRE', KEYS[6], ttl + tonumber(ARGV[3]))
  redis.call('HINCRBY', KEYS[7], 'active:queued', -1)
  redis.call('HINCRBY', KEYS[7], 'total:canceled', 1)
  return 'canceled_now'
end
if status == 'running' then
  redis.call('SET', KEYS[3], '1', 'EX', ttl)
  redis.call('HSET', KEYS[1], 'cancel_requested', '1')
  return 'requested'
end
return status
"""

# KEYS: job, deliveries, stats. ARGV: attempt json, outcome, http status or '', delivered_at or '', error or ''
_RECORD_DELIVERY = """
redis.call('HINCRBY', KEYS[3], 'webhook:' .. ARGV[2], 1)
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[1], 'webhook_attempts', 1)
redis.call('HSET', KEYS[1], 'webhook_last_status', ARGV[3], 'webhook_last_error', ARGV[5])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'webhook_delivered_at', ARGV[4]) end
redis.call('LPUSH', KEYS[2], ARGV[1])
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[6]) - 1)
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
return 1
"""


# --- the record as stored and as shown ----------------------------------------------------------------

def iso(epoch: str | float | None) -> str | None:
    if epoch in (None, ""):
        return None
    moment = datetime.fromtimestamp(float(epoch), tz=timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _loads(text: str | None, default: Any = None) -> Any:
    return json.loads(text) if text else default


def _seconds_between(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    return round(float(end) - float(start), 3)


def _progress(fields: dict[str, str]) -> dict[str, Any]:
    status = fields["status"]
    stored = _loads(fields.get("progress")) or {}
    if status in TERMINAL:
        phase = "done"
    elif status == "queued":
        phase = "queued"
    else:
        phase = stored.get("phase", "training")
    step, total = int(stored.get("step", 0)), int(stored.get("total_steps", 0))
    if status == "succeeded":
        fraction = 1.0
    elif total > 0 and status == "running":
        fraction = round(min(step / total, 1.0), 4)
    else:
        fraction = 0.0
    progress = {"phase": phase, "step": step, "total_steps": total, "fraction": fraction}
    if stored.get("loss") is not None:
        progress["loss"] = stored["loss"]
    return progress


def public_job(fields: dict[str, str], deliveries: list[str] | None = None) -> dict[str, Any]:
    """The job as clients and webhooks see it (CONTRACT.md section 4): no owner, no token, no secret."""
    job_id = fields["id"]
    created, started, finished = fields.get("created_at"), fields.get("started_at"), fields.get("finished_at")
    metrics = {
        "queue_seconds": _seconds_between(created, started),
        "run_seconds": _seconds_between(started, finished),
        "train_steps": int(fields["train_steps"]) if fields.get("train_steps") else None,
        "device": fields.get("device") or None,
    }
    last_status = fields.get("webhook_last_status")
    return {
        "id": job_id,
        "status": fields["status"],
        "created_at": iso(created),
        "started_at": iso(started),
        "finished_at": iso(finished),
        "params": _loads(fields.get("params"), {}),
        "input": _loads(fields.get("input"), {}),
        "output": _loads(fields.get("output")),
        "progress": _progress(fields),
        "error": _loads(fields.get("error")),
        "metrics": metrics,
        "webhook": {
            "url": fields.get("webhook_url") or None,
            "attempts": int(fields.get("webhook_attempts") or 0),
            "last_status": int(last_status) if last_status else None,
            "last_error": fields.get("webhook_last_error") or None,
            "delivered_at": iso(fields.get("webhook_delivered_at")),
            "deliveries": [json.loads(item) for item in deliveries or []],
        },
        "cancel_requested": fields.get("cancel_requested") == "1",
        "urls": {"self": f"/v1/jobs/{job_id}", "result": f"/v1/jobs/{job_id}/result",
                 "cancel": f"/v1/jobs/{job_id}/cancel"},
    }


@dataclass(frozen=True)
class Lookup:
    """What a read of one job found: the record, or a tombstone (expired), or nothing."""
    fields: dict[str, str] | None
    deliveries: list[str]
    tomb_owner: str | None

    def visible_to(self, owner: str) -> bool:
        return self.fields is not None and self.fields.get("owner") == owner

    def expired_for(self, owner: str) -> bool:
        return self.fields is None and self.tomb_owner == owner


def new_job_fields(job_id: str, owner: str, *, params: dict, input_info: dict, output_info: dict, queue: str,
                   webhook_url: str | None, ttl: int, now: float) -> dict[str, str]:
    fields = {"id": job_id, "owner": owner, "status": "queued", "created_at": f"{now:.6f}",
              "params": json.dumps(params), "input": json.dumps(input_info), "output": json.dumps(output_info),
              "queue": queue,
              "ttl": str(ttl), "runs": "0"}
    if webhook_url:
        fields["webhook_url"] = webhook_url
    return fields


def seconds_bucket(seconds: float) -> str:
    """The `le` label of the first histogram bucket that holds `seconds`."""
    for bound in SECONDS_BUCKETS:
        if seconds <= bound:
            return repr(float(bound))
    return "+Inf"


def _create_call(fields: dict[str, str], input_bytes: bytes, tombstone_seconds: int) -> dict[str, list]:
    """The keys and arguments of the create script (shared by both stores)."""
    job_id, owner = fields["id"], fields["owner"]
    keys = JobKeys.of(job_id)
    created_us = int(float(fields["created_at"]) * 1_000_000)  # exact in a double; orders same-ms submissions
    return {"keys": [keys.job, keys.input, keys.tomb, owner_index_key(owner), STATS_KEY],
            "args": [job_id, int(fields["ttl"]), tombstone_seconds, owner, created_us, json.dumps(fields), input_bytes]}


def _decode(mapping: dict) -> dict[str, str]:
    return {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in mapping.items()}


def _text(value: Any) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def _connection_retry() -> dict[str, Any]:
    # Ride out a Redis restart of a few seconds instead of failing a job over it.
    return {"retry": Retry(ExponentialBackoff(cap=2.0, base=0.05), 8),
            "retry_on_error": [redis.ConnectionError, redis.TimeoutError]}


# --- the blocking store, used by workers --------------------------------------------------------------

class JobStore:
    def __init__(self, url: str, *, tombstone_seconds: int = 7 * 24 * 3600):
        self.redis = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5, health_check_interval=30,
                                          **_connection_retry())
        self.tombstone_seconds = tombstone_seconds
        r = self.redis
        self._create, self._begin, self._renew = r.register_script(_CREATE), r.register_script(_BEGIN_RUN), \
            r.register_script(_RENEW_LEASE)
        self._set_field, self._finish, self._release = r.register_script(_SET_RUN_FIELD), \
            r.register_script(_FINISH), r.register_script(_RELEASE)
        self._cancel, self._record = r.register_script(_CANCEL), r.register_script(_RECORD_DELIVERY)

    def close(self) -> None:
        self.redis.close()

    def create(self, fields: dict[str, str], input_bytes: bytes) -> None:
        self._create(**_create_call(fields, input_bytes, self.tombstone_seconds))

    def fields(self, job_id: str) -> dict[str, str] | None:
        found = _decode(self.redis.hgetall(JobKeys.of(job_id).job))
        return found or None

    def public(self, job_id: str) -> dict[str, Any] | None:
        keys = JobKeys.of(job_id)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(keys.job).lrange(keys.deliveries, 0, -1)
        fields, deliveries = pipe.execute()
        return public_job(_decode(fields), [_text(d) for d in deliveries]) if fields else None

    def begin_run(self, job_id: str, token: str, *, worker: str, lease_seconds: float) -> tuple[str, str]:
        keys = JobKeys.of(job_id)
        outcome, previous = self._begin(keys=[keys.job, keys.lease, keys.cancel, STATS_KEY],
                                        args=[token, f"{time.time():.6f}", int(lease_seconds * 1000), worker])
        return _text(outcome), _text(previous)

    def load_input(self, job_id: str) -> bytes | None:
        return self.redis.get(JobKeys.of(job_id).input)

    def renew_lease(self, job_id: str, token: str, lease_seconds: float) -> bool:
        keys = JobKeys.of(job_id)
        return bool(self._renew(keys=[keys.job, keys.lease], args=[token, int(lease_seconds * 1000)]))

    def cancel_requested(self, job_id: str) -> bool:
        return bool(self.redis.exists(JobKeys.of(job_id).cancel))

    def set_progress(self, job_id: str, token: str, progress: dict[str, Any]) -> bool:
        return bool(self._set_field(keys=[JobKeys.of(job_id).job], args=[token, "progress", json.dumps(progress)]))

    def finish(self, job_id: str, token: str, outcome: str, *, fields: dict[str, str] | None = None,
               result: bytes = b"") -> tuple[str, bool]:
        """End a run: `succeeded` (with the result), `failed` (with an error) or `canceled`.

        Returns the job's final status and whether this call made the change; a stale run changes nothing."""
        assert outcome in TERMINAL
        keys = JobKeys.of(job_id)
        final, changed = self._finish(
            keys=[keys.job, keys.result, keys.input, keys.cancel, keys.lease, keys.deliveries, keys.tomb, STATS_KEY],
            args=[token, outcome, f"{time.time():.6f}", DEFAULT_TTL_SECONDS, self.tombstone_seconds,
                  json.dumps(fields or {}), result])
        return _text(final), bool(changed)

    def release(self, job_id: str, token: str) -> str:
        keys = JobKeys.of(job_id)
        return _text(self._release(keys=[keys.job, keys.lease, keys.cancel, STATS_KEY], args=[token])) or ""

    def cancel(self, job_id: str) -> str:
        keys = JobKeys.of(job_id)
        return _text(self._cancel(keys=[keys.job, keys.input, keys.cancel, keys.lease, keys.deliveries, keys.tomb,
                                        STATS_KEY], args=[f"{time.time():.6f}", DEFAULT_TTL_SECONDS, self.tombstone_seconds]))

    def record_delivery(self, job_id: str, attempt: dict[str, Any], *, outcome: str) -> None:
        keys = JobKeys.of(job_id)
        status = attempt.get("status")
        delivered_at = f"{time.time():.6f}" if outcome == "delivered" else ""
        self._record(keys=[keys.job, keys.deliveries, STATS_KEY],
                     args=[json.dumps(attempt), outcome, "" if status is None else str(status), delivered_at,
                           attempt.get("error") or "", MAX_DELIVERIES_KEPT])

    def observe_seconds(self, metric: str, label: str, seconds: float) -> None:
        """Add one sample to a histogram kept in the stats hash (shared by every worker)."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.hincrby(STATS_KEY, f"hist:{metric}:{label}:{seconds_bucket(seconds)}", 1)
        pipe.hincrbyfloat(STATS_KEY, f"hist:{metric}:{label}:sum", seconds)
        pipe.execute()

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
        self._create = self.redis.register_script(_CREATE)
        self._cancel = self.redis.register_script(_CANCEL)

    async def close(self) -> None:
        await self.redis.aclose()

    async def ping(self) -> bool:
        return bool(await self.redis.ping())

    async def create(self, fields: dict[str, str], input_bytes: bytes) -> None:
        await self._create(**_create_call(fields, input_bytes, self.tombstone_seconds))

    async def delete(self, job_id: str, owner: str) -> None:
        """Undo a create whose enqueue failed (the client got an error, so the job was never accepted)."""
        keys = JobKeys.of(job_id)
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(keys.job, keys.input, keys.tomb).zrem(owner_index_key(owner), job_id)
        pipe.hincrby(STATS_KEY, "active:queued", -1).hincrby(STATS_KEY, "total:queued", -1)
        await pipe.execute()

    async def lookup(self, job_id: str) -> Lookup:
        keys = JobKeys.of(job_id)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(keys.job).lrange(keys.deliveries, 0, -1).get(keys.tomb)
        fields, deliveries, tomb = await pipe.execute()
        return Lookup(_decode(fields) or None, [_text(d) for d in deliveries], _text(tomb))

    async def result(self, job_id: str) -> bytes | None:
        return await self.redis.get(JobKeys.of(job_id).result)

    async def cancel(self, job_id: str) -> str:
        keys = JobKeys.of(job_id)
        return _text(await self._cancel(keys=[keys.job, keys.input, keys.cancel, keys.lease, keys.deliveries,
                                              keys.tomb, STATS_KEY],
                                        args=[f"{time.time():.6f}", DEFAULT_TTL_SECONDS, self.tombstone_seconds]))

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


__all__ = ["JobStore", "AsyncJobStore", "JobKeys", "Lookup", "public_job", "new_job_fields", "new_job_id",
           "is_job_id", "TERMINAL", "ACTIVE", "STATUSES", "histogram_from_stats"]
