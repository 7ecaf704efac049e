-- The sweeper deleted these objects: forget each one still due by `now` (one rescheduled meanwhile stays).
local _, now = unpack(ARGV, 1, 2)
local forgotten = 0
for i = 3, #ARGV do
  local due = redis.call('ZSCORE', TRASH, ARGV[i])
  if due and tonumber(due) <= tonumber(now) then forgotten = forgotten + redis.call('ZREM', TRASH, ARGV[i]) end
end
return forgotten
