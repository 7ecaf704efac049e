-- -> 1 while the run holding `token` still owns the job (its lease renewed), else 0
local _, id, token, lease_ms = unpack(ARGV)
local job = job_key(id)
if not owned_by(job, token) then return 0 end
local holder = redis.call('GET', job .. ':lease')
if holder and holder ~= token then return 0 end
redis.call('SET', job .. ':lease', token, 'PX', tonumber(lease_ms))
return 1
