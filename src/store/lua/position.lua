-- position.lua: moves a handler's position forward, never back.
--
-- KEYS[1]: positions:<handler>:{m}   KEYS[2]: meta:{m}
-- ARGV[1]: the new position (decimal string)
-- Reply: the position now stored (>= 0), -1 unknown match,
--        -2 the stored position is not a number.

if redis.call('EXISTS', KEYS[2]) == 0 then
  return -1
end
local current = redis.call('GET', KEYS[1])
if current then
  local c = tonumber(current)
  if not c then
    return -2
  end
  if c >= tonumber(ARGV[1]) then
    return c
  end
end
redis.call('SET', KEYS[1], ARGV[1])
return tonumber(ARGV[1])
