-- The sweeper: puts begun before `cutoff` that no script recorded (their process died, or gave up) -> trash, due now.
-- -> how many
local _, cutoff, now, most = unpack(ARGV)
local stale = redis.call('ZRANGEBYSCORE', PENDING, '-inf', cutoff, 'LIMIT', 0, tonumber(most))
for _, key in ipairs(stale) do
  redis.call('ZREM', PENDING, key)
  redis.call('ZADD', TRASH, now, key)
end
return #stale
