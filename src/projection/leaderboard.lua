-- leaderboard.lua: adds tags to a match's leaderboard and moves the
-- projection's position, atomically, only if the position is where the
-- caller read from (so no event is ever counted twice).
--
-- KEYS[1]: positions:leaderboard:{m}   KEYS[2]: leaderboard:{m}
-- ARGV[1]: from (the position the caller read from), ARGV[2]: to,
--          then pairs: member, increment
-- Reply: the position stored afterwards (to if applied, else the stored one).

local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current ~= tonumber(ARGV[1]) then
  return current
end
for i = 3, #ARGV, 2 do
  redis.call('ZINCRBY', KEYS[2], ARGV[i + 1], ARGV[i])
end
redis.call('SET', KEYS[1], ARGV[2])
return tonumber(ARGV[2])
