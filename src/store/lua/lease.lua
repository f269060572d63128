-- lease.lua: reads, claims, renews, releases or hands over the lease of a
-- match (which node may write it, under which epoch), on Redis's own clock.
--
-- KEYS[1]: owner:{m}, a hash: `node` (empty when released), `epoch` (only
--          ever grows; kept after expiry and release, so an epoch is never
--          given twice), `expires` (server time in ms)
-- ARGV[1]: the operation: 'read', 'claim', 'renew', 'release' or 'transfer'
-- ARGV[2]: the node claiming (claim) or holding the lease (renew, release,
--          transfer); unused by read
-- ARGV[3]: the holder's epoch (renew, release, transfer; decimal string)
-- ARGV[4]: the new lease's time to live in ms (claim, renew, transfer)
-- ARGV[5]: the node taking the lease over (transfer)
-- Reply: {code, node, epoch, ms left}:
--        0, node, epoch, ms   done; the lease now held (release: the node
--                             is empty). read: the live lease, or
--                             0, '', epoch, 0 when none is live
--        1, node, epoch, ms   claim: another node holds a live lease
--        2, node, epoch, 0    fenced: the lease moved on (another epoch, or
--                             released) since the holder's epoch
--        3, '', 0, 0          corrupt: the hash is not what tickforge writes
--
-- Numbers compare as Lua doubles: exact below 2^53 (epochs and server
-- milliseconds stay far below). Epochs are formatted with '%d'.

local op, node = ARGV[1], ARGV[2]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local h = redis.call('HMGET', KEYS[1], 'node', 'epoch', 'expires')
local owner, epoch, expires = h[1] or '', tonumber(h[2] or '0'), tonumber(h[3] or '0')
if not epoch or not expires then
  return {3, '', 0, 0}
end
local live = owner ~= '' and expires > now
local function left()
  if live then return expires - now end
  return 0
end
local function hold(who, new_epoch)
  local ttl = tonumber(ARGV[4])
  redis.call('HSET', KEYS[1], 'node', who, 'epoch', string.format('%d', new_epoch),
    'expires', string.format('%d', now + ttl))
  return {0, who, new_epoch, ttl}
end

if op == 'read' then
  if live then return {0, owner, epoch, left()} end
  return {0, '', epoch, 0}
end
if op == 'claim' then
  if live and owner ~= node then
    return {1, owner, epoch, left()}
  end
  if live then
    return hold(node, epoch) -- already ours: renewed, same epoch
  end
  return hold(node, epoch + 1) -- free or expired: a new epoch
end
-- renew, release and transfer act for the holder of ARGV[3]'s epoch, which
-- may have expired as long as nobody claimed the match since.
local mine = tonumber(ARGV[3]) == epoch and owner == node
if op == 'release' then
  if mine then
    redis.call('HSET', KEYS[1], 'node', '', 'expires', '0')
    return {0, '', epoch, 0}
  end
  if tonumber(ARGV[3]) == epoch and owner == '' then
    return {0, '', epoch, 0} -- released already (a retry)
  end
  return {2, owner, epoch, 0}
end
if not mine then
  return {2, owner, epoch, 0}
end
if op == 'renew' then
  return hold(node, epoch)
end
if op == 'transfer' then
  return hold(ARGV[5], epoch + 1)
end
return redis.error_reply('ERR lease.lua: unknown operation ' .. tostring(op))
