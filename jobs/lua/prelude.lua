-- Shared by every script that touches a job. Every such script gets the key prefix as ARGV[1].
local P = ARGV[1]
local function job_key(id) return P .. 'job:' .. id end
local function stat(field, by) redis.call('HINCRBY', P .. 'stats', field, by) end

-- Objects in a blob store (jobs/blobs.py): every object that may exist is in `pending` (put under way, by score
-- the time it began) or in `trash` (by score the time it is to be deleted: its record's expiry, or now).
local PENDING, TRASH = P .. 'blobs:pending', P .. 'blobs:trash'
-- A put recorded: deleted at `due` (the expiry of the record that names it) unless rescheduled. 0 when the
-- sweeper had already given the put up (its object may be gone).
local function keep_blob(key, due)
  local was_pending = redis.call('ZREM', PENDING, key)
  redis.call('ZADD', TRASH, due, key)
  return was_pending
end

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
  -- the input and checkpoint go now; the result when the record expires
  local objects = redis.call('HMGET', job, 'input_key', 'checkpoint_key', 'result_key')
  if objects[1] then redis.call('ZADD', TRASH, now, objects[1]) end
  if objects[2] then redis.call('ZADD', TRASH, now, objects[2]) end
  if objects[3] then redis.call('ZADD', TRASH, tonumber(now) + ttl, objects[3]) end
  redis.call('HDEL', job, 'input_key', 'checkpoint_key')
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

-- A running job back to 'queued' (its worker stopped, or its lease lapsed), with a new run_job message.
local function back_to_queue(id, now, queue_list, message)
  local job = job_key(id)
  redis.call('HSET', job, 'status', 'queued', 'progress', '')
  redis.call('HDEL', job, 'run_token', 'worker')
  redis.call('DEL', job .. ':lease')
  redis.call('ZREM', P .. 'running', id)
  redis.call('ZADD', P .. 'queued', now, id)
  redis.call('LPUSH', queue_list, message)
  stat('active:running', -1)
  stat('active:queued', 1)
end

-- True while the run holding `token` owns the running job.
local function owned_by(job, token)
  return redis.call('HGET', job, 'status') == 'running' and redis.call('HGET', job, 'run_token') == token
end
