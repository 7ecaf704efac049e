-- The reaper, for a running job whose lease may have lapsed. max_lapsed: the most lapsed runs before the
-- job fails, with `failure` (the job's error, JSON).
-- -> {what happened, the job's queue}: 'requeued', 'canceled' (its cancel flag was set), 'failed' (its
-- runs kept dying), 'alive' (the lease holds), 'gone' (not running any more)
local _, id, now, default_ttl, tomb_ttl, max_lapsed, failure, queue_list, message = unpack(ARGV)
default_ttl, tomb_ttl = tonumber(default_ttl), tonumber(tomb_ttl)
local job = job_key(id)
if redis.call('HGET', job, 'status') ~= 'running' then redis.call('ZREM', P .. 'running', id); return {'gone', ''} end
if redis.call('EXISTS', job .. ':lease') == 1 then return {'alive', ''} end
local queue = redis.call('HGET', job, 'queue') or ''
stat('lease_lapsed', 1)
if redis.call('EXISTS', job .. ':cancel') == 1 then
  close_job(id, 'running', 'canceled', now, default_ttl, tomb_ttl)
  return {'canceled', queue}
end
if redis.call('HINCRBY', job, 'lapsed_runs', 1) >= tonumber(max_lapsed) then
  redis.call('HSET', job, 'error', failure)
  close_job(id, 'running', 'failed', now, default_ttl, tomb_ttl)
  return {'failed', queue}
end
back_to_queue(id, now, queue_list, message)
return {'requeued', queue}
