-- The end of a run: succeeded (with its result), failed or canceled. `fields` (JSON) are set only if the
-- outcome stands; the result is written with NX: the first write wins. With a blob store, `result` is '' and
-- `stored` is the key the run put its result under: recorded if the run's success stands, else deleted soon.
-- -> {final status, 1 if this call made the transition else 0}
local _, id, token, wanted, now, default_ttl, tomb_ttl, fields, result, stored = unpack(ARGV)
local job = job_key(id)
local status = redis.call('HGET', job, 'status')
local function drop_result() if stored ~= '' then keep_blob(stored, now) end end
if not status then drop_result(); return {'missing', 0} end
if not owned_by(job, token) then drop_result(); return {status, 0} end
local outcome = wanted
if outcome == 'succeeded' and redis.call('EXISTS', job .. ':cancel') == 1 then outcome = 'canceled' end
if outcome == 'succeeded' and stored ~= '' and redis.call('ZSCORE', PENDING, stored) == false then
  return {status, 0}  -- the sweeper gave this put up: the run ends unrecorded, its lease lapses, the job runs again
end
if outcome == wanted then
  for name, value in pairs(cjson.decode(fields)) do redis.call('HSET', job, name, value) end
end
if outcome ~= 'succeeded' then drop_result()
elseif stored ~= '' then  -- recorded: close_job schedules its deletion with the record's expiry
  redis.call('HSET', job, 'result_key', stored)
  redis.call('ZREM', PENDING, stored)
else redis.call('SET', job .. ':result', result, 'NX') end
close_job(id, 'running', outcome, now, tonumber(default_ttl), tonumber(tomb_ttl))
return {outcome, 1}
