-- Keep the body an event will be sent with (the first one kept wins)
local _, id, event, body = unpack(ARGV)
local state = job_key(id) .. ':event:' .. event
redis.call('HSETNX', state, 'body', body)
local ttl = redis.call('PTTL', job_key(id))
if ttl > 0 then redis.call('PEXPIRE', state, ttl) end
return 1
