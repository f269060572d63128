-- trim.lua: removes a match's events below ARGV[1], never at or above the
-- stored snapshot's sequence nor any listed handler's position.
--
-- KEYS[1]: meta:{m}   KEYS[2]: snapshots:{m}   KEYS[3]: events:{m}
-- KEYS[4]: owner:{m}
-- KEYS[5..]: positions:<handler>:{m} of the handlers whose unprocessed
--            events must stay (absent = position 0)
-- ARGV[1]: the sequence to trim below (decimal string)
-- ARGV[2]: the writer's lease epoch (decimal), or '' for unfenced
-- Stores: meta:{m} field `trimmed` = the lowest sequence still stored.
-- Reply: {retained_from, removed}; {-1, 0} unknown match; {-2, 0} a stored
--        number is not a number; {-3, epoch} fenced: owner:{m} is at
--        `epoch` (0: no lease), not ARGV[2]'s; nothing was removed.

if redis.call('EXISTS', KEYS[1]) == 0 then
  return {-1, 0}
end
if ARGV[2] ~= '' then
  local current = redis.call('HGET', KEYS[4], 'epoch')
  if not current or tonumber(current) ~= tonumber(ARGV[2]) then
    return {-3, tonumber(current or '0') or 0}
  end
end
local floor_text = redis.call('HGET', KEYS[1], 'trimmed') or '0'
local head_text = redis.call('HGET', KEYS[1], 'head')
local floor, head = tonumber(floor_text), tonumber(head_text)
-- The limit is kept as the text it came from: Lua would print large
-- numbers in exponent form.
local limit_text = redis.call('HGET', KEYS[2], 'sequence') or '0'
local limit = tonumber(limit_text)
if not floor or not head or not limit then
  return {-2, 0}
end
local function lower(text)
  local n = tonumber(text)
  if not n then
    return false
  end
  if n < limit then
    limit, limit_text = n, text
  end
  return true
end
local ok = lower(ARGV[1]) and lower(head_text)
for k = 5, #KEYS do
  ok = ok and lower(redis.call('GET', KEYS[k]) or '0')
end
if not ok then
  return {-2, 0}
end
if limit <= floor then
  return {floor, 0}
end
local removed = redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', '(' .. limit_text)
redis.call('HSET', KEYS[1], 'trimmed', limit_text)
return {limit, removed}
