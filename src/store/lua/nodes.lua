-- nodes.lua: the node directory of a domain and edition, on Redis's own
-- clock: a heartbeat registers a node until its expiry; listing never
-- returns a node whose heartbeat expired (and removes those it finds, as
-- well as entries it cannot read).
--
-- KEYS[1]: nodes:{d:e}, a hash: field = node id, value =
--          '<expires ms>\t<description>' (server time in ms; the
--          description is written and read by tickforge, opaque here)
-- ARGV[1]: 'register', 'list' or 'deregister'
-- ARGV[2]: the node id (register, deregister)
-- ARGV[3]: register: time to live in ms (decimal string)
-- ARGV[4]: register: the node's description
-- Reply: register: 1. deregister: 1 when the node was listed, else 0.
--        list: a flat array id, description, id, description, ... of the
--        live nodes, in no particular order.

local op = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if op == 'register' then
  local expires = string.format('%d', now + tonumber(ARGV[3]))
  redis.call('HSET', KEYS[1], ARGV[2], expires .. '\t' .. ARGV[4])
  return 1
end
if op == 'deregister' then
  return redis.call('HDEL', KEYS[1], ARGV[2])
end
if op == 'list' then
  local all = redis.call('HGETALL', KEYS[1])
  local out, expired = {}, {}
  for i = 1, #all, 2 do
    local expires, description = string.match(all[i + 1], '^(%d+)\t(.*)$')
    if expires and tonumber(expires) > now then
      out[#out + 1] = all[i]
      out[#out + 1] = description
    else
      expired[#expired + 1] = all[i]
    end
  end
  for from = 1, #expired, 1000 do -- unpack() is bounded by the Lua stack
    redis.call('HDEL', KEYS[1], unpack(expired, from, math.min(from + 999, #expired)))
  end
  return out
end
return redis.error_reply('ERR nodes.lua: unknown operation ' .. tostring(op))
