-- Count one request against an owner's rate.
-- KEYS: the owner's bucket. ARGV: ms between requests, burst -> {1, 0} allowed, or {0, ms to wait}
local allowed, wait = take_request(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]))
return {allowed, wait}
