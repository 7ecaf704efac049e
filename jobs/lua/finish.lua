-- The end of a run: succeeded (with its result), failed or canceled. `fields` (JSON) are set only if the
-- outcome stands; the result is written with NX: the first write wins.
-- -> {final status, 1 if this call made the transition else 0}
local _, id, token, wanted, now, default_ttl, tomb_ttl, fields, result = unpack(ARGV)
local job = job_key(id)
local status = redis.call('HGET', job, 'status')
if not status then return {'missing', 0} end
if not owned_by(job, token) then return {status, 0} end
local outcome = wanted
if outcome == 'succeeded' and redis.call('EXISTS', job .. ':cancel') == 1 then outcome = 'canceled' end
if outcome == wanted then
  for name, value in pairs(cjson.decode(fields)) do redis.call('HSET', job, name, value) end
end
if outcome == 'succeeded' then redis.call('SET', job .. ':result', result, 'NX') end
close_job(id, 'running', outcome, now, tonumber(default_ttl), tonumber(tomb_ttl))
return {outcome, 1}
