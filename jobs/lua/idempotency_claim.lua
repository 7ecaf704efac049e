-- Claim an Idempotency-Key for one submission before its costly checks run (IETF httpapi Idempotency-Key,
-- Stripe's semantics). KEYS: the key's record (one per caller and key). A claim is pending under `token`
-- until the create script turns it into the job's, or it lapses after pending_ms (an API process that died
-- mid-submission cannot hold a key for ever).
-- -> {'claimed', ''}, {'replay', job id} (a job was made with this body), {'reused', ''} (a job was made with
--    another body), {'in_use', ''} (another request holds the key and is still being accepted)
local record = KEYS[1]
local fingerprint, token, pending_ms = unpack(ARGV)
local job, made_with, holder = unpack(redis.call('HMGET', record, 'job', 'fingerprint', 'token'))
if job then
  if made_with == fingerprint then return {'replay', job} end
  return {'reused', ''}
end
if holder then return {'in_use', ''} end
redis.call('HSET', record, 'token', token, 'fingerprint', fingerprint)
redis.call('PEXPIRE', record, tonumber(pending_ms))
return {'claimed', ''}
