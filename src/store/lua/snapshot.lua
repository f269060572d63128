-- snapshot.lua: stores a snapshot unless a newer one is stored
-- (compare-and-set on (sequence, tick)), and only for the lease holder
-- when the writer gives its epoch.
--
-- KEYS[1]: snapshots:{m}   KEYS[2]: meta:{m}   KEYS[3]: owner:{m}
-- ARGV[1]: sequence, ARGV[2]: tick (decimal strings), ARGV[3]: encoded state,
-- ARGV[4]: schema version, ARGV[5]: state hash (decimal strings),
-- ARGV[6]: the writer's lease epoch (decimal), or '' for unfenced
-- Reply: {1} stored, {0} kept the newer stored snapshot, {-1} unknown match,
--        {-2} the stored sequence or tick is not a number,
--        {-3, epoch} fenced: owner:{m} is at `epoch` (0: no lease), not
--        ARGV[6]'s; nothing was written.

if redis.call('EXISTS', KEYS[2]) == 0 then
  return {-1}
end
if ARGV[6] ~= '' then
  local current = redis.call('HGET', KEYS[3], 'epoch')
  if not current or tonumber(current) ~= tonumber(ARGV[6]) then
    return {-3, tonumber(current or '0') or 0}
  end
end
local s = redis.call('HMGET', KEYS[1], 'sequence', 'tick')
if s[1] or s[2] then
  local seq, tick = tonumber(s[1]), tonumber(s[2])
  if not seq or not tick then
    return {-2}
  end
  local new_seq, new_tick = tonumber(ARGV[1]), tonumber(ARGV[2])
  if seq > new_seq or (seq == new_seq and tick > new_tick) then
    return {0}
  end
end
redis.call('HSET', KEYS[1], 'sequence', ARGV[1], 'tick', ARGV[2], 'state', ARGV[3],
  'schema', ARGV[4], 'hash', ARGV[5])
return {1}
