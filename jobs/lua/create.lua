-- Record a queued job, store its input and push its run_job message, in one step.
-- bucket, interval, burst: the owner's rate ('', 0, 0: the request is not counted here); queue_list and
-- message '' and '': record only, send nothing; record: the job's fields as one JSON object of strings
-- (one argument: redis-py encodes each argument in Python, about a microsecond apiece, and a record has
-- some twenty); idempotency: the Idempotency-Key record this request claimed under claim_token ('' for
-- a claim not held first), with the body's fingerprint and the record's lifetime in seconds: it names the job
-- once recorded, so a retry of the request finds it.
-- With a blob store, `input` is '' and the record names the stored input (`input_key`), which is recorded here
-- (deleted at the job's expiry or end) or, when nothing is written, deleted soon.
-- -> {'created', 0}, or nothing written and {'rate_limited', ms to wait}, {'too_many_jobs', 0} (the owner
--    already has the most unfinished jobs allowed), {'storage_lost', 0} (the sweeper gave the input's put up),
--    {'replay', job id} (the key made a job with this body), {'reused', 0} (with another body) or {'in_use', 0}
--    (another request of the same key holds it)
local _, id, ttl, tomb_ttl, owner, created_us, input, max_active, now, queue_list, message,
      bucket, interval, burst, record, idempotency, claim_token, fingerprint, idempotency_ttl = unpack(ARGV)
ttl, max_active = tonumber(ttl), tonumber(max_active)
record = cjson.decode(record)
local stored_input = record['input_key']
if idempotency ~= '' then
  local made, made_with, holder = unpack(redis.call('HMGET', idempotency, 'job', 'fingerprint', 'token'))
  local outcome = (made and made_with == fingerprint and {'replay', made}) or (made and {'reused', 0})
                  or (holder and holder ~= claim_token and {'in_use', 0})
  if outcome then
    if stored_input then keep_blob(stored_input, now) end
    return outcome
  end
end
if stored_input and redis.call('ZSCORE', PENDING, stored_input) == false then return {'storage_lost', 0} end
if bucket ~= '' then  -- the submission is counted against its key's rate in this round trip
  local allowed, wait = take_request(bucket, tonumber(interval), tonumber(burst))
  if allowed == 0 then
    if stored_input then keep_blob(stored_input, now) end
    return {'rate_limited', wait}
  end
end
local active = P .. 'owner:' .. owner .. ':active'
if max_active > 0 and redis.call('SCARD', active) >= max_active then
  -- forget ids whose job ended or expired without passing through close_job, then count again
  for _, other in ipairs(redis.call('SMEMBERS', active)) do
    local status = redis.call('HGET', job_key(other), 'status')
    if status ~= 'queued' and status ~= 'running' then redis.call('SREM', active, other) end
  end
  if redis.call('SCARD', active) >= max_active then
    if stored_input then keep_blob(stored_input, now) end
    return {'too_many_jobs', 0}
  end
end
local job = job_key(id)
local fields = {}
for name, value in pairs(record) do
  fields[#fields + 1] = name
  fields[#fields + 1] = value
end
redis.call('HSET', job, unpack(fields))
redis.call('EXPIRE', job, ttl)
if stored_input then keep_blob(stored_input, tonumber(now) + ttl)
else redis.call('SET', job .. ':input', input, 'EX', ttl) end
redis.call('SET', P .. 'tomb:' .. id, owner, 'EX', ttl + tonumber(tomb_ttl))
local index = P .. 'owner:' .. owner .. ':jobs'
redis.call('ZADD', index, tonumber(created_us), id)
if redis.call('TTL', index) < ttl then redis.call('EXPIRE', index, ttl) end
redis.call('SADD', active, id)
if redis.call('TTL', active) < ttl then redis.call('EXPIRE', active, ttl) end
redis.call('ZADD', P .. 'queued', now, id)
if idempotency ~= '' then
  redis.call('HSET', idempotency, 'job', id, 'fingerprint', fingerprint)
  redis.call('HDEL', idempotency, 'token')
  redis.call('EXPIRE', idempotency, tonumber(idempotency_ttl))
end
if queue_list ~= '' then redis.call('LPUSH', queue_list, message) end
stat('active:queued', 1)
stat('total:queued', 1)
return {'created', 0}
