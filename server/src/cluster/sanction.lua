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

if ARGV[2] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
redis.call(ARGV[4], ARGV[3], ARGV[5])
return 1
