-- A worker takes a job: queued -> running, or a take-over of a running job whose lease lapsed.
-- -> {outcome, previous status, 1 if this is the job's first start}; outcome 'started' or the reason not
-- to run ('missing', 'busy': another run holds a live lease, or a status)
local _, id, token, now, lease_ms, worker = unpack(ARGV)
local job = job_key(id)
local status = redis.call('HGET', job, 'status')
if not status then redis.call('ZREM', P .. 'queued', id); return {'missing', '', 0} end
if status == 'running' then
  if redis.call('EXISTS', job .. ':lease') == 1 then return {'busy', status, 0} end
elseif status ~= 'queued' then
  return {status, status, 0}
end
redis.call('HSET', job, 'status', 'running', 'run_token', token, 'worker', worker)
local first = 0
if not redis.call('HGET', job, 'started_at') then
  redis.call('HSET', job, 'started_at', now)
  first = 1
  add_event(id, 'job.started', now)
end
redis.call('HINCRBY', job, 'runs', 1)
redis.call('SET', job .. ':lease', token, 'PX', tonumber(lease_ms))
redis.call('ZREM', P .. 'queued', id)
redis.call('ZADD', P .. 'running', now, id)
if status == 'queued' then
  stat('active:queued', -1)
  stat('active:running', 1)
  stat('total:running', 1)
end
return {'started', status, first}
