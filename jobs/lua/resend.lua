-- The reaper, for a queued job whose message is nowhere: send another.
-- -> 1 if sent, 0 if the job is no longer queued (a worker began it meanwhile)
local _, id, now, queue_list, message = unpack(ARGV)
if redis.call('HGET', job_key(id), 'status') ~= 'queued' then return 0 end
redis.call('LPUSH', queue_list, message)
redis.call('ZADD', P .. 'queued', now, id)
return 1
