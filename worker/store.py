"""The Redis job store shared by the API (asyncio client) and the workers (blocking client).

Keys, all under `upscaler:` (one Redis, not Redis Cluster: the scripts derive keys from a job id):
  job:{id}               hash: the job record (status, timestamps, params, progress, ...)
  job:{id}:input         the uploaded image bytes (deleted when the job ends: nothing needs them after)
  job:{id}:result        the output image bytes (written once, by the transition to `succeeded`)
  job:{id}:checkpoint    the last training checkpoint of a running job (a re-run resumes from it)
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
import json
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, NamedTuple

import redis
import redis.asyncio as aioredis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

PREFIX = "upscaler:"
STATS_KEY = PREFIX + "stats"
WORKERS_KEY = PREFIX + "workers"
QUEUED_KEY = PREFIX + "queued"
RUNNING_KEY = PREFIX + "running"
OUTBOX_KEY = PREFIX + "webhooks"
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


# --- Lua scripts: every status transition is one of these ---------------------------------------------
# Every script gets the key prefix as ARGV[1] and (but the outbox claim and the rate limit) the job id as
# ARGV[2]; the prelude below names the keys and holds the one way a job ends.

_PRELUDE = """
local P = ARGV[1]
local function job_key(id) return P .. 'job:' .. id end
local function stat(field, by) redis.call('HINCRBY', P .. 'stats', field, by) end

-- Schedule a webhook event once (NX: a second end of the same job cannot add a second event).
local function add_event(id, event, due)
  if redis.call('HGET', job_key(id), 'webhook_url') then
    redis.call('ZADD', P .. 'webhooks', 'NX', due, id .. '|' .. event)
  end
end

-- The end of a job (from 'queued' or 'running'): status, timestamps, expiry, indexes, counters, webhook.
local function close_job(id, from, outcome, now, default_ttl, tomb_ttl)
  local job = job_key(id)
  local ttl = tonumber(redis.call('HGET', job, 'ttl')) or default_ttl  -- the TTL it was accepted under
  redis.call('HSET', job, 'status', outcome, 'finished_at', now)
  redis.call('DEL', job .. ':input', job .. ':cancel', job .. ':lease', job .. ':checkpoint')
  redis.call('EXPIRE', job, ttl)
  for _, suffix in ipairs({':result', ':deliveries'}) do
    if redis.call('EXISTS', job .. suffix) == 1 then redis.call('EXPIRE', job .. suffix, ttl) end
  end
  redis.call('EXPIRE', P .. 'tomb:' .. id, ttl + tomb_ttl)
  redis.call('ZREM', P .. 'running', id)
  redis.call('ZREM', P .. 'queued', id)
  local owner = redis.call('HGET', job, 'owner')
  if owner then redis.call('SREM', P .. 'owner:' .. owner .. ':active', id) end
  stat('active:' .. from, -1)
  stat('total:' .. outcome, 1)
  add_event(id, 'job.' .. outcome, now)
end
"""

# Requests per second per owner, GCRA (a leaky bucket kept as one timestamp, on Redis's clock so every
# API process agrees): take_request(the owner's bucket, ms between requests at the sustained rate, burst)
# -> 1, 0 allowed (and counted), or 0, ms to wait (not counted)
_GCRA = """
local function take_request(bucket, interval, burst)
  local clock = redis.call('TIME')
  local now = tonumber(clock[1]) * 1000 + tonumber(clock[2]) / 1000
  local tolerance = interval * (burst - 1)
  local tat = tonumber(redis.call('GET', bucket) or now)
  if tat < now then tat = now end
  local wait = tat - tolerance - now
  if wait > 0 then return 0, math.ceil(wait) end
  tat = tat + interval
  redis.call('SET', bucket, string.format('%.3f', tat), 'PX', math.ceil(tat - now) + 1000)
  return 1, 0
end
"""

# KEYS: the owner's bucket. ARGV: ms between requests, burst -> {1, 0} allowed, or {0, ms to wait}
_RATE_LIMIT = _GCRA + """
local allowed, wait = take_request(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]))
return {allowed, wait}
"""

# ARGV: P, id, ttl, tomb_ttl, owner, created_at (µs), input, max active per owner (0: none), now,
#       the queue's Redis list and the job's run_job message ('' and '': record only, send nothing),
#       the owner's rate bucket, ms between requests and burst ('', 0, 0: the request is not counted here),
#       then the job record's fields as one JSON object of strings (one argument: redis-py encodes each argument
#       in Python, about a microsecond apiece, and a record has some twenty)
# -> {'created', 0}, or nothing written and {'rate_limited', ms to wait} or {'too_many_jobs', 0} (the owner
#    already has the most unfinished jobs allowed)
_CREATE = _PRELUDE + _GCRA + """
local id, owner = ARGV[2], ARGV[5]
if ARGV[12] ~= '' then  -- the submission is counted against its key's rate in this round trip
  local allowed, wait = take_request(ARGV[12], tonumber(ARGV[13]), tonumber(ARGV[14]))
  if allowed == 0 then return {'rate_limited', wait} end
end
local active = P .. 'owner:' .. owner .. ':active'
local max_active = tonumber(ARGV[8])
if max_active > 0 and redis.call('SCARD', active) >= max_active then
  -- forget ids whose job ended or expired without passing through close_job, then count again
  for _, other in ipairs(redis.call('SMEMBERS', active)) do
    local status = redis.call('HGET', job_key(other), 'status')
    if status ~= 'queued' and status ~= 'running' then redis.call('SREM', active, other) end
  end
  if redis.call('SCARD', active) >= max_active then return {'too_many_jobs', 0} end
end
local job = job_key(id)
local record = {}
for name, value in pairs(cjson.decode(ARGV[15])) do
  record[#record + 1] = name
  record[#record + 1] = value
end
redis.call('HSET', job, unpack(record))
local ttl = tonumber(ARGV[3])
redis.call('EXPIRE', job, ttl)
redis.call('SET', job .. ':input', ARGV[7], 'EX', ttl)
redis.call('SET', P .. 'tomb:' .. id, owner, 'EX', ttl + tonumber(ARGV[4]))
local index = P .. 'owner:' .. owner .. ':jobs'
redis.call('ZADD', index, tonumber(ARGV[6]), id)
if redis.call('TTL', index) < ttl then redis.call('EXPIRE', index, ttl) end
redis.call('SADD', active, id)
if redis.call('TTL', active) < ttl then redis.call('EXPIRE', active, ttl) end
redis.call('ZADD', P .. 'queued', ARGV[9], id)
if ARGV[10] ~= '' then redis.call('LPUSH', ARGV[10], ARGV[11]) end
stat('active:queued', 1)
stat('total:queued', 1)
return {'created', 0}
"""

# ARGV: P, id, token, now, lease_ms, worker name
# -> {outcome, previous status, 1 if this is the job's first start}; outcome 'started' or the reason not
# to run ('missing', 'busy': another run holds a live lease, or a status)
_BEGIN_RUN = _PRELUDE + """
local id = ARGV[2]
local job = job_key(id)
local status = redis.call('HGET', job, 'status')
if not status then redis.call('ZREM', P .. 'queued', id); return {'missing', '', 0} end
if status == 'running' then
  if redis.call('EXISTS', job .. ':lease') == 1 then return {'busy', status, 0} end
elseif status ~= 'queued' then
  return {status, status, 0}
end
redis.call('HSET', job, 'status', 'running', 'run_token', ARGV[3], 'worker', ARGV[6])
local first = 0
if not redis.call('HGET', job, 'started_at') then
  redis.call('HSET', job, 'started_at', ARGV[4])
  first = 1
  add_event(id, 'job.started', ARGV[4])
end
redis.call('HINCRBY', job, 'runs', 1)
redis.call('SET', job .. ':lease', ARGV[3], 'PX', tonumber(ARGV[5]))
redis.call('ZREM', P .. 'queued', id)
redis.call('ZADD', P .. 'running', ARGV[4], id)
if status == 'queued' then
  stat('active:queued', -1)
  stat('active:running', 1)
  stat('total:running', 1)
end
return {'started', status, first}
"""

# ARGV: P, id, token, lease_ms -> 1 while this run still owns the job, else 0
_RENEW_LEASE = _PRELUDE + """
local job = job_key(ARGV[2])
if redis.call('HGET', job, 'status') ~= 'running' then return 0 end
if redis.call('HGET', job, 'run_token') ~= ARGV[3] then return 0 end
local holder = redis.call('GET', job .. ':lease')
if holder and holder ~= ARGV[3] then return 0 end
redis.call('SET', job .. ':lease', ARGV[3], 'PX', tonumber(ARGV[4]))
return 1
"""

# ARGV: P, id, token, field, value -> 1 if written (only by the run that owns the job)
_SET_RUN_FIELD = _PRELUDE + """
local job = job_key(ARGV[2])
if redis.call('HGET', job, 'status') ~= 'running' then return 0 end
if redis.call('HGET', job, 'run_token') ~= ARGV[3] then return 0 end
redis.call('HSET', job, ARGV[4], ARGV[5])
return 1
"""

# ARGV: P, id, token, checkpoint bytes, default ttl -> 1 if written (only by the run that owns the job)
_SAVE_CHECKPOINT = _PRELUDE + """
local job = job_key(ARGV[2])
if redis.call('HGET', job, 'status') ~= 'running' then return 0 end
if redis.call('HGET', job, 'run_token') ~= ARGV[3] then return 0 end
local ttl = tonumber(redis.call('HGET', job, 'ttl')) or tonumber(ARGV[5])
redis.call('SET', job .. ':checkpoint', ARGV[4], 'EX', ttl)
redis.call('HINCRBY', job, 'checkpoints', 1)
return 1
"""

# The end of a run. ARGV: P, id, token, outcome, now, default ttl, tomb ttl, fields json (set only if the
# outcome stands), result bytes -> {final status, 1 if this call made the transition else 0}
_FINISH = _PRELUDE + """
local id = ARGV[2]
local job = job_key(id)
local status = redis.call('HGET', job, 'status')
if not status then return {'missing', 0} end
if status ~= 'running' or redis.call('HGET', job, 'run_token') ~= ARGV[3] then return {status, 0} end
local outcome = ARGV[4]
if outcome == 'succeeded' and redis.call('EXISTS', job .. ':cancel') == 1 then outcome = 'canceled' end
if outcome == ARGV[4] then
  local fields = cjson.decode(ARGV[8])
  for k, v in pairs(fields) do redis.call('HSET', job, k, v) end
end
if outcome == 'succeeded' then redis.call('SET', job .. ':result', ARGV[9], 'NX') end
close_job(id, 'running', outcome, ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7]))
return {outcome, 1}
"""

# A run hands its job back to the queue (worker shutting down). ARGV: P, id, token, now, queue list, message
# -> 'queued' when handed back (with a new message), 'cancel' when the cancel flag is set (the caller
# finishes it canceled), else ''
_RELEASE = _PRELUDE + """
local id = ARGV[2]
local job = job_key(id)
if redis.call('HGET', job, 'status') ~= 'running' then return '' end
if redis.call('HGET', job, 'run_token') ~= ARGV[3] then return '' end
if redis.call('EXISTS', job .. ':cancel') == 1 then return 'cancel' end
redis.call('HSET', job, 'status', 'queued', 'progress', '')
redis.call('HDEL', job, 'run_token', 'worker')
redis.call('DEL', job .. ':lease')
redis.call('ZREM', P .. 'running', id)
redis.call('ZADD', P .. 'queued', ARGV[4], id)
redis.call('LPUSH', ARGV[5], ARGV[6])
stat('active:running', -1)
stat('active:queued', 1)
return 'queued'
"""

# The reaper, for a running job whose lease may have lapsed. ARGV: P, id, now, default ttl, tomb ttl,
# most lapsed runs before the job fails, error json for that case, queue list, run_job message
# -> {what happened, the job's queue}: 'requeued', 'canceled' (its cancel flag was set), 'failed' (its
# runs kept dying), 'alive' (the lease holds), 'gone' (not running any more)
_REQUEUE_LAPSED = _PRELUDE + """
local id = ARGV[2]
local job = job_key(id)
local status = redis.call('HGET', job, 'status')
if status ~= 'running' then redis.call('ZREM', P .. 'running', id); return {'gone', ''} end
if redis.call('EXISTS', job .. ':lease') == 1 then return {'alive', ''} end
local queue = redis.call('HGET', job, 'queue') or ''
stat('lease_lapsed', 1)
if redis.call('EXISTS', job .. ':cancel') == 1 then
  close_job(id, 'running', 'canceled', ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]))
  return {'canceled', queue}
end
local lapsed = redis.call('HINCRBY', job, 'lapsed_runs', 1)
if lapsed >= tonumber(ARGV[6]) then
  redis.call('HSET', job, 'error', ARGV[7])
  close_job(id, 'running', 'failed', ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]))
  return {'failed', queue}
end
redis.call('HSET', job, 'status', 'queued', 'progress', '')
redis.call('HDEL', job, 'run_token', 'worker')
redis.call('ZREM', P .. 'running', id)
redis.call('ZADD', P .. 'queued', ARGV[3], id)
redis.call('LPUSH', ARGV[8], ARGV[9])
stat('active:running', -1)
stat('active:queued', 1)
return {'requeued', queue}
"""

# The reaper, for a queued job whose message is nowhere: send another. ARGV: P, id, now, queue list, message
# -> 1 if sent, 0 if the job is no longer queued (a worker began it meanwhile)
_RESEND = _PRELUDE + """
local id = ARGV[2]
if redis.call('HGET', job_key(id), 'status') ~= 'queued' then return 0 end
redis.call('LPUSH', ARGV[4], ARGV[5])
redis.call('ZADD', P .. 'queued', ARGV[3], id)
return 1
"""

# ARGV: P, id, now, default ttl, tomb ttl
# -> 'canceled_now' (was queued), 'requested' (running: the worker stops between steps), a terminal status, 'missing'
_CANCEL = _PRELUDE + """
local id = ARGV[2]
local job = job_key(id)
local status = redis.call('HGET', job, 'status')
if not status then return 'missing' end
if status == 'queued' then
  redis.call('HSET', job, 'cancel_requested', '1')
  close_job(id, 'queued', 'canceled', ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]))
  return 'canceled_now'
end
if status == 'running' then
  local ttl = tonumber(redis.call('HGET', job, 'ttl')) or tonumber(ARGV[4])
  redis.call('SET', job .. ':cancel', '1', 'EX', ttl)
  redis.call('HSET', job, 'cancel_requested', '1')
  return 'requested'
end
return status
"""

# Claim the webhook events that are due: each is pushed back by the claim time, so no other sender takes
# it meanwhile, and a sender that dies leaves it due again once the claim runs out.
# ARGV: P, now, claim until, most events -> flat list of {member, attempts so far, frozen body or '', url or ''}
_CLAIM_EVENTS = _PRELUDE + """
local due = redis.call('ZRANGEBYSCORE', P .. 'webhooks', '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[4]))
local claimed = {}
for _, member in ipairs(due) do
  redis.call('ZADD', P .. 'webhooks', ARGV[3], member)
  local bar = string.find(member, '|', 1, true)
  local id, event = string.sub(member, 1, bar - 1), string.sub(member, bar + 1)
  local state = redis.call('HMGET', job_key(id) .. ':event:' .. event, 'attempts', 'body')
  claimed[#claimed + 1] = member
  claimed[#claimed + 1] = state[1] or '0'
  claimed[#claimed + 1] = state[2] or ''
  claimed[#claimed + 1] = redis.call('HGET', job_key(id), 'webhook_url') or ''
end
return claimed
"""

# One delivery attempt: the event's next due time (or its removal), the job's webhook record, counters.
# ARGV: P, id, event, attempt json, outcome, http status or '', delivered_at or '', error or '',
#       deliveries kept, next due time or '' (done), body to keep for the retries or ''
_RECORD_DELIVERY = _PRELUDE + """
local id, event = ARGV[2], ARGV[3]
local job = job_key(id)
local state = job .. ':event:' .. event
local member = id .. '|' .. event
stat('webhook:' .. ARGV[5], 1)
if redis.call('EXISTS', job) == 0 then
  redis.call('ZREM', P .. 'webhooks', member)
  redis.call('DEL', state)
  return 0
end
if ARGV[10] == '' then redis.call('ZREM', P .. 'webhooks', member)
else redis.call('ZADD', P .. 'webhooks', ARGV[10], member) end
redis.call('HINCRBY', state, 'attempts', 1)
if ARGV[11] ~= '' then redis.call('HSETNX', state, 'body', ARGV[11]) end
redis.call('HINCRBY', job, 'webhook_attempts', 1)
redis.call('HSET', job, 'webhook_last_status', ARGV[6], 'webhook_last_error', ARGV[8])
if ARGV[7] ~= '' then redis.call('HSET', job, 'webhook_delivered_at', ARGV[7]) end
redis.call('LPUSH', job .. ':deliveries', ARGV[4])
redis.call('LTRIM', job .. ':deliveries', 0, tonumber(ARGV[9]) - 1)
local ttl = redis.call('PTTL', job)
if ttl > 0 then
  redis.call('PEXPIRE', job .. ':deliveries', ttl)
  redis.call('PEXPIRE', state, ttl)
end
return 1
"""

# ARGV: P, id, event, body -> keep the body an event will be sent with (the first one kept wins)
_KEEP_EVENT_BODY = _PRELUDE + """
local state = job_key(ARGV[2]) .. ':event:' .. ARGV[3]
redis.call('HSETNX', state, 'body', ARGV[4])
local ttl = redis.call('PTTL', job_key(ARGV[2]))
if ttl > 0 then redis.call('PEXPIRE', state, ttl) end
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
        # UPSCALER_PACK_JOBS > 1: how many jobs trained together, this one included; null when it ran alone
        "packed_with": int(fields["packed_with"]) if fields.get("packed_with") else None,
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
        "kernel": _loads(fields.get("kernel")),  # the estimated blur kernel (worker/runs.py kernel_record), or null
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
    rate_wait: float = 0.0  # when the read also counted a request: seconds to wait, 0.0 if it was allowed

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


Message = tuple[str, str]  # (the queue's Redis list, a run_job message): worker.celery_app.run_job_message


def _create_call(fields: dict[str, str], input_bytes: bytes, tombstone_seconds: int, max_active: int,
                 message: Message | None, rate: RateLimit | None = None) -> list:
    """The arguments of the create script (shared by both stores)."""
    created_us = int(float(fields["created_at"]) * 1_000_000)  # exact in a double; orders same-ms submissions
    return [PREFIX, fields["id"], int(fields["ttl"]), tombstone_seconds, fields["owner"], created_us, input_bytes,
            max_active, fields["created_at"], *(message or ("", "")), *([rate.key, *rate.args] if rate else ("", 0, 0)),
            json.dumps(fields)]


class Creation(NamedTuple):
    outcome: str  # 'created', or why nothing was written: 'rate_limited' or 'too_many_jobs'
    rate_wait: float  # with 'rate_limited': the seconds before the key's next request is allowed


def _creation(reply: list) -> Creation:
    outcome, wait_ms = reply
    return Creation(_text(outcome), int(wait_ms) / 1000)


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
    """One key's request-rate limit (GCRA, see _RATE_LIMIT)."""
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


# --- the blocking store, used by workers --------------------------------------------------------------

class JobStore:
    def __init__(self, url: str, *, tombstone_seconds: int = 7 * 24 * 3600):
        self.redis = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5, health_check_interval=30,
                                          **_connection_retry())
        self.tombstone_seconds = tombstone_seconds
        script = self.redis.register_script
        self._create, self._begin, self._renew = script(_CREATE), script(_BEGIN_RUN), script(_RENEW_LEASE)
        self._set_field, self._save_checkpoint = script(_SET_RUN_FIELD), script(_SAVE_CHECKPOINT)
        self._finish, self._release, self._requeue = script(_FINISH), script(_RELEASE), script(_REQUEUE_LAPSED)
        self._cancel, self._record, self._claim = script(_CANCEL), script(_RECORD_DELIVERY), script(_CLAIM_EVENTS)
        self._keep_body, self._resend = script(_KEEP_EVENT_BODY), script(_RESEND)

    def close(self) -> None:
        self.redis.close()

    def create(self, fields: dict[str, str], input_bytes: bytes, *, max_active: int = 0,
               message: Message | None = None) -> bool:
        """Record a queued job and push its message (none: record only); False (nothing written) when its
        owner has `max_active` unfinished jobs."""
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
        return self.redis.get(JobKeys.of(job_id).input)

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
        """Keep the run's latest training checkpoint (only while this run owns the job)."""
        return bool(self._save_checkpoint(args=[PREFIX, job_id, token, data, DEFAULT_TTL_SECONDS]))

    def load_checkpoint(self, job_id: str) -> bytes | None:
        return self.redis.get(JobKeys.of(job_id).checkpoint)

    def finish(self, job_id: str, token: str, outcome: str, *, fields: dict[str, str] | None = None,
               result: bytes = b"") -> tuple[str, bool]:
        """End a run: `succeeded` (with the result), `failed` (with an error) or `canceled`.

        Returns the job's final status and whether this call made the change; a stale run changes nothing."""
        assert outcome in TERMINAL
        final, changed = self._finish(args=[PREFIX, job_id, token, outcome, _now(), DEFAULT_TTL_SECONDS,
                                            self.tombstone_seconds, json.dumps(fields or {}), result])
        return _text(final), bool(changed)

    def release(self, job_id: str, token: str, message: Message) -> str:
        """Hand a running job back to the queue, with `message`; see _RELEASE."""
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
        """Put a running job whose lease lapsed back in the queue with `message` (see _REQUEUE_LAPSED)."""
        error = json.dumps({"code": "worker_lost", "message": f"the worker running the job stopped answering "
                                                              f"{max_lapsed_runs} times; it is not retried again"})
        outcome, _ = self._requeue(args=[PREFIX, job_id, _now(), DEFAULT_TTL_SECONDS, self.tombstone_seconds,
                                         max_lapsed_runs, error, *message])
        return _text(outcome)

    def resend(self, job_id: str, message: Message) -> bool:
        """Push another message for a job that is still queued (see _RESEND)."""
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
        self._create = self.redis.register_script(_CREATE)
        self._cancel = self.redis.register_script(_CANCEL)
        self._rate = self.redis.register_script(_RATE_LIMIT)

    async def close(self) -> None:
        await self.redis.aclose()

    async def ping(self) -> bool:
        return bool(await self.redis.ping())

    async def warm_up(self, connections: int) -> None:
        """Load the scripts and open a few pooled connections before the first requests need them."""
        for script in (self._create, self._cancel, self._rate):
            await self.redis.script_load(script.script)
        await asyncio.gather(*(self.redis.ping() for _ in range(connections)))

    async def create(self, fields: dict[str, str], input_bytes: bytes, *, max_active: int = 0,
                     message: Message | None = None, rate: RateLimit | None = None) -> Creation:
        """Record a queued job and push its message, in one script. Nothing is written when its owner has
        `max_active` unfinished jobs, or when `rate` is given and the request is over it (the request is counted
        against `rate` in the same round trip)."""
        return _creation(await self._create(args=_create_call(fields, input_bytes, self.tombstone_seconds, max_active,
                                                              message, rate)))

    async def take_request(self, rate: RateLimit) -> float:
        """Count one request of `rate.owner`: 0.0 if allowed, else the seconds to wait before the next one."""
        allowed, wait_ms = await self._rate(keys=[rate.key], args=rate.args)
        return 0.0 if allowed else int(wait_ms) / 1000

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


__all__ = ["JobStore", "AsyncJobStore", "JobKeys", "Lookup", "RateLimit", "BeginResult", "ClaimedEvent", "public_job",
           "new_job_fields", "new_job_id", "is_job_id", "TERMINAL", "ACTIVE", "STATUSES", "histogram_from_stats"]
