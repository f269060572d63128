-- finish.lua: marks an existing match ended or failed.
--
-- KEYS[1]: meta:{m}
-- ARGV[1]: 'ended' or 'failed', ARGV[2]: the failure reason (empty when ended)
-- Reply: 1 when marked (or already ended), 0 when the match is unknown.

if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
if ARGV[1] == 'failed' then
  redis.call('HSET', KEYS[1], 'status', 'failed', 'failure', ARGV[2])
else
  redis.call('HSET', KEYS[1], 'status', 'ended')
end
return 1
