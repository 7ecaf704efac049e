-- Keep a run's latest training checkpoint -> 1 if written (only by the run that owns the job)
local _, id, token, checkpoint, default_ttl = unpack(ARGV)
local job = job_key(id)
if not owned_by(job, token) then return 0 end
local ttl = tonumber(redis.call('HGET', job, 'ttl')) or tonumber(default_ttl)
redis.call('SET', job .. ':checkpoint', checkpoint, 'EX', ttl)
redis.call('HINCRBY', job, 'checkpoints', 1)
return 1
