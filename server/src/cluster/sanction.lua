-- Records a change to the fleet's sanctions (mutes, bans, kicks) and tells
-- every node, in one step: a node that misses the message finds the change
-- in the hash when it next reads it.
--
-- KEYS[1]  rc:{sanctions}:all    hash: sanction key -> sanction (JSON)
-- ARGV[1]  the sanction's key
-- ARGV[2]  the sanction ('' lifts it)
-- ARGV[3]  the channel            rc:{sanctions}:events
-- ARGV[4]  PUBLISH, or SPUBLISH in a Redis Cluster
-- ARGV[5]  the change, as nodes apply it (JSON)
--
-- Or, with ARGV[1] = 'prune': removes the ended sanctions named in
-- ARGV[2..] as key, value pairs, each only if it is still that value (a
-- sanction given again meanwhile stays).

if ARGV[1] == 'prune' then
  for i = 2, #ARGV, 2 do
    if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
      redis.call('HDEL', KEYS[1], ARGV[i])
    end
  end
  return 1
end

if ARGV[2] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
redis.call(ARGV[4], ARGV[3], ARGV[5])
return 1
