-- create.lua: records a new match unless it exists.
--
-- KEYS[1]: meta:{m}
-- ARGV[1]: the encoded setup (parameters and seed; may be empty)
-- Reply: -1 when created (head 0, tick 0, status live); otherwise the
--        existing head (>= 0), or -2 when the existing head is not a number.

local head = redis.call('HGET', KEYS[1], 'head')
if head then
  return tonumber(head) or -2
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  return -2
end
redis.call('HSET', KEYS[1], 'head', '0', 'tick', '0', 'status', 'live', 'setup', ARGV[1])
return -1
