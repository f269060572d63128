-- read.lua: up to ARGV[2] events of a match from sequence ARGV[1] on,
-- unless that part of the log was trimmed.
--
-- KEYS[1]: meta:{m}   KEYS[2]: events:{m}
-- ARGV[1]: from, ARGV[2]: limit (decimal strings)
-- Reply: {retained_from} alone when `from` is below the trimmed part,
--        else {retained_from, member, member, ...} (the encoded envelopes
--        of events from, from + 1, ...). retained_from is a decimal string.

local floor = redis.call('HGET', KEYS[1], 'trimmed') or '0'
local f = tonumber(floor) -- not a number: the caller reports it as corrupt
if f and tonumber(ARGV[1]) < f then
  return {floor}
end
local members = redis.call('ZRANGE', KEYS[2], ARGV[1], '+inf', 'BYSCORE', 'LIMIT', 0, ARGV[2])
table.insert(members, 1, floor)
return members
