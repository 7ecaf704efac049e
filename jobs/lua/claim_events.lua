-- Claim the webhook events that are due: each is pushed back to `claim_until`, so no other sender takes
-- it meanwhile, and a sender that dies leaves it due again once the claim runs out.
-- -> flat list of {member, attempts so far, frozen body or '', url or ''}
local _, now, claim_until, most = unpack(ARGV)
local due = redis.call('ZRANGEBYSCORE', P .. 'webhooks', '-inf', now, 'LIMIT', 0, tonumber(most))
local claimed = {}
for _, member in ipairs(due) do
  redis.call('ZADD', P .. 'webhooks', claim_until, member)
  local bar = string.find(member, '|', 1, true)
  local id, event = string.sub(member, 1, bar - 1), string.sub(member, bar + 1)
  local state = redis.call('HMGET', job_key(id) .. ':event:' .. event, 'attempts', 'body')
  claimed[#claimed + 1] = member
  claimed[#claimed + 1] = state[1] or '0'
  claimed[#claimed + 1] = state[2] or ''
  claimed[#claimed + 1] = redis.call('HGET', job_key(id), 'webhook_url') or ''
end
return claimed
