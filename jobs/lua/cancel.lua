-- -> 'canceled_now' (was queued), 'requested' (running: the worker stops between steps), a terminal
-- status, or 'missing'
local _, id, now, default_ttl, tomb_ttl = unpack(ARGV)
local job = job_key(id)
local status = redis.call('HGET', job, 'status')
if not status then return 'missing' end
if status == 'queued' then
  redis.call('HSET', job, 'cancel_requested', '1')
  close_job(id, 'queued', 'canceled', now, tonumber(default_ttl), tonumber(tomb_ttl))
  return 'canceled_now'
end
if status == 'running' then
  local ttl = tonumber(redis.call('HGET', job, 'ttl')) or tonumber(default_ttl)
  redis.call('SET', job .. ':cancel', '1', 'EX', ttl)
  redis.call('HSET', job, 'cancel_requested', '1')
  return 'requested'
end
return status
