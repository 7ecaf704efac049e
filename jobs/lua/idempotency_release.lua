-- Give back a pending Idempotency-Key claim whose submission was refused, so a corrected retry can use it.
-- KEYS: the key's record. -> 1 if released, 0 if it is not this claim's (or a job holds it)
local record, token = KEYS[1], ARGV[1]
if redis.call('HGET', record, 'token') ~= token or redis.call('HEXISTS', record, 'job') == 1 then return 0 end
redis.call('DEL', record)
return 1
