-- One delivery attempt: the event's next due time (or its removal), the job's webhook record, counters.
-- attempt: JSON; http_status, delivered_at, last_error: '' when none; kept: deliveries kept; next_due: ''
-- when the event is done; body: the body to keep for the retries, or ''
local _, id, event, attempt, outcome, http_status, delivered_at, last_error, kept, next_due, body = unpack(ARGV)
local job = job_key(id)
local state = job .. ':event:' .. event
local member = id .. '|' .. event
stat('webhook:' .. outcome, 1)
if redis.call('EXISTS', job) == 0 then
  redis.call('ZREM', P .. 'webhooks', member)
  redis.call('DEL', state)
  return 0
end
if next_due == '' then redis.call('ZREM', P .. 'webhooks', member)
else redis.call('ZADD', P .. 'webhooks', next_due, member) end
redis.call('HINCRBY', state, 'attempts', 1)
if body ~= '' then redis.call('HSETNX', state, 'body', body) end
redis.call('HINCRBY', job, 'webhook_attempts', 1)
redis.call('HSET', job, 'webhook_last_status', http_status, 'webhook_last_error', last_error)
if delivered_at ~= '' then redis.call('HSET', job, 'webhook_delivered_at', delivered_at) end
redis.call('LPUSH', job .. ':deliveries', attempt)
redis.call('LTRIM', job .. ':deliveries', 0, tonumber(kept) - 1)
local ttl = redis.call('PTTL', job)
if ttl > 0 then
  redis.call('PEXPIRE', job .. ':deliveries', ttl)
  redis.call('PEXPIRE', state, ttl)
end
return 1
