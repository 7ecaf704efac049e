-- Keep a run's latest training checkpoint -> 1 if kept (only by the run that owns the job). With a blob store,
-- `checkpoint` is '' and `stored` the key the run put it under: recorded (the run's earlier one, if another,
-- deleted soon), or, from a run that no longer owns the job, deleted soon unless the record names it.
local _, id, token, checkpoint, default_ttl, stored, now = unpack(ARGV)
local job = job_key(id)
local ttl = tonumber(redis.call('HGET', job, 'ttl')) or tonumber(default_ttl)
if not owned_by(job, token) then
  if stored ~= '' then
    keep_blob(stored, redis.call('HGET', job, 'checkpoint_key') == stored and tonumber(now) + ttl or now)
  end
  return 0
end
if stored ~= '' then
  local previous = redis.call('HGET', job, 'checkpoint_key')
  if previous and previous ~= stored then redis.call('ZADD', TRASH, now, previous) end
  redis.call('HSET', job, 'checkpoint_key', stored)
  keep_blob(stored, tonumber(now) + ttl)
else
  redis.call('SET', job .. ':checkpoint', checkpoint, 'EX', ttl)
end
redis.call('HINCRBY', job, 'checkpoints', 1)
return 1
