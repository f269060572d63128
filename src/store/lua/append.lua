-- append.lua: appends the tick batches of several matches; each batch is
-- checked and applied atomically (the whole call runs atomically anyway).
--
-- KEYS: per batch, batch i (0-based): unfenced calls (ARGV[2] = '') give
--       two keys, KEYS[2i+1] = meta:{m}, KEYS[2i+2] = events:{m}; fenced
--       calls (ARGV[2] = 'fenced') three, KEYS[3i+1] = meta:{m},
--       KEYS[3i+2] = events:{m}, KEYS[3i+3] = owner:{m}. In cluster mode
--       all keys of one call share a slot (the caller groups batches by slot).
-- ARGV: ARGV[1] is the command publishing each batch's new events on
--       updates:{m} ('PUBLISH', 'SPUBLISH' in cluster mode, or '' for
--       none); ARGV[2] is 'fenced' or ''; then per batch, in KEYS order:
--       first_sequence, next_sequence, head_tick (decimal strings), in a
--       fenced call also the writer's lease epoch (decimal, or '' for an
--       unfenced batch) and a lease renewal in ms (decimal, or '' for
--       none: an accepted batch then extends owner:{m}'s expiry to that
--       long from the server's TIME, unless the lease was released), then
--       next - first encoded envelopes, the events first, first + 1, ...,
--       next - 1.
-- Publishes: per batch that stored new events, one message on
--       updates:{m}: those events framed as '<length>:<bytes>' each
--       (tickforge::codec::frame_events); only while the channel has a
--       subscriber on this node (one PUBSUB NUMSUB / SHARDNUMSUB for all
--       batches): building and publishing a message nobody reads costs
--       about a quarter of the script's time.
-- Reply: a flat array of three integers per batch, in KEYS order:
--       0, head, tick  appended (or already stored), match live
--       1, head, tick  appended (or already stored), match ended
--       2, head, 0     conflict: the batch does not start at the stored head
--       3, seq, 0      diverged: event seq is stored with other bytes
--       4, 0, 0        unknown match: no meta hash
--       5, 0, 0        corrupt: meta hash or event log not as tickforge writes them
--       6, floor, 0    trimmed: the batch retries events below `floor`, which
--                      trim.lua removed, so they cannot be compared
--       7, epoch, 0    fenced: the batch carries an epoch and owner:{m} is at
--                      `epoch` (0: no lease) instead; nothing was written
--
-- Numbers compare as Lua doubles: exact below 2^53, which the caller checks.
-- Stored numbers are written from ARGV, never formatted by Lua.

local publish = ARGV[1]
local fenced = ARGV[2] == 'fenced'
local stride, header = 2, 3 -- keys and header arguments per batch
if fenced then
  stride, header = 3, 5
end
local now = nil -- server time in ms, read once when a batch renews
local function now_ms()
  if not now then
    local t = redis.call('TIME')
    now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  return now
end
local count_subscribers = ({ PUBLISH = 'NUMSUB', SPUBLISH = 'SHARDNUMSUB' })[publish]
-- followed[k]: whether the channel of the batch at KEYS[k] has a
-- subscriber; one PUBSUB call for the whole script call.
local followed = {}
if count_subscribers then
  local channels = {}
  for k = 1, #KEYS, stride do
    -- meta:{m} -> updates:{m}: same hash tag, same slot.
    channels[#channels + 1] = 'updates:' .. string.sub(KEYS[k], 6)
  end
  for from = 1, #channels, 1000 do -- unpack() is bounded by the Lua stack
    local to = math.min(from + 999, #channels)
    local counts = redis.call('PUBSUB', count_subscribers, unpack(channels, from, to))
    for i = from, to do
      if counts[2 * (i - from) + 2] > 0 then
        followed[stride * (i - 1) + 1] = channels[i]
      end
    end
  end
end
local out = {}
local a = 3
for k = 1, #KEYS, stride do
  local meta, events = KEYS[k], KEYS[k + 1]
  local first, nxt, tick = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  local p = a + header - first -- ARGV[p + s] is the event with sequence s
  local nxt_arg, tick_arg = ARGV[a + 1], ARGV[a + 2]
  -- The current lease epoch when the batch carries one that differs;
  -- renew: the lease's new time to live, when asked for and still held.
  local stale, renew = nil, nil
  if fenced and ARGV[a + 3] ~= '' then
    local current, holder
    if ARGV[a + 4] ~= '' then
      local h = redis.call('HMGET', KEYS[k + 2], 'epoch', 'node')
      current, holder = h[1], h[2]
    else
      current = redis.call('HGET', KEYS[k + 2], 'epoch')
    end
    if not current or tonumber(current) ~= tonumber(ARGV[a + 3]) then
      stale = tonumber(current or '0') or 0
    elseif holder and holder ~= '' then
      renew = tonumber(ARGV[a + 4])
    end
  end
  a = a + header + nxt - first
  local m = redis.call('HMGET', meta, 'head', 'tick', 'status', 'trimmed')
  local head, stored_tick, status = tonumber(m[1]), tonumber(m[2]), m[3]
  local floor = tonumber(m[4] or '0')
  local code, x, y = nil, 0, 0
  if not m[1] then
    code = 4
  elseif stale then
    code, x = 7, stale
  elseif not head or not stored_tick or not floor or (status ~= 'live' and status ~= 'ended') then
    code = 5
  elseif first > head or (first < head and nxt == first) then
    code, x = 2, head
  elseif first < floor then
    code, x = 6, floor
  else
    -- Events first .. min(nxt, head) - 1 are stored already: a retry must
    -- carry them byte for byte.
    local last = math.min(nxt, head) - 1
    if last >= first then
      local stored = redis.call('ZRANGE', events, first, last, 'BYSCORE')
      if #stored ~= last - first + 1 then
        code = 5
      else
        for s = first, last do
          if stored[s - first + 1] ~= ARGV[p + s] then
            code, x = 3, s
            break
          end
        end
      end
    end
    if not code then
      local fields = {}
      if nxt > head then
        local z = {}
        for s = head, nxt - 1 do
          z[#z + 1] = s
          z[#z + 1] = ARGV[p + s]
          if #z >= 1000 then -- unpack() is bounded by the Lua stack
            redis.call('ZADD', events, unpack(z))
            z = {}
          end
        end
        if #z > 0 then
          redis.call('ZADD', events, unpack(z))
        end
        local channel = followed[k]
        if channel then
          local frames, n = {}, 0
          for s = head, nxt - 1 do
            local e = ARGV[p + s]
            frames[n + 1], frames[n + 2], frames[n + 3] = #e, ':', e
            n = n + 3
          end
          redis.call(publish, channel, table.concat(frames))
        end
        head = nxt
        fields[#fields + 1] = 'head'
        fields[#fields + 1] = nxt_arg
      end
      if tick > stored_tick then
        stored_tick = tick
        fields[#fields + 1] = 'tick'
        fields[#fields + 1] = tick_arg
      end
      if #fields > 0 then
        redis.call('HSET', meta, unpack(fields))
      end
      if renew then
        redis.call('HSET', KEYS[k + 2], 'expires', string.format('%d', now_ms() + renew))
      end
      if status == 'live' then code = 0 else code = 1 end
      x, y = head, stored_tick
    end
  end
  out[#out + 1] = code
  out[#out + 1] = x
  out[#out + 1] = y
end
return out
