-- finish.lua: marks an existing match ended.
--
-- KEYS[1]: meta:{m}
-- ARGV: none
-- Reply: 1 when marked (or already ended), 0 when the match is unknown.

if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
redis.call('HSET', KEYS[1], 'status', 'ended')
return 1
