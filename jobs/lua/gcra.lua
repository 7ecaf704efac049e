-- Requests per second per owner, GCRA (a leaky bucket kept as one timestamp, on Redis's clock so every
-- API process agrees): take_request(the owner's bucket, ms between requests at the sustained rate, burst)
-- -> 1, 0 allowed (and counted), or 0, ms to wait (not counted)
local function take_request(bucket, interval, burst)
  local clock = redis.call('TIME')
  local now = tonumber(clock[1]) * 1000 + tonumber(clock[2]) / 1000
  local tolerance = interval * (burst - 1)
  local tat = tonumber(redis.call('GET', bucket) or now)
  if tat < now then tat = now end
  local wait = tat - tolerance - now
  if wait > 0 then return 0, math.ceil(wait) end
  tat = tat + interval
  redis.call('SET', bucket, string.format('%.3f', tat), 'PX', math.ceil(tat - now) + 1000)
  return 1, 0
end
