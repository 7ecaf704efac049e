-- Write one field of the record -> 1 if written (only by the run that owns the job)
local _, id, token, field, value = unpack(ARGV)
local job = job_key(id)
if not owned_by(job, token) then return 0 end
redis.call('HSET', job, field, value)
return 1
